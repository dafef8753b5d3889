"""Orders and commission: every sale credited to the room and sharer that brought the buyer, exact
to the cent, idempotent, durable; the same contract on the embedded and the Redis store."""

from __future__ import annotations

import asyncio
import csv
from decimal import ROUND_HALF_UP, Decimal
import io
import random
import signal
import time

import aiohttp
import jwt

from conftest import Relay, relay_settings
from test_commerce import SseReader

SHOP_KEY = "test-shop-key"
TOKEN_SECRET = "the-test-token-secret-of-32-bytes-or-more"
RATES = {"hq": Decimal("0"), "d1": Decimal("0.10"), "d2": Decimal("0.05")}
SHARER_RATE = Decimal("0.02")
PRODUCTS = {"p1": ("Tea", "19.90", None), "p2": ("Cup", "8.80", Decimal("0.15")), "p3": ("Pot", "129.00", None)}


def with_shop_key(settings) -> None:
    settings.auth.shop_key = SHOP_KEY
    settings.auth.token_secret = TOKEN_SECRET  # to sign an expired attribution the server would have made


def shop() -> dict[str, str]:
    return {"Authorization": f"Bearer {SHOP_KEY}"}


async def set_up_shop(relay: Relay, show_id: str) -> None:
    """HQ and two mirror rooms at different rates, a product with its own rate, a sharer rate."""
    await relay.create_show(show_id)
    for room in ("d1", "d2"):
        status, body = await relay.api("POST", f"/api/shows/{show_id}/mirrors",
                                       {"distributor": room, "name": room.upper(), "commission_rate": str(RATES[room])})
        assert status == 201 and body["commission_rate"] == str(RATES[room]), body
    status, body = await relay.api("PATCH", f"/api/shows/{show_id}", {"sharer_commission_rate": str(SHARER_RATE)})
    assert status == 200 and body["sharer_commission_rate"] == "0.02", body
    for product, (title, price, rate) in PRODUCTS.items():
        fields = {"id": product, "title": title, "price": price, "link": f"https://shop.example/{product}"}
        if rate is not None:
            fields["commission_rate"] = str(rate)
        status, body = await relay.api("POST", f"/api/shows/{show_id}/products", fields)
        assert status == 201, body


async def viewer(http: aiohttp.ClientSession, base: str, show_id: str, room: str, ref: str | None) -> dict:
    async with http.post(f"{base}/api/shows/{show_id}/viewers", json={"room": room, "ref": ref}) as res:
        assert res.status == 201
        return await res.json()


async def attribution(http: aiohttp.ClientSession, base: str, show_id: str, token: str) -> str:
    async with http.post(f"{base}/api/shows/{show_id}/attribution",
                         headers={"Authorization": f"Bearer {token}"}) as res:
        body = await res.json()
        assert res.status == 201, body
        assert body["expires_at"] > time.time() + 6 * 86400  # a week by default: replay sales count too
        return body["attribution"]


async def post_order(http: aiohttp.ClientSession, base: str, show_id: str, body: dict,
                     headers: dict | None = None) -> tuple[int, dict]:
    async with http.post(f"{base}/api/shows/{show_id}/orders", json=body, headers=headers or shop()) as res:
        return res.status, await res.json()


def cents(text: str) -> int:
    return int(Decimal(text) * 100)


def half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def expected_commission(room: str, sharer: str | None, items: list[dict]) -> tuple[int, int, int]:
    """(amount, distributor, sharer) in cents, computed here from the rules, line by line."""
    amount = dist = share = 0
    for item in items:
        line = item["quantity"] * cents(item["unit_price"])
        rate = RATES[room]
        if room != "hq" and PRODUCTS[item["product"]][2] is not None:
            rate = PRODUCTS[item["product"]][2]
        amount += line
        dist += half_up(line * rate)
        share += half_up(line * SHARER_RATE) if sharer else 0
    return amount, dist, share


def money(value: int) -> str:
    return f"{'-' if value < 0 else ''}{abs(value) // 100}.{abs(value) % 100:02d}"


