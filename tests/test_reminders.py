"""Show reminders by Web Push (RFC 8030/8291/8292) and the public show listing.

A push service written here stands in for the browser vendors' (on 127.0.0.1, allowed by
[webpush] push_service_hosts); each subscriber's keys are real, and each message is decrypted
and its VAPID JWT verified as a push service and a browser would."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import aiohttp
from aiohttp import web
import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
import pytest

from relay.app import SERVICES
from relay.reminders.subscriptions import RedisSubscriptionStore, SqliteSubscriptionStore, Subscription
from relay.reminders.vapid import new_private_pem
from relay_testkit.synthetic import host_tracks


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Browser:
    """One browser's subscription keys (as PushManager.subscribe makes them)."""

    def __init__(self, endpoint: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        self.endpoint = endpoint

    def subscription(self) -> dict:
        point = self.key.public_key().public_bytes(serialization.Encoding.X962,
                                                   serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": self.endpoint, "expirationTime": None,
                "keys": {"p256dh": b64url(point), "auth": b64url(self.auth)}}

    def decrypt(self, body: bytes) -> dict:
        return json.loads(http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth, version="aes128gcm"))


class PushService:
    """The stand-in push service: records each message; a path may be set to answer 410."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict, bytes]] = []  # (token, headers, body)
        self.gone: set[str] = set()
        self.arrived = asyncio.Event()
        self.base = ""

    async def handle(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        self.received.append((token, dict(request.headers), await request.read()))
        self.arrived.set()
        return web.Response(status=410 if token in self.gone else 201)

    async def start(self, aiohttp_server) -> "PushService":
        app = web.Application()
        app.router.add_post("/push/{token}", self.handle)
        server = await aiohttp_server(app, host="127.0.0.1")
        self.base = f"http://127.0.0.1:{server.port}"
        return self

    async def wait(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} messages arrived"
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 0.2)
            except TimeoutError:
                pass


def loopback_push(settings, *more_hosts: str) -> None:
    settings.webpush.push_service_hosts = ["127.0.0.1", *more_hosts]
    settings.webpush.subscriptions_per_s = 0  # many subscriptions from one test address


def check_vapid(header: str, public_key: str, audience: str) -> None:
    """The Authorization header as a push service checks it (RFC 8292)."""
    scheme, _, params = header.partition(" ")
    assert scheme == "vapid"
    fields = dict(p.strip().split("=", 1) for p in params.split(","))
    assert fields["k"] == public_key
    header_b64, claims_b64, signature_b64 = fields["t"].split(".")
    assert json.loads(unb64url(header_b64)) == {"typ": "JWT", "alg": "ES256"}
    signature = unb64url(signature_b64)
    assert len(signature) == 64
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(public_key))
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    key.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):  # and the signature is bound to the claims
        key.verify(der, f"{header_b64}.{claims_b64}x".encode(), ec.ECDSA(hashes.SHA256()))
    claims = json.loads(unb64url(claims_b64))
    assert claims["aud"] == audience
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600
    assert claims["sub"]


async def test_each_subscriber_gets_one_encrypted_signed_message_when_the_show_goes_live(
        make_relay, aiohttp_server, h264_clip):
    push = await PushService().start(aiohttp_server)
    relay = await make_relay(configure=loopback_push)
    status, created = await relay.api("POST", "/api/shows", {"title": "春季新品 Launch", "id": "launch",
                                                             "starts_at": time.time() + 3600})
    assert status == 201 and created["starts_at"] > time.time()
    status, answer = await relay.request("GET", "/api/webpush/vapid-public-key")
    assert status == 200
    public_key = answer["public_key"]
    assert len(unb64url(public_key)) == 65 and unb64url(public_key)[0] == 4  # the applicationServerKey

    browsers = {name: Browser(f"{push.base}/push/{name}") for name in ("amy", "bo", "cy")}
    push.gone.add("cy")  # cy's subscription has expired at the push service
    ids = {}
    for name, browser in browsers.items():
        status, body = await relay.request("POST", "/api/shows/launch/subscriptions",
                                           json={"webpush": browser.subscription()})
        assert status == 201, body
        ids[name] = body["id"]
    assert len(set(ids.values())) == 3

    host = await relay.publish(created, host_tracks(h264_clip, None))
    await push.wait(3)
    assert sorted(token for token, _, _ in push.received) == ["amy", "bo", "cy"]
    for token, headers, body in push.received:
        assert headers["Content-Encoding"] == "aes128gcm" and int(headers["TTL"]) > 0
        check_vapid(headers["Authorization"], public_key, push.base)
        assert browsers[token].decrypt(body) == {
            "type": "show.live", "show": "launch", "title": "春季新品 Launch",
            "url": f"{relay.base}/watch/launch", "watch_url": f"{relay.base}/watch/launch"}
    not_bo = next(body for token, _, body in push.received if token != "bo")
    with pytest.raises(http_ece.ECEException):  # another browser's key does not open it
        browsers["bo"].decrypt(not_bo)

    reminders = relay.app[SERVICES].reminders
    store = reminders._store

    async def cy_removed() -> bool:
        return sorted(s.id for s in await store.for_show("launch")) == sorted([ids["amy"], ids["bo"]])

    await relay.wait_for(cy_removed, what="the 410'd subscription to go")

    # The host drops and comes back: the show was live all along, nobody is told again.
    await host.drop()
    await relay.publish(created, host_tracks(h264_clip, None))
    await asyncio.sleep(0.5)
    assert len(push.received) == 3
    # A later announcement reaches those left, not the one the push service said was gone.
    assert await reminders.announce("launch") == 2
    await push.wait(5)
    assert sorted(token for token, _, _ in push.received[3:]) == ["amy", "bo"]

    # A browser withdraws: 204, then 404.
    assert (await relay.request("DELETE", f"/api/shows/launch/subscriptions/{ids['amy']}"))[0] == 204
    assert (await relay.request("DELETE", f"/api/shows/launch/subscriptions/{ids['amy']}"))[0] == 404
    assert [s.id for s in await store.for_show("launch")] == [ids["bo"]]


async def test_subscriptions_to_unknown_push_services_or_without_keys_are_refused(make_relay):
    relay = await make_relay(configure=lambda s: loopback_push(s, "fcm.googleapis.com", "*.notify.windows.com"))
    await relay.create_show("guarded")
    good = Browser("https://fcm.googleapis.com/fcm/send/abc").subscription()

    def variant(**change) -> dict:
        sub = json.loads(json.dumps(good))
        for key, value in change.items():
            if key in ("p256dh", "auth"):
                sub["keys"][key] = value
            else:
                sub[key] = value
        return sub

    no_keys = variant()
    del no_keys["keys"]
    short_auth = variant(auth=b64url(os.urandom(8)))
    refused = [
        (variant(endpoint="https://push.evil.example/abc"), "webpush.endpoint"),  # not a push service
        (variant(endpoint="https://fcm.googleapis.com.evil.example/abc"), "webpush.endpoint"),
        (variant(endpoint="http://fcm.googleapis.com/fcm/send/abc"), "webpush.endpoint"),  # http, not loopback
        (variant(endpoint="https://user:pw@fcm.googleapis.com/x"), "webpush.endpoint"),
        (variant(endpoint="ftp://127.0.0.1/x"), "webpush.endpoint"),
        (variant(endpoint="http://localhost/x"), "webpush.endpoint"),  # loopback, but not listed
        (no_keys, "webpush.keys"),
        (variant(p256dh=b64url(os.urandom(65))), "webpush.keys.p256dh"),  # not a point on the curve
        (variant(p256dh="!!!"), "webpush.keys.p256dh"),
        (short_auth, "webpush.keys.auth"),
        ({"endpoint": good["endpoint"], "keys": good["keys"]}, "webpush"),  # not wrapped in "webpush"
    ]
    for body, field in refused:
        sent = body if field == "webpush" else {"webpush": body}
        status, answer = await relay.request("POST", "/api/shows/guarded/subscriptions", json=sent)
        assert status == 422 and answer["error"] == "invalid_field", (body, answer)
        assert f"'{field}'" in answer["message"], (field, answer)
    store = relay.app[SERVICES].reminders._store
    assert await store.for_show("guarded") == []  # nothing stored
    # Allowed: a listed host, a host under a "*." entry, and http to the listed loopback host.
    for endpoint in ("https://fcm.googleapis.com/fcm/send/abc", "https://db5p.notify.windows.com/w/?token=x",
                     "http://127.0.0.1:9/push/x"):
        status, answer = await relay.request("POST", "/api/shows/guarded/subscriptions",
                                             json={"webpush": variant(endpoint=endpoint)})
        assert status == 201, (endpoint, answer)
    assert len(await store.for_show("guarded")) == 3
    # Token shows are not for everyone: no reminders, no calendar, as if there were no such show.
    await relay.api("POST", "/api/shows", {"title": "VIP", "id": "vip", "playback": "token"})
    status, answer = await relay.request("POST", "/api/shows/vip/subscriptions", json={"webpush": good})
    assert status == 404 and answer["error"] == "show_not_found"
    assert (await relay.request("POST", "/api/shows/nope/subscriptions", json={"webpush": good}))[0] == 404


async def test_subscriptions_are_rate_limited_per_address(make_relay):
    relay = await make_relay(configure=lambda s: setattr(s.webpush, "push_service_hosts", ["127.0.0.1"]))
    await relay.create_show("limited")
    statuses = []
    for _ in range(25):  # the default 2/s lets a burst of 20 through
        body = {"webpush": Browser("http://127.0.0.1:9/push/x").subscription()}
        statuses.append((await relay.request("POST", "/api/shows/limited/subscriptions", json=body))[0])
    assert statuses[0] == 201 and 429 in statuses


async def test_ten_thousand_subscribers_do_not_delay_the_show_going_live(make_relay, aiohttp_server, h264_clip):
    push = await PushService().start(aiohttp_server)

    def configure(settings):
        loopback_push(settings)
        settings.webpush.max_queue = 2000  # the bound: the rest of a go-live's messages wait for room

    relay = await make_relay(configure=configure)
    show = await relay.create_show("crowd")
    reminders = relay.app[SERVICES].reminders
    browser = Browser(f"{push.base}/push/fan")
    keys = browser.subscription()["keys"]
    current = await relay.app[SERVICES].catalog.show("crowd")
    await asyncio.gather(*(reminders.subscribe(current, f"{push.base}/push/fan{i}", keys["p256dh"], keys["auth"])
                           for i in range(10_000)))
    assert len(await reminders._store.for_show("crowd")) == 10_000

    started = time.monotonic()
    await relay.publish(show, host_tracks(h264_clip, None))
    took = time.monotonic() - started
    assert took < 5.0, f"the WHIP publish took {took:.1f}s"
    assert (await relay.show("crowd"))["state"] == "live"

    async def queue_full() -> bool:
        return reminders.sender.queued >= 1900

    await relay.wait_for(queue_full, what="the queue to fill to its bound")
    await push.wait(20)  # sending goes on, a few at a time
    # The server answers at once meanwhile, and the queue never holds more than its bound.
    started = time.monotonic()
    assert (await relay.request("GET", "/api/shows/crowd/status"))[0] == 200
    assert time.monotonic() - started < 0.5
    assert reminders.sender.queued <= 2000

    async def everyone_told() -> bool:
        assert reminders.sender.queued <= 2000
        return len(push.received) >= 10_000

    await relay.wait_for(everyone_told, timeout=120, what="a message to each of the 10,000 subscribers")
    assert reminders.sender.dropped == 0 and len(push.received) == 10_000
    assert browser.decrypt(push.received[0][2])["show"] == "crowd"


@pytest.mark.parametrize("kind", ["embedded", "redis"])
async def test_the_subscription_store_contract(kind, tmp_path, request):
    """Both stores keep subscriptions per show and one VAPID key for every process sharing them."""
    if kind == "redis":
        url = request.getfixturevalue("redis_server").url
        stores = [RedisSubscriptionStore(url, "t"), RedisSubscriptionStore(url, "t")]
    else:
        stores = [SqliteSubscriptionStore(tmp_path / "relay.db", tmp_path / "vapid_private.pem"),
                  SqliteSubscriptionStore(tmp_path / "relay.db", tmp_path / "vapid_private.pem")]
    one, other = stores
    try:
        a = Subscription("a", "s1", "https://fcm.googleapis.com/x", "p", "q", 1.0)
        b = Subscription("b", "s1", "https://fcm.googleapis.com/y", "p", "q", 2.0)
        c = Subscription("c", "s2", "https://fcm.googleapis.com/z", "p", "q", 3.0)
        for s in (a, b, c):
            await one.add(s)
        assert await other.for_show("s1") == [a, b]
        assert await one.remove("s1", "a") and not await one.remove("s1", "a")
        assert await other.for_show("s1") == [b]
        await one.purge_show("s1")
        assert await other.for_show("s1") == [] and await other.for_show("s2") == [c]
        key = await one.vapid_key(new_private_pem)
        assert await other.vapid_key(new_private_pem) == key  # made once, shared
        assert "PRIVATE KEY" in key
        if kind == "embedded":
            assert (tmp_path / "vapid_private.pem").stat().st_mode & 0o777 == 0o600
    finally:
        for store in stores:
            await store.close()


# -- the show listing ---------------------------------------------------------------------------
PUBLIC_FIELDS = {"id", "title", "state", "starts_at", "started_at", "ended_at", "watch_url", "replay_url",
                 "calendar_url", "subscriptions_url"}


async def test_public_listing_filters_and_hides_token_shows_and_admin_fields(make_relay, store_url):
    relay = await make_relay(store_url)
    at = 1_900_000_000.0
    assert (await relay.api("POST", "/api/shows", {"title": "Soon", "id": "soon", "starts_at": at}))[0] == 201
    assert (await relay.api("POST", "/api/shows", {"title": "VIP", "id": "vip", "playback": "token",
                                                   "starts_at": at}))[0] == 201
    assert (await relay.api("POST", "/api/shows", {"title": "Over", "id": "over"}))[0] == 201
    assert (await relay.api("POST", "/api/shows/over/end"))[0] == 200

    status, listed = await relay.request("GET", "/api/shows")
    assert status == 200
    assert [s["id"] for s in listed["shows"]] == ["soon", "over"]  # no token show
    assert all(set(s) == PUBLIC_FIELDS for s in listed["shows"])  # no keys, no commerce settings
    soon = listed["shows"][0]
    assert soon["starts_at"] == at and soon["state"] == "scheduled"
    assert soon["watch_url"] == f"{relay.base}/watch/soon" and soon["replay_url"] is None
    assert [s["id"] for s in (await relay.request("GET", "/api/shows?state=scheduled"))[1]["shows"]] == ["soon"]
    assert [s["id"] for s in (await relay.request("GET", "/api/shows?state=ended"))[1]["shows"]] == ["over"]
    assert (await relay.request("GET", "/api/shows?state=live"))[1]["shows"] == []
    status, answer = await relay.request("GET", "/api/shows?state=soon")
    assert status == 422 and "'state'" in answer["message"]
    # The admin sees every show in full, filtered too; a wrong key is refused, not a public list.
    status, everything = await relay.api("GET", "/api/shows")
    assert [s["id"] for s in everything["shows"]] == ["soon", "vip", "over"]
    assert everything["shows"][1]["playback"] == "token" and everything["shows"][1]["starts_at"] == at
    status, scheduled = await relay.api("GET", "/api/shows?state=scheduled")
    assert [s["id"] for s in scheduled["shows"]] == ["soon", "vip"]
    assert (await relay.request("GET", "/api/shows", headers={"Authorization": "Bearer wrong"}))[0] == 401

    # starts_at: set on create and PATCH, refused when it is not a time.
    for bad in ("tomorrow", -5, 0, True, 1e20, None):
        status, answer = await relay.api("POST", "/api/shows", {"title": "X", "starts_at": bad})
        if bad is None:
            assert status == 201  # null: no scheduled start
            continue
        assert status == 422 and "'starts_at'" in answer["message"], (bad, answer)
        status, answer = await relay.api("PATCH", "/api/shows/soon", {"starts_at": bad})
        assert status == 422 and "'starts_at'" in answer["message"], (bad, answer)
    status, changed = await relay.api("PATCH", "/api/shows/soon", {"starts_at": at + 60})
    assert status == 200 and changed["starts_at"] == at + 60
    relay.app[SERVICES].catalog.forget(None)  # read back from the store
    assert (await relay.show("soon"))["starts_at"] == at + 60


async def test_a_public_show_is_a_calendar_event(relay):
    at = 1_900_000_000.0  # 2030-03-17T17:46:40Z
    await relay.api("POST", "/api/shows", {"title": "Spring, sale; 春", "id": "cal", "starts_at": at})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{relay.base}/api/shows/cal/calendar.ics") as res:
            assert res.status == 200 and res.content_type == "text/calendar"
            text = await res.text()
    assert text.endswith("\r\n")
    lines = text.replace("\r\n ", "").split("\r\n")  # unfolded
    assert lines[0] == "BEGIN:VCALENDAR" and "END:VCALENDAR" in lines
    assert "BEGIN:VEVENT" in lines and "END:VEVENT" in lines
    assert "DTSTART:20300317T174640Z" in lines
    assert r"SUMMARY:Spring\, sale\; 春" in lines
    assert f"URL:{relay.base}/watch/cal" in lines
    assert any(line.startswith("UID:cal@") for line in lines)
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))
    # No start yet: nothing to put in a calendar. A token show: not public.
    await relay.create_show("unscheduled")
    assert (await relay.request("GET", "/api/shows/unscheduled/calendar.ics"))[0] == 409
    await relay.api("POST", "/api/shows", {"title": "VIP", "id": "vipcal", "playback": "token", "starts_at": at})
    assert (await relay.request("GET", "/api/shows/vipcal/calendar.ics"))[0] == 404
    assert (await relay.request("GET", "/api/shows/vipcal/calendar.ics", headers=relay.admin))[0] == 200
