"""Fixtures: encoded test media, an in-process relay, and a relay in a subprocess."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from relay import aiortc_hooks
from relay.app import build_app
from relay.config import Settings
from relay_testkit.process import NO_LIMITS, RedisProcess, RelayProcess
from relay_testkit.synthetic import encode_pattern, encode_tone
from relay_testkit.whep import WhepClient
from relay_testkit.whip import WhipClient

# Every aiortc peer in the test process gathers on loopback only.
aiortc_hooks.set_host_addresses(["127.0.0.1"])

ADMIN_KEY = "test-admin-key"

WIDTH, HEIGHT = 640, 360


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
    settings.rtmp.port = 0  # many relays at once: each its own free RTMP port
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

    async def figures_saved_since(self, show_id: str, since: float) -> None:
        """Live room figures are saved every [media] figures_save_interval_s: wait for a save."""

        async def saved() -> bool:
            saved_at = (await self.api("GET", f"/api/shows/{show_id}/stats"))[1]["figures_saved_at"]
            return saved_at is not None and saved_at > since

        await self.wait_for(saved, what=f"the room figures of {show_id} to be saved")

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


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free loopback port, durable like production (AOF, fsync always)."""
    server = RedisProcess(tmp_path / "redis")
    server.start()
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


@pytest.fixture
def server_process(tmp_path):
    """Start `relay serve` in a subprocess (RelayProcess's options); killed at the end if still up."""
    procs: list[RelayProcess] = []

    def start(data_dir: Path | None = None, **kwargs) -> RelayProcess:
        proc = RelayProcess(data_dir or tmp_path / "data", ADMIN_KEY, **kwargs)
        procs.append(proc)
        proc.start()
        return proc

    yield start
    for proc in procs:
        proc.kill()
