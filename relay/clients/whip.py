"""A WHIP publisher on aiortc: POST the offer, apply the answer, DELETE to stop."""

from __future__ import annotations

import aiohttp
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from urllib.parse import urljoin


class SignalingError(RuntimeError):
    """The server answered a WHIP/WHEP POST with something other than 201."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"POST answered {status}: {body}")
        self.status = status
        self.body = body


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
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url, data=self.pc.localDescription.sdp, headers={
                "Content-Type": "application/sdp", "Authorization": f"Bearer {self.stream_key}",
            }) as res:
                body = await res.text()
                if res.status != 201:
                    await self.pc.close()
                    raise SignalingError(res.status, body)
                self.location = urljoin(self.url, res.headers["Location"])
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))

    async def drop(self) -> None:
        """Vanish without telling the server (a host losing its network)."""
        if self.pc is not None:
            await self.pc.close()

    async def stop(self) -> None:
        """End the session with DELETE, as a host pressing stop does."""
        if self.location:
            async with aiohttp.ClientSession() as http:
                async with http.delete(self.location, headers={"Authorization": f"Bearer {self.stream_key}"}):
                    pass
        await self.drop()
