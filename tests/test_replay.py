"""Replays: recorded while live as fMP4 HLS, final and downloadable as soon as the show ends."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import av
import pytest

from conftest import HEIGHT, WIDTH, Relay, relay_settings
from relay.app import SERVICES
from relay.replay.fmp4 import boxes
from relay.replay.timeline import Timeline
from relay_testkit.synthetic import host_tracks


async def ffprobe(target: str) -> dict:
    """ffprobe's view of a file or URL (run without blocking the in-process server)."""
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_name,codec_type,width,height",
        "-of", "json", target, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def decode_all(target: str) -> dict[str, int]:
    """Decode every frame (errors raise) and count them per stream type."""
    counts = {"video": 0, "audio": 0}
    with av.open(target) as container:
        for stream in container.streams:
            stream.codec_context.options = {"err_detect": "explode"}  # corrupt data raises
        for frame in container.decode(*container.streams):
            counts["video" if isinstance(frame, av.VideoFrame) else "audio"] += 1
    return counts


async def replay_info(relay: Relay, show_id: str) -> dict:
    status, body = await relay.api("GET", f"/api/shows/{show_id}/replay")
    assert status == 200, body
    return body


async def wait_state(relay: Relay, show_id: str, states: tuple[str, ...], timeout: float = 20.0) -> dict:
    info: dict = {}

    async def reached() -> bool:
        nonlocal info
        info = await replay_info(relay, show_id)
        return info["state"] in states

    await relay.wait_for(reached, timeout=timeout, what=f"replay of {show_id} to be {states}")
    return info


async def frames_sent(track, n: int) -> bool:
    return track.sent >= n


def replay_dir(relay: Relay, show_id: str) -> Path:
    return Path(relay.settings.server.data_dir) / "replays" / show_id


async def test_a_20s_show_becomes_a_playable_replay(relay, h264_clip, opus_clip):
    show = await relay.create_show("twenty")
    media = host_tracks(h264_clip, opus_clip)
    host = await relay.publish(show, media)
    video = media[1]
    await relay.wait_for(lambda: frames_sent(video, 20 * 30), timeout=40, what="20 s of media sent")
    live = await replay_info(relay, "twenty")
    assert live["state"] == "recording" and live["duration_s"] >= 12

    ended_at = time.monotonic()
    await host.stop()
    info = await wait_state(relay, "twenty", ("processing", "ready"), timeout=5)
    playlist_final = time.monotonic() - ended_at
    assert playlist_final < 2.0
    folder = replay_dir(relay, "twenty")
    text = (folder / "index.m3u8").read_text()
    assert "#EXT-X-ENDLIST" in text and "#EXT-X-PROGRAM-DATE-TIME:" in text and "#EXT-X-MAP:" in text
    info = await wait_state(relay, "twenty", ("ready",))
    assert info["discontinuities"] == 0 and 16 <= info["duration_s"] <= 24
    assert info["hls_url"] == f"{relay.base}/replay/twenty/index.m3u8"
    assert info["mp4_url"] == f"{relay.base}/replay/twenty/show.mp4"

    for target in (info["hls_url"], info["mp4_url"]):
        probe = await ffprobe(target)
        assert abs(float(probe["format"]["duration"]) - 20) <= 4, probe
        codecs = {s["codec_type"]: s for s in probe["streams"]}
        assert codecs["video"]["codec_name"] == "h264" and codecs["audio"]["codec_name"] == "opus"
        assert (codecs["video"]["width"], codecs["video"]["height"]) == (WIDTH, HEIGHT)
    for target in (str(folder / "index.m3u8"), str(folder / "show.mp4")):
        counts = decode_all(target)
        assert abs(counts["video"] - 30 * info["duration_s"]) <= 35, counts
        assert counts["audio"] >= 40 * info["duration_s"], counts
    kinds = [kind for kind, _, _ in boxes((folder / "show.mp4").read_bytes())]
    assert kinds.index("moov") < kinds.index("mdat")  # faststart


