"""Flash coupons: exact under a storm, idempotent, durable, credited to the right room and sharer."""

from __future__ import annotations

import asyncio
import random
import signal
import time

import aiohttp
import pytest

from conftest import Relay, relay_settings
from test_commerce import SseReader

from relay_testkit.synthetic import host_tracks

ROOMS = ("hq", "d1", "d2", "d3")
CAPS = {"d1": 20, "d2": 20, "d3": 10}


async def register(http: aiohttp.ClientSession, base: str, show: str, room: str, ref: str | None) -> dict:
    async with http.post(f"{base}/api/shows/{show}/viewers", json={"room": room, "ref": ref}) as res:
        assert res.status == 201
        return await res.json()


async def claim(http, base, show, coupon, token, key) -> tuple[int, dict]:
    async with http.post(f"{base}/api/shows/{show}/coupons/{coupon}/claim",
                         headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key}) as res:
        return res.status, await res.json()


async def storm(relay: Relay, show: str) -> tuple[dict, dict]:
    """1,000 viewers across HQ and three mirror rooms send 2,000 claims at once (each twice:
    once more with a retried key, once with a fresh key)."""
    rng = random.Random(7)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
        viewers = await asyncio.gather(*(
            register(http, relay.base, show, ROOMS[i % 4], f"s{i % 7}") for i in range(1000)))
        requests = []
        for i, viewer in enumerate(viewers):
            requests.append((viewer, f"k{i}-a"))
            requests.append((viewer, f"k{i}-a" if i % 2 else f"k{i}-b"))
        rng.shuffle(requests)
        answers = await asyncio.gather(*(
            claim(http, relay.base, show, "flash", v["token"], key) for v, key in requests))
    told: dict = {room: 0 for room in ROOMS}
    first_answer: dict = {}
    for (viewer, key), (status, body) in zip(requests, answers):
        assert status == 200, body
        if (viewer["viewer_id"], key) in first_answer:
            assert first_answer[(viewer["viewer_id"], key)] == body["result"]  # a retry: same answer
            continue
        first_answer[(viewer["viewer_id"], key)] = body["result"]
        if body["result"] == "claimed":
            told[viewer["room"]] += 1
    return told, {v["viewer_id"]: v for v in viewers}


@pytest.fixture
async def relay(make_relay, store_url):
    """This module is a contract suite: every test runs against the embedded store and Redis."""
    return await make_relay(redis_url=store_url)


async def check_ledger(relay: Relay, show: str, told: dict, unique: int = 250) -> None:
    coupon = (await relay.api("GET", f"/api/shows/{show}/coupons/flash"))[1]
    assert coupon["claimed"] == 100 and coupon["remaining"] == 0
    assert coupon["rooms"] == {room: n for room, n in told.items() if n}
    for room, cap in CAPS.items():
        assert coupon["rooms"].get(room, 0) <= cap
    stats = (await relay.api("GET", f"/api/shows/{show}/stats"))[1]
    for room in ROOMS:
        assert stats["rooms"][room]["claims"] == told[room]
        assert stats["rooms"][room]["claims_by_coupon"].get("flash", 0) == told[room]
        if unique == 250:  # the storm's viewers all came through a sharer
            assert sum(stats["rooms"][room]["claims_by_sharer"].values()) == told[room]
        assert stats["rooms"][room]["unique_viewers"] == unique


async def test_coupon_storm_is_exact_and_survives_a_crash(server_process, store_url, tmp_path):
    data = tmp_path / "data"
    env = {"RELAY_STORE_REDIS_URL": store_url}
    server = server_process(data, env=env)
    relay = Relay(server.base, relay_settings(data))
    await relay.create_show("storm", mirrors=("d1", "d2", "d3"))
    status, coupon = await relay.api("POST", "/api/shows/storm/coupons", {
        "id": "flash", "title": "50% off", "quantity": 100, "duration_s": 300, "room_caps": CAPS})
    assert status == 201 and coupon["state"] == "draft"
    assert (await relay.api("POST", "/api/shows/storm/coupons/flash/launch"))[1]["state"] == "live"

    told, _ = await storm(relay, "storm")
    assert sum(told.values()) == 100
    assert all(told[room] <= cap for room, cap in CAPS.items())
    await check_ledger(relay, "storm", told)

    server.stop(signal.SIGKILL)  # a crash: every acknowledged claim was durable already
    server = server_process(data, env=env)
    relay = Relay(server.base, relay_settings(data))
    await check_ledger(relay, "storm", told)
    server.stop()


