"""A viewer's bounded queue of frames for one track."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

from aiortc.mediastreams import MediaStreamError

from ..media import RelayFrame
from .meter import METER


class QueueClosed(MediaStreamError):
    """The queue was closed: the viewer or the show is gone (ends the sender's loop quietly)."""


class ViewerQueue:
    """Frames waiting to be sent to one viewer on one track.

    Bounded: when `capacity` frames are waiting, the viewer is too slow; the waiting frames
    are dropped and, for video, everything up to the next keyframe too (a frame without its
    references would not decode). Drops are counted. Never blocks the producer.
    """

    __slots__ = ("capacity", "needs_keyframe", "dropped", "sent", "_frames", "_waiter",
                 "_closed", "_video", "on_drop", "on_first", "_kind")

    def __init__(self, capacity: int, video: bool) -> None:
        self.capacity = capacity
        self.needs_keyframe = video
        self.dropped = 0
        self.sent = 0
        self.on_drop: Callable[[], None] | None = None
        self.on_first: Callable[[], None] | None = None  # the first frame goes out (join time)
        self._kind = "video" if video else "audio"
        self._frames: deque[RelayFrame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._video = video

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: RelayFrame) -> None:
        if self.needs_keyframe:
            if not frame.keyframe:
                self.dropped += 1
                METER.frames_dropped[self._kind] += 1
                return
            self.needs_keyframe = False
        if len(self._frames) >= self.capacity:
            self.dropped += len(self._frames)
            METER.frames_dropped[self._kind] += len(self._frames)
            self._frames.clear()
            if self._video and not frame.keyframe:
                self.needs_keyframe = True
                self.dropped += 1
                METER.frames_dropped[self._kind] += 1
                if self.on_drop is not None:
                    self.on_drop()
                return
        self._frames.append(frame)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def restart(self) -> None:
        """The source changed (host reconnected): wait for the new source's keyframe."""
        self._frames.clear()
        self.needs_keyframe = self._video

    async def get(self) -> RelayFrame:
        while not self._frames:
            if self._closed:
                raise QueueClosed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = self._frames.popleft()
        if not self.sent and self.on_first is not None:
            self.on_first()
        self.sent += 1
        meter = METER
        meter.frames_sent[self._kind] += 1
        meter.packets_sent[self._kind] += len(frame.payloads)
        meter.bytes_sent[self._kind] += frame.size
        return frame

    def close(self) -> None:
        self._closed = True
        self._frames.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
