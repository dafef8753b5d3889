"""A WHIP publisher on aiortc (the demo's host): POST the offer, apply the answer, send."""

from __future__ import annotations

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender

from .signaling import connected, negotiate


class WhipPublisher:
    """Publishes `tracks` to a WHIP endpoint with a stream key, offering one video codec."""

    def __init__(self, url: str, stream_key: str, tracks: list[MediaStreamTrack], video_codec: str = "H264") -> None:
        self.url = url
        self.stream_key = stream_key
        self.tracks = tracks
        self.video_codec = video_codec  # what the pre-encoded video is: the only one offered
        self.pc: RTCPeerConnection | None = None
        self.location: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stream_key}"}

    async def start(self) -> None:
        """Offer the tracks and apply the answer (SignalingError if the server refuses)."""
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for track in self.tracks:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video":
                caps = RTCRtpSender.getCapabilities("video").codecs
                transceiver.setCodecPreferences(
                    [c for c in caps if c.name == self.video_codec] + [c for c in caps if c.name == "rtx"])
        self.location = await negotiate(self.pc, self.url, self.auth)

    async def connected(self, timeout: float = 10.0) -> None:
        """Wait until ICE and DTLS are done: from then on the host is on air."""
        assert self.pc is not None
        await connected(self.pc, timeout)

    async def drop(self) -> None:
        """Close the connection without telling the server (the show waits out its grace period)."""
        if self.pc is not None:
            await self.pc.close()
