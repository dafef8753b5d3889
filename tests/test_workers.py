"""`relay serve --workers N`: a supervisor and N workers on one port, sharing Redis; workers that
die are started again, and no process outlives the supervisor."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from conftest import ADMIN_KEY, Relay, relay_settings
from test_cli import relay as run_relay

from relay.cli import _parse, _worker_argv
from relay.config import Settings
from relay.workers import Supervisor, name_node, worker_count
from relay_testkit.process import RelayProcess, ServerError
from relay_testkit.synthetic import host_tracks

READY = re.compile(r"^\[w(\d+)\] ready \(pid (\d+)\): node (\S+) at (\S+)$", re.M)


def ready_workers(server: RelayProcess) -> dict[int, tuple[int, str, str]]:
    """Each worker's latest ready line in the supervisor's output: index -> (pid, node, URL)."""
    return {int(i): (int(pid), node, url) for i, pid, node, url in READY.findall(server.log_text())}


def gone(pid: int) -> bool:
    """The process has exited (a zombie not reaped yet counts: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def both_ready(server: RelayProcess) -> dict[int, tuple[int, str, str]]:
    """Both workers' ready lines, once the log has them (it is written by a reader thread)."""
    relay = Relay(server.base, relay_settings(server.data_dir))

    async def logged() -> bool:
        return sorted(ready_workers(server)) == [0, 1]

    await relay.wait_for(logged, timeout=5, what="both workers' ready lines in the log")
    return ready_workers(server)


async def health(url: str) -> dict:
    # A connection of its own each time: the kernel picks a worker per connection.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(f"{url}/healthz") as res:
            assert res.status == 200
            return await res.json()


def test_the_count_is_a_number_or_one_per_usable_core():
    assert worker_count("3") == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError):
            worker_count(bad)


def test_a_worker_is_started_with_the_same_options_but_the_count():
    args = _parse(["serve", "--workers", "2", "--port", "0", "--redis", "redis://r/0", "--demo",
                   "--data-dir", "d", "--log-format", "json"])
    first, second = _worker_argv(args, 4321, 0), _worker_argv(args, 4321, 1)
    assert first[:3] == [sys.executable, "-m", "relay"] and "--workers" not in first
    assert _parse(first[3:]) == _parse(["serve", "--port", "4321", "--redis", "redis://r/0", "--demo",
                                        "--data-dir", "d", "--log-format", "json"])
    assert "--demo" not in second  # one synthetic host is enough


def test_a_worker_names_itself_after_its_index_and_advertises_its_private_port():
    settings = Settings()
    settings.server.port = 8080
    name_node(settings, None, None)
    assert settings.cluster.node_id == f"{socket.gethostname()}-8080"
    assert settings.cluster.advertise_url == "http://127.0.0.1:8080"
    settings = Settings()
    settings.server.host, settings.server.port, settings.cluster.node_id = "0.0.0.0", 8080, "edge"
    name_node(settings, 1, 40001)
    assert (settings.cluster.node_id, settings.cluster.advertise_url) == ("edge-w1", "http://127.0.0.1:40001")


