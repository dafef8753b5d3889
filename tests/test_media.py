"""Media end to end over loopback: an aiortc host publishing H.264 + Opus over WHIP, aiortc
viewers playing the HQ room and mirror rooms over WHEP."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from conftest import HEIGHT, WIDTH

from relay import aiortc_hooks
from relay_testkit.synthetic import encode_pattern, host_tracks, video_track
from relay_testkit.whip import WhipClient


async def measure_fps(client, seconds: float = 3.0) -> float:
    counter = client.tracks["video"]
    start_frames, start = counter.frames, time.monotonic()
    await asyncio.sleep(seconds)  # a measurement window, not a synchronisation point
    return counter.fps_since(start_frames, start)


async def test_hq_and_mirror_rooms_all_play(relay, h264_clip, opus_clip):
    show = await relay.create_show("fanout", mirrors=("d1", "d2"))
    await relay.publish(show, host_tracks(h264_clip, opus_clip))
    viewers = [await relay.viewer("fanout"), await relay.viewer("fanout", "d1"), await relay.viewer("fanout", "d2")]
    for viewer in viewers:
        assert await viewer.first_frame("video") < 5
        await viewer.first_frame("audio")
    await asyncio.sleep(1.0)  # let the fast-join burst pass before measuring the steady rate
    rates = await asyncio.gather(*(measure_fps(v) for v in viewers))
    for viewer, fps in zip(viewers, rates):
        video = viewer.tracks["video"]
        assert (video.width, video.height) == (WIDTH, HEIGHT)
        assert fps >= 25, rates
        assert viewer.tracks["audio"].frames > 50
    stats = (await relay.api("GET", "/api/shows/fanout/stats"))[1]
    assert {room: r["viewers"] for room, r in stats["rooms"].items()} == {"hq": 1, "d1": 1, "d2": 1}


def nal_units(access_unit: bytes) -> list[bytes]:
    return [n for n in aiortc_hooks.split_h264(access_unit) if n]


async def test_viewer_receives_the_hosts_access_units_unchanged(relay, h264_clip):
    show = await relay.create_show("bytes")
    await relay.publish(show, host_tracks(h264_clip, None))
    viewer = await relay.viewer("bytes", kinds=("video",), decode=False)
    received = viewer.tracks["video"]
    received.data = []
    await relay.wait_for(lambda: _at_least(received, 90), what="90 frames at the viewer")
    clip = [nal_units(au) for au in h264_clip]  # the host sends it looped
    got = [nal_units(au) for au in received.data[:90]]
    # The viewer starts at a cached keyframe: find it in the clip, then every following
    # access unit must match NAL unit for NAL unit.
    first = clip.index(got[0])
    assert got == [clip[(first + i) % len(clip)] for i in range(len(got))]


async def _at_least(counter, n: int) -> bool:
    return counter.frames >= n


async def test_mid_gop_join_starts_from_the_cached_keyframe(relay, h264_clip_long_gop):
    show = await relay.create_show("gop")
    await relay.publish(show, host_tracks(h264_clip_long_gop, None))

    async def mid_gop() -> bool:
        video = (await relay.show("gop")).get("tracks", {}).get("video")
        return bool(video) and video["keyframes"] >= 1 and 45 <= video["gop_cache_frames"] <= 90

    await relay.wait_for(mid_gop, timeout=15, what="the host to be 1.5-3 s into a 4 s GOP")
    viewer = await relay.viewer("gop", kinds=("video",))
    assert await viewer.first_frame("video", timeout=5) < 1.0


async def test_viewer_waiting_before_the_show_starts_gets_media(relay, h264_clip, opus_clip):
    show = await relay.create_show("early")
    viewer = await relay.viewer("early")
    assert (await relay.show("early"))["state"] == "scheduled"
    await relay.publish(show, host_tracks(h264_clip, opus_clip))
    await viewer.first_frame("video", timeout=10)
    await viewer.first_frame("audio", timeout=10)
    assert (await relay.show("early"))["state"] == "live"


async def test_audio_only_and_video_only_shows(relay, h264_clip, opus_clip):
    audio_show = await relay.create_show("radio")
    await relay.publish(audio_show, host_tracks(None, opus_clip))
    listener = await relay.viewer("radio", kinds=("audio",))
    await listener.first_frame("audio")

    video_show = await relay.create_show("silent")
    await relay.publish(video_show, host_tracks(h264_clip, None))
    watcher = await relay.viewer("silent", kinds=("video",))
    await watcher.first_frame("video")
    assert set((await relay.show("silent"))["tracks"]) == {"video"}
    assert set((await relay.show("radio"))["tracks"]) == {"audio"}


async def test_host_drop_and_reconnect_keeps_viewers(relay, h264_clip, opus_clip):
    show = await relay.create_show("reconnect", mirrors=("d1",))
    host = await relay.publish(show, host_tracks(h264_clip, opus_clip))
    viewers = [await relay.viewer("reconnect"), await relay.viewer("reconnect", "d1")]
    for viewer in viewers:
        await viewer.first_frame("video")
    sessions = {v.location for v in viewers}

    await host.drop()  # network gone, no DELETE

    async def host_gone() -> bool:
        detail = await relay.show("reconnect")
        return detail["publisher"] is None and detail["reconnecting_until"] is not None

    await relay.wait_for(host_gone, timeout=10, what="the server to notice the host left")
    detail = await relay.show("reconnect")
    assert detail["state"] == "live"
    assert detail["viewers"] == {"hq": 1, "d1": 1}
    before = [v.tracks["video"].frames for v in viewers]

    await relay.publish(show, host_tracks(h264_clip, opus_clip))

    async def resumed() -> bool:
        return all(v.tracks["video"].frames >= b + 30 for v, b in zip(viewers, before))

    await relay.wait_for(resumed, timeout=10, what="viewers to receive the new host's frames")
    assert all(v.pc.connectionState == "connected" for v in viewers)
    detail = await relay.show("reconnect")
    assert detail["state"] == "live" and detail["reconnecting_until"] is None
    stats = (await relay.api("GET", "/api/shows/reconnect/stats"))[1]
    assert stats["rooms"]["hq"]["total_sessions"] == 1 and stats["rooms"]["d1"]["total_sessions"] == 1
    assert {v.location for v in viewers} == sessions


async def test_new_publish_takes_over(relay, h264_clip):
    show = await relay.create_show("takeover")
    first = await relay.publish(show, host_tracks(h264_clip, None))
    viewer = await relay.viewer("takeover", kinds=("video",))
    await viewer.first_frame("video")
    second = await relay.publish(show, host_tracks(h264_clip, None))

    async def first_closed() -> bool:
        return first.pc.connectionState == "closed"

    await relay.wait_for(first_closed, what="the old host session to be closed")
    assert (await relay.show("takeover"))["publisher"]["session"] == second.location.rsplit("/", 1)[1]
    frames = viewer.tracks["video"].frames
    await relay.wait_for(lambda: _at_least(viewer.tracks["video"], frames + 30), what="frames from the new host")


async def test_grace_period_over_ends_the_show(make_relay, h264_clip):
    relay = await make_relay(grace_period_s=1.0)
    show = await relay.create_show("short")
    host = await relay.publish(show, host_tracks(h264_clip, None))
    viewer = await relay.viewer("short", kinds=("video",))
    await viewer.first_frame("video")
    await host.drop()

    async def ended() -> bool:
        return (await relay.show("short"))["state"] == "ended"

    await relay.wait_for(ended, timeout=10, what="the show to end after the grace period")
    detail = await relay.show("short")
    assert detail["end_reason"] == "host_left"

    async def viewer_closed() -> bool:
        return viewer.pc.connectionState == "closed"

    await relay.wait_for(viewer_closed, what="the viewer to be disconnected")


async def test_delete_ends_the_show_and_operator_end_too(relay, h264_clip):
    show = await relay.create_show("bye")
    host = await relay.publish(show, host_tracks(h264_clip, None))
    await host.stop()
    detail = await relay.show("bye")
    assert detail["state"] == "ended" and detail["end_reason"] == "host_ended"

    show2 = await relay.create_show("cut")
    await relay.publish(show2, host_tracks(h264_clip, None))
    viewer = await relay.viewer("cut", kinds=("video",))
    await viewer.first_frame("video")
    status, body = await relay.api("POST", "/api/shows/cut/end")
    assert status == 200 and body["state"] == "ended" and body["end_reason"] == "ended_by_operator"
    assert body["publisher"] is None
    status, body = await relay.request("POST", "/whep/cut", data=viewer.pc.localDescription.sdp,
                                       headers={"Content-Type": "application/sdp"})
    assert status == 409


async def test_viewer_keyframe_requests_reach_the_host_at_most_once_a_second(relay, h264_clip):
    show = await relay.create_show("pli")
    host = await relay.publish(show, host_tracks(h264_clip, None))
    sender = next(t.sender for t in host.pc.getTransceivers() if t.kind == "video")
    received: list[float] = []
    first = asyncio.get_running_loop().create_future()

    def on_pli() -> None:  # the host's encoder would make a keyframe here
        received.append(time.monotonic())
        if not first.done():
            first.set_result(None)

    sender._send_keyframe = on_pli
    viewers = [await relay.viewer("pli", kinds=("video",), decode=False) for _ in range(4)]
    for viewer in viewers:
        await viewer.first_frame("video")
    received.clear()
    start = time.monotonic()
    while time.monotonic() - start < 2.5:
        for viewer in viewers:
            receiver = viewer.pc.getTransceivers()[0].receiver
            assert aiortc_hooks.request_keyframe(receiver)
        await asyncio.sleep(0.05)  # viewers asking ~20 times a second each
    await asyncio.wait_for(first, 2)
    gaps = [b - a for a, b in zip(received, received[1:])]
    assert 2 <= len(received) <= 4, received
    assert all(gap >= 0.9 for gap in gaps), gaps
    requests = (await relay.show("pli"))["keyframe_requests"]
    assert requests["received"] >= 4 * 40


async def test_vp8_host_and_viewers_who_waited_with_another_codec(relay):
    vp8 = encode_pattern(320, 240, 30, seconds=1.0, gop=30, bitrate=300_000, codec_name="libvpx")
    show = await relay.create_show("vp8")
    waiting = await relay.viewer("vp8", kinds=("video",))  # negotiates H.264, the default
    host = WhipClient(f"{relay.base}/whip/vp8", show["stream_key"], [video_track(vp8)], video_codec="VP8")
    await host.start()
    relay.clients.append(host)

    async def waiting_closed() -> bool:
        return (await relay.show("vp8"))["viewers"]["hq"] == 0

    await relay.wait_for(waiting_closed, what="the H.264 viewer to be closed for the VP8 host")
    assert (await relay.show("vp8"))["tracks"]["video"]["codec"] == "VP8"
    assert (await relay.request("DELETE", waiting.location[len(relay.base):]))[0] == 404
    viewer = await relay.viewer("vp8", kinds=("video",))
    await viewer.first_frame("video")
    await relay.wait_for(lambda: _at_least(viewer.tracks["video"], 30), what="30 VP8 frames decoded")
    assert (viewer.tracks["video"].width, viewer.tracks["video"].height) == (320, 240)


async def _offer_sdp(h264_clip, rewrite) -> tuple[object, str]:
    """A host's offer, changed by `rewrite` (what a broken or unreachable host sends)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for track in host_tracks(h264_clip, None):
        pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, rewrite(pc.localDescription.sdp)


