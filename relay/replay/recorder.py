"""Records one show while it is live, off the forwarding path."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

from ..metrics import RECORDED_SEGMENTS, RECORDING_ERRORS
from ..media import RelayFrame
from .playlist import Playlist, Segment
from .segment_writer import ClosedSegment, SegmentWriter
from .timeline import Timeline

log = logging.getLogger(__name__)

PLAYLIST = "index.m3u8"
RETRY_S = 10


class Recorder:
    """Turns a show's frames into an HLS fMP4 replay that grows segment by segment.

    `offer()` is called from the forwarding path for every frame and only appends to a
    bounded queue; a writer thread does all muxing and disk I/O. If the disk falls behind,
    frames are dropped (video up to the next keyframe) with a logged error, and viewers are
    unaffected. Each host session is a run; runs after the first start with a discontinuity.
    With `resume`, the playlist recorded before a server restart, it continues that replay.
    """

    def __init__(self, show_id: str, folder: Path, target_s: float, max_queued_frames: int = 900,
                 resume: Playlist | None = None) -> None:
        self.show_id = show_id
        self.folder = folder
        self.target_s = target_s
        self.timeline = Timeline()
        self.playlist = resume or Playlist()
        self.playlist.ended = False
        self.dropped = 0
        self.error: str | None = None
        self._max = max_queued_frames
        self._queue: deque = deque()
        self._queued_frames = 0
        self._cond = threading.Condition()
        self._skip_video = False
        self._finished: Future[Playlist] = Future()
        self._writer: SegmentWriter | None = None
        self._runs = 0
        self._segments = 0
        if resume is not None and resume.segments:  # number on from what is on disk
            self._runs = 1 + max(int(s.init.removeprefix("init-").removesuffix(".mp4")) for s in resume.segments)
            self._segments = 1 + max(int(s.uri.removeprefix("seg-").removesuffix(".m4s")) for s in resume.segments)
            self.timeline.resume(resume.segments[0].program_date_time, resume.duration)
        self._codecs: dict[str, str] | None = None  # of the current host session
        self._retry_at = 0.0
        folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=f"recorder-{show_id}", daemon=True)
        self._thread.start()

    # -- called on the event loop ----------------------------------------------------------
    def offer(self, frame: RelayFrame) -> None:
        if self._skip_video and frame.kind == "video":
            if not frame.keyframe:
                self.dropped += 1
                return
            self._skip_video = False
        with self._cond:
            if self._queued_frames >= self._max:
                self.dropped += 1
                if frame.kind == "video":
                    self._skip_video = True
                if self.dropped == 1 or self.dropped % 500 == 0:
                    log.error("show %s: recording falls behind (disk too slow?); %d frames dropped",
                              self.show_id, self.dropped)
                return
            self._queue.append(("frame", frame, time.time()))
            self._queued_frames += 1
            self._cond.notify()

    def new_run(self, codecs: dict[str, str]) -> None:
        """A host session started: the next frames begin a new run."""
        self._control(("run", dict(codecs), None))

    def finish(self) -> Future:
        """Close the last segment and mark the playlist ended; the future gives the Playlist."""
        self._control(("end", None, None))
        return self._finished

    def stream_time(self, wall: float) -> float:
        return self.timeline.stream_time(wall)

    def _control(self, item: tuple) -> None:
        with self._cond:
            self._queue.append(item)
            self._cond.notify()

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue:
                        self._cond.wait()
                    kind, payload, wall = self._queue.popleft()
                    if kind == "frame":
                        self._queued_frames -= 1
                if kind == "frame":
                    self._write(payload, wall)
                elif kind == "run":
                    self._close_run()
                    self._retry_at = 0.0
                    self._start_run(payload)
                else:
                    self._close_run()
                    self.playlist.ended = True
                    self._save_playlist()
                    self._finished.set_result(self.playlist)
                    return
        except BaseException as exc:  # the future must complete whatever happens
            log.exception("show %s: recorder thread failed", self.show_id)
            if not self._finished.done():
                self._finished.set_exception(exc)

    def _start_run(self, codecs: dict[str, str]) -> None:
        self._codecs = codecs
        if codecs.get("video") not in (None, "H264"):
            log.warning("show %s: %s video is not recorded (fMP4 HLS carries H.264)", self.show_id, codecs["video"])
        init = f"init-{self._runs}.mp4"
        self._runs += 1
        discontinuity = bool(self.playlist.segments)
        self._writer = SegmentWriter(self.folder, init, self._next_segment_name, codecs, self.target_s,
                                     lambda seg: self._segment_closed(seg, init, discontinuity))

    def _next_segment_name(self) -> str:
        name = f"seg-{self._segments:05d}.m4s"
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
            self.playlist.write(self.folder / PLAYLIST)
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
