"""What an adversarial review of a running server found, each with the test that shows it holds:
half-open sessions, claims after the end, stale data, bad numbers, secrets in logs, headers."""

from __future__ import annotations

import asyncio
import os
import re
import time

import aiohttp
import jwt

from conftest import Relay, relay_settings
from test_commerce import SseReader
from test_coupons import claim, register
from relay.webrtc import open_peer_count
from relay_testkit.fuzz import half_open_offer
from relay_testkit.process import RedisProcess
from relay_testkit.synthetic import host_tracks


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def flood(relay: Relay, offer: str, count: int, address: str) -> list[int]:
    async with aiohttp.ClientSession() as http:
        async def post() -> int:
            async with http.post(f"{relay.base}/whep/flood", data=offer, headers={
                    "Content-Type": "application/sdp", "X-Forwarded-For": address}) as res:
                return res.status

        return list(await asyncio.gather(*(post() for _ in range(count))))


async def test_half_open_sessions_are_capped_per_address_and_reaped_at_the_connect_deadline(make_relay,
                                                                                            h264_clip):
    def configure(settings) -> None:
        settings.ice.connect_timeout_s = 2.0
        settings.limits.max_pending_sessions_per_address = 10
        settings.limits.max_viewers_per_process = 50
        settings.server.trust_forwarded_for = True  # the flood comes "from" 127.0.0.9

    relay = await make_relay(configure=configure)
    show = await relay.create_show("flood", mirrors=("d1",))
    await relay.publish(show, host_tracks(h264_clip * 10, None))
    offer = await half_open_offer()
    peers, fds = open_peer_count(), open_fds()

    statuses = await flood(relay, offer, 300, "127.0.0.9")
    assert statuses.count(201) == 10 and statuses.count(429) == 290, sorted(set(statuses))
    # A real viewer from another address still joins, and only it counts.
    viewer = await relay.viewer("flood", "d1", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    stats = (await relay.api("GET", "/api/shows/flood/stats"))[1]
    assert stats["rooms"]["hq"]["viewers"] == 0 and stats["rooms"]["hq"]["peak_viewers"] == 0
    assert stats["rooms"]["d1"]["viewers"] == 1

    async def reaped() -> bool:  # after the deadline: every peer, socket and slot is back
        return open_peer_count() <= peers + 1 and open_fds() <= fds + 8

    await relay.wait_for(reaped, timeout=10, what="the half-open sessions to be closed")
    assert (await flood(relay, offer, 10, "127.0.0.9")).count(201) == 10  # the address's slots are free again
    stats = (await relay.api("GET", "/api/shows/flood/stats"))[1]
    assert stats["rooms"]["hq"]["peak_viewers"] == 0  # never counted as viewers
    assert viewer.tracks["video"].frames > 0 and viewer.pc.connectionState == "connected"


async def test_ending_a_show_ends_its_coupons_and_later_claims_answer_ended(make_relay, store_url):
    relay = await make_relay(redis_url=store_url)
    await relay.create_show("closing")
    await relay.api("POST", "/api/shows/closing/coupons", {"id": "c", "title": "C", "quantity": 1000,
                                                           "per_viewer_limit": 1, "duration_s": 600})
    await relay.api("POST", "/api/shows/closing/coupons/c/launch")
    reader = await SseReader(f"{relay.base}/events/closing").start()
    async with aiohttp.ClientSession() as http:
        viewers = [await register(http, relay.base, "closing", "hq", None) for _ in range(200)]
        in_flight = [asyncio.ensure_future(claim(http, relay.base, "closing", "c", v["token"], "k"))
                     for v in viewers[:150]]
        status, _ = await relay.api("POST", "/api/shows/closing/end")
        assert status == 200
        before = await asyncio.gather(*in_flight)
        after = await asyncio.gather(*(claim(http, relay.base, "closing", "c", v["token"], "k")
                                       for v in viewers[150:]))
        assert [body["result"] for _, body in after] == ["ended"] * 50
        coupon = (await relay.api("GET", "/api/shows/closing/coupons/c"))[1]
        assert coupon["state"] == "ended"
        assert coupon["claimed"] == sum(1 for _, body in before if body["result"] == "claimed")
        # A retried request of a claim made before the end still gets its own answer.
        claimed = next(i for i, (_, body) in enumerate(before) if body["result"] == "claimed")
        assert (await claim(http, relay.base, "closing", "c", viewers[claimed]["token"], "k"))[1]["result"] == "claimed"
        # Launching it again is refused.
        assert (await relay.api("POST", "/api/shows/closing/coupons/c/launch"))[0] == 409
    while not any(e["type"] == "coupon.ended" for e in reader.events):
        await reader.wait_for(len(reader.events) + 1)
    ended = [e for e in reader.events if e["type"] == "coupon.ended"]
    await reader.close()
    assert ended and ended[0]["reason"] == "show_ended" and ended[0]["coupon"]["state"] == "ended"


async def test_deleting_a_room_retires_its_tokens_and_figures(make_relay, store_url):
    relay = await make_relay(redis_url=store_url)
    await relay.create_show("rooms", mirrors=("d1",))
    await relay.api("POST", "/api/shows/rooms/coupons", {"id": "c", "title": "C", "quantity": 100,
                                                         "per_viewer_limit": 1, "duration_s": 600})
    await relay.api("POST", "/api/shows/rooms/coupons/c/launch")
    async with aiohttp.ClientSession() as http:
        old = [await register(http, relay.base, "rooms", "d1", "amy") for _ in range(5)]
        for v in old:
            assert (await claim(http, relay.base, "rooms", "c", v["token"], "k"))[1]["result"] == "claimed"
        assert (await relay.api("DELETE", "/api/shows/rooms/mirrors/d1"))[0] == 204
        status, _ = await relay.api("POST", "/api/shows/rooms/mirrors", {"distributor": "d1", "name": "New D1"})
        assert status == 201
        # The old room's tokens do not open the new room.
        status, error = await claim(http, relay.base, "rooms", "c", old[0]["token"], "k2")
        assert status == 401 and "removed" in error["message"]
        async with http.post(f"{relay.base}/api/shows/rooms/viewers", json={"room": "d1", "ref": "bob"},
                             headers={"Authorization": f"Bearer {old[1]['token']}"}) as res:
            assert res.status == 401
        stats = (await relay.api("GET", "/api/shows/rooms/stats"))[1]
        assert stats["rooms"]["d1"]["claims"] == 0 and stats["rooms"]["d1"]["unique_viewers"] == 0
        coupon = (await relay.api("GET", "/api/shows/rooms/coupons/c"))[1]
        assert coupon["claimed"] == 5 and coupon["rooms"].get("d1", 0) == 0  # handed out, not forgotten
        new = await register(http, relay.base, "rooms", "d1", None)
        assert (await claim(http, relay.base, "rooms", "c", new["token"], "k"))[1]["result"] == "claimed"
        stats = (await relay.api("GET", "/api/shows/rooms/stats"))[1]
        assert stats["rooms"]["d1"]["claims"] == 1 and stats["rooms"]["d1"]["unique_viewers"] == 1


async def test_numbers_and_ids_out_of_bounds_are_clear_4xx_and_change_nothing(relay):
    await relay.create_show("bounds", mirrors=("d1",))
    deep = "[" * 30_000 + "]" * 30_000  # under the body limit, over the parser's recursion limit
    status, body = await relay.request("POST", "/api/shows/bounds/viewers", data=deep,
                                       headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"] == "bad_json"
    for price in ("1e400", "9" * 400):
        status, body = await relay.api("POST", "/api/shows/bounds/products", {"title": "P", "price": price})
        assert status == 422 and body["error"] == "invalid_field", body
    for raw in ('{"title": "P", "price": Infinity}', '{"title": "P", "price": NaN}', '{"title": "P", "price": 1e400}'):
        status, body = await relay.request("POST", "/api/shows/bounds/products", data=raw,
                                           headers={**relay.admin, "Content-Type": "application/json"})
        assert status == 400 and body["error"] == "bad_json", body
    status, body = await relay.request("POST", "/api/shows/bounds/coupons", data=(
        '{"id": "c", "title": "C", "quantity": 5, "starts_at": 1, "ends_at": Infinity}'),
        headers={**relay.admin, "Content-Type": "application/json"})
    assert status == 400 and body["error"] == "bad_json"
    assert (await relay.request("GET", "/api/shows/bounds/products"))[1]["products"] == []
    assert (await relay.api("GET", "/api/shows/bounds/coupons"))[1]["coupons"] == []
    for last in ("9" * 30, "-1"):
        status, body = await relay.request("GET", "/events/bounds", headers={"Last-Event-ID": last})
        assert status == 400 and body["error"] == "bad_last_event_id"
    # A trailing newline is not part of a slug.
    status, body = await relay.api("POST", "/api/shows", {"title": "NL", "id": "nl\n"})
    assert status == 422
    status, body = await relay.api("POST", "/api/shows/bounds/mirrors", {"distributor": "amy\n", "name": "A"})
    assert status == 422
    status, _ = await relay.request("POST", "/api/shows/bounds/viewers", json={"room": "hq", "ref": "amy\n"})
    assert status == 422
    status, _ = await relay.request("POST", "/whep/bounds%0A", data="v=0\r\n", headers={"Content-Type": "application/sdp"})
    assert status == 404
    stats = (await relay.api("GET", "/api/shows/bounds/stats"))[1]
    assert all(r["unique_viewers"] == 0 and r["peak_viewers"] == 0 for r in stats["rooms"].values())


async def test_without_redis_the_server_starts_then_media_outlives_redis_and_secrets_stay_out_of_logs(
        server_process, tmp_path, h264_clip):
    redis = RedisProcess(tmp_path / "redis")  # its port, not started yet
    url = f"redis://:pa55-w0rd-x@127.0.0.1:{redis.port}/0"
    server = server_process(tmp_path / "data", args=("--redis", url))  # started: it did not hang
    relay = Relay(server.base, relay_settings(tmp_path / "data"))
    assert (await relay.request("GET", "/healthz"))[1]["store"] == "unavailable"
    status, body = await relay.api("POST", "/api/shows", {"title": "No store", "id": "nostore"})
    assert status == 503 and body["error"] == "store_unavailable"  # the catalog is in Redis
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzY29wZSI6InJlcGxheSJ9.c2VjcmV0LXNpZ25hdHVyZS12YWx1ZQ"
    assert (await relay.request("GET", f"/replay/nostore/signed/{token}/nope/nothing"))[0] == 404

    redis.start()  # Redis is there: shows, viewers and tokens (signed with the shared secret)
    try:
        async def created() -> bool:
            return (await relay.api("POST", "/api/shows", {"title": "Store", "id": "nostore"}))[0] == 201

        await relay.wait_for(created, timeout=15, what="a show once Redis is there")
        show = await relay.show("nostore")
        show["stream_key"] = (await relay.api("POST", "/api/shows/nostore/stream-key"))[1]["stream_key"]
        await relay.publish(show, host_tracks(h264_clip * 10, None))
        viewer = await relay.viewer("nostore", kinds=("video",), decode=False)
        await viewer.first_frame("video")

        async def registered() -> bool:  # once the shared token secret is read
            return (await relay.request("POST", "/api/shows/nostore/viewers", json={"room": "hq"}))[0] == 201

        await relay.wait_for(registered, timeout=15, what="viewer registration once Redis is there")
        assert (await relay.request("GET", "/healthz"))[1]["store"] == "ok"

        redis.kill()  # Redis goes away mid-show: media keeps flowing, a new viewer still joins
        frames = viewer.tracks["video"].frames

        async def still_flowing() -> bool:
            return viewer.tracks["video"].frames > frames + 30

        await relay.wait_for(still_flowing, timeout=10, what="media after Redis went away")
        late = await relay.viewer("nostore", kinds=("video",), decode=False)
        await late.first_frame("video")
        status, body = await relay.request("POST", "/api/shows/nostore/viewers", json={"room": "hq"})
        assert status == 503 and body["error"] == "store_unavailable"
    finally:
        await relay.close_clients()
        server.stop()
        redis.kill()
    log = server.log_text()
    assert "pa55-w0rd-x" not in log and token not in log and "c2VjcmV0" not in log
    assert "/signed/<token>/nope/nothing 404" in log


async def test_stalled_and_idle_connections_are_closed_and_capped_per_address(server_process, tmp_path):
    server = server_process(tmp_path / "data", env={
        "RELAY_SERVER_READ_TIMEOUT_S": "1", "RELAY_SERVER_IDLE_TIMEOUT_S": "1",
        "RELAY_LIMITS_MAX_CONNECTIONS_PER_ADDRESS": "40"})
    port = int(server.base.rsplit(":", 1)[1])
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def hold(first_bytes: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if first_bytes:
            writer.write(first_bytes)
            await writer.drain()
        held.append((reader, writer))

    for _ in range(10):
        await hold(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a head that never ends
        await hold(b"")  # silent
        await hold(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # then idle on keep-alive
        await hold(b"POST /api/shows HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"ti")  # slow body
    # The address is at its cap: one more is refused at once; another address is served.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 429") and b"too_many_connections" in answer
    writer.close()
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(f"{server.base}/healthz") as res:
            assert res.status == 200

    async def closed_by_server(reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass  # the idle ones got their answer first

    await asyncio.wait_for(asyncio.gather(*(closed_by_server(r) for r, _ in held)), 10)
    for _, writer in held:
        writer.close()
    async with aiohttp.ClientSession() as http:  # the address's connections are free again
        async with http.get(f"{server.base}/healthz") as res:
            assert res.status == 200
    limits = open(f"/proc/{server.proc.pid}/limits").read()
    soft, hard = re.search(r"Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)", limits).groups()
    assert soft == hard  # raised at start to what the system allows
    server.stop()


async def test_the_public_shelf_shows_one_room_as_that_room_sees_it(make_relay):
    relay = await make_relay()
    await relay.create_show("shelfview", mirrors=("d1", "d2"))
    await relay.api("POST", "/api/shows/shelfview/products", {
        "id": "bag", "title": "Bag", "price": 100, "rooms": {"d1": {"price": 80}, "d2": {"hidden": True}}})
    await relay.api("POST", "/api/shows/shelfview/products", {"id": "hat", "title": "Hat", "price": 20})
    everyone = (await relay.request("GET", "/api/shows/shelfview/products"))[1]
    assert [(p["id"], p["price"]) for p in everyone["products"]] == [("bag", 100), ("hat", 20)]
    assert all("rooms" not in p for p in everyone["products"])  # no room's overrides
    d1 = (await relay.request("GET", "/api/shows/shelfview/products?room=d1"))[1]
    assert [(p["id"], p["price"]) for p in d1["products"]] == [("bag", 80), ("hat", 20)]
    d2 = (await relay.request("GET", "/api/shows/shelfview/products?room=d2"))[1]
    assert [p["id"] for p in d2["products"]] == ["hat"]
    admin = (await relay.api("GET", "/api/shows/shelfview/products"))[1]
    assert admin["products"][0]["rooms"]["d2"]["hidden"] is True  # the operator sees it all
    assert (await relay.request("GET", "/api/shows/shelfview/products?room=nope"))[0] == 404

    # The hidden product's changes reach d2's stream as "not on your shelf", nothing more.
    reader = await SseReader(f"{relay.base}/events/shelfview/d2").start()
    try:
        await relay.api("PATCH", "/api/shows/shelfview/products/bag", {"title": "Secret bag", "price": 90})
        event = (await reader.wait_for(1))[0]
        assert event["type"] == "shelf.updated" and event["product"] == {"id": "bag", "hidden": True}
    finally:
        await reader.close()

    # A token-only show's shelf needs a viewer token of the room.
    await relay.api("POST", "/api/shows", {"title": "Private", "id": "private", "playback": "token"})
    await relay.api("POST", "/api/shows/private/products", {"id": "p", "title": "P", "price": 1})
    assert (await relay.request("GET", "/api/shows/private/products"))[0] == 401
    viewer = (await relay.api("POST", "/api/shows/private/viewers", {"room": "hq"}))[1]
    status, body = await relay.request("GET", "/api/shows/private/products",
                                       headers={"Authorization": f"Bearer {viewer['token']}"})
    assert status == 200 and [p["id"] for p in body["products"]] == ["p"]


BRAND_SECRET = "the-brand-signs-shopper-tokens-with-this"


async def test_per_viewer_limits_hold_per_shopper_and_anonymous_registrations_are_capped(make_relay, store_url):
    def configure(settings) -> None:
        settings.auth.shopper_secret = BRAND_SECRET
        settings.limits.registrations_per_address_per_show = 5

    relay = await make_relay(redis_url=store_url, configure=configure)
    status, show = await relay.api("POST", "/api/shows", {"title": "Shop", "id": "shop", "identity": "shopper"})
    assert status == 201 and show["identity"] == "shopper"
    await relay.api("POST", "/api/shows/shop/mirrors", {"distributor": "d1", "name": "D1"})
    await relay.api("POST", "/api/shows/shop/coupons", {"id": "c", "title": "C", "quantity": 100,
                                                        "per_viewer_limit": 1, "duration_s": 600})
    await relay.api("POST", "/api/shows/shop/coupons/c/launch")
    async with aiohttp.ClientSession() as http:
        async def new_viewer(show: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
            async with http.post(f"{relay.base}/api/shows/{show}/viewers", json=body, headers=headers or {}) as res:
                return res.status, await res.json()

        # Anonymous registration is refused on a shopper show.
        status, body = await new_viewer("shop", {"room": "d1"})
        assert status == 403 and body["error"] == "shopper_required"
        # The brand's backend registers shopper u1 twice (two devices), its page brings a signed token once.
        first = (await new_viewer("shop", {"room": "d1", "ref": "amy", "shopper_id": "u1"}, relay.admin))[1]
        second = (await new_viewer("shop", {"room": "hq", "shopper_id": "u1"}, relay.admin))[1]
        signed = jwt.encode({"sub": "u1", "show": "shop", "exp": int(time.time()) + 600}, BRAND_SECRET, "HS256")
        status, third = await new_viewer("shop", {"room": "hq", "shopper_token": signed})
        assert status == 201
        assert first["viewer_id"] == second["viewer_id"] == third["viewer_id"] == "s-u1"
        assert first["room"] == second["room"] == third["room"] == "d1"  # the first room keeps the credit
        answers = [(await claim(http, relay.base, "shop", "c", v["token"], f"k{i}"))[1]["result"]
                   for i, v in enumerate((first, second, third))]
        assert answers == ["claimed", "already_claimed", "already_claimed"]
        forged = jwt.encode({"sub": "u2", "show": "shop", "exp": int(time.time()) + 600}, "not-the-secret-but-just-as-long-as-it-0", "HS256")
        assert (await new_viewer("shop", {"shopper_token": forged}))[0] == 401
        other_show = jwt.encode({"sub": "u2", "show": "elsewhere", "exp": int(time.time()) + 600}, BRAND_SECRET)
        assert (await new_viewer("shop", {"shopper_token": other_show}))[0] == 401

        # An anonymous show: at most 5 fresh identities per address.
        await relay.create_show("open")
        statuses = [(await new_viewer("open", {"room": "hq"}))[0] for _ in range(8)]
        assert statuses == [201] * 5 + [429] * 3
        assert (await relay.api("GET", "/api/shows/open/stats"))[1]["rooms"]["hq"]["unique_viewers"] == 5


async def test_stored_claim_answers_expire_after_the_retention_window(make_relay, store_url):
    relay = await make_relay(redis_url=store_url,
                             configure=lambda s: setattr(s.limits, "idempotency_retention_s", 1.0))
    await relay.create_show("expiry")
    await relay.api("POST", "/api/shows/expiry/coupons", {"id": "c", "title": "C", "quantity": 10,
                                                          "per_viewer_limit": 1, "duration_s": 600})
    await relay.api("POST", "/api/shows/expiry/coupons/c/launch")
    async with aiohttp.ClientSession() as http:
        viewer = await register(http, relay.base, "expiry", "hq", None)
        assert (await claim(http, relay.base, "expiry", "c", viewer["token"], "k"))[1]["result"] == "claimed"
        assert (await claim(http, relay.base, "expiry", "c", viewer["token"], "k"))[1]["result"] == "claimed"

        async def forgotten() -> bool:  # a retry now is a new request, decided afresh
            answer = (await claim(http, relay.base, "expiry", "c", viewer["token"], "k"))[1]
            return answer["result"] == "already_claimed"

        await relay.wait_for(forgotten, timeout=5, what="the stored answer to expire")
    coupon = (await relay.api("GET", "/api/shows/expiry/coupons/c"))[1]
    assert coupon["claimed"] == 1  # forgetting an answer never hands out another coupon


async def test_database_files_are_private_and_answers_carry_security_headers(make_relay):
    relay = await make_relay(configure=lambda s: setattr(s.server, "embed_origins", ["https://shop.example"]))
    await relay.create_show("heads")
    data = relay.settings.data_path
    for name in ("relay.db", "relay.db-wal", "relay.db-shm"):
        assert (data / name).stat().st_mode & 0o777 == 0o600, name
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/api/shows/nope", "/ops", "/watch/heads"):
            async with http.get(relay.base + path) as res:
                assert res.headers["X-Content-Type-Options"] == "nosniff"
                assert res.headers["Referrer-Policy"] == "no-referrer"
                assert res.headers["Server"] == "livecast-relay"  # no Python or aiohttp version
        async with http.get(relay.base + "/ops") as res:
            assert "frame-ancestors 'none'" in res.headers["Content-Security-Policy"]
            assert res.headers["X-Frame-Options"] == "DENY"
        async with http.get(relay.base + "/watch/heads") as res:
            assert "frame-ancestors 'self' https://shop.example" in res.headers["Content-Security-Policy"]
            assert "script-src 'self'" in res.headers["Content-Security-Policy"]
