"""Turn an encoded frame into RTP payloads once, and tell keyframes apart."""

from __future__ import annotations

import struct

from ..aiortc_hooks import packetize_vp8, split_h264
from ..h264 import NAL_IDR, NAL_PPS, NAL_SPS, nal_type

MAX_PAYLOAD = 1200  # bytes of RTP payload: packets stay under the MTU of tunnels and PPPoE links
_STAP_A, _FU_A = 24, 28


def packetize_h264(nal_units: list[bytes], max_size: int = MAX_PAYLOAD) -> list[bytes]:
    """RTP payloads for one access unit (RFC 6184, non-interleaved mode): small NAL units
    aggregated in STAP-A packets, large ones in FU-A fragments that are all `max_size` but the
    last (so a frame's packets can go out in one segmented send)."""
    payloads: list[bytes] = []
    group: list[bytes] = []  # small NAL units waiting to be aggregated
    group_size = 1

    def flush() -> None:
        nonlocal group_size
        if len(group) == 1:
            payloads.append(group[0])
        elif group:
            header = max(n[0] & 0x80 for n in group) | max(n[0] & 0x60 for n in group) | _STAP_A
            payloads.append(bytes([header]) + b"".join(struct.pack("!H", len(n)) + n for n in group))
        group.clear()
        group_size = 1

    for nal in nal_units:
        if not nal:
            continue
        if len(nal) > max_size:
            flush()
            indicator = (nal[0] & 0xE0) | _FU_A
            kind = nal[0] & 0x1F
            chunk = max_size - 2
            body = memoryview(nal)[1:]
            for offset in range(0, len(body), chunk):
                edge = 0x80 if offset == 0 else 0x40 if offset + chunk >= len(body) else 0
                payloads.append(bytes([indicator, edge | kind]) + body[offset:offset + chunk])
            continue
        if group_size + 2 + len(nal) > max_size:
            flush()
        group.append(nal)
        group_size += 2 + len(nal)
    flush()
    return payloads


class Packetizer:
    """Per-track packetizer. `packetize(data)` -> (payloads, keyframe)."""

    def packetize(self, data: bytes) -> tuple[list[bytes], bool]:
        raise NotImplementedError

    @staticmethod
    def for_codec(codec: str) -> "Packetizer":
        if codec == "H264":
            return H264Packetizer()
        if codec == "VP8":
            return Vp8Packetizer()
        return PassthroughPacketizer()


class H264Packetizer(Packetizer):
    """H.264 (RFC 6184). Remembers the last SPS/PPS and puts them before an IDR that lacks
    them, so a viewer starting at any cached keyframe can decode it."""

    def __init__(self) -> None:
        self._sps: bytes | None = None
        self._pps: bytes | None = None

    def packetize(self, data: bytes) -> tuple[list[bytes], bool]:
        nals = split_h264(data)
        keyframe = has_sps = has_pps = False
        for nal in nals:
            if not nal:
                continue
            kind = nal_type(nal)
            if kind == NAL_IDR:
                keyframe = True
            elif kind == NAL_SPS:
                has_sps = True
                self._sps = nal
            elif kind == NAL_PPS:
                has_pps = True
                self._pps = nal
        if keyframe and not (has_sps and has_pps) and self._sps and self._pps:
            nals = [self._sps, self._pps] + [n for n in nals if n and nal_type(n) not in (NAL_SPS, NAL_PPS)]
        return packetize_h264(nals), keyframe


class Vp8Packetizer(Packetizer):
    """VP8 (RFC 7741), with its own picture id sequence."""

    def __init__(self) -> None:
        self._picture_id = 0

    def packetize(self, data: bytes) -> tuple[list[bytes], bool]:
        payloads = packetize_vp8(data, self._picture_id)
        self._picture_id = (self._picture_id + 1) % (1 << 15)
        # VP8 frame tag: bit 0 of the first byte is 0 on a keyframe.
        return payloads, bool(data) and not (data[0] & 0x01)


class PassthroughPacketizer(Packetizer):
    """Opus and other audio: one frame, one payload; every frame decodes on its own."""

    def packetize(self, data: bytes) -> tuple[list[bytes], bool]:
        return [data], True
