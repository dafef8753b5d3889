"""A WHEP viewer on aiortc, counting what it receives.

`decode=True` decodes like a player would (frames, size); `decode=False` counts complete
encoded frames from the jitter buffer without decoding (cheap enough to run many per process).
"""

from __future__ import annotations

import asyncio
import time

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from relay import aiortc_hooks
from relay.demo.signaling import SignalingError, connected, negotiate

from .signaling import delete_session

__all__ = ["SignalingError", "WhepClient"]


class TrackCounter:
    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.width = 0
        self.height = 0
        self.data: list[bytes] | None = None  # set to a list to keep encoded frames
        self.timestamps: list[int] | None = None  # set to a list to keep their RTP timestamps
        self.got_frame = asyncio.Event()

    def count(self, size: int) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
            self.got_frame.set()
        self.last_at = now
        self.frames += 1
        self.bytes += size

    def on_encoded_frame(self, codec, frame) -> None:
        self.count(len(frame.data))
        if self.data is not None:
            self.data.append(frame.data)
        if self.timestamps is not None:
            self.timestamps.append(frame.timestamp)

    def fps_since(self, start_frames: int, start_time: float) -> float:
        return (self.frames - start_frames) / max(1e-6, time.monotonic() - start_time)


class WhepClient:
    def __init__(self, url: str, kinds: tuple[str, ...] = ("audio", "video"), decode: bool = True,
                 data_channel: bool = False, token: str | None = None) -> None:
        self.url = url
        self.token = token  # a viewer token, for shows whose playback needs one
        self.kinds = kinds
        self.decode = decode
        self.pc: RTCPeerConnection | None = None
        self.location: str | None = None
        self.started_at = 0.0
        self.tracks = {kind: TrackCounter() for kind in kinds}
        self.data_channel = data_channel
        self.channel = None
        self.messages: list[str] = []
        self.message_arrived = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.started_at = time.monotonic()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for kind in self.kinds:
            transceiver = self.pc.addTransceiver(kind, direction="recvonly")
            if not self.decode:
                aiortc_hooks.tap_receiver(transceiver.receiver, self.tracks[kind].on_encoded_frame)

        if self.data_channel:
            self.channel = self.pc.createDataChannel("events")

            @self.channel.on("message")
            def on_message(message: str) -> None:
                self.messages.append(message)
                self.message_arrived.set()

        @self.pc.on("track")
        def on_track(track) -> None:
            if self.decode:
                self._tasks.append(asyncio.ensure_future(self._consume(track)))

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self.location = await negotiate(self.pc, self.url, headers)

    async def connected(self, timeout: float = 10.0) -> None:
        """Wait until ICE and DTLS are done: from then on the viewer counts."""
        assert self.pc is not None
        await connected(self.pc, timeout)

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
            await delete_session(self.location)
        for task in self._tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
