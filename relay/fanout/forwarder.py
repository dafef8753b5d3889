"""The forwarding hot path: one track of a show, from the host's frames to every reader."""

from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

from ..media import CLOCK_RATES, RelayFrame
from .meter import METER
from .packetizer import Packetizer

log = logging.getLogger(__name__)


class FrameReader(Protocol):
    """What reads a track: a viewer's `RtpSender`, the recorder's `FrameQueue`, the restream feed."""

    capacity: int  # (raised by the size of the fast-join burst)

    def put(self, frame: RelayFrame) -> None: ...
    def restart(self) -> None: ...


class Forwarder:
    """One track (audio or video) of a show.

    Each frame from the host is packetized once, stamped with a timestamp that stays
    continuous across host reconnects, kept in the newest-GOP cache (video), and put on every
    reader's queue (viewers, whatever room they are in, and the recorder). No I/O here.
    """

    def __init__(self, kind: str, gop_cache_max_frames: int, request_keyframe: Callable[[], None]) -> None:
        self.kind = kind
        self.codec: str | None = None
        self.frames_in = 0
        self.keyframes_in = 0
        self._request_keyframe = request_keyframe
        self._gop_max = gop_cache_max_frames
        self._gop: list[RelayFrame] = []
        self._readers: set[FrameReader] = set()
        self._packetizer: Packetizer | None = None
        self._clock_rate = 90000
        self._offset = 0
        self._last_out: int | None = None
        self._last_wall = 0.0
        self._new_source = True

    @property
    def reader_count(self) -> int:
        return len(self._readers)

    @property
    def gop_frames(self) -> int:
        return len(self._gop)

    def start_source(self, codec: str) -> None:
        """A host (re)started sending this track with `codec`."""
        self.codec = codec
        self._clock_rate = CLOCK_RATES.get(codec, 90000)
        self._packetizer = Packetizer.for_codec(codec)
        self._gop.clear()
        self._new_source = True
        for queue in self._readers:
            queue.restart()

    def push(self, data: bytes, timestamp: int) -> None:
        """A frame from the host: `data` as received, `timestamp` in the codec's RTP clock."""
        packetizer = self._packetizer
        if packetizer is None:
            return
        payloads, keyframe = packetizer.packetize(data)
        if not payloads:
            return
        now = time.monotonic()
        if self._new_source:
            if self._last_out is None:
                self._offset = -timestamp
            else:
                gap = max(1, int((now - self._last_wall) * self._clock_rate))
                self._offset = self._last_out + gap - timestamp
            self._new_source = False
        out_ts = (timestamp + self._offset) & 0xFFFFFFFF
        frame = RelayFrame(self.kind, self.codec or "", data, payloads, out_ts, keyframe, sum(map(len, payloads)))
        METER.frames_received[self.kind] += 1
        self._last_out = out_ts
        self._last_wall = now
        self.frames_in += 1

        if self.kind == "video":
            if keyframe:
                self.keyframes_in += 1
                self._gop = [frame]
            elif self._gop:
                if len(self._gop) < self._gop_max:
                    self._gop.append(frame)
                else:
                    self._gop = []  # too long a GOP to cache: new viewers wait for a keyframe
        failed = None
        for queue in self._readers:
            try:
                queue.put(frame)
            except Exception:  # a bug in one reader must not stop the others
                log.exception("a %s reader failed; it gets no more frames", self.kind)
                failed = (failed or []) + [queue]
        for queue in failed or ():
            self._readers.discard(queue)

    def add_reader(self, queue: FrameReader) -> None:
        """Attach a reader's queue; a video reader starts at the cached keyframe at once."""
        self._readers.add(queue)
        if self.kind != "video":
            return
        if self._gop:
            queue.capacity += len(self._gop)  # the catch-up burst is not a slow viewer
            for frame in self._gop:
                queue.put(frame)
        elif self._packetizer is not None:
            self._request_keyframe()

    def remove_reader(self, queue: FrameReader) -> None:
        self._readers.discard(queue)
