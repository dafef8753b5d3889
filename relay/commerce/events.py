"""The show's event stream: one sequence per show, persisted before it is delivered."""

from __future__ import annotations

import asyncio
from collections import deque
import json
import logging
import time
from typing import Callable

from ..metrics import EVENT_LAG, store_timer
from .room_view import coupon_for_room, product_for_room
from .store import CommerceStore, Event

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 1000
# Comments come many a second: a show's readers get them in batches this often (one wake and
# one write per reader per batch instead of per comment); other events go at once.
BATCH_S = 0.05


class Subscription:
    """One live reader of a show's events. A reader that falls SUBSCRIBER_QUEUE events behind
    is cut off (its client reconnects with Last-Event-ID and loses nothing)."""

    def __init__(self) -> None:
        self._events: deque[Event] = deque()
        self._wake = asyncio.Event()
        self.overflowed = False

    def deliver(self, event: Event) -> bool:
        if len(self._events) >= SUBSCRIBER_QUEUE:
            self.overflowed = True
            self._events.clear()
        else:
            self._events.append(event)
        self._wake.set()
        return not self.overflowed

    @property
    def pending(self) -> int:
        return len(self._events)

    def end(self) -> None:
        """No more events: the reader's next get() returns None (the server is stopping)."""
        self.overflowed = True
        self._events.clear()
        self._wake.set()

    def take_ready(self) -> list[Event]:
        """The events already waiting, without waiting (a busy reader writes them at once)."""
        if self.overflowed:
            return []
        ready = list(self._events)
        self._events.clear()
        return ready

    async def get(self) -> Event | None:
        """The next event; None once the reader has fallen too far behind."""
        while not self._events and not self.overflowed:
            self._wake.clear()
            await self._wake.wait()
        return None if self.overflowed else self._events.popleft()


