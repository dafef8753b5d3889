"""Shared media types: what ingest hands to fan-out (and later to the recorder)."""

from __future__ import annotations

from dataclasses import dataclass

VIDEO_CODECS = ("H264", "VP8")
AUDIO_CODECS = ("opus",)
CLOCK_RATES = {"H264": 90000, "VP8": 90000, "opus": 48000}


@dataclass(frozen=True, slots=True)
class RelayFrame:
    """One encoded frame, packetized once and shared by every viewer of a show.

    `payloads` are the RTP payloads, `timestamp` is in the codec's RTP clock and continuous
    across host reconnects; `data` is the frame as received (Annex-B for H.264), for recording.
    """

    kind: str
    codec: str
    data: bytes
    payloads: list[bytes]
    timestamp: int
    keyframe: bool
    size: int = 0  # bytes of all payloads, counted once per frame for the metrics
    audio_level: None = None
