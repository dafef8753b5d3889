"""One show's media for its restream targets: a reader of the live show, fanning frames out."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
import logging
import time

from ..fanout.frame_queue import FrameQueue
from ..media import RelayFrame
from .aac import OpusToAac

log = logging.getLogger(__name__)

TICKS_PER_MS = {"video": 90.0, "audio": 48.0}  # RTP clocks of H.264 and Opus
MAX_WAITING_OPUS = 250  # 5 s of Opus waiting for the encoder thread: beyond, it is behind; drop
HANDOFF_S = 0.04  # Opus goes to the encoder thread this often (one thread hop per batch)


class ShowFeed:
    """Reads both tracks of a live show (attached with `LiveShow.add_reader`) for every target
    of the show.

    Each frame is stamped in milliseconds of the restream clock: a track's first frame (of each
    host session) at the wall clock time it arrived, the next ones by their RTP timestamps. H.264
    access units go as they are to each target's queue; Opus goes, in batches, to the show's one
    `OpusToAac` on a thread of its own, and the AAC frames out of it to each target's queue. A
    target's queue is its own (`FrameQueue`: bounded, dropping to the next keyframe), so a slow
    target never slows the show or the others. Made and used on the event loop.
    """

    capacity = 0  # (a forwarder raises a reader's capacity by its fast-join burst; targets have theirs)

    def __init__(self, show_id: str, aac_bitrate: int) -> None:
        self.show_id = show_id
        self.targets: list[FrameQueue] = []
        self._epoch = time.monotonic()
        self._anchors: dict[str, tuple[int, float]] = {}  # kind -> (RTP timestamp, its ms)
        self._aac_bitrate = aac_bitrate
        self._aac: OpusToAac | None = None  # (made when the first target goes live)
        self._opus: list[tuple[bytes, float]] = []
        self._opus_waiting = asyncio.Event()
        self._opus_dropped = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"aac-{show_id}")
        self._pump = asyncio.ensure_future(self._encode_audio())

    @property
    def audio_config(self) -> bytes:
        """The AAC AudioSpecificConfig every target sends before its first audio frame."""
        return self._encoder().config

    @property
    def audio_bitrate(self) -> int:
        return self._aac_bitrate

    def _encoder(self) -> OpusToAac:
        if self._aac is None:
            self._aac = OpusToAac(self._aac_bitrate)
        return self._aac

    def add(self, queue: FrameQueue) -> None:
        """A target's queue (the target is live): it gets every frame from now on."""
        self._encoder()  # (on the loop, before any Opus goes to the thread)
        self.targets.append(queue)

    def remove(self, queue: FrameQueue) -> None:
        if queue in self.targets:
            self.targets.remove(queue)

    # -- a reader of the show (FrameReader) ------------------------------------------------
    def put(self, frame: RelayFrame) -> None:
        if not self.targets:
            return
        ms = self._stamp(frame)
        if frame.kind == "video":
            if frame.codec == "H264":
                stamped = RelayFrame("video", "H264", frame.data, [], round(ms), frame.keyframe)
                for queue in self.targets:
                    queue.put(stamped)
        elif frame.codec == "opus":
            if len(self._opus) >= MAX_WAITING_OPUS:
                self._opus.clear()  # the encoder thread is far behind: start again from now
                self._opus_dropped += MAX_WAITING_OPUS
                log.warning("show %s: restream audio encoding falls behind; %d Opus packets dropped so far",
                            self.show_id, self._opus_dropped)
            self._opus.append((frame.data, ms))
            self._opus_waiting.set()

    def restart(self) -> None:
        """A new host session: its tracks start new clocks, targets wait for its keyframe."""
        self._anchors.clear()
        for queue in self.targets:
            queue.restart()

    def _stamp(self, frame: RelayFrame) -> float:
        kind = frame.kind
        anchor = self._anchors.get(kind)
        if anchor is None:
            anchor = self._anchors[kind] = (frame.timestamp, (time.monotonic() - self._epoch) * 1000)
        ticks = (frame.timestamp - anchor[0]) & 0xFFFFFFFF
        if ticks >= 0x80000000:  # before the anchor (reordered, or a clock that jumped): now
            anchor = self._anchors[kind] = (frame.timestamp, (time.monotonic() - self._epoch) * 1000)
            ticks = 0
        ms = anchor[1] + ticks / TICKS_PER_MS[kind]
        if ticks >= 0x40000000:  # move the anchor on long before the 32-bit clock wraps
            self._anchors[kind] = (frame.timestamp, ms)
        return ms

    # -- audio -----------------------------------------------------------------------------
    async def _encode_audio(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._opus_waiting.wait()
            await asyncio.sleep(HANDOFF_S)
            self._opus_waiting.clear()
            batch, self._opus = self._opus, []
            try:
                frames = await loop.run_in_executor(self._thread, self._convert, batch)
            except Exception:  # the next packets are tried all the same
                log.exception("show %s: encoding restream audio failed", self.show_id)
                continue
            for data, ms in frames:
                frame = RelayFrame("audio", "aac", data, [], round(ms), True)
                for queue in self.targets:
                    queue.put(frame)

    def _convert(self, batch: list[tuple[bytes, float]]) -> list[tuple[bytes, float]]:
        """(On the encoder thread.)"""
        out = []
        for opus, ms in batch:
            out += self._encoder().convert(opus, ms)
        return out

    async def close(self) -> None:
        self.targets.clear()
        self._pump.cancel()
        try:
            await self._pump
        except asyncio.CancelledError:
            pass
        self._thread.shutdown(wait=False)
