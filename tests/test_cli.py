"""The `relay` command: its version, and one clear line with exit status 2 for every mistake
a new user makes at start (nothing is created before the checks pass)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Relay, relay_settings

from relay_testkit.process import REPO

PRODUCT_ONLY = str(Path(__file__).with_name("product_only.py"))


def relay(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd or REPO, env={**os.environ, "PYTHONPATH": str(REPO), "RELAY_RTMP_PORT": "0",
                                                **(env or {})})


def test_version():
    done = relay("--version")
    assert done.returncode == 0 and done.stdout.startswith("relay ")


def test_a_busy_port_is_one_line_and_nothing_is_created(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        data = tmp_path / "data"
        done = relay("serve", "--port", str(port), "--data-dir", str(data))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"relay: cannot listen on 127.0.0.1:{port}: Address already in use "
                                   "(another server is using it; pick another with --port)")
    assert not data.exists()  # no admin key or database made for a server that never ran


@pytest.mark.parametrize("args, env, message", [
    (("--port", "99999"), {}, "argument --port: 99999 is not a port"),
    (("--port", "http"), {}, "argument --port: not a port number"),
    ((), {"RELAY_MEDIA_GRACE_PERIOD_S": "-5"}, "media.grace_period_s: must be a finite number of 0 or more"),
    ((), {"RELAY_ICE_ADDRESSES": '["1.2.3.4", "nope"]'}, "ice.addresses: 'nope' is not an IP address"),
])
def test_bad_arguments_and_settings_are_one_line(tmp_path, args, env, message):
    done = relay("serve", "--data-dir", str(tmp_path / "d"), *args, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr.strip().splitlines()[-1]  # after argparse's usage lines, if any


def test_a_data_dir_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for path, message in ((a_file, "exists and is not a folder"), (a_file / "below", "Not a directory")):
        done = relay("serve", "--port", "0", "--data-dir", str(path))
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == f"relay: data dir {path}: {message}"


async def test_the_demo_plays_with_the_product_alone(server_process):
    """`relay serve --demo` with numpy, Hypothesis, psutil and relay_testkit unimportable."""
    server = server_process(wrapper=PRODUCT_ONLY, args=("--demo",))
    relay = Relay(server.base, relay_settings(server.data_dir))

    async def live() -> bool:
        status, show = await relay.api("GET", "/api/shows/demo")
        return status == 200 and show["state"] == "live" and show["publisher"] is not None

    await relay.wait_for(live, timeout=30, what="the demo show to go live")
    viewer = await relay.viewer("demo")
    await viewer.first_frame("video")
    await viewer.first_frame("audio")
    assert (await relay.show("demo"))["tracks"]["video"]["codec"] == "H264"
    await relay.close_clients()
    assert server.stop() == 0
