"""One run of a recording: an init segment and fMP4 media segments cut at keyframes."""

from __future__ import annotations

import fractions
import io
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av

from ..media import CLOCK_RATES, RelayFrame
from . import fmp4
from ..h264 import find_sps, sps_dimensions

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_TIME_BASE = fractions.Fraction(1, 48000)
# OpusHead (RFC 7845 section 5.1): version 1, 2 channels, 312 samples pre-skip, 48 kHz, 0 dB, family 0.
OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 312, 48000, 0, 0)


@dataclass
class ClosedSegment:
    name: str
    duration_s: float
    wall_start: float  # wall clock of its first frame


class _BoxSink(io.RawIOBase):
    """Receives the muxer's bytes and hands complete top-level boxes to `on_box`."""

    def __init__(self, on_box: Callable[[str, bytes], None]) -> None:
        self._buffer = bytearray()
        self._on_box = on_box

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._buffer += data
        for kind, box in fmp4.split_complete(self._buffer):
            self._on_box(kind, box)
        return len(data)


def _opus_template() -> av.stream.Stream:
    # PyAV can only give a mux stream Opus parameters (extradata, layout) through a codec
    # context; this one belongs to a container that is never started, so it is never opened.
    holder = av.open(io.BytesIO(), "w", format="mp4")
    return holder.add_stream("libopus", rate=48000)


def add_streams(container: av.container.OutputContainer, video_size: tuple[int, int] | None,
                audio: bool) -> dict[str, av.stream.Stream]:
    """Mux-only streams (no encoder) for H.264 of `video_size` and stereo Opus."""
    streams = {}
    if video_size is not None:
        stream = container.add_mux_stream("h264", width=video_size[0], height=video_size[1])
        stream.time_base = VIDEO_TIME_BASE
        streams["video"] = stream
    if audio:
        stream = container.add_stream_from_template(_opus_template(), opaque=True)
        ctx = stream.codec_context
        ctx.extradata = OPUS_HEAD
        ctx.sample_rate = 48000
        ctx.layout = "stereo"
        stream.time_base = AUDIO_TIME_BASE
        streams["audio"] = stream
    return streams


class SegmentWriter:
    """Remuxes a host's encoded H.264 and Opus frames, as received, into fragmented MP4.

    The muxer cuts a fragment at every video keyframe (audio-only: every `target_s`);
    fragments are grouped into segments of at least `target_s`. Each closed segment is
    written, synced and renamed into place before `on_segment` is called.
    Runs on the recorder's thread only.
    """

    def __init__(self, folder: Path, init_name: str, segment_names: Callable[[], str],
                 kinds: dict[str, str], target_s: float, on_segment: Callable[[ClosedSegment], None]) -> None:
        self.folder = folder
        self.init_name = init_name
        self.has_video = kinds.get("video") == "H264"
        self.has_audio = kinds.get("audio") == "opus"
        self._segment_names = segment_names
        self._target = target_s
        self._on_segment = on_segment
        self._init_parts: list[bytes] = []
        self._timescales: dict[int, int] = {}
        self._clock_track = 1
        self._file = None
        self._segment_name = ""
        self._segment_start = 0.0
        self._first_ts: dict[str, int] = {}
        self._offset: dict[str, float] = {}
        self._last_pts: dict[str, int] = {}
        self._end_s = 0.0
        self._wall_start: float | None = None
        self._container = None
        self._streams: dict[str, av.stream.Stream] = {}

    @property
    def started(self) -> bool:
        return self._wall_start is not None

    @property
    def wall_start(self) -> float | None:
        return self._wall_start

    def _open(self, size: tuple[int, int] | None) -> None:
        flags = "empty_moov+default_base_moof+skip_trailer"
        options = {"movflags": ("frag_keyframe+" if self.has_video else "") + flags}
        if not self.has_video:
            options["frag_duration"] = str(int(self._target * 1_000_000))
        self._container = av.open(_BoxSink(self._on_box), "w", format="mp4", options=options)
        self._streams = add_streams(self._container, size if self.has_video else None, self.has_audio)

    def write(self, frame: RelayFrame, wall: float) -> None:
        """Mux one frame. Nothing is written before the run's first video keyframe."""
        kind = frame.kind
        if kind not in self._streams and self._container is not None:
            return
        if self._wall_start is None:
            size = None
            if self.has_video:
                # Start at a keyframe that carries its SPS, which gives the picture size.
                sps = find_sps(frame.data) if kind == "video" and frame.keyframe else None
                if sps is None:
                    return
                try:
                    size = sps_dimensions(sps)
                except (ValueError, IndexError):
                    log.warning("unreadable H.264 SPS; waiting for the next keyframe")
                    return
            elif kind != "audio" or not self.has_audio:
                return
            self._wall_start = wall
            self._open(size)
        if kind not in self._streams:
            return
        if kind not in self._first_ts:
            self._first_ts[kind] = frame.timestamp
            self._offset[kind] = max(0.0, wall - self._wall_start)
        clock = CLOCK_RATES[frame.codec]
        seconds = ((frame.timestamp - self._first_ts[kind]) & 0xFFFFFFFF) / clock + self._offset[kind]
        time_base = VIDEO_TIME_BASE if kind == "video" else AUDIO_TIME_BASE
        pts = round(seconds / time_base)
        if kind in self._last_pts and pts <= self._last_pts[kind]:
            pts = self._last_pts[kind] + 1
        self._last_pts[kind] = pts
        packet = av.Packet(frame.data)
        packet.stream = self._streams[kind]
        packet.time_base = time_base
        packet.pts = packet.dts = pts
        packet.is_keyframe = frame.keyframe
        self._end_s = max(self._end_s, float(pts * time_base) + (1 / 30 if kind == "video" else 0.02))
        self._container.mux(packet)

    def _on_box(self, kind: str, box: bytes) -> None:
        if self._file is None and kind in ("ftyp", "moov"):
            self._init_parts.append(box)
            if kind == "moov":
                self._timescales = {t.track_id: t.timescale for t in fmp4.read_init(box).values()}
                self._write_file(self.folder / self.init_name, b"".join(self._init_parts))
            return
        if kind == "moof":
            times = fmp4.fragment_start_times(box)
            track = self._clock_track if self._clock_track in times else next(iter(times), None)
            start = times[track] / self._timescales.get(track, 90000) if track is not None else self._end_s
            if self._file is None:
                self._begin_segment(start)
            elif start - self._segment_start >= self._target - 0.01:
                self._close_segment(start)
                self._begin_segment(start)
        if self._file is not None:
            self._file.write(box)

    def _begin_segment(self, start: float) -> None:
        self._segment_name = self._segment_names()
        self._segment_start = start
        self._file = open(self.folder / (self._segment_name + ".part"), "wb")

    def _close_segment(self, end: float) -> None:
        file, self._file = self._file, None
        file.flush()
        os.fsync(file.fileno())
        file.close()
        os.replace(self.folder / (self._segment_name + ".part"), self.folder / self._segment_name)
        self._on_segment(ClosedSegment(self._segment_name, max(0.0, end - self._segment_start),
                                       (self._wall_start or 0.0) + self._segment_start))

    @staticmethod
    def _write_file(path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def close(self) -> float:
        """Flush the last fragment and close the last segment. Returns the run's duration."""
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = None
        if self._file is not None:
            self._close_segment(self._end_s)
        return self._end_s

    def abandon(self) -> None:
        """Stop without finishing the current segment (after a write error)."""
        try:
            if self._file is not None:
                self._file.close()
        finally:
            self._file = None
            self._container = None