async def test_claim_answers_and_bad_input(relay):
    await relay.create_show("shop", mirrors=("d1",))
    base = relay.base
    async with aiohttp.ClientSession() as http:
        amy = await register(http, base, "shop", "d1", "amy")
        bob = await register(http, base, "shop", "hq", None)
        now = time.time()
        assert (await relay.api("POST", "/api/shows/shop/coupons", {
            "id": "later", "title": "Later", "quantity": 5, "starts_at": now + 3600, "duration_s": 60}))[0] == 201
        assert (await relay.api("POST", "/api/shows/shop/coupons", {
            "id": "two", "title": "Two each", "quantity": 3, "per_viewer_limit": 2, "duration_s": 60,
            "room_caps": {"d1": 2}}))[0] == 201
        assert (await claim(http, base, "shop", "two", amy["token"], "x"))[1]["result"] == "not_started"
        await relay.api("POST", "/api/shows/shop/coupons/later/launch")
        await relay.api("POST", "/api/shows/shop/coupons/two/launch")
        assert (await claim(http, base, "shop", "later", amy["token"], "l1"))[1]["result"] == "not_started"
        assert (await claim(http, base, "shop", "two", amy["token"], "1"))[1] == {"result": "claimed", "remaining": 1}
        assert (await claim(http, base, "shop", "two", amy["token"], "2"))[1] == {"result": "claimed", "remaining": 0}
        assert (await claim(http, base, "shop", "two", amy["token"], "3"))[1]["result"] == "already_claimed"
        assert (await claim(http, base, "shop", "two", bob["token"], "1"))[1] == {"result": "claimed", "remaining": 0}
        assert (await claim(http, base, "shop", "two", bob["token"], "2"))[1]["result"] == "sold_out"
        assert (await claim(http, base, "shop", "two", amy["token"], "2"))[1] == {"result": "claimed", "remaining": 0}
        status, body = await claim(http, base, "shop", "later", amy["token"], "2")  # key reused elsewhere
        assert status == 409 and body["error"] == "idempotency_key_reused"
        await relay.api("POST", "/api/shows/shop/coupons/two/stop")
        assert (await claim(http, base, "shop", "two", bob["token"], "9"))[1]["result"] == "ended"

        before = (await relay.api("GET", "/api/shows/shop/coupons/two"))[1]
        status, body = await claim(http, base, "shop", "nope", amy["token"], "n")
        assert status == 404
        async with http.post(f"{base}/api/shows/shop/coupons/two/claim",
                             headers={"Authorization": "Bearer forged", "Idempotency-Key": "f"}) as res:
            assert res.status == 401
        async with http.post(f"{base}/api/shows/shop/coupons/two/claim",
                             headers={"Authorization": f"Bearer {amy['token']}"}) as res:
            assert res.status == 400
        assert (await relay.api("GET", "/api/shows/shop/coupons/two"))[1] == before

    for body, field in (({"title": "x", "quantity": 0, "duration_s": 5}, "quantity"),
                        ({"title": "x", "quantity": 5}, "duration_s"),
                        ({"title": "x", "quantity": 5, "duration_s": -1}, "duration_s"),
                        ({"title": "x", "quantity": 5, "starts_at": 200, "ends_at": 100}, "ends_at"),
                        ({"title": "x", "quantity": 5, "duration_s": 5, "per_viewer_limit": 6}, "per_viewer_limit"),
                        ({"title": "x", "quantity": 5, "duration_s": 5, "room_caps": {"d1": 6}}, "room_caps"),
                        ({"title": "x", "quantity": 5, "duration_s": 5, "room_caps": {"zz": 1}}, "room_caps"),
                        ({"title": "", "quantity": 5, "duration_s": 5}, "title")):
        status, error = await relay.api("POST", "/api/shows/shop/coupons", body)
        assert status == 422 and field in error["message"], (body, error)
    listed = (await relay.api("GET", "/api/shows/shop/coupons"))[1]["coupons"]
    assert [c["id"] for c in listed] == ["later", "two"]
    assert (await relay.request("POST", "/api/shows/shop/coupons", json={"title": "x"}))[0] == 401