@pytest.mark.parametrize("failure, rewrite, reason", [
    # ICE: a candidate nobody answers on, and the host never starts its checks
    ("ice", lambda sdp: re.sub(r"a=candidate:(\S+) (\d) (\S+) (\d+) 127\.0\.0\.1 \d+",
                               r"a=candidate:\1 \2 \3 \4 127.0.0.1 9", sdp), "not connected within"),
    # DTLS: the certificate the host presents is not the one its offer named
    ("dtls", lambda sdp: re.sub(r"a=fingerprint:sha-256 \S+", "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), sdp),
     "DTLS handshake failed"),
])
async def test_a_failed_publish_handshake_leaves_the_show_as_it_was(make_relay, h264_clip, caplog, failure,
                                                                     rewrite, reason):
    relay = await make_relay(configure=lambda s: setattr(s.ice, "connect_timeout_s", 2.0))
    show = await relay.create_show("retry")
    pc, offer = await _offer_sdp(h264_clip, rewrite)
    status, answer = await relay.request("POST", "/whip/retry", data=offer, headers={
        "Content-Type": "application/sdp", "Authorization": f"Bearer {show['stream_key']}"})
    assert status == 201
    if failure == "dtls":  # ICE completes, then the relay sees a certificate it was not told of
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def failure_logged() -> bool:
        return any("publish attempt" in r.getMessage() and reason in r.getMessage() for r in caplog.records)

    await relay.wait_for(failure_logged, timeout=10, what=f"the {failure} failure to be logged")
    await pc.close()
    detail = await relay.show("retry")
    assert detail["state"] == "scheduled" and detail["publisher"] is None and detail["end_reason"] is None
    # The host tries again with the same key: on air.
    await relay.publish(show, host_tracks(h264_clip, None))
    detail = await relay.show("retry")
    assert detail["state"] == "live" and detail["publisher"]["connection"] == "connected"


async def test_a_host_that_gives_up_before_connecting_does_not_end_the_show(relay, h264_clip):
    show = await relay.create_show("pending")
    auth = {"Authorization": f"Bearer {show['stream_key']}"}
    pc, offer = await _offer_sdp(h264_clip, lambda sdp: re.sub(
        r"a=candidate:(\S+) (\d) (\S+) (\d+) 127\.0\.0\.1 \d+", r"a=candidate:\1 \2 \3 \4 127.0.0.1 9", sdp))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{relay.base}/whip/pending", data=offer,
                             headers={"Content-Type": "application/sdp", **auth}) as res:
            assert res.status == 201
            location = res.headers["Location"]
        detail = await relay.show("pending")
        assert detail["state"] == "scheduled" and detail["publisher"] is None  # answered, not on air
        async with http.delete(relay.base + location, headers=auth) as res:
            assert res.status == 200
    await pc.close()
    assert (await relay.show("pending"))["state"] == "scheduled"
    await relay.publish(show, host_tracks(h264_clip, None))
    assert (await relay.show("pending"))["state"] == "live"
