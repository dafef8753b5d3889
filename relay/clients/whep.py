"""A WHEP viewer on aiortc, counting what it receives.

`decode=True` decodes like a player would (frames, size); `decode=False` counts complete
encoded frames from the jitter buffer without decoding (cheap enough to run many per process).
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from .. import aiortc_hooks
from .whip import SignalingError


class TrackCounter:
    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.width = 0
        self.height = 0
        self.data: list[bytes] | None = None  # set to a list to keep encoded frames
        self.got_frame = asyncio.Event()

    def count(self, size: int) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
            self.got_frame.set()
        self.last_at = now
        self.frames += 1
        self.bytes += size

    def fps_since(self, start_frames: int, start_time: float) -> float:
        return (self.frames - start_frames) / max(1e-6, time.monotonic() - start_time)


class WhepClient:
    def __init__(self, url: str, kinds: tuple[str, ...] = ("audio", "video"), decode: bool = True) -> None:
        self.url = url
        self.kinds = kinds
        self.decode = decode
        self.pc: RTCPeerConnection | None = None
        self.location: str | None = None
        self.started_at = 0.0
        self.tracks = {kind: TrackCounter() for kind in kinds}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.started_at = time.monotonic()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for kind in self.kinds:
            transceiver = self.pc.addTransceiver(kind, direction="recvonly")
            if not self.decode:
                counter = self.tracks[kind]
                aiortc_hooks.tap_receiver(transceiver.receiver, lambda codec, frame, c=counter: c.count(len(frame.data)) or (
                    c.data.append(frame.data) if c.data is not None else None))

        @self.pc.on("track")
        def on_track(track) -> None:
            if self.decode:
                self._tasks.append(asyncio.ensure_future(self._consume(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url, data=self.pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as res:
                body = await res.text()
                if res.status != 201:
                    await self.pc.close()
                    raise SignalingError(res.status, body)
                self.location = urljoin(self.url, res.headers["Location"])
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))

    async def _consume(self, track) -> None:
        counter = self.tracks[track.kind]
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    counter.width, counter.height = frame.width, frame.height
                counter.count(0)
        except MediaStreamError:
            pass

    async def first_frame(self, kind: str = "video", timeout: float = 10.0) -> float:
        """Seconds from start() to the first complete frame of `kind`."""
        counter = self.tracks[kind]
        await asyncio.wait_for(counter.got_frame.wait(), timeout)
        return counter.first_at - self.started_at

    async def stop(self) -> None:
        if self.location:
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.delete(self.location):
                        pass
            except aiohttp.ClientError:
                pass
        for task in self._tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
