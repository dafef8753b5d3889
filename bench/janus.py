"""Janus as the fan-out bench's baseline: Debian's `janus` (1.1.x) with its VideoRoom plugin,
`event_loops = 1`, pinned to the server's CPU like the relay, driven over its HTTP API by the
same host (aiortc, the same encoded clip) and the same RTP-counting viewers.

Janus never offers loopback candidates, so a run with this baseline happens inside a network
namespace the bench makes (`NetworkNamespace`): a veth pair whose ends get 10.99.0.1 and
10.99.0.2, both inside it; the relay, Janus, the host and the viewers all use 10.99.0.1 there.
Nothing leaves the namespace.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from relay_testkit.process import ServerProcess, free_port
from relay_testkit.rtp_counter import RtpCountingClient

ROOM = 1234
NETNS_ADDRESS = "10.99.0.1"
NETNS_PEER = "10.99.0.2"
ENV_NETNS = "LC_BENCH_NETNS"  # set in the process the bench runs again inside its namespace
ENV_ADDRESS = "LC_BENCH_ICE_ADDRESS"  # the address peers gather ICE candidates on


def ice_address() -> str:
    return os.environ.get(ENV_ADDRESS, "127.0.0.1")


# -- the namespace -----------------------------------------------------------------------------

class NetworkNamespace:
    """`ip netns add` with a veth pair inside (both ends, 10.99.0.1/24 and 10.99.0.2/24) and
    loopback up; deleted on close. Needs root (CAP_NET_ADMIN)."""

    def __init__(self) -> None:
        self.name = f"lcbench-{secrets.token_hex(3)}"

    def _ip(self, *args: str, inside: bool = True) -> None:
        argv = ["ip", "netns", "exec", self.name, "ip", *args] if inside else ["ip", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        if result.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")

    def open(self) -> "NetworkNamespace":
        self._ip("netns", "add", self.name, inside=False)
        try:
            self._ip("link", "set", "lo", "up")
            self._ip("link", "add", "veth-lc0", "type", "veth", "peer", "name", "veth-lc1")
            self._ip("addr", "add", f"{NETNS_ADDRESS}/24", "dev", "veth-lc0")
            self._ip("addr", "add", f"{NETNS_PEER}/24", "dev", "veth-lc1")
            self._ip("link", "set", "veth-lc0", "up")
            self._ip("link", "set", "veth-lc1", "up")
        except Exception:
            self.close()
            raise
        return self

    def run(self, argv: list[str], timeout: float) -> int:
        """Run `argv` inside, with this process's environment and ENV_NETNS / ENV_ADDRESS set."""
        env = {**os.environ, ENV_NETNS: self.name, ENV_ADDRESS: NETNS_ADDRESS}
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], env=env, timeout=timeout).returncode

    def close(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=20)


def rerun_in_namespace(module: str, argv: list[str], timeout: float) -> int:
    """Run `python -m module argv` again inside a new namespace; its exit status."""
    namespace = NetworkNamespace().open()
    print(f"(running inside network namespace {namespace.name}, address {NETNS_ADDRESS})", flush=True)
    try:
        return namespace.run([sys.executable, "-m", module, *argv], timeout)
    finally:
        namespace.close()


# -- the server --------------------------------------------------------------------------------

def write_config(folder: Path, http_port: int) -> Path:
    """Janus's configuration for the bench: one event loop, VideoRoom and HTTP only, candidates
    on the namespace's address, no session timeout (the viewers do not poll after joining)."""
    folder.mkdir(parents=True, exist_ok=True)
    lib = Path("/usr/lib/x86_64-linux-gnu/janus")
    plugins = [p.name for p in (lib / "plugins").glob("libjanus_*.so") if "videoroom" not in p.name]
    transports = [p.name for p in (lib / "transports").glob("libjanus_*.so") if "http" not in p.name]
    (folder / "janus.jcfg").write_text(f"""general: {{
    configs_folder = "{folder}"
    plugins_folder = "{lib / 'plugins'}"
    transports_folder = "{lib / 'transports'}"
    events_folder = "{lib / 'events'}"
    loggers_folder = "{lib / 'loggers'}"
    debug_level = 4
    interface = "{ice_address()}"
    session_timeout = 0
    event_loops = 1
}}
media: {{
    rtp_port_range = "20000-60000"
}}
nat: {{
    ice_enforce_list = "{ice_address()}"
    nice_debug = false
}}
plugins: {{
    disable = "{','.join(plugins)}"
}}
transports: {{
    disable = "{','.join(transports)}"
}}
events: {{
    broadcast = false
}}
""")
    (folder / "janus.transport.http.jcfg").write_text(f"""general: {{
    json = "compact"
    base_path = "/janus"
    http = true
    port = {http_port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_base_path = "/admin"
    admin_http = false
}}
""")
    (folder / "janus.plugin.videoroom.jcfg").write_text(f"""general: {{
}}
room-{ROOM}: {{
    description = "bench"
    publishers = 1
    bitrate = 0
    fir_freq = 0
    audiocodec = "opus"
    videocodec = "h264"
    h264_profile = "42e01f"
}}
""")
    return folder


