"""Just enough ISO-BMFF reading to cut a fragmented-MP4 byte stream into HLS segments."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator


def boxes(data: bytes | memoryview, start: int = 0, end: int | None = None) -> Iterator[tuple[str, int, int]]:
    """(type, payload start, box end) of each complete box in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind.decode("latin-1"), pos + header, pos + size
        pos += size


def split_complete(buffer: bytearray) -> list[tuple[str, bytes]]:
    """Remove and return the complete top-level boxes at the start of `buffer`."""
    out = []
    consumed = 0
    for kind, _, end in boxes(buffer):
        out.append((kind, bytes(buffer[consumed:end])))
        consumed = end
    del buffer[:consumed]
    return out


def fragment_start_times(moof: bytes) -> dict[int, int]:
    """track_ID -> baseMediaDecodeTime of each track fragment in a moof box (with its header)."""
    times = {}
    for kind, start, end in boxes(moof, 8):
        if kind != "traf":
            continue
        track_id = decode_time = None
        for k, s, _ in boxes(moof, start, end):
            if k == "tfhd":
                track_id = struct.unpack_from(">I", moof, s + 4)[0]
            elif k == "tfdt":
                version = moof[s]
                decode_time = struct.unpack_from(">Q" if version == 1 else ">I", moof, s + 4)[0]
        if track_id is not None and decode_time is not None:
            times[track_id] = decode_time
    return times


# -- reading samples back (for the MP4 download) -----------------------------------------

SAMPLE_NON_SYNC = 0x00010000


@dataclass
class Track:
    track_id: int
    kind: str  # "video" or "audio"
    timescale: int
    avcc: bytes | None = None  # AVCDecoderConfigurationRecord of an H.264 track


@dataclass
class Sample:
    track_id: int
    decode_time: int  # in the track's timescale
    duration: int
    keyframe: bool
    data: bytes


def _children(data: bytes, start: int, end: int) -> dict[str, tuple[int, int]]:
    return {kind: (s, e) for kind, s, e in boxes(data, start, end)}


def read_init(data: bytes) -> dict[int, Track]:
    """Tracks of an init segment (ftyp + moov)."""
    tracks = {}
    for kind, start, end in boxes(data):
        if kind != "moov":
            continue
        for k, s, e in boxes(data, start, end):
            if k != "trak":
                continue
            trak = _children(data, s, e)
            ts, _ = trak["tkhd"]
            version = data[ts]
            track_id = struct.unpack_from(">I", data, ts + (20 if version == 1 else 12))[0]
            mdia = _children(data, *trak["mdia"])
            ms, _ = mdia["mdhd"]
            version = data[ms]
            timescale = struct.unpack_from(">I", data, ms + (20 if version == 1 else 12))[0]
            handler = data[mdia["hdlr"][0] + 8:mdia["hdlr"][0] + 12].decode("latin-1")
            stbl = _children(data, *_children(data, *mdia["minf"])["stbl"])
            stsd_start, stsd_end = stbl["stsd"]
            avcc = None
            for entry, es, ee in boxes(data, stsd_start + 8, stsd_end):
                if entry == "avc1":
                    # VisualSampleEntry: 78 bytes of fields before its child boxes.
                    found = _children(data, es + 78, ee).get("avcC")
                    if found:
                        avcc = data[found[0]:found[1]]
            tracks[track_id] = Track(track_id, "video" if handler == "vide" else "audio", timescale, avcc)
    return tracks


def _optional(data: bytes, pos: int, present: int, default: int | None = None, fmt: str = ">I") -> tuple:
    """A field that is there when `present`: (its value, else `default`; the position after it)."""
    if not present:
        return default, pos
    return struct.unpack_from(fmt, data, pos)[0], pos + struct.calcsize(fmt)


def read_fragments(data: bytes) -> Iterator[Sample]:
    """Samples of every moof/mdat pair in a media segment (written with default-base-is-moof)."""
    for kind, start, end in boxes(data):
        if kind != "moof":
            continue
        moof_start = start - 8
        for k, s, e in boxes(data, start, end):
            if k != "traf":
                continue
            traf = _children(data, s, e)
            hs, _ = traf["tfhd"]
            flags = int.from_bytes(data[hs + 1:hs + 4], "big")
            track_id = struct.unpack_from(">I", data, hs + 4)[0]
            pos = hs + 8
            base, pos = _optional(data, pos, flags & 0x01, moof_start, ">Q")
            _, pos = _optional(data, pos, flags & 0x02)  # sample description index
            default_duration, pos = _optional(data, pos, flags & 0x08, 0)
            default_size, pos = _optional(data, pos, flags & 0x10, 0)
            default_flags, pos = _optional(data, pos, flags & 0x20, 0)
            decode_time = 0
            if "tfdt" in traf:
                ds, _ = traf["tfdt"]
                decode_time = struct.unpack_from(">Q" if data[ds] == 1 else ">I", data, ds + 4)[0]
            for tk, rs, _ in boxes(data, s, e):
                if tk != "trun":
                    continue
                tflags = int.from_bytes(data[rs + 1:rs + 4], "big")
                count = struct.unpack_from(">I", data, rs + 4)[0]
                offset, pos = _optional(data, rs + 8, tflags & 0x001, 0, ">i")
                first_flags, pos = _optional(data, pos, tflags & 0x004)
                cursor = base + offset
                for i in range(count):
                    duration, pos = _optional(data, pos, tflags & 0x100, default_duration)
                    size, pos = _optional(data, pos, tflags & 0x200, default_size)
                    sample_flags, pos = _optional(data, pos, tflags & 0x400, default_flags)
                    _, pos = _optional(data, pos, tflags & 0x800)  # composition time offset
                    if i == 0 and first_flags is not None:
                        sample_flags = first_flags
                    yield Sample(track_id, decode_time, duration, not sample_flags & SAMPLE_NON_SYNC,
                                 data[cursor:cursor + size])
                    cursor += size
                    decode_time += duration


def avcc_to_annexb(sample: bytes, avcc: bytes) -> bytes:
    """A length-prefixed H.264 sample as Annex-B."""
    length_size = (avcc[4] & 0x03) + 1
    out = bytearray()
    pos = 0
    while pos + length_size <= len(sample):
        n = int.from_bytes(sample[pos:pos + length_size], "big")
        pos += length_size
        out += b"\x00\x00\x00\x01" + sample[pos:pos + n]
        pos += n
    return bytes(out)


def avcc_parameter_sets(avcc: bytes) -> list[bytes]:
    """SPS and PPS NAL units of an AVCDecoderConfigurationRecord."""
    sets = []
    pos = 5
    for _ in range(2):
        count = avcc[pos] & (0x1F if not sets else 0xFF)
        pos += 1
        for _ in range(count):
            n = int.from_bytes(avcc[pos:pos + 2], "big")
            sets.append(avcc[pos + 2:pos + 2 + n])
            pos += 2 + n
    return sets
