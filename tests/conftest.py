"""Fixtures: encoded test media, an in-process relay, and a relay in a subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from relay import aiortc_hooks
from relay.app import build_app
from relay.config import Settings
from relay_testkit.synthetic import encode_pattern, encode_tone
from relay_testkit.whep import WhepClient
from relay_testkit.whip import WhipClient

# Every aiortc peer in the test process gathers on loopback only.
aiortc_hooks.set_host_addresses(["127.0.0.1"])

ADMIN_KEY = "test-admin-key"
REPO = Path(__file__).resolve().parent.parent

WIDTH, HEIGHT = 640, 360

# Tests (and benches) run hundreds of clients from one address: per-address limits off.
NO_LIMITS = {f"RELAY_LIMITS_{name}": "0" for name in (
    "VIEWER_REGISTRATIONS_PER_S", "CLAIMS_PER_S", "WHEP_PER_S", "WHIP_PER_S", "MAX_PENDING_SESSIONS_PER_ADDRESS",
    "MAX_CONNECTIONS_PER_ADDRESS", "REGISTRATIONS_PER_ADDRESS_PER_SHOW")}


@pytest.fixture(scope="session")
def h264_clip() -> list[bytes]:
    """2 s of 640x360 at 30 fps, a keyframe every second."""
    return encode_pattern(WIDTH, HEIGHT, 30, seconds=2.0, gop=30, bitrate=800_000)


@pytest.fixture(scope="session")
def h264_clip_long_gop() -> list[bytes]:
    """8 s of 320x240 at 30 fps with a 4 s GOP."""
    return encode_pattern(320, 240, 30, seconds=8.0, gop=120, bitrate=300_000)


@pytest.fixture(scope="session")
def opus_clip() -> list[bytes]:
    return encode_tone(seconds=1.0)


def relay_settings(data_dir: Path, **media) -> Settings:
    settings = Settings()
    settings.server.data_dir = str(data_dir)
    settings.auth.admin_key = ADMIN_KEY
    settings.ice.addresses = ["127.0.0.1"]
    settings.media.grace_period_s = 30.0
    settings.media.publisher_timeout_s = 3.0
    for name in NO_LIMITS:
        field = name.removeprefix("RELAY_LIMITS_").lower()
        setattr(settings.limits, field, type(getattr(settings.limits, field))(0))
    for key, value in media.items():
        setattr(settings.media, key, value)
    return settings


@dataclass
class Relay:
    """A running relay and helpers to drive it like an operator, a host and viewers do."""

    base: str
    settings: Settings
    app: object = None
    clients: list = field(default_factory=list)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def request(self, method: str, path: str, **kwargs) -> tuple[int, object]:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.base + path, **kwargs) as res:
                if res.content_type == "application/json":
                    return res.status, await res.json()
                return res.status, await res.text()

    async def api(self, method: str, path: str, json=None) -> tuple[int, object]:
        return await self.request(method, path, json=json, headers=self.admin)

    async def create_show(self, show_id: str, mirrors: tuple[str, ...] = ()) -> dict:
        status, show = await self.api("POST", "/api/shows", {"title": f"Show {show_id}", "id": show_id})
        assert status == 201, show
        for distributor in mirrors:
            status, body = await self.api("POST", f"/api/shows/{show_id}/mirrors",
                                          {"distributor": distributor, "name": distributor.upper()})
            assert status == 201, body
        return show

    async def show(self, show_id: str) -> dict:
        status, body = await self.api("GET", f"/api/shows/{show_id}")
        assert status == 200, body
        return body

    async def publish(self, show: dict, tracks: list) -> WhipClient:
        client = WhipClient(f"{self.base}/whip/{show['id']}", show["stream_key"], tracks)
        await client.start()
        self.clients.append(client)
        await client.connected()
        return client

    async def viewer(self, show_id: str, room: str | None = None, decode: bool = True,
                     kinds: tuple[str, ...] = ("audio", "video"), data_channel: bool = False,
                     token: str | None = None) -> WhepClient:
        path = f"/whep/{show_id}" + (f"/{room}" if room else "")
        client = WhepClient(self.base + path, kinds=kinds, decode=decode, data_channel=data_channel, token=token)
        await client.start()
        self.clients.append(client)
        await client.connected()
        return client

    async def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition") -> None:
        """Poll an async predicate until it holds (state visible only through the API)."""
        deadline = time.monotonic() + timeout
        while True:
            if await predicate():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def close_clients(self) -> None:
        for client in reversed(self.clients):
            try:
                await (client.drop() if isinstance(client, WhipClient) else client.stop())
            except Exception:
                pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A real redis-server on a free loopback port, durable like production (AOF, fsync always)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # ready once it answers PING
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not start: {(self.workdir / 'redis.log').read_text()[-2000:]}")

    def kill(self) -> None:
        """Stop at once, as a crash would (what was fsynced survives)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture(params=["embedded", "redis"])
def store_url(request) -> str:
    """The commerce store a contract test runs against: "" (embedded SQLite) or a Redis URL."""
    return request.getfixturevalue("redis_server").url if request.param == "redis" else ""


@pytest.fixture
async def make_relay(aiohttp_server, tmp_path):
    """Start an in-process relay on 127.0.0.1; media settings may be overridden."""
    relays: list[Relay] = []

    async def start(redis_url: str = "", configure=None, **media) -> Relay:
        settings = relay_settings(tmp_path / f"data{len(relays)}", **media)
        settings.store.redis_url = redis_url
        if configure is not None:
            configure(settings)
        app = build_app(settings)
        server = await aiohttp_server(app, host="127.0.0.1")
        settings.server.port = server.port
        relay = Relay(f"http://127.0.0.1:{server.port}", settings, app)
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        await relay.close_clients()


@pytest.fixture
async def relay(make_relay) -> Relay:
    return await make_relay()


class ServerProcess:
    """`relay serve` in a subprocess on a free loopback port."""

    def __init__(self, data_dir: Path, *, wrapper: str | None = None, env: dict | None = None,
                 port: int = 0, args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.port = port
        self.args = args
        self.wrapper = wrapper
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.base = ""
        self.log = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self) -> "ServerProcess":
        cmd = [sys.executable]
        cmd += [self.wrapper] if self.wrapper else ["-m", "relay"]
        cmd += ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir),
                *self.args]
        env = {**os.environ, "RELAY_ADMIN_KEY": ADMIN_KEY, "RELAY_ICE_ADDRESSES": "127.0.0.1", **NO_LIMITS,
               "PYTHONPATH": str(REPO), **self.env}
        self._logfh = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._logfh, env=env, cwd=REPO)
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.base = m.group(1)
                return self
        raise AssertionError(f"server did not start; log: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self._logfh.close()
        return code


@pytest.fixture
def server_process(tmp_path):
    procs: list[ServerProcess] = []

    def start(data_dir: Path | None = None, **kwargs) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / "data", **kwargs).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.proc and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()
