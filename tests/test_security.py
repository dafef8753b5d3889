"""Credentials and limits: rotatable, expiring stream keys; token-only playback; signed replay
links; viewer caps; CORS; and no secret in the logs."""

from __future__ import annotations

import time

import aiohttp
import pytest

from conftest import ADMIN_KEY, Relay, relay_settings
from relay.app import SERVICES
from relay_testkit.synthetic import host_tracks
from relay_testkit.whep import SignalingError


async def test_a_rotated_stream_key_stops_new_publishes_and_keeps_the_host_on_air(relay, h264_clip, monkeypatch):
    show = await relay.create_show("keys")
    host = await relay.publish(show, host_tracks(h264_clip, None))
    viewer = await relay.viewer("keys", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    status, rotated = await relay.api("POST", "/api/shows/keys/stream-key", {"ttl_s": 3600})
    assert status == 200 and rotated["stream_key"] != show["stream_key"]
    assert rotated["stream_key_expires_at"] == pytest.approx(time.time() + 3600, abs=5)
    with pytest.raises(SignalingError) as refused:
        await relay.publish(show, host_tracks(h264_clip, None))  # the old key
    assert refused.value.status == 401
    frames = viewer.tracks["video"].frames

    async def still_on_air() -> bool:
        return viewer.tracks["video"].frames > frames + 15

    await relay.wait_for(still_on_air, what="the host already live to stay on air")
    assert (await relay.api("POST", "/api/shows/keys/stream-key", {"ttl_s": 5}))[0] == 422
    assert (await relay.request("POST", "/api/shows/keys/stream-key"))[0] == 401
    await host.drop()
    second = await relay.publish({**show, "stream_key": rotated["stream_key"]}, host_tracks(h264_clip, None))
    # Rotated again while this host is on air: it can still end its own session with its key.
    await relay.api("POST", "/api/shows/keys/stream-key")
    await second.stop()
    assert (await relay.show("keys"))["end_reason"] == "host_ended"
    # An ended show's key cannot be renewed: it would publish nothing.
    status, error = await relay.api("POST", "/api/shows/keys/stream-key")
    assert status == 409 and error["error"] == "show_ended"

    # An expired key is refused with its own error; the show itself is untouched.
    await relay.create_show("keys2")
    rotated = (await relay.api("POST", "/api/shows/keys2/stream-key", {"ttl_s": 3600}))[1]
    hour_later = time.time() + 3601  # as if its hour had passed
    monkeypatch.setattr(relay.app[SERVICES].catalog, "clock", lambda: hour_later)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{relay.base}/whip/keys2", data="v=0\r\n", headers={
                "Authorization": f"Bearer {rotated['stream_key']}", "Content-Type": "application/sdp"}) as res:
            assert res.status == 401 and (await res.json())["error"] == "stream_key_expired"
    assert (await relay.show("keys2"))["state"] == "scheduled"


async def test_token_playback_needs_a_viewer_token_of_the_room(relay, h264_clip):
    status, show = await relay.api("POST", "/api/shows", {"title": "VIP", "id": "vip", "playback": "token"})
    assert status == 201 and show["playback"] == "token"
    await relay.api("POST", "/api/shows/vip/mirrors", {"distributor": "d1", "name": "D1"})
    await relay.publish(show, host_tracks(h264_clip, None))
    assert (await relay.request("POST", "/api/shows/vip/viewers", json={"room": "d1"}))[0] == 401
    status, issued = await relay.request("POST", "/api/shows/vip/viewers", json={"room": "d1", "ref": "amy"},
                                         headers=relay.admin)
    assert status == 201
    for token, room, expected in ((None, "d1", 401), ("forged", "d1", 401), (issued["token"], None, 403)):
        with pytest.raises(SignalingError) as refused:
            await relay.viewer("vip", room, kinds=("video",), decode=False, token=token)
        assert refused.value.status == expected
    viewer = await relay.viewer("vip", "d1", kinds=("video",), decode=False, token=issued["token"])
    await viewer.first_frame("video")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{relay.base}/events/vip/d1") as res:
            assert res.status == 401
        async with http.get(f"{relay.base}/events/vip/d1?token={issued['token']}") as res:
            assert res.status == 200 and res.content_type == "text/event-stream"
    stats = (await relay.api("GET", "/api/shows/vip/stats"))[1]
    assert stats["rooms"]["d1"]["viewers"] == 1 and stats["rooms"]["hq"]["total_sessions"] == 0
    assert (await relay.show("vip"))["replay_public"] is False  # its replay is not public either
    # A later show that reuses the id does not accept this show's tokens.
    await relay.close_clients()
    assert (await relay.api("DELETE", "/api/shows/vip"))[0] == 204
    await relay.api("POST", "/api/shows", {"title": "VIP 2", "id": "vip", "playback": "token"})
    await relay.api("POST", "/api/shows/vip/mirrors", {"distributor": "d1", "name": "D1"})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{relay.base}/events/vip/d1?token={issued['token']}") as res:
            assert res.status == 401