async def test_replay_files_are_served_with_ranges_and_cache_headers(relay, h264_clip):
    show = await relay.create_show("served")
    host = await relay.publish(show, host_tracks(h264_clip, None))
    info: dict = {}

    async def one_segment() -> bool:
        nonlocal info
        info = await replay_info(relay, "served")
        return info["duration_s"] > 0

    await relay.wait_for(one_segment, timeout=15, what="a first segment")
    async with aiohttp.ClientSession() as http:
        async with http.get(info["hls_url"]) as res:
            assert res.status == 200 and res.content_type == "application/vnd.apple.mpegurl"
            assert res.headers["Cache-Control"] == "no-cache"
            assert "#EXT-X-PLAYLIST-TYPE:EVENT" in await res.text()
        async with http.get(f"{relay.base}/replay/served/seg-00000.m4s", headers={"Range": "bytes=0-99"}) as res:
            assert res.status == 206 and len(await res.read()) == 100
            assert "immutable" in res.headers["Cache-Control"]
        async with http.get(f"{relay.base}/replay/served/init-0.mp4") as res:
            assert res.status == 200 and res.content_type == "video/mp4"
    await host.stop()
    info = await wait_state(relay, "served", ("ready",))
    async with aiohttp.ClientSession() as http:
        async with http.get(info["mp4_url"], headers={"Range": "bytes=100-"}) as res:
            assert res.status == 206
            assert res.headers["Content-Range"].startswith("bytes 100-")


async def test_host_reconnect_continues_the_same_replay_with_a_discontinuity(relay, h264_clip, opus_clip):
    show = await relay.create_show("again")
    first = host_tracks(h264_clip, opus_clip)
    host = await relay.publish(show, first)
    await relay.wait_for(lambda: frames_sent(first[1], 6 * 30), timeout=20, what="6 s from the first host")
    await host.drop()

    async def host_gone() -> bool:
        return (await relay.show("again"))["publisher"] is None

    await relay.wait_for(host_gone, what="the server to notice the drop")
    sent_first = first[1].sent
    second = host_tracks(h264_clip, opus_clip)
    host = await relay.publish(show, second)
    await relay.wait_for(lambda: frames_sent(second[1], 6 * 30), timeout=20, what="6 s from the second host")
    await host.stop()
    sent_second = second[1].sent
    info = await wait_state(relay, "again", ("ready",))
    assert info["discontinuities"] == 1
    expected = (sent_first + sent_second) / 30
    assert abs(info["duration_s"] - expected) <= 1.5, (info, expected)
    text = (replay_dir(relay, "again") / "index.m3u8").read_text()
    assert text.count("#EXT-X-DISCONTINUITY") == 1 and 'URI="init-1.mp4"' in text
    probe = await ffprobe(info["mp4_url"])
    assert abs(float(probe["format"]["duration"]) - info["duration_s"]) <= 1.0
    assert decode_all(str(replay_dir(relay, "again") / "show.mp4"))["video"] > 0


async def test_audio_only_show_gives_an_audio_only_replay(relay, opus_clip):
    show = await relay.create_show("podcast")
    media = host_tracks(None, opus_clip)
    host = await relay.publish(show, media)
    await relay.wait_for(lambda: frames_sent(media[0], 6 * 50), timeout=20, what="6 s of audio")
    await host.stop()
    info = await wait_state(relay, "podcast", ("ready",))
    for target in (info["hls_url"], info["mp4_url"]):
        probe = await ffprobe(target)
        assert [s["codec_name"] for s in probe["streams"]] == ["opus"]
        assert abs(float(probe["format"]["duration"]) - 6) <= 4.5
    counts = decode_all(str(replay_dir(relay, "podcast") / "index.m3u8"))
    assert counts["video"] == 0 and counts["audio"] >= 100