async def test_an_order_is_credited_to_the_room_and_sharer_that_brought_the_buyer(make_relay, store_url):
    relay = await make_relay(store_url, configure=with_shop_key)
    await set_up_shop(relay, "tea")
    base = relay.base
    async with aiohttp.ClientSession() as http:
        amy = await viewer(http, base, "tea", "d1", "alice")
        attr = await attribution(http, base, "tea", amy["token"])
        items = [{"product": "p1", "quantity": 3, "unit_price": "19.90"},
                 {"product": "p2", "quantity": 1, "unit_price": "8.85"}]
        order = {"order_id": "o-1", "attribution": attr, "items": items, "currency": "CNY"}
        status, taken = await post_order(http, base, "tea", order)
        # 59.70 x 0.10 = 5.97; 8.85 x 0.15 = 1.3275 -> 1.33; sharer 1.194 -> 1.19 and 0.177 -> 0.18
        assert status == 201 and taken == {
            "order_id": "o-1", "room": "d1", "sharer": "alice", "amount": "68.55",
            "commission": {"distributor": "7.30", "sharer": "1.37"}, "currency": "CNY", "state": "paid"}, taken
        assert await post_order(http, base, "tea", order) == (200, taken)  # a retry: the same answer
        assert await post_order(http, base, "tea", dict(order), headers=relay.admin) == (200, taken)
        status, body = await post_order(http, base, "tea", {**order, "items": items[:1]})
        assert status == 409 and body["error"] == "order_id_reused", body

        status, body = await post_order(http, base, "tea", {"order_id": "o-2", "attribution": None,
                                                            "items": items[:1], "currency": "CNY"})
        assert status == 201 and body["room"] == "hq" and body["sharer"] is None
        assert body["commission"] == {"distributor": "0.00", "sharer": "0.00"}

        # what changes nothing: a bad attribution, product, quantity, price or currency
        forged = jwt.encode({**jwt.decode(attr, options={"verify_signature": False}), "room": "d2"}, "not-the-secret-but-long-enough-for-hs256!",
                            algorithm="HS256")
        claims = jwt.decode(attr, TOKEN_SECRET, algorithms=["HS256"])
        expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, TOKEN_SECRET, algorithm="HS256")
        await relay.create_show("other", mirrors=("d1",))
        other = await viewer(http, base, "other", "d1", None)
        elsewhere = await attribution(http, base, "other", other["token"])
        for bad in (forged, expired, elsewhere, amy["token"], "nonsense"):
            status, body = await post_order(http, base, "tea", {**order, "order_id": "o-bad", "attribution": bad})
            assert status == 422 and body["error"] == "invalid_attribution", body
        for item, field in (({"product": "nope", "quantity": 1, "unit_price": "1.00"}, "unknown_product"),
                            ({"product": "p1", "quantity": 0, "unit_price": "1.00"}, "items.0.quantity"),
                            ({"product": "p1", "quantity": 1, "unit_price": "-1.00"}, "items.0.unit_price"),
                            ({"product": "p1", "quantity": 1, "unit_price": "1.001"}, "items.0.unit_price"),
                            ({"product": "p1", "quantity": "2", "unit_price": "1.00"}, "items.0.quantity")):
            status, body = await post_order(http, base, "tea", {**order, "order_id": "o-bad", "items": [item]})
            assert status == 422 and field in (body["error"] + body["message"]), (item, body)
        status, body = await post_order(http, base, "tea", {**order, "order_id": "o-bad", "currency": "USD"})
        assert status == 422 and "currency" in body["message"]
        status, body = await post_order(http, base, "tea", {**order, "order_id": "o-bad"},
                                        headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, body = await relay.request("GET", "/api/shows/tea/orders/o-bad", headers=relay.admin)
        assert status == 404 and body["error"] == "order_not_found"

        # the shop key takes orders and refunds, and opens nothing else
        for method, path in (("GET", "/api/shows/tea/settlement"), ("GET", "/api/shows/tea/orders/o-1"),
                             ("GET", "/api/shows"), ("GET", "/api/shows/tea/stats")):
            assert (await relay.request(method, path, headers=shop()))[0] == 401, path

        status, settled = await relay.api("GET", "/api/shows/tea/settlement")
        assert status == 200
        assert settled["rooms"]["d1"] == {"orders": 1, "gmv": "68.55", "refunds": "0.00", "net": "68.55",
                                          "commission": "7.30", "sharer_commission": "1.37"}
        assert settled["rooms"]["hq"]["gmv"] == "59.70" and settled["rooms"]["d2"]["orders"] == 0
        assert settled["sharers"] == {"alice": {"room": "d1", "orders": 1, "gmv": "68.55", "refunds": "0.00",
                                                "commission": "1.37"}}
        assert settled["totals"]["gmv"] == "128.25" and settled["totals"]["orders"] == 2


async def test_refunds_reverse_commission_in_proportion_and_never_exceed_the_payment(make_relay, store_url):
    relay = await make_relay(store_url, configure=with_shop_key)
    await set_up_shop(relay, "tea")
    base = relay.base
    async with aiohttp.ClientSession() as http:
        amy = await viewer(http, base, "tea", "d1", "alice")
        order = {"order_id": "o-1", "attribution": await attribution(http, base, "tea", amy["token"]),
                 "items": [{"product": "p3", "quantity": 1, "unit_price": "129.00"}], "currency": "CNY"}
        status, taken = await post_order(http, base, "tea", order)
        assert status == 201 and taken["commission"] == {"distributor": "12.90", "sharer": "2.58"}

        async def refund(refund_id: str, amount: str) -> tuple[int, dict]:
            async with http.post(f"{base}/api/shows/tea/orders/o-1/refunds", headers=shop(),
                                 json={"refund_id": refund_id, "amount": amount}) as res:
                return res.status, await res.json()

        status, first = await refund("r1", "43.00")  # a third: 4.30 and 0.86 go back
        assert status == 201, first
        assert first["amount"] == "43.00" and first["commission_reversed"] == {"distributor": "4.30", "sharer": "0.86"}
        assert first["order"]["state"] == "partially_refunded" and first["order"]["refunded"] == "43.00"
        assert await refund("r1", "43.00") == (200, first)  # the same refund again counts once
        status, body = await refund("r1", "10.00")
        assert status == 409 and body["error"] == "refund_id_reused"
        status, body = await refund("r2", "86.01")
        assert status == 422 and body["error"] == "refund_exceeds_payment", body
        for bad in ("0", "-1.00", "1.234", True, None):
            status, body = await refund("r9", bad)
            assert status == 422 and "amount" in body["message"], (bad, body)
        status, body = await relay.request("POST", "/api/shows/tea/orders/nope/refunds", headers=shop(),
                                           json={"refund_id": "r1", "amount": "1.00"})
        assert status == 404 and body["error"] == "order_not_found"
        status, last = await refund("r2", "86.00")  # the rest: everything earned is reversed, to the cent
        assert status == 201 and last["order"]["state"] == "refunded"
        assert last["order"]["commission_net"] == {"distributor": "0.00", "sharer": "0.00"}
        status, read = await relay.api("GET", "/api/shows/tea/orders/o-1")
        assert status == 200 and [r["refund_id"] for r in read["refunds"]] == ["r1", "r2"]
        assert read["items"][0]["commission_rate"] == "0.10" and read["viewer_id"] == amy["viewer_id"]
        settled = (await relay.api("GET", "/api/shows/tea/settlement"))[1]
        assert settled["rooms"]["d1"] == {"orders": 1, "gmv": "129.00", "refunds": "129.00", "net": "0.00",
                                          "commission": "0.00", "sharer_commission": "0.00"}


async def test_commission_rates_are_checked_and_kept(make_relay):
    relay = await make_relay()
    await relay.create_show("tea", mirrors=("d1",))
    assert (await relay.api("GET", "/api/shows/tea"))[1]["sharer_commission_rate"] == "0"
    assert (await relay.api("GET", "/api/shows/tea/mirrors/d1"))[1]["commission_rate"] == "0"
    for body, field in (({"sharer_commission_rate": "1.5"}, "sharer_commission_rate"),
                        ({"sharer_commission_rate": "-0.1"}, "sharer_commission_rate"),
                        ({"sharer_commission_rate": "abc"}, "sharer_commission_rate"),
                        ({"sharer_commission_rate": True}, "sharer_commission_rate")):
        status, answer = await relay.api("PATCH", "/api/shows/tea", body)
        assert status == 422 and field in answer["message"], answer
    status, mirror = await relay.api("PATCH", "/api/shows/tea/mirrors/d1", {"commission_rate": "0.90"})
    assert status == 200 and mirror["commission_rate"] == "0.90"
    status, answer = await relay.api("PATCH", "/api/shows/tea", {"sharer_commission_rate": "0.20"})
    assert status == 422 and "sharer_commission_rate" in answer["message"]  # 0.90 + 0.20 > 1
    assert (await relay.api("PATCH", "/api/shows/tea", {"sharer_commission_rate": "0.10"}))[0] == 200
    status, answer = await relay.api("POST", "/api/shows/tea/mirrors",
                                     {"distributor": "d2", "name": "D2", "commission_rate": "0.95"})
    assert status == 422 and "commission_rate" in answer["message"]
    assert (await relay.api("GET", "/api/shows/tea/mirrors/d2"))[0] == 404  # nothing made
    status, answer = await relay.api("POST", "/api/shows/tea/products",
                                     {"id": "p1", "title": "Tea", "price": "1.00", "commission_rate": "0.91"})
    assert status == 422 and "commission_rate" in answer["message"]
    status, product = await relay.api("POST", "/api/shows/tea/products",
                                      {"id": "p1", "title": "Tea", "price": "1.00", "commission_rate": "0.30"})
    assert status == 201 and product["commission_rate"] == "0.30"
    status, product = await relay.api("PATCH", "/api/shows/tea/products/p1", {"commission_rate": None})
    assert status == 200 and product["commission_rate"] is None
    public = (await relay.request("GET", "/api/shows/tea/products"))[1]
    assert "commission_rate" not in public["products"][0]  # the brand's terms are not the viewers' business
    assert (await relay.api("GET", "/api/shows/tea"))[1]["sharer_commission_rate"] == "0.10"


async def test_sales_show_in_the_rooms_figures_and_as_an_anonymous_event_in_that_room(make_relay, store_url):
    relay = await make_relay(store_url, configure=with_shop_key)
    await set_up_shop(relay, "tea")
    base = relay.base
    d1_events = await SseReader(f"{base}/events/tea/d1").start()
    d2_events = await SseReader(f"{base}/events/tea/d2").start()
    try:
        async with aiohttp.ClientSession() as http:
            buyers = [await viewer(http, base, "tea", "d1", None) for _ in range(4)]
            await viewer(http, base, "tea", "d2", None)
            for n, buyer in enumerate(buyers[:2] * 2):  # two buyers, two orders each
                attr = await attribution(http, base, "tea", buyer["token"])
                assert (await post_order(http, base, "tea", {
                    "order_id": f"o{n}", "attribution": attr, "currency": "CNY",
                    "items": [{"product": "p1", "quantity": 1, "unit_price": "10.00"}]}))[0] == 201
        sale = next(e for e in await d1_events.wait_for(1) if e["type"] == "sale")
        assert sale["product"] == {"id": "p1", "title": "Tea"} and "room" not in sale
        assert not any(key in sale for key in ("amount", "viewer_id", "order_id", "sharer"))
        stats = (await relay.api("GET", "/api/shows/tea/stats"))[1]["rooms"]
        assert stats["d1"]["orders"] == 4 and stats["d1"]["gmv"] == "40.00" and stats["d1"]["buyers"] == 2
        assert stats["d1"]["commission"] == "4.00" and stats["d1"]["conversion"] == 0.5  # 2 of 4 viewers
        assert stats["d2"]["orders"] == 0 and stats["d2"]["conversion"] == 0.0
        await relay.create_show("marker")  # a later event on d2's stream would show a sale sent there
        assert all(e["type"] != "sale" for e in d2_events.events)
    finally:
        await d1_events.close()
        await d2_events.close()


async def test_invite_coupons_need_invitees_then_are_claimed_like_flash_coupons(make_relay, store_url):
    relay = await make_relay(store_url)
    await relay.create_show("tea", mirrors=("d1",))
    status, coupon = await relay.api("POST", "/api/shows/tea/coupons", {
        "id": "bring2", "title": "Bring two friends", "quantity": 10, "duration_s": 300, "kind": "invite",
        "invites_required": 2})
    assert status == 201 and coupon["kind"] == "invite" and coupon["invites_required"] == 2, coupon
    for bad in ({"kind": "invite"}, {"kind": "flash", "invites_required": 2}, {"kind": "lucky"},
                {"kind": "invite", "invites_required": 0}):
        status, body = await relay.api("POST", "/api/shows/tea/coupons",
                                       {"title": "x", "quantity": 1, "duration_s": 60, **bad})
        assert status == 422, (bad, body)
    await relay.api("POST", "/api/shows/tea/coupons/bring2/launch")
    base = relay.base
    async with aiohttp.ClientSession() as http:
        async def claim(token: str, key: str) -> dict:
            async with http.post(f"{base}/api/shows/tea/coupons/bring2/claim",
                                 headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key}) as res:
                assert res.status == 200
                return await res.json()

        host = await viewer(http, base, "tea", "d1", None)
        assert await claim(host["token"], "a") == {"result": "needs_invites", "invites": 0, "invites_required": 2}
        await viewer(http, base, "tea", "d1", host["viewer_id"])  # a friend registers through the share link
        assert await claim(host["token"], "a") == {"result": "needs_invites", "invites": 1, "invites_required": 2}
        friend = await viewer(http, base, "tea", "d1", host["viewer_id"])
        assert (await claim(host["token"], "a"))["result"] == "claimed"  # the same key: decided anew
        assert (await claim(host["token"], "a"))["result"] == "claimed"  # and now kept for it
        assert (await claim(host["token"], "b"))["result"] == "already_claimed"
        assert (await claim(friend["token"], "a"))["result"] == "needs_invites"  # invitees need their own
        async with http.post(f"{base}/api/shows/tea/viewers", json={"room": "d1", "ref": friend["viewer_id"]},
                             headers={"Authorization": f"Bearer {friend['token']}"}) as res:
            assert res.status == 200  # opening one's own share link: no sharer, no invitee
        assert (await claim(friend["token"], "b"))["invites"] == 0
        assert jwt.decode(await attribution(http, base, "tea", friend["token"]),
                          options={"verify_signature": False})["ref"] == host["viewer_id"]
    assert (await relay.api("GET", "/api/shows/tea/coupons/bring2"))[1]["claimed"] == 1