@pytest.mark.parametrize("args, message", [
    (("--workers", "2"), "relay: --workers 2 needs --redis URL (or [store] redis_url): "
                         "the workers share shows and state through Redis"),
    (("--workers", "2", "--redis", "redis://127.0.0.1:1/0"),
     "relay: cannot listen on 127.0.0.1:{port}: Address already in use (another server is using it; "
     "pick another with --port)"),
])
def test_a_setting_the_workers_cannot_run_with_is_one_line_and_nothing_is_created(tmp_path, args, message):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_relay("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == message.format(port=port)
    assert not (tmp_path / "data").exists()


async def test_a_worker_that_keeps_dying_stops_the_supervisor():
    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    supervisor = Supervisor("http://127.0.0.1:1", 1, lambda i: crash, shutdown_timeout_s=1.0, backoff_s=0.01)
    assert await supervisor.run() == 1


def test_a_worker_that_rejects_a_setting_stops_the_supervisor_at_once(tmp_path, redis_server):
    # Only the app checks the webhook settings: the supervisor learns of it from the workers.
    server = RelayProcess(tmp_path / "data", ADMIN_KEY, args=("--workers", "2", "--redis", redis_server.url),
                          env={"RELAY_WEBHOOKS_URLS": "http://127.0.0.1:9/hook"})
    with pytest.raises(ServerError, match="exited with 2"):
        server.start()
    assert "[webhooks] secret is required" in server.log_text()
    assert "exited with status 2 at start; stopping" in server.log_text()


async def test_two_workers_share_the_port_and_one_that_dies_is_started_again(tmp_path, redis_server):
    # No admin key given: the supervisor makes one before the workers start, and both take it.
    server = RelayProcess(tmp_path / "data", "", args=("--workers", "2", "--redis", redis_server.url))
    server.start()
    try:
        assert re.search(r"^relay: listening on http://127\.0\.0\.1:\d+ \(2 workers\)$", server.log_text(), re.M)
        workers = await both_ready(server)
        assert workers[0][1] != workers[1][1]
        for _, node, url in workers.values():
            assert (await health(url))["node"] == node  # each private port leads to its own worker

        seen = set()
        for _ in range(100):  # the kernel spreads connections by their addresses: both come soon
            seen.add((await health(server.base))["node"])
            if len(seen) == 2:
                break
        assert seen == {workers[0][1], workers[1][1]}

        admin_key = (tmp_path / "data" / "admin_key").read_text().strip()
        assert server.log_text().count(admin_key) == 1  # printed once, by the supervisor
        for _, _, url in workers.values():
            client = Relay(url, relay_settings(tmp_path / "data"))
            status, body = await client.request("GET", "/api/shows",
                                                headers={"Authorization": f"Bearer {admin_key}"})
            assert status == 200, body
        shared = Relay(server.base, relay_settings(tmp_path / "data"))
        status, show = await shared.request("POST", "/api/shows", json={"title": "Spread", "id": "spread"},
                                            headers={"Authorization": f"Bearer {admin_key}"})
        assert status == 201, show

        old_pid, node, _ = workers[1]
        os.kill(old_pid, signal.SIGKILL)

        async def started_again() -> bool:
            return ready_workers(server)[1][0] != old_pid

        await shared.wait_for(started_again, timeout=30, what="worker 1 to be started again")
        new_pid, new_node, new_url = ready_workers(server)[1]
        assert new_node == node and (await health(new_url))["node"] == node
        assert f"worker 1 (pid {old_pid}) was killed by SIGKILL; starting it again" in server.log_text()
        assert not gone(workers[0][0])  # the other worker served on

        assert server.stop(signal.SIGTERM) == 0
        assert gone(workers[0][0]) and gone(new_pid)  # the supervisor waited for both
        with socket.socket() as again:  # and nobody listens on the port any more
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past our closed connections
            again.bind(("127.0.0.1", server.port))
            again.listen()
    finally:
        server.kill()


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path, redis_server):
    server = RelayProcess(tmp_path / "data", ADMIN_KEY, args=("--workers", "2", "--redis", redis_server.url))
    server.start()
    pids = [pid for pid, _, _ in ready_workers(server).values()]
    server.kill()

    async def all_gone() -> bool:
        return all(gone(pid) for pid in pids)

    await Relay(server.base, relay_settings(tmp_path / "data")).wait_for(
        all_gone, timeout=20, what="the workers to stop on their own")


async def test_viewers_through_the_one_port_land_on_both_workers_and_all_play(tmp_path, redis_server, h264_clip):
    server = RelayProcess(tmp_path / "data", ADMIN_KEY, args=("--workers", "2", "--redis", redis_server.url))
    server.start()
    relay = Relay(server.base, relay_settings(tmp_path / "data"))
    try:
        show = await relay.create_show("cores")
        await relay.publish(show, host_tracks(h264_clip, None))  # to whichever worker the kernel picks
        workers = [url for _, _, url in (await both_ready(server)).values()]
        viewers = []

        async def both_workers_have_viewers() -> bool:
            return all([(await health(url))["viewers"] >= 1 for url in workers])

        while not await both_workers_have_viewers():  # each viewer's connection lands on either
            assert len(viewers) < 24, "every viewer landed on the same worker"
            viewers.append(await relay.viewer("cores", kinds=("video",), decode=True))
        for viewer in viewers:  # decoded, on both workers: the host's stream reached each
            await viewer.first_frame("video", timeout=10)
            assert viewer.tracks["video"].width == 640
        assert sum([(await health(url))["viewers"] for url in workers]) == len(viewers)
        assert sum([(await health(url))["live_shows"] for url in workers]) == 1  # the host is on one

        # Session URLs name their worker: a DELETE through the shared port reaches the right one.
        async with aiohttp.ClientSession() as http:
            for viewer in viewers:
                assert viewer.location.startswith(f"{server.base}/whep/cores/hq/")
                async with http.delete(viewer.location) as res:
                    assert res.status == 200, await res.text()
            for url in workers:
                assert (await health(url))["viewers"] == 0
            host = relay.clients[0]
            async with http.delete(host.location, headers=host.auth) as res:
                assert res.status == 200, await res.text()
        assert (await relay.show("cores"))["state"] == "ended"  # the host's DELETE ended the show
    finally:
        await relay.close_clients()
        server.stop()

