"""Webhooks: signed, retried with the same event id, and never in the way of a request."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
from aiohttp import web

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.webhooks import new_secret, sign, verify
from relay_testkit.synthetic import host_tracks

SECRET = new_secret()  # whsec_<base64>, as Standard Webhooks libraries take it


def headers(event_id: str, ts: int, signature: str) -> dict[str, str]:
    return {"webhook-id": event_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_signatures_verify_and_refuse_tampering_and_replays():
    body = b'{"id":"evt_1"}'
    ts = int(time.time())
    signature = sign(SECRET, "evt_1", ts, body)
    assert verify(SECRET, body, headers("evt_1", ts, signature))
    assert not verify(SECRET, body + b" ", headers("evt_1", ts, signature))  # tampered body
    assert not verify(SECRET, body, headers("evt_2", ts, signature))  # another event's signature
    assert not verify(new_secret(), body, headers("evt_1", ts, signature))  # another secret
    old = sign(SECRET, "evt_1", ts - 3600, body)
    assert not verify(SECRET, body, headers("evt_1", ts - 3600, old))  # an old request replayed
    assert not verify(SECRET, body, {"webhook-id": "evt_1", "webhook-timestamp": "soon", "webhook-signature": signature})
    # The standardwebhooks library agrees, with our secret as it is and with a raw secret's whsec_ form.
    assert Webhook(SECRET).verify(body, headers("evt_1", ts, signature)) == {"id": "evt_1"}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body + b" ", headers("evt_1", ts, signature))
    raw = "a-secret-from-before"
    assert Webhook("whsec_" + base64.b64encode(raw.encode()).decode()).verify(
        body, headers("evt_1", ts, sign(raw, "evt_1", ts, body))) == {"id": "evt_1"}


class Receiver:
    """A webhook receiver as an operator would write one: verifies, dedupes by event id, and
    (here) fails each event's first delivery so the relay has to retry it."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.events: dict[str, dict] = {}
        self.refused = 0
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:  # the Standard Webhooks library, as a receiver in any language would use
            event = Webhook(SECRET).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.refused += 1
            return web.Response(status=401)
        assert event["id"] == request.headers["webhook-id"]
        self.attempts[event["id"]] = self.attempts.get(event["id"], 0) + 1
        if self.attempts[event["id"]] == 1:
            return web.Response(status=500)
        self.events.setdefault(event["id"], event)  # a duplicate id is the same event
        self.arrived.set()
        return web.Response(status=204)

    def types(self) -> list[str]:
        return sorted(e["type"] for e in self.events.values())


