"""A reader's bounded queue of frames (the recorder's: viewers are sent to at once)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

from aiortc.mediastreams import MediaStreamError

from ..media import RelayFrame


class QueueClosed(MediaStreamError):
    """The queue was closed: the viewer or the show is gone (ends the sender's loop quietly)."""


class FrameQueue:
    """Frames waiting for one reader that takes them in its own time (the recorder, both tracks).

    Bounded: when `capacity` frames are waiting, the reader is too slow; the waiting frames
    are dropped and, for a video queue, video up to the next keyframe too (a frame without
    its references would not decode; audio in a mixed queue goes on). Drops are counted. Never
    blocks the producer.
    """

    __slots__ = ("capacity", "needs_keyframe", "dropped", "sent", "_frames", "_waiter",
                 "_closed", "_video", "on_drop", "_kind")

    def __init__(self, capacity: int, video: bool) -> None:
        self.capacity = capacity
        self.needs_keyframe = video
        self.dropped = 0
        self.sent = 0
        self.on_drop: Callable[[], None] | None = None
        self._kind = "video" if video else "audio"
        self._frames: deque[RelayFrame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._video = video

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: RelayFrame) -> None:
        if self.needs_keyframe and frame.kind == self._kind:  # (audio passes a mixed queue)
            if not frame.keyframe:
                self.dropped += 1
                return
            self.needs_keyframe = False
        if len(self._frames) >= self.capacity:
            self.dropped += len(self._frames)
            self._frames.clear()
            if self._video and not (frame.keyframe and frame.kind == "video"):
                self.needs_keyframe = True
                self.dropped += 1
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
        self.sent += 1
        return frame

    def finish(self) -> None:
        """No more frames come: the reader gets those waiting, then QueueClosed."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self._closed = True
        self._frames.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
