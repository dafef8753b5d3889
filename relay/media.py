"""Shared media types: what ingest hands to fan-out (and later to the recorder)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

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


class StreamSource(Protocol):
    """A show's incoming stream, whatever brings it: a host's WHIP session, an RTMP push, or this
    node's pull of the show from its origin. It hands each encoded frame to the show as
    `on_frame(source, kind, data, rtp_timestamp)` (H.264 as Annex-B, Opus packets) and calls
    `on_gone(source)` when it ends."""

    id: str
    show_id: str
    codecs: dict[str, str]  # kind -> codec ("video": "H264", "audio": "opus")
    started_at: float
    last_frame_at: float  # time.monotonic() of its latest frame
    frames: int
    key_hash: str  # of the stream key it published with ("" for a pull)
    closed: bool
    upstream: bool  # a pull from the origin node, not a host

    def request_keyframe(self) -> bool: ...
    def describe(self) -> dict: ...
    async def close(self) -> None: ...


FrameHandler = Callable[[StreamSource, str, bytes, int], None]
GoneHandler = Callable[[StreamSource], None]
