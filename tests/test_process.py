"""The relay as a process: restart keeps shows, SIGKILL mid-show, and no decoding or encoding."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import Relay, relay_settings

from relay_testkit.process import REPO
from relay_testkit.synthetic import host_tracks

GUARD = str(Path(__file__).with_name("codec_guard.py"))


def client_for(server) -> Relay:
    return Relay(server.base, relay_settings(server.data_dir))


def test_codec_guard_notices_a_decoder(tmp_path):
    log = tmp_path / "codecs.log"
    subprocess.run([sys.executable, GUARD, "selftest"], check=True, cwd=REPO,
                   env={"CODEC_LOG": str(log), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    text = log.read_text()
    assert "get_decoder" in text and "CodecContext.create('h264', 'r')" in text and "av.open(" in text


async def test_no_decoder_or_encoder_is_created_while_relaying_or_recording(server_process, tmp_path, h264_clip,
                                                                           opus_clip):
    log = tmp_path / "codecs.log"
    log.write_text("")
    server = server_process(wrapper=GUARD, env={"CODEC_LOG": str(log)})
    relay = client_for(server)
    try:
        show = await relay.create_show("guarded", mirrors=("d1",))
        await relay.publish(show, host_tracks(h264_clip, opus_clip))
        viewers = [await relay.viewer("guarded"), await relay.viewer("guarded", "d1")]
        for viewer in viewers:
            await viewer.first_frame("video")
            await viewer.first_frame("audio")

        async def flowing() -> bool:
            return all(v.tracks["video"].frames >= 60 and v.tracks["audio"].frames >= 100 for v in viewers)

        await relay.wait_for(flowing, timeout=15, what="two seconds of media at both viewers")
        detail = await relay.show("guarded")
        assert detail["tracks"]["video"]["codec"] == "H264" and detail["tracks"]["audio"]["codec"] == "opus"
        await relay.clients[0].stop()  # the host ends the show: the replay is finished and remuxed

        async def replay_ready() -> bool:
            return (await relay.api("GET", "/api/shows/guarded/replay"))[1]["state"] == "ready"

        await relay.wait_for(replay_ready, timeout=20, what="the replay and its MP4")
    finally:
        await relay.close_clients()
        server.stop()
    assert log.read_text() == "", log.read_text()[:3000]


async def test_restart_keeps_shows_and_mirrors(server_process, tmp_path):
    data = tmp_path / "data"
    server = server_process(data)
    relay = client_for(server)
    show = await relay.create_show("keep", mirrors=("d1", "d2"))
    await relay.create_show("other")
    assert server.stop() == 0

    server = server_process(data)
    relay = client_for(server)
    listing = (await relay.api("GET", "/api/shows"))[1]["shows"]
    assert [(s["id"], s["title"], s["state"]) for s in listing] == [
        ("keep", "Show keep", "scheduled"), ("other", "Show other", "scheduled")]
    mirrors = (await relay.api("GET", "/api/shows/keep/mirrors"))[1]["mirrors"]
    assert [(m["distributor"], m["name"]) for m in mirrors] == [("d1", "D1"), ("d2", "D2")]
    # the stream key issued before the restart still publishes
    status, body = await relay.request("POST", "/whip/keep", data="v=0\r\n", headers={
        "Content-Type": "application/sdp", "Authorization": f"Bearer {show['stream_key']}"})
    assert status == 400  # key accepted, offer rejected
    status, body = await relay.request("POST", "/whip/keep", data="v=0\r\n", headers={
        "Content-Type": "application/sdp", "Authorization": "Bearer wrong"})
    assert status == 401
    server.stop()


async def test_sigkill_mid_show_then_the_host_comes_back_and_the_show_goes_on(server_process, tmp_path,
                                                                              h264_clip):
    data = tmp_path / "data"
    server = server_process(data)
    relay = client_for(server)
    show = await relay.create_show("crash", mirrors=("d1",))
    await relay.publish(show, host_tracks(h264_clip, None))
    joined_after = time.time()
    viewer = await relay.viewer("crash", "d1", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    assert (await relay.show("crash"))["state"] == "live"
    await relay.figures_saved_since("crash", joined_after)
    server.stop(signal.SIGKILL)
    await relay.close_clients()

    server = server_process(data)
    relay = client_for(server)
    detail = await relay.show("crash")
    assert detail["state"] == "live" and detail["publisher"] is None and detail["reconnecting_until"]
    stats = (await relay.api("GET", "/api/shows/crash/stats"))[1]
    figures = {k: stats["rooms"]["d1"][k] for k in ("viewers", "peak_viewers", "total_sessions")}
    assert figures == {"viewers": 0, "peak_viewers": 1, "total_sessions": 1}
    # The host's encoder reconnects with the same key; the same links play again.
    await relay.publish(show, host_tracks(h264_clip, None))
    viewer = await relay.viewer("crash", "d1", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    detail = await relay.show("crash")
    assert detail["publisher"] is not None and detail["reconnecting_until"] is None
    await relay.close_clients()
    server.stop()


async def test_after_a_restart_a_host_that_never_returns_ends_the_show(server_process, tmp_path, h264_clip):
    data = tmp_path / "data"
    server = server_process(data)
    relay = client_for(server)
    show = await relay.create_show("gone")
    await relay.publish(show, host_tracks(h264_clip, None))
    await relay.wait_for(lambda: _live(relay, "gone"), what="the show to go live")
    server.stop(signal.SIGKILL)
    await relay.close_clients()

    server = server_process(data, env={"RELAY_MEDIA_GRACE_PERIOD_S": "1"})
    relay = client_for(server)

    async def ended() -> bool:
        return (await relay.show("gone"))["state"] == "ended"

    await relay.wait_for(ended, timeout=10, what="the grace period to end the show")
    assert (await relay.show("gone"))["end_reason"] == "host_left"
    server.stop()


async def _live(relay, show_id: str) -> bool:
    return (await relay.show(show_id))["state"] == "live"


async def test_sigterm_tells_readers_closes_peers_and_keeps_the_recording(server_process, tmp_path, h264_clip):
    from test_commerce import SseReader

    data = tmp_path / "data"
    server = server_process(data, env={"RELAY_REPLAY_SEGMENT_TARGET_S": "1"})
    relay = client_for(server)
    show = await relay.create_show("bye")
    await relay.publish(show, host_tracks(h264_clip, None))
    viewer = await relay.viewer("bye", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    reader = await SseReader(f"{relay.base}/events/bye").start()

    async def two_segments() -> bool:
        return (await relay.api("GET", "/api/shows/bye/replay"))[1]["duration_s"] >= 2

    await relay.wait_for(two_segments, timeout=15, what="two replay segments")
    try:
        started = time.monotonic()
        assert server.stop() == 0  # SIGTERM
        stopped_in = time.monotonic() - started
        assert stopped_in < 10, stopped_in
        assert "server.stopping" in [e["type"] for e in await reader.wait_for(2)]

        async def peer_closed() -> bool:
            return viewer.pc.connectionState in ("closed", "failed")

        await relay.wait_for(peer_closed, timeout=10, what="the viewer's peer to be closed by the server")
    finally:
        await reader.close()
        await relay.close_clients()
    playlist = (data / "replays" / "bye" / "index.m3u8").read_text()
    assert playlist.count("seg-") >= 2  # the segment being written was finished, not lost

    server = server_process(data)  # the show waits for its host again
    relay = client_for(server)
    assert (await relay.show("bye"))["state"] == "live"
    server.stop()