async def test_show_events_reach_the_receiver_signed_and_retried(make_relay, aiohttp_server, h264_clip):
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    hook_server = await aiohttp_server(app, host="127.0.0.1")

    def configure(settings):
        settings.webhooks.urls = [f"http://127.0.0.1:{hook_server.port}/hook"]
        settings.webhooks.secret = SECRET
        settings.replay.segment_target_s = 1.0

    relay = await make_relay(configure=configure)
    show = await relay.create_show("hooked", mirrors=("d1",))
    host = await relay.publish(show, host_tracks(h264_clip, None))
    await relay.api("POST", "/api/shows/hooked/coupons", {"id": "c", "title": "C", "quantity": 3, "duration_s": 60})
    await relay.api("POST", "/api/shows/hooked/coupons/c/launch")
    viewer = (await relay.request("POST", "/api/shows/hooked/viewers", json={"room": "d1", "ref": "amy"}))[1]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{relay.base}/api/shows/hooked/coupons/c/claim", headers={
                "Authorization": f"Bearer {viewer['token']}", "Idempotency-Key": "k"}) as res:
            assert (await res.json())["result"] == "claimed"
        assert (await relay.api("POST", "/api/shows/hooked/products", {"id": "p1", "title": "P", "price": 5}))[0] == 201
        async with http.post(f"{relay.base}/api/shows/hooked/attribution",
                             headers={"Authorization": f"Bearer {viewer['token']}"}) as res:
            attribution = (await res.json())["attribution"]
        assert (await relay.api("POST", "/api/shows/hooked/orders", {
            "order_id": "o1", "attribution": attribution, "currency": "CNY",
            "items": [{"product": "p1", "quantity": 2, "unit_price": "5.00"}]}))[0] == 201
        assert (await relay.api("POST", "/api/shows/hooked/orders/o1/refunds",
                                {"refund_id": "r1", "amount": "5.00"}))[0] == 201

    async def recorded() -> bool:
        return (await relay.api("GET", "/api/shows/hooked/replay"))[1]["duration_s"] > 0

    await relay.wait_for(recorded, timeout=15, what="a replay segment")
    await host.stop()  # DELETE: unpublish, show ended, then the replay becomes ready

    wanted = ["coupon.claimed", "order.created", "order.refunded", "publish", "replay.ready", "show.ended",
              "show.live", "unpublish"]

    async def all_delivered() -> bool:
        return receiver.types() == wanted

    await relay.wait_for(all_delivered, timeout=20, what=f"{wanted} at the receiver")
    assert receiver.refused == 0
    assert all(n == 2 for n in receiver.attempts.values())  # each retried once, with the same id
    by_type = {e["type"]: e["data"] for e in receiver.events.values()}
    assert by_type["coupon.claimed"] == {"show": "hooked", "coupon": "c", "viewer_id": viewer["viewer_id"],
                                         "room": "d1", "sharer": "amy", "remaining": 2}
    assert by_type["order.created"] == {
        "show": "hooked", "order_id": "o1", "viewer_id": viewer["viewer_id"], "room": "d1", "sharer": "amy",
        "amount": "10.00", "commission": {"distributor": "0.00", "sharer": "0.00"}, "currency": "CNY", "state": "paid"}
    assert by_type["order.refunded"]["refund"]["amount"] == "5.00"
    assert by_type["order.refunded"]["state"] == "partially_refunded"
    assert by_type["unpublish"]["reason"] == "host_ended"
    assert by_type["replay.ready"]["mp4_url"].endswith("/replay/hooked/show.mp4")


async def test_a_dead_receiver_never_slows_the_server(make_relay, aiohttp_server):
    stuck = asyncio.Event()

    async def never_answers(request: web.Request) -> web.Response:
        await stuck.wait()  # holds every delivery until its timeout
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", never_answers)
    hook_server = await aiohttp_server(app, host="127.0.0.1")

    def configure(settings):
        settings.webhooks.urls = [f"http://127.0.0.1:{hook_server.port}/hook"]
        settings.webhooks.secret = SECRET
        settings.webhooks.timeout_s = 30.0
        settings.webhooks.max_queue = 10

    relay = await make_relay(configure=configure)
    await relay.create_show("busy")
    await relay.api("POST", "/api/shows/busy/coupons", {"id": "c", "title": "C", "quantity": 500, "duration_s": 60})
    await relay.api("POST", "/api/shows/busy/coupons/c/launch")
    async with aiohttp.ClientSession() as http:
        viewers = [(await (await http.post(f"{relay.base}/api/shows/busy/viewers", json={"room": "hq"})).json())
                   for _ in range(60)]
        slowest = 0.0
        for viewer in viewers:  # 60 claims, 60 webhooks: 4 stuck in flight, 10 queued, the rest dropped
            started = time.monotonic()
            async with http.post(f"{relay.base}/api/shows/busy/coupons/c/claim", headers={
                    "Authorization": f"Bearer {viewer['token']}", "Idempotency-Key": "k"}) as res:
                assert (await res.json())["result"] == "claimed"
            slowest = max(slowest, time.monotonic() - started)
    assert slowest < 0.5
    metrics = (await relay.request("GET", "/metrics", headers=relay.admin))[1]
    dropped = next(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith('relay_webhook_deliveries_total{outcome="dropped"}'))
    assert dropped >= 40
    stuck.set()