async def test_replay_paths_outside_a_replay_are_404(relay, h264_clip):
    show = await relay.create_show("safe")
    host = await relay.publish(show, host_tracks(h264_clip, None))
    await relay.wait_for(lambda: _has_segment(relay, "safe"), timeout=15, what="a first segment")
    await host.stop()
    await wait_state(relay, "safe", ("ready",))
    (Path(relay.settings.server.data_dir) / "replays" / "secret.txt").write_text("secret")
    for path in ("/replay/safe/../relay.db", "/replay/safe/..%2F..%2Frelay.db", "/replay/safe/%2Fetc%2Fpasswd",
                 "/replay/safe/..%2Fsecret.txt", "/replay/safe/index.m3u8%00", "/replay/safe/seg-99999.m4s",
                 "/replay/safe/init-0.mp4.part", "/replay/..%2Freplays/secret.txt", "/replay/nope/index.m3u8",
                 "/replay/safe/%2e%2e/relay.db", "/replay/safe//etc/passwd"):
        async with aiohttp.ClientSession() as http:
            async with http.get(relay.base + path) as res:
                body = await res.read()
                assert res.status == 404, path
                assert b"secret" not in body and b"SQLite" not in body
    assert (await relay.api("GET", "/api/shows/nope/replay"))[0] == 404
    await relay.create_show("never-live")
    assert (await relay.api("GET", "/api/shows/never-live/replay"))[0] == 404


async def _has_segment(relay: Relay, show_id: str) -> bool:
    return (await replay_info(relay, show_id))["duration_s"] > 0


async def test_private_replays_need_the_admin_key(relay, h264_clip):
    status, show = await relay.api("POST", "/api/shows", {"title": "private", "id": "private", "replay_public": False})
    assert status == 201 and show["replay_public"] is False
    host = await relay.publish(show, host_tracks(h264_clip, None))
    await relay.wait_for(lambda: _has_segment(relay, "private"), timeout=15, what="a first segment")
    await host.stop()
    info = await wait_state(relay, "private", ("ready",))
    assert (await relay.request("GET", "/replay/private/index.m3u8"))[0] == 401
    assert (await relay.request("GET", "/api/shows/private/replay"))[0] == 401
    assert (await relay.request("GET", "/replay/private/index.m3u8", headers=relay.admin))[0] == 200
    assert info["state"] == "ready"


async def test_sigkill_mid_show_keeps_every_closed_segment(server_process, tmp_path, h264_clip, opus_clip):
    data = tmp_path / "data"
    server = server_process(data)
    relay = Relay(server.base, relay_settings(data))
    show = await relay.create_show("crash")
    media = host_tracks(h264_clip, opus_clip)
    await relay.publish(show, media)
    await relay.wait_for(lambda: frames_sent(media[1], 10 * 30), timeout=25, what="10 s of media")
    closed = (await replay_info(relay, "crash"))["duration_s"]
    assert closed >= 4
    server.stop(signal.SIGKILL)
    await relay.close_clients()

    server = server_process(data, env={"RELAY_MEDIA_GRACE_PERIOD_S": "1"})  # the host never returns
    relay = Relay(server.base, relay_settings(data))
    info = await wait_state(relay, "crash", ("ready",))
    assert (await relay.show("crash"))["end_reason"] == "host_left"
    assert info["duration_s"] >= closed
    folder = data / "replays" / "crash"
    assert "#EXT-X-ENDLIST" in (folder / "index.m3u8").read_text()
    for target in (str(folder / "index.m3u8"), str(folder / "show.mp4")):
        counts = decode_all(target)
        assert counts["video"] >= 30 * closed - 5, counts
    server.stop()


def test_timeline_maps_wall_clock_to_replay_time_across_reconnects():
    timeline = Timeline()
    assert timeline.stream_time(100.0) == 0.0
    timeline.begin_run(1000.0)
    assert timeline.stream_time(1004.5) == pytest.approx(4.5)
    timeline.end_run(10.0)
    assert timeline.stream_time(1015.0) == pytest.approx(10.0)  # host away: the gap is not replayed
    timeline.begin_run(1020.0)
    assert timeline.stream_time(1021.0) == pytest.approx(11.0)
    assert timeline.stream_time(999.0) == 0.0