def janus_process(workdir: Path, cpus: set[int]) -> tuple[ServerProcess, str]:
    """Janus (not started) and its HTTP API base URL."""
    port = free_port()
    folder = write_config(workdir / "janus-config", port)
    argv = ["janus", "--configs-folder", str(folder), "--config", str(folder / "janus.jcfg"),
            "--disable-colors", "--log-stdout"]
    server = ServerProcess("janus", argv, workdir / "janus.log", re.compile(r"HTTP webserver started"), cpus=cpus)
    return server, f"http://127.0.0.1:{port}"


# -- signalling (Janus' HTTP API) ----------------------------------------------------------------

class JanusError(RuntimeError):
    pass


class JanusSignal:
    """A session and a handle attached to the VideoRoom, over Janus' HTTP API."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http: aiohttp.ClientSession | None = None  # (made in open(), on the running loop)
        self.session: int | None = None
        self.handle: int | None = None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": secrets.token_hex(6)}
        async with self.http.post(f"{self.base}/janus{path}", json=body,
                                  timeout=aiohttp.ClientTimeout(total=20)) as res:
            reply = await res.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(str(reply.get("error")))
        return reply

    async def open(self) -> None:
        self.http = aiohttp.ClientSession()
        self.session = (await self._post("", {"janus": "create"}))["data"]["id"]
        reply = await self._post(f"/{self.session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"})
        self.handle = reply["data"]["id"]

    async def message(self, body: dict[str, Any], jsep: dict[str, str] | None = None) -> dict[str, Any]:
        """Send a request; the plugin's event (with its JSEP, if any) when it is asynchronous."""
        request: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        reply = await self._post(f"/{self.session}/{self.handle}", request)
        if reply.get("janus") == "ack":
            return await self.event()
        return reply

    async def event(self, timeout: float = 20.0) -> dict[str, Any]:
        """The next event of the handle from the plugin (long poll)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            async with self.http.get(f"{self.base}/janus/{self.session}?maxev=1",
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as res:
                reply = await res.json(content_type=None)
            if reply.get("janus") == "event" and reply.get("sender") == self.handle:
                data = reply.get("plugindata", {}).get("data", {})
                if data.get("error"):
                    raise JanusError(data["error"])
                return reply
        raise JanusError("no event from the VideoRoom")

    async def close(self) -> None:
        try:
            if self.session is not None:
                await self._post(f"/{self.session}", {"janus": "destroy"})
        except (aiohttp.ClientError, JanusError, TimeoutError):
            pass
        if self.http is not None:
            await self.http.close()


class JanusPublisher:
    """The bench's host publishing its tracks to the VideoRoom (as WhipClient does to the relay)."""

    def __init__(self, base: str, tracks: list) -> None:
        self.base = base
        self.tracks = tracks
        self.pc = None
        self.feed: int | None = None
        self._signal = JanusSignal(base)

    async def start(self) -> int:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for track in self.tracks:
            self.pc.addTransceiver(track, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self._signal.open()
        reply = await self._signal.message(
            {"request": "joinandconfigure", "room": ROOM, "ptype": "publisher", "display": "host",
             "audio": True, "video": True}, {"type": "offer", "sdp": self.pc.localDescription.sdp})
        await self.pc.setRemoteDescription(RTCSessionDescription(reply["jsep"]["sdp"], "answer"))
        self.feed = reply["plugindata"]["data"]["id"]
        return self.feed

    async def stop(self) -> None:
        await self._signal.close()
        if self.pc is not None:
            await self.pc.close()

    drop = stop


class JanusViewer(RtpCountingClient):
    """A VideoRoom subscriber counting RTP at the socket like RtpCountingClient (Janus offers,
    the viewer answers), or decoding with PyAV (`decode`)."""

    def __init__(self, url: str, kinds: tuple[str, ...] = ("audio", "video"), decode: bool = False) -> None:
        super().__init__(url, kinds)
        self.decode = decode
        base, feed = url.removeprefix("janus:").rsplit("#", 1)
        self.base, self.feed = base, int(feed)
        self._signal = JanusSignal(base)

    async def start(self) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        self.started_at = time.monotonic()
        await self._signal.open()
        reply = await self._signal.message({"request": "join", "ptype": "subscriber", "room": ROOM,
                                            "streams": [{"feed": self.feed}]})
        offer = reply["jsep"]["sdp"]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if self.decode:
            self.pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._consume(track))))
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        if not self.decode:
            self.count_rtp(offer)
        await self._signal.message({"request": "start", "room": ROOM},
                                   {"type": "answer", "sdp": self.pc.localDescription.sdp})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._signal.close()
        if self.pc is not None:
            await self.pc.close()
