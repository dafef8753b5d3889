"""A viewer's WHEP session: a peer connection whose senders send the show's shared frames."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Callable

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .. import aiortc_hooks
from ..webrtc import Offer, answer_offer, codec_preferences, new_peer_connection, on_connection_end
from ..metrics import JOIN_SECONDS
from .frame_queue import FrameQueue

log = logging.getLogger(__name__)


class _SharedTrack(MediaStreamTrack):
    """Placeholder track for a sender that is fed encoded frames directly."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self):  # never called: the sender reads its FrameQueue
        raise MediaStreamError


class ViewerSession:
    """One WHEP session in one room of a show."""

    def __init__(self, show_id: str, room: str, queue_frames: int, on_gone: Callable[["ViewerSession"], None],
                 on_channel: Callable[["ViewerSession", object], None] | None = None) -> None:
        self.id = secrets.token_urlsafe(16)
        self.show_id = show_id
        self.room = room
        self.pc = new_peer_connection()
        self.queues: dict[str, FrameQueue] = {}
        self.codecs: dict[str, str] = {}
        self.started_at = time.time()
        self.closed = False
        self._queue_frames = queue_frames
        self._on_gone = on_gone
        self._on_channel = on_channel

    async def answer(self, offer: Offer, codecs: dict[str, list[str]], on_keyframe_request: Callable[[], None]) -> str:
        for media in offer.media:
            transceiver = self.pc.addTransceiver(_SharedTrack(media.kind), direction="sendonly")
            transceiver.setCodecPreferences(codec_preferences(media.kind, codecs[media.kind]))
            queue = FrameQueue(self._queue_frames, video=media.kind == "video")
            queue.on_drop = on_keyframe_request
            if media.kind == "video":
                queue.on_first = self._joined
            aiortc_hooks.feed_sender(transceiver.sender, queue.get, on_keyframe_request)
            self.queues[media.kind] = queue
        sends = "; ".join(f"{k} {'/'.join(v)}" for k, v in codecs.items() if k in offer.kinds())
        if self._on_channel is not None:
            # A viewer that opened a data channel gets the show's events on it.
            self.pc.on("datachannel", lambda channel: self._on_channel(self, channel))
        answer, self.codecs = await answer_offer(self.pc, offer, f" (this show sends {sends})")
        on_connection_end(self.pc, lambda: self.closed or self._on_gone(self))
        return answer

    def _joined(self) -> None:
        JOIN_SECONDS.observe(time.time() - self.started_at)

    @property
    def dropped(self) -> int:
        return sum(q.dropped for q in self.queues.values())

    def describe(self) -> dict:
        return {
            "session": self.id,
            "room": self.room,
            "since": self.started_at,
            "codecs": self.codecs,
            "connection": self.pc.connectionState,
            "dropped_frames": self.dropped,
        }

    async def close(self) -> None:
        self.closed = True
        for queue in self.queues.values():
            queue.close()
        await self.pc.close()
