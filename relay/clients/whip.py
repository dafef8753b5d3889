"""A WHIP publisher on aiortc: POST the offer, apply the answer, DELETE to stop."""

from __future__ import annotations

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender

from .signaling import SignalingError, connected, delete_session, negotiate

__all__ = ["SignalingError", "WhipClient"]


class WhipClient:
    def __init__(self, url: str, stream_key: str, tracks: list[MediaStreamTrack], video_codec: str = "H264") -> None:
        self.url = url
        self.stream_key = stream_key
        self.tracks = tracks
        self.video_codec = video_codec
        self.pc: RTCPeerConnection | None = None
        self.location: str | None = None

    async def start(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for track in self.tracks:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video":
                caps = RTCRtpSender.getCapabilities("video").codecs
                transceiver.setCodecPreferences(
                    [c for c in caps if c.name == self.video_codec] + [c for c in caps if c.name == "rtx"])
        self.location = await negotiate(self.pc, self.url, self._auth)

    async def connected(self, timeout: float = 10.0) -> None:
        """Wait until ICE and DTLS are done: from then on the host is on air."""
        assert self.pc is not None
        await connected(self.pc, timeout)

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stream_key}"}

    async def drop(self) -> None:
        """Vanish without telling the server (a host losing its network)."""
        if self.pc is not None:
            await self.pc.close()

    async def stop(self) -> None:
        """End the session with DELETE, as a host pressing stop does."""
        if self.location:
            await delete_session(self.location, self._auth)
        await self.drop()
