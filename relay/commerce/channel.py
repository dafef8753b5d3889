"""Events over a WHEP viewer's WebRTC data channel."""

from __future__ import annotations

import asyncio
import json
import logging

from ..errors import ApiError
from .events import EventHub, render_text
from .store import MAX_SEQ

log = logging.getLogger(__name__)


def serve_channel(hub: EventHub, show_id: str, room: str, channel, viewer_id: str | None = None) -> None:
    """Send the room's events on `channel` as JSON text (as `viewer_id` sees them: its own held
    comments too); a {"resume": seq} message from the viewer first sends what it missed after `seq`."""
    sub = hub.subscribe(show_id)
    last = [None]  # seq of the last event sent; None until the viewer resumes or one arrives

    def send(event) -> None:
        text = render_text(event, room, viewer_id)
        if text is not None and channel.readyState == "open":
            channel.send(text)

    async def forward() -> None:
        try:
            while True:
                event = await sub.get()
                if event is None:
                    break
                if last[0] is None or event.seq > last[0]:
                    last[0] = event.seq
                    send(event)
        finally:
            hub.unsubscribe(show_id, sub)

    task = asyncio.ensure_future(forward())

    async def resume(since: int) -> None:
        try:
            missed = await hub.store.events_after(show_id, since)
        except ApiError as exc:
            log.warning("show %s: cannot resume a data channel: %s", show_id, exc.message)
            return
        for event in missed:
            if last[0] is None or event.seq > last[0]:
                last[0] = event.seq
                send(event)

    @channel.on("message")
    def on_message(message) -> None:
        try:
            since = int(json.loads(message)["resume"])
        except (ValueError, KeyError, TypeError, RecursionError):
            return
        if 0 <= since <= MAX_SEQ:  # a sequence number, not one no store can hold
            asyncio.ensure_future(resume(since))

    @channel.on("close")
    def on_close() -> None:
        task.cancel()
