"""The client half of WHIP and WHEP signalling: POST an offer, apply the answer, wait for the
connection. The demo's publisher uses it; the test and bench clients (relay_testkit) too."""

from __future__ import annotations

import asyncio
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription


class SignalingError(RuntimeError):
    """The server answered the offer with something other than 201."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"POST answered {status}: {body}")
        self.status = status
        self.body = body


async def negotiate(pc: RTCPeerConnection, url: str, headers: dict[str, str] | None = None) -> str:
    """Offer `pc`'s transceivers to `url` and apply the answer; returns the session URL."""
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=pc.localDescription.sdp,
                             headers={"Content-Type": "application/sdp", **(headers or {})}) as res:
            body = await res.text()
            if res.status != 201:
                await pc.close()
                raise SignalingError(res.status, body)
            location = urljoin(str(res.url), res.headers["Location"])  # (after any redirect)
    await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return location


async def connected(pc: RTCPeerConnection, timeout: float = 10.0) -> None:
    """Wait until ICE and DTLS are done; ConnectionError if the connection fails instead."""
    done = asyncio.Event()
    pc.on("connectionstatechange", lambda: pc.connectionState not in ("new", "connecting") and done.set())
    if pc.connectionState in ("new", "connecting"):
        await asyncio.wait_for(done.wait(), timeout)
    if pc.connectionState != "connected":
        raise ConnectionError(f"the connection is {pc.connectionState}")