async def test_retention_deletes_old_replays_but_never_a_live_one(make_relay, h264_clip):
    relay = await make_relay()
    replays = relay.app[SERVICES].replays
    old = await relay.create_show("old")
    host = await relay.publish(old, host_tracks(h264_clip, None))
    await relay.wait_for(lambda: _has_segment(relay, "old"), timeout=15, what="a segment of the old show")
    await host.stop()
    await wait_state(relay, "old", ("ready",))
    live = await relay.create_show("live-now")
    await relay.publish(live, host_tracks(h264_clip, None))
    await relay.wait_for(lambda: _has_segment(relay, "live-now"), timeout=15, what="a segment of the live show")

    far_future = time.time() + 31 * 86400
    assert await replays.expire(now=far_future) == ["old"]
    assert not replay_dir(relay, "old").exists()
    assert (await relay.api("GET", "/api/shows/old/replay"))[0] == 404
    assert replay_dir(relay, "live-now").exists()
    assert (await replay_info(relay, "live-now"))["state"] == "recording"


@pytest.fixture
def small_replay_disk(tmp_path):
    """The replay folder on a 400 KiB tmpfs, so recording runs out of space within seconds."""
    folder = tmp_path / "data0" / "replays"
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


async def test_a_full_disk_is_a_logged_error_and_viewers_keep_watching(small_replay_disk, make_relay, h264_clip,
                                                                       caplog):
    relay = await make_relay()
    assert Path(relay.settings.server.data_dir) / "replays" == small_replay_disk
    show = await relay.create_show("full")
    media = host_tracks(h264_clip, None)
    host = await relay.publish(show, media)
    viewer = await relay.viewer("full", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    info: dict = {}

    async def disk_full() -> bool:
        nonlocal info
        info = await replay_info(relay, "full")
        return bool(info["error"])

    await relay.wait_for(disk_full, timeout=30, what="the recorder to run out of space")
    assert "space" in info["error"].lower()
    assert any("recording error" in r.getMessage() for r in caplog.records)
    frames = viewer.tracks["video"].frames

    async def still_playing() -> bool:
        return viewer.tracks["video"].frames >= frames + 60

    await relay.wait_for(still_playing, what="the viewer to keep receiving after the disk filled")
    assert (await relay.request("GET", "/healthz"))[0] == 200
    await host.stop()
    final = await wait_state(relay, "full", ("ready", "failed"))
    assert final["error"]


async def test_a_replay_goes_on_after_a_restart_when_the_host_returns(server_process, tmp_path, h264_clip,
                                                                      opus_clip):
    data = tmp_path / "data"
    server = server_process(data)
    relay = Relay(server.base, relay_settings(data))
    show = await relay.create_show("phoenix")
    media = host_tracks(h264_clip, opus_clip)
    await relay.publish(show, media)
    await relay.wait_for(lambda: frames_sent(media[1], 6 * 30), timeout=20, what="6 s of media")
    before = (await replay_info(relay, "phoenix"))["duration_s"]
    assert before >= 4
    server.stop(signal.SIGKILL)
    await relay.close_clients()

    server = server_process(data)
    relay = Relay(server.base, relay_settings(data))
    media = host_tracks(h264_clip, opus_clip)
    await relay.publish(show, media)  # the encoder reconnects after the restart

    async def grown() -> bool:
        return (await replay_info(relay, "phoenix"))["duration_s"] >= before + 4

    await relay.wait_for(grown, timeout=25, what="the replay to grow after the restart")
    await relay.api("POST", "/api/shows/phoenix/end")
    info = await wait_state(relay, "phoenix", ("ready",))
    assert info["discontinuities"] == 1 and info["error"] is None
    playlist = (data / "replays" / "phoenix" / "index.m3u8").read_text()
    assert "init-0.mp4" in playlist and "init-1.mp4" in playlist and "#EXT-X-ENDLIST" in playlist
    counts = decode_all(str(data / "replays" / "phoenix" / "show.mp4"))
    assert counts["video"] >= 30 * (before + 4) - 5, counts
    server.stop()