class EventHub:
    """Appends a show's events to the store and hands each, in sequence order, to this process's
    readers of the show, whichever process published it."""

    def __init__(self, store: CommerceStore, stream_time: Callable[[str, float], float | None]) -> None:
        self.store = store
        self._stream_time = stream_time
        self._subscribers: dict[str, set[Subscription]] = {}
        self._delivered: dict[str, int] = {}  # show -> newest seq handed to its readers
        self._order = asyncio.Lock()  # appends from this process keep the order they were made in
        self._batches: dict[str, list[Event]] = {}  # show -> comment events waiting for the next batch

    async def publish(self, show_id: str, type: str, data: dict) -> Event:
        async with self._order:
            wall = time.time()
            with store_timer("append_event"):
                return await self.store.append_event(show_id, type, wall, self._stream_time(show_id, wall), data)

    def publish_soon(self, show_id: str, type: str, data: dict) -> None:
        """publish() from synchronous code; a store failure is logged."""
        task = asyncio.ensure_future(self.publish(show_id, type, data))
        task.add_done_callback(_log_failure)

    async def deliver(self, event: Event) -> None:
        """The store's listener: every event of every show, from this process or another."""
        last = self._delivered.get(event.show_id)
        if last is not None and event.seq <= last:
            return
        if event.show_id not in self._subscribers:
            self._delivered[event.show_id] = event.seq
            return
        events = [event]
        if last is not None and event.seq > last + 1:  # missed some (a dropped pub/sub link)
            events = await self.store.events_after(event.show_id, last, limit=event.seq - last)
        for e in events:
            if e.seq > self._delivered.get(event.show_id, 0):
                self._delivered[event.show_id] = e.seq
                EVENT_LAG.observe(max(0.0, time.time() - e.wall))
                self._hand_out(e)

    async def resync(self) -> None:
        """Deliver what readers may have missed while the store's event feed was down."""
        for show_id in list(self._subscribers):
            last = self._delivered.get(show_id)
            if last is None:
                continue
            for event in await self.store.events_after(show_id, last):
                await self.deliver(event)

    def _hand_out(self, event: Event) -> None:
        show_id = event.show_id
        if event.type in COMMENT_EVENTS or event.type == "likes":
            batch = self._batches.get(show_id)
            if batch is None:
                batch = self._batches[show_id] = []
                asyncio.get_running_loop().call_later(BATCH_S, self._send_batch, show_id)
            batch.append(event)
            return
        self._send_batch(show_id)  # what came before it goes first
        self._give(event)

    def _send_batch(self, show_id: str) -> None:
        for event in self._batches.pop(show_id, ()):
            self._give(event)

    def _give(self, event: Event) -> None:
        for sub in list(self._subscribers.get(event.show_id, ())):
            if not sub.deliver(event):
                log.warning("show %s: an event reader fell behind; disconnecting it", event.show_id)
                self.unsubscribe(event.show_id, sub)

    def subscribe(self, show_id: str) -> Subscription:
        sub = Subscription()
        self._subscribers.setdefault(show_id, set()).add(sub)
        return sub

    def unsubscribe(self, show_id: str, sub: Subscription) -> None:
        subs = self._subscribers.get(show_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[show_id]

    def forget(self, show_id: str) -> None:
        """The show was deleted: its readers' streams end and its sequence starts anew."""
        self._batches.pop(show_id, None)
        for sub in self._subscribers.pop(show_id, ()):
            sub.end()
        self._delivered.pop(show_id, None)

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout`) until every reader has taken what was handed to it."""
        for show_id in list(self._batches):
            self._send_batch(show_id)
        deadline = time.monotonic() + timeout
        while any(sub.pending for subs in self._subscribers.values() for sub in subs):
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.01)  # readers run on this loop: give them their turn

    def close(self) -> None:
        """End every reader's stream (clients reconnect with Last-Event-ID to another process)."""
        for subs in self._subscribers.values():
            for sub in subs:
                sub.end()
        self._subscribers.clear()



def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("an event could not be published: %s", task.exception())


def render_text(event: Event, room: str, viewer_id: str | None = None, operator: bool = False) -> str | None:
    """render() as JSON text, made once per distinct view of the event: the readers of a room
    share one (only a comment's author may see it otherwise)."""
    personal = viewer_id if viewer_id is not None and event.data.get("author") == viewer_id else None
    key = (room, personal, operator)
    try:
        return event.views[key]
    except KeyError:
        body = render(event, room, personal, operator)
        text = event.views[key] = None if body is None else json.dumps(body)
        return text


COMMENT_EVENTS = frozenset({"comment", "comment.deleted", "comment.pinned"})


def render(event: Event, room: str, viewer_id: str | None = None, operator: bool = False) -> dict | None:
    """The event as `room` sees it: its own prices and caps; a product hidden there is only
    {id, hidden} (and a card pinned for it is not sent at all). Comments and likes: the room's
    own; a held comment only to its author (`viewer_id`, None for an anonymous reader), as if
    published; the `operator` sees every room's comments and likes, labelled, with their authors."""
    if event.type in COMMENT_EVENTS or event.type == "likes":
        data = _comment_view(event, room, viewer_id, operator)
        if data is None:
            return None
        return {"seq": event.seq, "type": event.type, "wall_time": event.wall, "stream_time": event.stream_time,
                **data}
    data = dict(event.data)
    if event.type == "sale":  # a room hears of its own sales only
        if data.pop("room", None) != room:
            return None
    if isinstance(data.get("coupon"), dict) and "rooms" in data["coupon"]:
        data["coupon"] = coupon_for_room(data["coupon"], room)
    if isinstance(data.get("product"), dict) and "rooms" in data["product"]:
        product = product_for_room(data["product"], room)
        if product is None:
            if event.type == "product.pinned":
                return None
            product = {"id": data["product"]["id"], "hidden": True}  # not on this room's shelf
        data["product"] = product
    return {"seq": event.seq, "type": event.type, "wall_time": event.wall, "stream_time": event.stream_time, **data}


def _comment_view(event: Event, room: str, viewer_id: str | None, operator: bool) -> dict | None:
    data = dict(event.data)
    author = data.pop("author", None)  # a viewer id: never sent to readers
    released = data.pop("released", False)
    if event.type == "likes":
        return data if operator or data.get("room") == room else None
    comment = data["comment"]
    if operator:
        data["comment"] = {**comment, "viewer_id": author}
        return data
    if comment.get("room") != room:
        return None
    mine = viewer_id is not None and viewer_id == author
    if event.type == "comment":
        if comment.get("status") == "held":
            if not mine:
                return None
            data["comment"] = {**comment, "status": "published"}  # its author is not told
        elif released and mine:
            return None  # the author has seen it since it was posted
    return data
