"""Records one show while it is live, off the forwarding path."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
import logging
import re
import time
from pathlib import Path

from ..fanout.frame_queue import FrameQueue, QueueClosed
from ..metrics import RECORDED_SEGMENTS, RECORDING_ERRORS
from ..media import RelayFrame
from .playlist import Playlist, Segment
from .segment_writer import ClosedSegment, SegmentWriter
from .timeline import Timeline

log = logging.getLogger(__name__)

PLAYLIST = "index.m3u8"
_NUMBER = re.compile(r"(\d+)\.(?:mp4|m4s)$")


def part_playlist(tag: str | None) -> str:
    """The playlist a recorder writes: the replay's, or in a cluster that of one node's part."""
    return PLAYLIST if tag is None else f"part-{tag}.m3u8"


def _number(name: str) -> int:
    return int(_NUMBER.search(name).group(1))
RETRY_S = 10
HANDOFF_S = 0.05  # frames go to the writer thread this often (their wall clock is that of the hand-off)


class Recorder:
    """Turns a show's frames into an HLS fMP4 replay that grows segment by segment.

    A reader of the live show like any viewer: `queue` (both tracks, in arrival order) is
    attached to the show's forwarders, and a writer thread does all muxing and disk I/O. If the
    disk falls behind, the queue drops frames (video up to the next keyframe) with a logged
    error, and viewers are unaffected. Each host session is a run; runs after the first start
    with a discontinuity. With `resume`, the playlist recorded before a server restart, it
    continues that replay. In a cluster, `tag` names one node's part of the replay: its files
    are `part-<tag>.m3u8`, `init-<tag>-N.mp4` and `seg-<tag>-N.m4s`. Made on the event loop.
    """

    def __init__(self, show_id: str, folder: Path, target_s: float, max_queued_frames: int = 900,
                 resume: Playlist | None = None, tag: str | None = None) -> None:
        self.show_id = show_id
        self.folder = folder
        self.tag = tag
        self.playlist_name = part_playlist(tag)
        self._prefix = "" if tag is None else f"{tag}-"
        self.target_s = target_s
        self.timeline = Timeline()
        self.playlist = resume or Playlist()
        self.playlist.ended = False
        self.error: str | None = None
        self.queue = FrameQueue(max_queued_frames, video=True)
        self.queue.on_drop = self._falling_behind
        self._writer: SegmentWriter | None = None
        self._runs = 0
        self._segments = 0
        if resume is not None and resume.segments:  # number on from what is on disk
            self._runs = 1 + max(_number(s.init) for s in resume.segments)
            self._segments = 1 + max(_number(s.uri) for s in resume.segments)
            self.timeline.resume(resume.segments[0].program_date_time, resume.duration)
        self._codecs: dict[str, str] | None = None  # of the current host session
        self._retry_at = 0.0
        folder.mkdir(parents=True, exist_ok=True)
        # One thread: runs, frames and the end are written in the order they were given.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"recorder-{show_id}")
        self._pump = asyncio.ensure_future(self._write_frames())

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    # -- called on the event loop ----------------------------------------------------------
    def new_run(self, codecs: dict[str, str]) -> None:
        """A host session started: the next frames begin a new run."""
        self._thread.submit(self._new_run, dict(codecs))

    async def finish(self) -> Playlist:
        """Write the frames still queued, close the last segment and mark the playlist ended."""
        self.queue.finish()
        try:
            await self._pump
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._end)
        finally:
            self._thread.shutdown(wait=False)

    def stream_time(self, wall: float) -> float:
        return self.timeline.stream_time(wall)

    async def _write_frames(self) -> None:
        """Hand the queued frames to the writer thread in batches (one thread hop per batch, not
        per frame: recording is not in a hurry, the event loop is)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                frames = [await self.queue.get()]
            except QueueClosed:
                return
            await asyncio.sleep(HANDOFF_S)
            while len(self.queue):
                frames.append(await self.queue.get())
            try:
                await loop.run_in_executor(self._thread, self._write_all, frames, time.time())
            except Exception:  # the next frames are tried all the same
                log.exception("show %s: recording frames failed", self.show_id)

    def _falling_behind(self) -> None:
        log.error("show %s: recording falls behind (disk too slow?); %d frames dropped so far",
                  self.show_id, self.dropped)

    # -- the writer thread -----------------------------------------------------------------
    def _write_all(self, frames: list[RelayFrame], wall: float) -> None:
        for frame in frames:
            self._write(frame, wall)

    def _new_run(self, codecs: dict[str, str]) -> None:
        self._close_run()
        self._retry_at = 0.0
        self._start_run(codecs)

    def _end(self) -> Playlist:
        self._close_run()
        self.playlist.ended = True
        self._save_playlist()
        return self.playlist

    def _start_run(self, codecs: dict[str, str]) -> None:
        self._codecs = codecs
        if codecs.get("video") not in (None, "H264"):
            log.warning("show %s: %s video is not recorded (fMP4 HLS carries H.264)", self.show_id, codecs["video"])
        init = f"init-{self._prefix}{self._runs}.mp4"
        self._runs += 1
        discontinuity = bool(self.playlist.segments)
        self._writer = SegmentWriter(self.folder, init, self._next_segment_name, codecs, self.target_s,
                                     lambda seg: self._segment_closed(seg, init, discontinuity))

    def _next_segment_name(self) -> str:
        name = f"seg-{self._prefix}{self._segments:05d}.m4s"
        self._segments += 1
        return name

    def _write(self, frame: RelayFrame, wall: float) -> None:
        writer = self._writer
        if writer is None:
            # After a write error, try again (as a new run) at most every RETRY_S seconds.
            if self._codecs is None or time.monotonic() < self._retry_at:
                return
            self._start_run(self._codecs)
            writer = self._writer
        started = writer.started
        try:
            writer.write(frame, wall)
        except Exception as exc:
            self._fail(f"writing {frame.kind} failed: {exc}")
            return
        if not started and writer.started:
            self.timeline.begin_run(writer.wall_start)

    def _segment_closed(self, seg: ClosedSegment, init: str, discontinuity_run: bool) -> None:
        first_of_run = discontinuity_run and not any(s.init == init for s in self.playlist.segments)
        self.playlist.segments.append(Segment(
            uri=seg.name, duration=seg.duration_s, program_date_time=seg.wall_start,
            init=init, discontinuity=first_of_run,
        ))
        RECORDED_SEGMENTS.inc()
        self._save_playlist()

    def _close_run(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            duration = writer.close()
        except Exception as exc:
            self._writer = writer
            self._fail(f"closing a segment failed: {exc}")
            return
        if writer.started:
            self.timeline.end_run(duration)

    def _save_playlist(self) -> None:
        try:
            self.playlist.write(self.folder / self.playlist_name)
        except OSError as exc:
            self._fail(f"writing the playlist failed: {exc}")

    def _fail(self, reason: str) -> None:
        """A disk or mux error: log it, drop this run's current segment, keep the show going."""
        log.error("show %s: recording error: %s (retrying in %ds)", self.show_id, reason, RETRY_S)
        self.error = reason
        RECORDING_ERRORS.inc()
        self._retry_at = time.monotonic() + RETRY_S
        if self._writer is not None:
            self._writer.abandon()
            self._writer = None
