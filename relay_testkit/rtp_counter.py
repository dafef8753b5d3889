"""A WHEP viewer for load tests: real ICE and DTLS (aiortc), then RTP counted at the socket,
undecrypted and unassembled, so that one core of load holds hundreds of viewers.

It counts per track the packets and bytes, video frames (packets with the marker bit), packets
lost (gaps in the sequence numbers) and, for video, how far each frame arrives after its RTP
time: if that grows over a window the viewer falls behind. RTX and RTCP are ignored.
"""

from __future__ import annotations

import re
import time

from relay import aiortc_hooks

from .whep import TrackCounter, WhepClient

_MEDIA = re.compile(r"^m=(audio|video) \d+ \S+ (\d+)", re.M)
CLOCK = {"audio": 48000, "video": 90000}


class RtpTrackCounter(TrackCounter):
    """A TrackCounter of RTP packets: `frames` counts marker bits (video frames)."""

    def __init__(self) -> None:
        super().__init__()
        self.packets = 0
        self.highest: int | None = None  # extended sequence number
        self.first_seq: int | None = None
        self.delays: list[float] | None = None  # video: arrival - RTP time of each frame, while kept
        self.arrivals: list[tuple[int, float]] | None = None  # video: (RTP timestamp, arrival), while kept

    def rtp(self, data: bytes, clock: int) -> None:
        self.packets += 1
        self.bytes += len(data)
        seq = (data[2] << 8) | data[3]
        if self.highest is None:
            self.highest = self.first_seq = seq
        else:
            delta = (seq - self.highest) & 0xFFFF
            if delta < 0x8000:
                self.highest += delta
        if data[1] & 0x80:
            self.count(0)  # (frames, first_at, got_frame)
            if self.delays is not None:
                timestamp, now = int.from_bytes(data[4:8], "big"), time.monotonic()
                self.delays.append(now - timestamp / clock)
                if self.arrivals is not None:
                    self.arrivals.append((timestamp, now))

    @property
    def lost(self) -> int:
        if self.highest is None:
            return 0
        return max(0, self.highest - self.first_seq + 1 - self.packets)


class RtpCountingClient(WhepClient):
    """WhepClient whose tracks count RTP at the socket (see the module)."""

    def __init__(self, url: str, kinds: tuple[str, ...] = ("audio", "video")) -> None:
        super().__init__(url, kinds, decode=False)
        self.tracks = {kind: RtpTrackCounter() for kind in kinds}
        self._by_pt: dict[int, tuple[RtpTrackCounter, int]] = {}

    async def start(self) -> None:
        await super().start()  # (the answer is applied; no datagram has arrived yet)
        self.count_rtp(self.pc.remoteDescription.sdp)

    def count_rtp(self, server_sdp: str) -> None:
        """Count from now on the RTP of the media the server's SDP describes (call before the
        connection is up)."""
        for kind, pt in _MEDIA.findall(server_sdp):
            if kind in self.tracks:
                self._by_pt[int(pt)] = (self.tracks[kind], CLOCK[kind])
        aiortc_hooks.intercept_datagrams(self.pc, self._take)

    def _take(self, data: bytes) -> bool:
        if len(data) < 12 or not 128 <= data[0] < 192 or 192 <= data[1] <= 223:
            return False  # STUN, DTLS or RTCP: aiortc's
        entry = self._by_pt.get(data[1] & 0x7F)
        if entry is not None:
            entry[0].rtp(data, entry[1])
        return True  # RTP (RTX included) goes no further
