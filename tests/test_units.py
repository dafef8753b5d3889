"""The forwarding parts on their own: viewer queues, the forwarder, keyframe throttling, hooks, config."""

from __future__ import annotations

import asyncio
import re
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from relay import aiortc_hooks
from relay.config import ConfigError, Settings, load_settings
from relay.fanout.forwarder import Forwarder
from relay.fanout.keyframes import KeyframeRequester
from relay.fanout.frame_queue import FrameQueue, QueueClosed
from relay.media import RelayFrame

REPO = Path(__file__).resolve().parent.parent


def frame(n: int, key: bool = False) -> RelayFrame:
    return RelayFrame("video", "VP8", b"", [bytes([n])], n, key)


def test_aiortc_hook_points_are_all_there():
    assert aiortc_hooks.check() == []
    major, minor = (int(x) for x in version("aiortc").split(".")[:2])
    assert (major, minor) == (1, 16), "hooks verified on aiortc 1.16 only: re-verify and widen the pin"


async def test_slow_viewer_skips_to_the_next_keyframe_and_counts_drops():
    queue = FrameQueue(capacity=3, video=True)
    queue.put(frame(0))  # no keyframe yet: dropped
    assert len(queue) == 0 and queue.dropped == 1
    for n in (1, 2, 3):
        queue.put(frame(n, key=n == 1))
    assert len(queue) == 3
    queue.put(frame(4))  # full: everything waiting and this frame go; wait for a keyframe
    assert len(queue) == 0 and queue.dropped == 1 + 3 + 1 and queue.needs_keyframe
    queue.put(frame(5))
    assert len(queue) == 0 and queue.dropped == 6
    queue.put(frame(6, key=True))
    assert (await queue.get()).timestamp == 6
    queue.close()
    with pytest.raises(QueueClosed):
        await queue.get()


async def test_audio_queue_drops_oldest_but_keeps_going():
    queue = FrameQueue(capacity=2, video=False)
    for n in range(5):
        queue.put(RelayFrame("audio", "opus", b"", [b"x"], n, True))
    assert queue.dropped == 2 + 2 and [(await queue.get()).timestamp for _ in range(len(queue))] == [4]


def vp8(key: bool) -> bytes:
    return bytes([0x00 if key else 0x01]) + b"\x9d\x01\x2a" + bytes(100)


async def test_forwarder_packetizes_once_for_every_viewer_and_caches_the_gop():
    requests = []
    forwarder = Forwarder("video", gop_cache_max_frames=100, request_keyframe=lambda: requests.append(1))
    forwarder.start_source("VP8")
    queues = [FrameQueue(10, video=True) for _ in range(3)]
    for q in queues:
        forwarder.add_reader(q)
    forwarder.push(vp8(True), 1000)
    forwarder.push(vp8(False), 4000)
    got = [[await q.get(), await q.get()] for q in queues]
    assert all(g[0] is got[0][0] and g[1] is got[0][1] for g in got)  # one object shared by all
    assert got[0][0].keyframe and not got[0][1].keyframe
    assert [f.timestamp for f in got[0]] == [0, 3000]

    late = FrameQueue(10, video=True)
    forwarder.add_reader(late)
    assert [f.timestamp for f in [await late.get(), await late.get()]] == [0, 3000]
    assert len(requests) == 3  # the first three joined before any keyframe; the late one had the cache


async def test_forwarder_keeps_timestamps_moving_forward_across_a_host_reconnect():
    forwarder = Forwarder("video", 100, lambda: None)
    forwarder.start_source("VP8")
    queue = FrameQueue(10, video=True)
    forwarder.add_reader(queue)
    forwarder.push(vp8(True), 50_000)
    forwarder.push(vp8(False), 53_000)
    forwarder.start_source("VP8")  # a new host session: timestamps restart from its own origin
    forwarder.push(vp8(False), 0)  # not a keyframe: the viewer must wait for one
    forwarder.push(vp8(True), 3000)
    stamps = [(await queue.get()).timestamp for _ in range(len(queue))]
    assert stamps[-1] > 3000 and len(stamps) == 1  # only the new keyframe, stamped after the old frames


async def test_keyframe_requests_are_throttled_but_not_lost():
    sent: list[float] = []
    requester = KeyframeRequester(0.3, lambda: sent.append(time.monotonic()) or True)
    for _ in range(10):
        requester.request()
    assert len(sent) == 1
    done = asyncio.get_running_loop().create_future()
    requester._send = lambda: (sent.append(time.monotonic()), done.set_result(None)) and True
    await asyncio.wait_for(done, 2)
    assert len(sent) == 2 and sent[1] - sent[0] >= 0.29
    assert requester.received == 10


def test_default_config_file_matches_built_in_defaults():
    assert load_settings(REPO / "config" / "relay.toml", env={}) == Settings()


def test_environment_overrides_and_bad_settings(tmp_path):
    settings = load_settings(None, env={"RELAY_MEDIA_GRACE_PERIOD_S": "5", "RELAY_ADMIN_KEY": "k",
                                        "RELAY_ICE_ADDRESSES": "127.0.0.1, 10.0.0.5"})
    assert settings.media.grace_period_s == 5.0 and settings.auth.admin_key == "k"
    assert settings.ice.addresses == ["127.0.0.1", "10.0.0.5"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[media]\nno_such_thing = 1\n")
    with pytest.raises(ConfigError, match="no_such_thing"):
        load_settings(bad, env={})
    with pytest.raises(ConfigError, match="grace_period_s"):
        load_settings(None, env={"RELAY_MEDIA_GRACE_PERIOD_S": "soon"})


@pytest.mark.parametrize("env, message", [
    ({"RELAY_MEDIA_GRACE_PERIOD_S": "-5"}, "media.grace_period_s: must be a finite number of 0 or more"),
    ({"RELAY_MEDIA_GRACE_PERIOD_S": "inf"}, "media.grace_period_s: must be a finite number"),
    ({"RELAY_ICE_CONNECT_TIMEOUT_S": "0"}, "ice.connect_timeout_s must be more than 0"),
    ({"RELAY_ICE_ADDRESSES": "1.2.3.4, not-an-ip"}, "'not-an-ip' is not an IP address"),
    ({"RELAY_ICE_ADDRESSES": '["1.2.3.4", 5]'}, "ice.addresses: expected a list of strings"),
    ({"RELAY_SERVER_PORT": "99999"}, "server.port must be 0-65535"),
    ({"RELAY_REPLAY_ENABLED": "maybe"}, "replay.enabled: expected true or false"),
])
def test_settings_out_of_range_are_refused_with_their_name(env, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(None, env=env)


def test_a_json_list_in_the_environment_is_a_list():
    settings = load_settings(None, env={"RELAY_ICE_ADDRESSES": '["1.2.3.4", "::1"]'})
    assert settings.ice.addresses == ["1.2.3.4", "::1"]
