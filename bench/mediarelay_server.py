"""The textbook aiortc fan-out, as a baseline for bench/fanout.py (`--baseline mediarelay`).

A minimal WHIP/WHEP server that does what aiortc's examples do: receive the host's tracks
(aiortc decodes them), and answer every viewer with `MediaRelay().subscribe(track)`, so the
decoded frames are shared but each viewer's sender encodes them again (H.264 / Opus). Nothing
else: no auth, no rooms, one show. Speaks just enough WHIP/WHEP for relay_testkit.whip /
relay_testkit.whep:

    POST   /whip/{show}                    SDP offer -> 201 SDP answer, Location
    DELETE /whip/{show}/{session}
    POST   /whep/{show}[/{room}]           SDP offer -> 201 SDP answer, Location
    DELETE /whep/{show}/{room}/{session}
    GET    /healthz                        {"viewers", "publisher", "frames_in": {kind: n}}

Run (from the repository root): python -m bench.mediarelay_server --host 127.0.0.1 --port 0
It prints `mediarelay: listening on http://HOST:PORT` once it accepts connections.

Proxies are subscribed with buffered=False (each viewer takes the newest decoded frame): a
viewer whose encoder cannot keep up skips frames instead of queueing raw 720p frames without
bound. The source is drained from the start by one extra subscriber (counting frames_in), so
the decode runs whether or not anyone watches, as the relay's ingest does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import sys

import uvloop
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from relay import aiortc_hooks

log = logging.getLogger("mediarelay")


def new_peer_connection() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def preferences(kind: str) -> list[RTCRtpCodecCapability]:
    """H.264 (+ RTX) for video, Opus for audio; set BEFORE setRemoteDescription, or aiortc answers VP8."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    if kind == "video":
        return [c for c in caps if c.name == "H264"] + [c for c in caps if c.name == "rtx"]
    return [c for c in caps if c.name == "opus"]


def offered_kinds(sdp: str) -> list[str]:
    return [m.kind for m in aiortc_sdp.SessionDescription.parse(sdp).media if m.kind in ("audio", "video")]


class Baseline:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.sources: dict[str, MediaStreamTrack] = {}
        self.frames_in: dict[str, int] = {"audio": 0, "video": 0}
        self.publisher: RTCPeerConnection | None = None
        self.publisher_id: str | None = None
        self.viewers: dict[str, tuple[RTCPeerConnection, list[MediaStreamTrack]]] = {}
        self._drains: list[asyncio.Task] = []

    async def _drain(self, proxy: MediaStreamTrack, kind: str) -> None:
        try:
            while True:
                await proxy.recv()
                self.frames_in[kind] += 1
        except MediaStreamError:
            pass

    async def whip(self, request: web.Request) -> web.Response:
        offer = await request.text()
        if self.publisher is not None:
            await self.publisher.close()
        for task in self._drains:
            task.cancel()
        self._drains.clear()
        self.sources.clear()
        pc = new_peer_connection()
        for kind in offered_kinds(offer):
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            transceiver.setCodecPreferences(preferences(kind))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.sources[track.kind] = track
            sink = self.relay.subscribe(track, buffered=False)
            self._drains.append(asyncio.ensure_future(self._drain(sink, track.kind)))

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        self.publisher, self.publisher_id = pc, secrets.token_urlsafe(12)
        show = request.match_info["show"]
        log.info("publisher %s connected", self.publisher_id)
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": f"/whip/{show}/{self.publisher_id}"})

    async def unpublish(self, request: web.Request) -> web.Response:
        if self.publisher is not None and request.match_info["session"] == self.publisher_id:
            await self.publisher.close()
            self.publisher = None
        return web.Response(status=200)

    async def whep(self, request: web.Request) -> web.Response:
        offer = await request.text()
        if not self.sources:
            return web.json_response({"error": "not_live"}, status=409)
        pc = new_peer_connection()
        proxies: list[MediaStreamTrack] = []
        for kind in offered_kinds(offer):
            source = self.sources.get(kind)
            if source is None:
                continue
            proxy = self.relay.subscribe(source, buffered=False)
            proxies.append(proxy)
            transceiver = pc.addTransceiver(proxy, direction="sendonly")
            transceiver.setCodecPreferences(preferences(kind))
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        session = secrets.token_urlsafe(12)
        self.viewers[session] = (pc, proxies)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._drop_viewer(session)

        show, room = request.match_info["show"], request.match_info.get("room", "hq")
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": f"/whep/{show}/{room}/{session}"})

    async def _drop_viewer(self, session: str) -> None:
        entry = self.viewers.pop(session, None)
        if entry is None:
            return
        pc, proxies = entry
        for proxy in proxies:
            proxy.stop()
        await pc.close()

    async def unwatch(self, request: web.Request) -> web.Response:
        await self._drop_viewer(request.match_info["session"])
        return web.Response(status=200)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"viewers": len(self.viewers), "publisher": self.publisher is not None,
                                  "frames_in": self.frames_in})

    async def close(self) -> None:
        for session in list(self.viewers):
            await self._drop_viewer(session)
        if self.publisher is not None:
            await self.publisher.close()


async def serve(host: str, port: int) -> None:
    baseline = Baseline()
    app = web.Application()
    app.add_routes([
        web.post("/whip/{show}", baseline.whip),
        web.delete("/whip/{show}/{session}", baseline.unpublish),
        web.post("/whep/{show}", baseline.whep),
        web.post("/whep/{show}/{room}", baseline.whep),
        web.delete("/whep/{show}/{room}/{session}", baseline.unwatch),
        web.get("/healthz", baseline.healthz),
    ])
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"mediarelay: listening on http://{host}:{runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await baseline.close()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    aiortc_hooks.set_host_addresses([args.host])
    uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