async def storm(base: str, show_id: str, rng: random.Random) -> tuple[list[tuple[dict, dict]], list[dict]]:
    """500 viewers in HQ and two rooms (some with a sharer) place 2,000 orders at once, a fifth of them
    posted twice; then a tenth are refunded (some in part, some twice with one refund id)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:
        refs = [(None, "alice", "bob", "d1")[i % 4] for i in range(500)]
        viewers = await asyncio.gather(*(viewer(http, base, show_id, ("hq", "d1", "d2")[i % 3], refs[i])
                                         for i in range(500)))
        for v, ref in zip(viewers, refs):
            v["ref"] = ref
        attrs = await asyncio.gather(*(attribution(http, base, show_id, v["token"]) for v in viewers))
        orders = []
        for n in range(2000):
            k = rng.randrange(len(viewers))
            items = [{"product": p, "quantity": rng.randint(1, 5), "unit_price": f"{rng.randint(1, 20000) / 100:.2f}"}
                     for p in rng.sample(sorted(PRODUCTS), rng.randint(1, 3))]
            with_attr = n % 10 != 0  # a tenth came another way: HQ, no commission
            orders.append(({"order_id": f"o{n}", "attribution": attrs[k] if with_attr else None, "items": items,
                            "currency": "CNY"}, viewers[k] if with_attr else None))
        posts = orders + [orders[n] for n in range(0, 2000, 5)]
        rng.shuffle(posts)
        answers = await asyncio.gather(*(post_order(http, base, show_id, body) for body, _ in posts))
        first: dict[str, dict] = {}
        for (body, _), (status, answer) in zip(posts, answers):
            assert status in (200, 201), answer
            assert first.setdefault(body["order_id"], answer) == answer
        assert sum(1 for status, _ in answers if status == 201) == 2000
        refunds = []
        for n in range(0, 2000, 10):
            body, _ = orders[n]
            paid = cents(first[body["order_id"]]["amount"])
            refunds.append((body["order_id"], f"r{n}", paid if n % 20 == 0 else paid // 3))
        posts = refunds + refunds[::4]
        answers = await asyncio.gather(*(
            http.post(f"{base}/api/shows/{show_id}/orders/{oid}/refunds", headers=shop(),
                      json={"refund_id": rid, "amount": money(amount)}) for oid, rid, amount in posts))
        for res in answers:
            assert res.status in (200, 201), await res.text()
            res.release()
    return orders, [{"order_id": oid, "amount": amount} for oid, _, amount in refunds]


def expected_books(orders: list[tuple[dict, dict]], refunds: list[dict]) -> dict[tuple[str, str], list[int]]:
    """(room, sharer) -> [orders, gmv, refunds, distributor net, sharer net], computed from the rules."""
    refunded = {r["order_id"]: r["amount"] for r in refunds}
    books: dict[tuple[str, str], list[int]] = {}
    for body, who in orders:
        room, sharer = (who["room"], who["ref"]) if who else ("hq", None)
        amount, dist, share = expected_commission(room, sharer, body["items"])
        back = refunded.get(body["order_id"], 0)
        dist_back = (2 * dist * back + amount) // (2 * amount) if amount else 0
        share_back = (2 * share * back + amount) // (2 * amount) if amount else 0
        row = books.setdefault((room, sharer or ""), [0, 0, 0, 0, 0])
        for i, value in enumerate((1, amount, back, dist - dist_back, share - share_back)):
            row[i] += value
    return books


async def check_books(relay: Relay, show_id: str, expected: dict[tuple[str, str], list[int]]) -> None:
    status, settled = await relay.api("GET", f"/api/shows/{show_id}/settlement")
    assert status == 200
    for room in ("hq", "d1", "d2"):
        rows = [v for (r, _), v in expected.items() if r == room]
        want = [sum(v[i] for v in rows) for i in range(5)]
        got = settled["rooms"][room]
        assert [got["orders"], cents(got["gmv"]), cents(got["refunds"]), cents(got["commission"]),
                cents(got["sharer_commission"])] == want, room
        assert cents(got["net"]) == want[1] - want[2]
    total = settled["totals"]
    for field in ("gmv", "refunds", "net", "commission", "sharer_commission"):
        assert cents(total[field]) == sum(cents(settled["rooms"][r][field]) for r in settled["rooms"]), field
    assert total["orders"] == 2000
    for sharer in ("alice", "bob", "d1"):
        rows = [v for (_, s), v in expected.items() if s == sharer]
        assert cents(settled["sharers"][sharer]["commission"]) == sum(v[4] for v in rows)
        assert settled["sharers"][sharer]["orders"] == sum(v[0] for v in rows)

    status, text = await relay.request("GET", f"/api/shows/{show_id}/settlement?format=csv", headers=relay.admin)
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["room", "sharer", "orders", "gmv", "refunds", "net", "commission", "sharer_commission"]
    got = {(r["room"], r["sharer"]): [int(r["orders"]), cents(r["gmv"]), cents(r["refunds"]), cents(r["commission"]),
                                      cents(r["sharer_commission"])] for r in rows}
    assert got == expected  # to the cent, row by row


async def test_two_thousand_orders_at_once_settle_to_the_cent_and_survive_a_crash(server_process, store_url, tmp_path):
    data = tmp_path / "data"
    env = {"RELAY_STORE_REDIS_URL": store_url, "RELAY_AUTH_SHOP_KEY": SHOP_KEY}
    server = server_process(data, env=env)
    relay = Relay(server.base, relay_settings(data))
    await set_up_shop(relay, "big")
    orders, refunds = await storm(server.base, "big", random.Random(16))
    expected = expected_books(orders, refunds)
    await check_books(relay, "big", expected)

    server.stop(signal.SIGKILL)  # a crash: every acknowledged order and refund was durable already
    server = server_process(data, env=env)
    relay = Relay(server.base, relay_settings(data))
    await check_books(relay, "big", expected)
    assert (await relay.api("GET", "/api/shows/big/orders/o0"))[1]["state"] == "refunded"
    server.stop()
