"""Bad input: a JSON error with the right status, and nothing changes."""

from __future__ import annotations

import re

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from relay.app import SERVICES




async def make_offer(direction: str, kinds=("audio", "video")) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in kinds:
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def only_codecs(sdp: str, video: str, audio: str) -> str:
    """Rewrite an offer so its video and audio sections offer only the given codec names."""
    return sdp.replace("H264/90000", f"{video}/90000").replace("VP8/90000", f"{video}/90000") \
              .replace("opus/48000/2", f"{audio}/8000").replace("PCMU/8000", f"{audio}/8000") \
              .replace("PCMA/8000", f"{audio}/8000")


async def snapshot(relay, show_id: str) -> dict:
    detail = await relay.show(show_id)
    stats = (await relay.api("GET", f"/api/shows/{show_id}/stats"))[1]
    return {k: detail[k] for k in ("state", "publisher", "viewers", "started_at", "ended_at")} | {"stats": stats}


def assert_error(status: int, body, expected: int, text: str | None = None) -> None:
    assert status == expected, body
    assert isinstance(body, dict) and body["error"] and body["message"], body
    if text:
        assert re.search(text, body["message"], re.I), body


@pytest.fixture
async def scene(relay):
    show = await relay.create_show("shop", mirrors=("d1",))
    return relay, show


async def post_sdp(relay, path: str, sdp: str, key: str | None = None, content_type="application/sdp"):
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return await relay.request("POST", path, data=sdp.encode(), headers=headers)


async def test_whip_bad_input_changes_nothing(scene):
    relay, show = scene
    key = show["stream_key"]
    offer = await make_offer("sendonly")
    before = await snapshot(relay, "shop")

    assert_error(*await post_sdp(relay, "/whip/shop", "v=0\r\nthis is not sdp", key), 400, "malformed")
    assert_error(*await post_sdp(relay, "/whip/shop", "hello", key), 400, "malformed")
    assert_error(*await post_sdp(relay, "/whip/shop", offer.replace("a=fingerprint", "a=x-fp"), key), 400)
    assert_error(*await post_sdp(relay, "/whip/shop", only_codecs(offer, "VP9", "G722"), key), 400,
                 "no supported codec")
    assert_error(*await post_sdp(relay, "/whip/shop", await make_offer("recvonly"), key), 400, "must send")
    assert_error(*await post_sdp(relay, "/whip/nope", offer, key), 404)
    assert_error(*await post_sdp(relay, "/whip/shop", offer, None), 401)
    assert_error(*await post_sdp(relay, "/whip/shop", offer, "wrong-key"), 401)
    assert_error(*await post_sdp(relay, "/whip/shop", offer, key, "text/plain"), 415)
    huge = offer + "a=x-pad:" + "x" * 70000 + "\r\n"
    assert_error(*await post_sdp(relay, "/whip/shop", huge, key), 413)
    status, body = await relay.request("PATCH", "/whip/shop/whatever")
    assert_error(status, body, 405)

    assert await snapshot(relay, "shop") == before
    live = relay.app[SERVICES].live.running.get("shop")
    assert live is None or live.publisher is None


async def test_whep_bad_input_changes_nothing(scene, h264_clip):
    relay, show = scene
    offer = await make_offer("recvonly")
    before = await snapshot(relay, "shop")

    assert_error(*await post_sdp(relay, "/whep/shop", "garbage"), 400)
    assert_error(*await post_sdp(relay, "/whep/shop", only_codecs(offer, "VP9", "G722")), 400, "no supported codec")
    assert_error(*await post_sdp(relay, "/whep/shop", await make_offer("sendonly")), 400, "must receive")
    assert_error(*await post_sdp(relay, "/whep/nope", offer), 404)
    assert_error(*await post_sdp(relay, "/whep/shop/nobody", offer), 404)
    assert_error(*await post_sdp(relay, "/whep/shop", offer, content_type="application/json"), 415)
    assert_error(*await post_sdp(relay, "/whep/shop", offer + "a=x:" + "y" * 70000 + "\r\n"), 413)
    status, body = await relay.request("DELETE", "/whep/shop/hq/no-such-session")
    assert_error(status, body, 404)

    after = await snapshot(relay, "shop")
    assert after == before
    live = relay.app[SERVICES].live.running.get("shop")
    assert live is None or not live.viewers


async def test_whep_on_an_ended_show_is_409(scene):
    relay, show = scene
    assert (await relay.api("POST", "/api/shows/shop/end"))[0] == 200
    offer = await make_offer("recvonly")
    before = await snapshot(relay, "shop")
    assert_error(*await post_sdp(relay, "/whep/shop", offer), 409, "ended")
    assert_error(*await post_sdp(relay, "/whep/shop/d1", offer), 409, "ended")
    assert_error(*await post_sdp(relay, "/whip/shop", await make_offer("sendonly"), show["stream_key"]), 409)
    assert await snapshot(relay, "shop") == before


async def test_admin_api_bad_input(scene):
    relay, show = scene
    shows_before = (await relay.api("GET", "/api/shows"))[1]

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        status, body = await relay.request("POST", "/api/shows", json={"title": "x"}, headers=headers)
        assert_error(status, body, 401)
        status, body = await relay.request("GET", "/api/shows/shop/stats", headers=headers)
        assert_error(status, body, 401)
        status, body = await relay.request("DELETE", "/api/shows/shop", headers=headers)
        assert_error(status, body, 401)
    assert_error(*await relay.api("POST", "/api/shows", {"title": ""}), 422, "title")
    assert_error(*await relay.api("POST", "/api/shows", {"title": "t", "id": "Bad Id!"}), 422, "slug")
    assert_error(*await relay.api("POST", "/api/shows", {"title": "t", "id": "shop"}), 409)
    assert_error(*await relay.request("POST", "/api/shows", data=b"{not json", headers={
        **relay.admin, "Content-Type": "application/json"}), 400)
    assert_error(*await relay.request("POST", "/api/shows", data=b"title=x", headers={
        **relay.admin, "Content-Type": "application/x-www-form-urlencoded"}), 415)
    assert_error(*await relay.api("POST", "/api/shows", {"title": "x" * 70000}), 413)
    assert_error(*await relay.api("GET", "/api/shows/nope"), 404)
    assert_error(*await relay.api("GET", "/api/shows/shop/mirrors/nobody"), 404)
    assert_error(*await relay.api("POST", "/api/shows/shop/mirrors", {"distributor": "hq", "name": "x"}), 422)
    assert_error(*await relay.api("POST", "/api/shows/shop/mirrors", {"distributor": "d1", "name": "again"}), 409)
    assert_error(*await relay.api("POST", "/api/shows/nope/mirrors", {"distributor": "d9", "name": "x"}), 404)
    assert_error(*await relay.api("GET", "/no/such/path"), 404)

    assert (await relay.api("GET", "/api/shows"))[1] == shows_before
    mirrors = (await relay.api("GET", "/api/shows/shop/mirrors"))[1]["mirrors"]
    assert [(m["distributor"], m["name"]) for m in mirrors] == [("d1", "D1")]
