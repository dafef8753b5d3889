"""The MP4 download: the replay's segments remuxed (never decoded) into one faststart MP4."""

from __future__ import annotations

import os
from pathlib import Path

import av

from . import fmp4
from ..h264 import sps_dimensions
from .playlist import Playlist
from .segment_writer import add_streams


def runs(folder: Path, playlist: Playlist) -> list[tuple[Path, list[Path]]]:
    """Each run's init segment and its media segments, in order."""
    out: list[tuple[Path, list[Path]]] = []
    for segment in playlist.segments:
        if not out or segment.init != out[-1][0].name or segment.discontinuity:
            out.append((folder / segment.init, []))
        out[-1][1].append(folder / segment.uri)
    return out


def remux_to_mp4(folder: Path, playlist: Playlist, target: Path) -> None:
    """Write `target` with its index up front (+faststart); runs follow each other without gaps.

    Samples are read back from the fMP4 segments and muxed again, as the recorder muxed
    them: no demuxer probing, so no decoder is ever opened.
    """
    parts = runs(folder, playlist)
    if not parts:
        raise ValueError("the replay has no segments")
    first_tracks = fmp4.read_init(parts[0][0].read_bytes())
    video = next((t for t in first_tracks.values() if t.kind == "video" and t.avcc), None)
    size = sps_dimensions(fmp4.avcc_parameter_sets(video.avcc)[0]) if video else None
    has_audio = any(t.kind == "audio" for t in first_tracks.values())

    tmp = target.with_name(target.name + ".part")
    output = av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"})
    streams = add_streams(output, size, has_audio)
    offset = 0.0  # where the current run starts in the MP4, seconds
    last_pts: dict[str, int] = {}
    try:
        for init, segments in parts:
            tracks = fmp4.read_init(init.read_bytes())
            run_end = offset
            for path in segments:
                samples = list(fmp4.read_fragments(path.read_bytes()))
                samples.sort(key=lambda s: s.decode_time / tracks[s.track_id].timescale)
                for sample in samples:
                    track = tracks.get(sample.track_id)
                    if track is None or track.kind not in streams:
                        continue
                    stream = streams[track.kind]
                    data = sample.data
                    if track.kind == "video":
                        data = fmp4.avcc_to_annexb(data, track.avcc)
                        if sample.keyframe:
                            sets = fmp4.avcc_parameter_sets(track.avcc)
                            data = b"".join(b"\x00\x00\x00\x01" + n for n in sets) + data
                    start = offset + sample.decode_time / track.timescale
                    pts = round(start / stream.time_base)
                    pts = max(pts, last_pts.get(track.kind, -1) + 1)
                    last_pts[track.kind] = pts
                    packet = av.Packet(data)
                    packet.stream = stream
                    packet.time_base = stream.time_base
                    packet.pts = packet.dts = pts
                    packet.duration = round(sample.duration / track.timescale / stream.time_base)
                    packet.is_keyframe = sample.keyframe
                    output.mux(packet)
                    run_end = max(run_end, start + sample.duration / track.timescale)
            offset = run_end
    finally:
        output.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
