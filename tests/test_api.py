"""The admin API contract: shows, mirror rooms, figures."""

from __future__ import annotations

from relay_testkit.synthetic import host_tracks



async def test_show_lifecycle_through_the_api(relay):
    status, show = await relay.api("POST", "/api/shows", {"title": "Spring sale", "id": "spring"})
    assert status == 201
    assert show["id"] == "spring" and show["title"] == "Spring sale" and show["state"] == "scheduled"
    assert len(show["stream_key"]) >= 32
    assert show["whip_url"] == f"{relay.base}/whip/spring"
    assert show["whep_url"] == f"{relay.base}/whep/spring"
    assert show["watch_url"] == f"{relay.base}/watch/spring"

    status, generated = await relay.api("POST", "/api/shows", {"title": "No id"})
    assert status == 201 and generated["id"] and generated["id"] != "spring"

    status, listing = await relay.api("GET", "/api/shows")
    assert [s["id"] for s in listing["shows"]] == ["spring", generated["id"]]
    assert all("stream_key" not in s for s in listing["shows"])

    status, detail = await relay.api("GET", "/api/shows/spring")
    assert status == 200 and detail["publisher"] is None and detail["viewers"] == {"hq": 0}

    status, mirror = await relay.api("POST", "/api/shows/spring/mirrors", {"distributor": "alice", "name": "Alice's shop"})
    assert status == 201
    assert mirror == {"distributor": "alice", "name": "Alice's shop", "whep_url": f"{relay.base}/whep/spring/alice",
                      "watch_url": f"{relay.base}/watch/spring/alice", "created_at": mirror["created_at"],
                      "commission_rate": "0"}
    await relay.api("POST", "/api/shows/spring/mirrors", {"distributor": "bob", "name": "Bob"})
    status, mirrors = await relay.api("GET", "/api/shows/spring/mirrors")
    assert [m["distributor"] for m in mirrors["mirrors"]] == ["alice", "bob"]
    status, one = await relay.api("GET", "/api/shows/spring/mirrors/bob")
    assert status == 200 and one["name"] == "Bob" and one["viewers"] == 0
    assert (await relay.api("DELETE", "/api/shows/spring/mirrors/bob"))[0] == 204
    assert (await relay.api("GET", "/api/shows/spring/mirrors/bob"))[0] == 404

    status, ended = await relay.api("POST", "/api/shows/spring/end")
    assert status == 200 and ended["state"] == "ended" and ended["ended_at"]
    assert (await relay.api("DELETE", f"/api/shows/{generated['id']}"))[0] == 204
    assert (await relay.api("GET", f"/api/shows/{generated['id']}"))[0] == 404

    status, health = await relay.request("GET", "/healthz")
    assert status == 200 and health["ok"] is True


async def test_room_figures_are_kept_apart(relay, h264_clip):
    show = await relay.create_show("figures", mirrors=("alice", "bob"))
    await relay.publish(show, host_tracks(h264_clip, None))
    hq = [await relay.viewer("figures", kinds=("video",), decode=False) for _ in range(2)]
    alice = [await relay.viewer("figures", "alice", kinds=("video",), decode=False) for _ in range(3)]
    for viewer in hq + alice:
        await viewer.first_frame("video")
    await alice[0].stop()

    async def counted() -> bool:
        stats = (await relay.api("GET", "/api/shows/figures/stats"))[1]
        return stats["rooms"]["alice"]["viewers"] == 2

    await relay.wait_for(counted, what="alice's room to count the viewer who left")
    stats = (await relay.api("GET", "/api/shows/figures/stats"))[1]
    keys = ("viewers", "peak_viewers", "total_sessions")
    assert {room: {k: v[k] for k in keys} for room, v in stats["rooms"].items()} == {
        "hq": {"viewers": 2, "peak_viewers": 2, "total_sessions": 2},
        "alice": {"viewers": 2, "peak_viewers": 3, "total_sessions": 3},
        "bob": {"viewers": 0, "peak_viewers": 0, "total_sessions": 0},
    }
    detail = await relay.show("figures")
    assert detail["viewers"] == {"hq": 2, "alice": 2, "bob": 0}
    assert detail["tracks"]["video"]["viewers"] == 4


async def test_cors_preflight_for_browser_hosts_and_viewers(relay):
    await relay.create_show("cors")
    for path in ("/whip/cors", "/whep/cors", "/whep/cors/hq/some-session"):
        status, _ = await relay.request("OPTIONS", path)
        assert status == 204
    async_headers = None
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.options(relay.base + "/whip/cors") as res:
            async_headers = res.headers
    assert async_headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in async_headers["Access-Control-Allow-Headers"]
    assert async_headers["Accept-Post"] == "application/sdp"