async def test_coupon_events_reach_rooms_with_their_caps_and_aggregated_counts(relay):
    await relay.create_show("ev", mirrors=("d1",))
    reader = await SseReader(f"{relay.base}/events/ev/d1").start()
    try:
        await relay.api("POST", "/api/shows/ev/coupons", {"id": "c", "title": "C", "quantity": 50,
                                                           "duration_s": 60, "room_caps": {"d1": 10}})
        await relay.api("POST", "/api/shows/ev/coupons/c/launch")
        launched = (await reader.wait_for(1))[0]
        assert launched["type"] == "coupon.launched"
        assert launched["coupon"]["room_cap"] == 10 and launched["coupon"]["remaining"] == 10
        async with aiohttp.ClientSession() as http:
            viewers = [await register(http, relay.base, "ev", "hq", None) for _ in range(30)]
            await asyncio.gather(*(claim(http, relay.base, "ev", "c", v["token"], "k") for v in viewers))
        events = await reader.wait_for(2)
        while events[-1]["coupon"]["claimed"] < 30:
            events = await reader.wait_for(len(events) + 1)
        updates = [e for e in events if e["type"] == "coupon.updated"]
        assert 1 <= len(updates) <= 3  # aggregated, not one per claim
        assert updates[-1]["coupon"]["remaining"] == 10
    finally:
        await reader.close()


async def test_redis_stopped_mid_storm_answers_503_and_loses_or_doubles_nothing(server_process, redis_server,
                                                                               tmp_path, h264_clip):
    data = tmp_path / "data"
    server = server_process(data, env={"RELAY_STORE_REDIS_URL": redis_server.url})
    relay = Relay(server.base, relay_settings(data))
    try:
        show = await relay.create_show("outage", mirrors=("d1", "d2", "d3"))
        await relay.publish(show, host_tracks(h264_clip, None))
        watcher = await relay.viewer("outage", "d1", decode=False, kinds=("video",))
        await watcher.first_frame("video")
        await relay.api("POST", "/api/shows/outage/coupons", {
            "id": "flash", "title": "50% off", "quantity": 100, "duration_s": 300, "room_caps": CAPS})
        await relay.api("POST", "/api/shows/outage/coupons/flash/launch")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as http:
            viewers = await asyncio.gather(*(
                register(http, relay.base, "outage", ROOMS[i % 4], None) for i in range(400)))
            requests = [(v, f"k{i}") for i, v in enumerate(viewers)] * 2  # every claim sent twice
            answered = 0
            redis_down = asyncio.Event()

            async def send(viewer, key):
                nonlocal answered
                answer = await claim(http, relay.base, "outage", "flash", viewer["token"], key)
                answered += 1
                if answered == 60 and not redis_down.is_set():  # mid-storm: Redis dies
                    redis_server.kill()
                    redis_down.set()
                return answer

            first = await asyncio.gather(*(send(v, key) for v, key in requests))
            assert redis_down.is_set()
            failed = [(req, body) for req, (status, body) in zip(requests, first) if status == 503]
            assert failed, "no claim met the outage"
            print(f"outage: {len(first) - len(failed)} answered, {len(failed)} got 503")
            assert all(body["error"] == "store_unavailable" for _, body in failed)
            assert all(status in (200, 503) for status, _ in first)

            # Media never needed Redis: the mirror-room viewer keeps receiving video.
            frames = watcher.tracks["video"].frames

            async def still_playing() -> bool:
                return watcher.tracks["video"].frames >= frames + 30

            await relay.wait_for(still_playing, timeout=10, what="video to keep flowing without Redis")

            redis_server.start()  # the same port and append-only file: what was acknowledged is there

            async def answer_all() -> list:
                answers = await asyncio.gather(*(claim(http, relay.base, "outage", "flash", v["token"], key)
                                                 for v, key in requests))
                return answers

            async def store_back() -> bool:
                return (await claim(http, relay.base, "outage", "flash", viewers[0]["token"], "k0"))[0] == 200

            await relay.wait_for(store_back, timeout=15, what="claims to work again once Redis is back")
            second = await answer_all()
        assert all(status == 200 for status, _ in second)
        for (status, body), (_, again) in zip(first, second):
            if status == 200:  # acknowledged before the outage: the same answer now (kept, not redone)
                assert again == body, (body, again)
        told = {room: 0 for room in ROOMS}
        for i, viewer in enumerate(viewers):
            results = {second[i][1]["result"], second[i + len(viewers)][1]["result"]}
            assert len(results) == 1  # a retry with the same key has the same answer
            if results == {"claimed"}:
                told[viewer["room"]] += 1
        assert sum(told.values()) == 100  # 400 viewers wanted 100: sold out exactly, none doubled
        await check_ledger(relay, "outage", told, unique=100)
    finally:
        await relay.close_clients()
        server.stop()