async def status_of(url: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as res:
            return res.status


async def test_private_replays_open_with_signed_expiring_links_only(relay, h264_clip):
    status, show = await relay.api("POST", "/api/shows", {"title": "p", "id": "private", "replay_public": False})
    await relay.api("POST", "/api/shows", {"title": "o", "id": "other", "replay_public": False})
    host = await relay.publish(show, host_tracks(h264_clip, None))

    async def recorded() -> bool:
        return (await relay.api("GET", "/api/shows/private/replay"))[1]["duration_s"] > 0

    await relay.wait_for(recorded, timeout=15, what="a first segment")
    await host.stop()
    info = (await relay.api("GET", "/api/shows/private/replay?link_ttl_s=600"))[1]
    links = info["signed_links"]
    assert links["expires_at"] == pytest.approx(time.time() + 600, abs=5)
    status, playlist = await relay.request("GET", links["hls_url"].removeprefix(relay.base))
    assert status == 200 and "#EXTM3U" in playlist
    segment = next(line for line in playlist.splitlines() if line.startswith("seg-"))
    base = links["hls_url"].removeprefix(relay.base).rsplit("/", 1)[0]
    assert await status_of(f"{relay.base}{base}/{segment}") == 200  # relative URIs carry the token
    assert await status_of(f"{relay.base}/replay/private/{segment}") == 401
    token = base.rsplit("/", 1)[1]
    assert (await relay.request("GET", f"/replay/other/signed/{token}/index.m3u8"))[0] in (401, 404)
    assert (await relay.request("GET", f"/replay/private/signed/{token[:-2]}xx/index.m3u8"))[0] == 401
    for bad in ("5", "²", "x"):
        assert (await relay.request("GET", f"/api/shows/private/replay?link_ttl_s={bad}",
                                    headers=relay.admin))[0] == 400
    assert await status_of(f"{relay.base}{base}/chapters.vtt") == 200
    assert await status_of(f"{relay.base}{base}/show.mp4") in (200, 404)  # 404 until the MP4 is made


async def test_viewers_beyond_the_show_cap_get_503_with_retry_after(make_relay, h264_clip):
    relay = await make_relay(configure=lambda s: setattr(s.limits, "max_viewers_per_show", 2))
    show = await relay.create_show("small")
    await relay.publish(show, host_tracks(h264_clip, None))
    for _ in range(2):
        await relay.viewer("small", kinds=("video",), decode=False)
    async with aiohttp.ClientSession() as http:
        client = relay.clients[-1]
        sdp = client.pc.localDescription.sdp
        async with http.post(f"{relay.base}/whep/small", data=sdp, headers={"Content-Type": "application/sdp"}) as res:
            assert res.status == 503 and res.headers["Retry-After"] == "10"
            assert (await res.json())["error"] == "show_full"
    assert (await relay.api("GET", "/api/shows/small/stats"))[1]["rooms"]["hq"]["viewers"] == 2


async def test_cors_answers_only_the_configured_origins(make_relay):
    relay = await make_relay(configure=lambda s: setattr(s.server, "cors_origins", ["https://shop.example"]))
    await relay.create_show("cors")
    async with aiohttp.ClientSession() as http:
        for origin, expected in (("https://shop.example", "https://shop.example"), ("https://evil.example", None)):
            async with http.options(f"{relay.base}/whep/cors", headers={"Origin": origin}) as res:
                assert res.headers.get("Access-Control-Allow-Origin") == expected
            async with http.get(f"{relay.base}/api/shows/cors/status", headers={"Origin": origin}) as res:
                assert res.headers.get("Access-Control-Allow-Origin") == expected
        async with http.options(f"{relay.base}/api/shows/cors/coupons/c/claim", headers={
                "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, idempotency-key"}) as res:
            assert res.status == 204  # a shop's page may claim from the browser
            assert "Idempotency-Key" in res.headers["Access-Control-Allow-Headers"]


async def test_no_secret_or_token_reaches_the_log(server_process, tmp_path, h264_clip):
    data = tmp_path / "data"
    server = server_process(data, env={"RELAY_AUTH_TOKEN_SECRET": "s3cret-signing-key-for-tokens"})
    relay = Relay(server.base, relay_settings(data))
    show = await relay.create_show("quiet")
    await relay.publish(show, host_tracks(h264_clip, None))
    status, viewer = await relay.request("POST", "/api/shows/quiet/viewers", json={"room": "hq"})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{relay.base}/events/quiet?token={viewer['token']}&last_event_id=0") as res:
            assert res.status == 200
    await relay.api("POST", "/api/shows/quiet/stream-key")
    await relay.close_clients()
    server.stop()
    log = server.log_text()
    assert "/events/quiet" in log  # the access log is there...
    for secret in (show["stream_key"], ADMIN_KEY, viewer["token"], "s3cret-signing-key-for-tokens"):
        assert secret not in log  # ...without any secret