async def test_deleting_a_show_deletes_its_commerce_data_and_a_new_show_with_the_id_inherits_nothing(relay):
    await relay.create_show("again", mirrors=("d1",))
    assert (await relay.api("POST", "/api/shows/again/products", {"id": "p", "title": "P", "price": 10}))[0] == 201
    assert (await relay.api("POST", "/api/shows/again/products/p/pin"))[0] == 200
    await relay.api("POST", "/api/shows/again/coupons", {"id": "flash", "title": "F", "quantity": 50,
                                                         "per_viewer_limit": 1, "duration_s": 600})
    await relay.api("POST", "/api/shows/again/coupons/flash/launch")
    reader = await SseReader(f"{relay.base}/events/again").start()
    async with aiohttp.ClientSession() as http:
        viewers = [await register(http, relay.base, "again", "d1", "amy") for _ in range(5)]
        for i, v in enumerate(viewers):
            assert (await claim(http, relay.base, "again", "flash", v["token"], f"k{i}"))[1]["result"] == "claimed"
        status, _ = await relay.api("DELETE", "/api/shows/again")
        assert status == 204
        await asyncio.wait_for(reader._task, 5)  # the old show's event stream ended
        await reader.close()

        await relay.create_show("again", mirrors=("d1",))
        assert (await relay.request("GET", "/api/shows/again/products"))[1]["products"] == []
        assert (await relay.api("GET", "/api/shows/again/coupons"))[1]["coupons"] == []
        assert (await relay.api("GET", "/api/shows/again/coupons/flash"))[0] == 404
        stats = (await relay.api("GET", "/api/shows/again/stats"))[1]
        assert all(room["claims"] == 0 and room["unique_viewers"] == 0 for room in stats["rooms"].values())
        # An old viewer's token belongs to the old show.
        status, _ = await claim(http, relay.base, "again", "flash", viewers[0]["token"], "k-old")
        assert status in (401, 403)
        # A new reader gets no card or coupon of the old show, then the new show's events.
        reader = await SseReader(f"{relay.base}/events/again").start()
        try:
            await relay.api("POST", "/api/shows/again/products", {"id": "q", "title": "Q", "price": 5})
            events = await reader.wait_for(1)
            assert [e["type"] for e in events] == ["shelf.updated"], events
            assert events[0]["product"]["id"] == "q", events
        finally:
            await reader.close()
