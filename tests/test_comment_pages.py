"""Comments, likes, moderation and reminders in the pages, in Chromium against a real relay.

The watch page posts a comment that the same room's other viewers see and another room does not,
sends batched likes and shows the room's total, and shows the pinned comment; the ops page
releases a comment the block list held, which then reaches the room; the replay page shows the
comments up to the playhead; the /shows page's "Remind me" registers the service worker and
creates a subscription on the server, which pushes to it when the show goes live.

What is not real: headless Chromium has no push service (pushManager.subscribe needs Google's),
so the page's PushManager is replaced by a stand-in whose subscription has a real P-256 key pair
(made by WebCrypto) and an endpoint on a push service of the test's own on 127.0.0.1 (allowed by
[webpush] push_service_hosts). The relay really posts its encrypted message there; the push event
that reaches the service worker is then delivered by DevTools (ServiceWorker.deliverPushMessage)
with the message's JSON, since there is no push service to decrypt and forward it.
"""

from __future__ import annotations

import json
import re

from aiohttp import web
from playwright.async_api import Page, expect

from conftest import ADMIN_KEY, Relay
from relay_testkit.process import free_port
from relay_testkit.synthetic import host_tracks
from test_order_pages import Pages
from test_pages import DESKTOP, PHONE, browser, screenshots, until  # noqa: F401 (browser: the fixture)


async def watching(pages: Pages, path: str, viewport: dict = PHONE) -> Page:
    """A watch page whose event stream is open (what is written to the room from now on reaches it)."""
    page = await pages.open(path, viewport)
    await until(page, "document.querySelector('#watch').dataset.events === 'open'")
    return page


async def comment(page: Page, text: str) -> None:
    await page.get_by_role("textbox", name="Comment").fill(text)
    await page.get_by_role("button", name="Send").click()


def line(page: Page, text: str):
    return page.locator("#comments li", has_text=text)


async def test_comments_reach_their_own_room_and_likes_are_batched(make_relay, browser, h264_clip):
    relay = await make_relay()
    show = await relay.create_show("chat", mirrors=("d1",))
    await relay.publish(show, host_tracks(h264_clip, None))
    pages = Pages(browser, relay.base)
    amy = await watching(pages, "/watch/chat")
    bob = await watching(pages, "/watch/chat", DESKTOP)
    other = await watching(pages, "/watch/chat/d1")

    await comment(amy, "Hello from HQ")
    await expect(line(bob, "Hello from HQ")).to_be_visible(timeout=5000)
    await expect(line(amy, "Hello from HQ")).to_have_count(1)  # shown at once, not again from the stream
    await expect(amy.get_by_role("textbox", name="Comment")).to_have_value("")
    # The other room: its own comment arrives, the HQ one never did (one stream, in order).
    await comment(other, "Hi from D1")
    await expect(line(other, "Hi from D1")).to_be_visible(timeout=5000)
    await expect(line(other, "Hello from HQ")).to_have_count(0)
    await expect(line(bob, "Hi from D1")).to_have_count(0)

    # Server text is text: markup in a comment stays characters.
    await comment(bob, "<img src=x onerror=alert(1)>bold")
    await expect(line(amy, "bold")).to_have_text(re.compile(re.escape("<img src=x onerror=alert(1)>bold")), timeout=5000)
    assert await amy.locator("#comments img").count() == 0

    # The operator pins a comment: it shows over the video in the room.
    listed = (await relay.api("GET", "/api/shows/chat/comments?room=hq"))[1]["comments"]
    hello = next(c for c in listed if c["text"] == "Hello from HQ")
    status, body = await relay.api("POST", f"/api/shows/chat/comments/{hello['id']}/pin")
    assert status in (200, 201), body
    await expect(bob.locator("#pinned-comment")).to_contain_text("Hello from HQ", timeout=5000)
    await expect(other.locator("#pinned-comment")).to_be_hidden()

    # Seven quick taps: hearts float, at most a request per half second carries them, and the
    # room's total comes back on the stream to the other viewer of the room.
    sent: list[int] = []
    amy.on("request", lambda r: r.url.endswith("/likes") and sent.append(json.loads(r.post_data)["count"]))
    for _ in range(7):
        await amy.get_by_role("button", name="Like").click()
    assert await amy.locator("#hearts .heart").count() > 0
    await expect(bob.locator("#likes")).to_have_text("7", timeout=5000)
    await expect(amy.locator("#likes")).to_have_text("7")
    assert sum(sent) == 7 and len(sent) <= 3, sent
    await expect(other.locator("#likes")).to_have_text("")  # D1's own total: none yet

    # Too fast: the page says so briefly (the 429 is the test's; the relay's limit is off in tests).
    async def too_fast(route):
        await route.fulfill(status=429, headers={"Retry-After": "2"}, content_type="application/json",
                            body='{"error": "rate_limited", "message": "too many comments"}')

    await amy.route("**/api/shows/chat/comments", too_fast)
    await comment(amy, "again and again")
    await expect(amy.locator("#comment-note")).to_contain_text("Slow down")
    await expect(amy.locator("#comment-note")).to_be_hidden(timeout=5000)
    await expect(amy.get_by_role("textbox", name="Comment")).to_have_value("again and again")  # kept to send later
    await screenshots(amy, "watch-comments")
    provoked = ("status of 429",)
    assert [e for e in pages.errors if not any(p in e for p in provoked)] == []


async def sign_in(ops: Page, show: str) -> None:
    await ops.get_by_label("Admin key").fill(ADMIN_KEY)
    await ops.get_by_role("button", name="Sign in").click()
    await expect(ops.locator("#show-name")).to_have_text(f"Show {show}")


async def test_ops_releases_a_held_comment_and_it_reaches_the_room(make_relay, browser, h264_clip):
    relay = await make_relay()
    show = await relay.create_show("mod")
    await relay.publish(show, host_tracks(h264_clip, None))
    status, lists = await relay.api("PUT", "/api/moderation", {"block": ["forbidden"], "mask": [], "hold_links": False})
    assert status == 200, lists
    pages = Pages(browser, relay.base)
    amy = await watching(pages, "/watch/mod")
    bob = await watching(pages, "/watch/mod")
    ops = await pages.open("/ops?show=mod")
    await sign_in(ops, "mod")
    await expect(ops.locator("#block-words")).to_have_value("forbidden")

    await comment(amy, "this is forbidden fruit")
    await expect(line(amy, "forbidden fruit")).to_be_visible()  # its author is not told
    held = ops.locator("#held tr", has_text="this is forbidden fruit")
    await expect(held).to_be_visible(timeout=5000)  # on the ops page's own refresh
    await comment(amy, "and a fine one")
    await expect(line(bob, "and a fine one")).to_be_visible(timeout=5000)
    await expect(line(bob, "forbidden fruit")).to_have_count(0)  # held: only its author saw it
    stream = ops.locator("#comment-stream tr", has_text="and a fine one")
    await expect(stream).to_be_visible(timeout=5000)
    await expect(stream.locator("td").first).to_have_text("hq")  # labelled by room
    await ops.locator("#moderation").scroll_into_view_if_needed()
    await screenshots(ops, "ops-comments")

    await held.get_by_role("button", name="Release").click()
    await expect(line(bob, "forbidden fruit")).to_be_visible(timeout=5000)
    await expect(held).to_have_count(0)
    await expect(ops.locator("#no-held")).to_be_visible()
    await expect(line(amy, "forbidden fruit")).to_have_count(1)  # not a second time for its author

    # Mute from the panel: the viewer's next comment is held. Then the word lists are edited.
    await ops.get_by_label("Mute for").select_option(label="1 hour")
    await stream.get_by_role("button", name="Mute").click()
    await expect(ops.locator("#moderation-note")).to_contain_text("is muted")
    await comment(amy, "muted words")
    await expect(ops.locator("#held tr", has_text="muted words")).to_be_visible(timeout=5000)
    await ops.get_by_label("Masked words").fill("darn\nheck")
    await ops.get_by_label("Hold comments with links for review").check()
    await ops.get_by_role("button", name="Save word lists").click()
    await expect(ops.locator("#moderation-saved")).to_have_text("Saved.")
    lists = (await relay.api("GET", "/api/moderation"))[1]
    assert (lists["block"], lists["mask"], lists["hold_links"]) == (["forbidden"], ["darn", "heck"], True)
    assert pages.errors == []


async def test_replay_shows_the_comments_up_to_the_playhead(make_relay, browser, h264_clip):
    relay = await make_relay(configure=lambda s: setattr(s.replay, "segment_target_s", 1.0))
    show = await relay.create_show("rec")
    media = host_tracks(h264_clip, None)
    host = await relay.publish(show, media)
    viewer = (await relay.request("POST", "/api/shows/rec/viewers", json={"room": "hq"}))[1]
    auth = {"Authorization": f"Bearer {viewer['token']}"}
    status, body = await relay.request("POST", "/api/shows/rec/comments", json={"text": "first!"}, headers=auth)
    assert status == 201, body
    first = (await relay.request("GET", "/api/shows/rec/comments?room=hq"))[1]["comments"][0]["stream_time"]

    async def recorded_past(seconds: float) -> bool:
        return (await relay.api("GET", "/api/shows/rec/replay"))[1]["duration_s"] > seconds

    # the second comment 2 s of recording later, and a second of recording after it
    await relay.wait_for(lambda: recorded_past(first + 2), timeout=20, what="2 s more of recording")
    status, body = await relay.request("POST", "/api/shows/rec/comments", json={"text": "later on"}, headers=auth)
    assert status == 201, body
    later = (await relay.request("GET", "/api/shows/rec/comments?room=hq"))[1]["comments"][-1]["stream_time"]
    await relay.wait_for(lambda: recorded_past(later + 1), timeout=20, what="1 s more of recording")
    await host.drop()
    await relay.api("POST", "/api/shows/rec/end")

    pages = Pages(browser, relay.base)
    replay = await pages.open("/replay/rec")
    await expect(replay.locator("#state")).to_have_text("Replay", timeout=20_000)
    await until(replay, "document.querySelector('#video').duration > 2")
    await replay.evaluate("document.querySelector('#video').currentTime = 0.5")
    await expect(line(replay, "first!")).to_be_visible(timeout=5000)
    await expect(line(replay, "later on")).to_have_count(0)
    await replay.evaluate("document.querySelector('#video').currentTime = document.querySelector('#video').duration")
    await expect(line(replay, "later on")).to_be_visible(timeout=5000)
    assert pages.errors == []


# -- /shows and reminders -----------------------------------------------------------------------
# The stand-in PushManager (see the module's docstring): a subscription with real keys and an
# endpoint on the test's push service.
FAKE_PUSH = """
(() => {
  let current = null;
  PushManager.prototype.getSubscription = async function () { return current; };
  PushManager.prototype.subscribe = async function (options) {
    if (!options || options.userVisibleOnly !== true || !options.applicationServerKey) {
      throw new DOMException("userVisibleOnly and applicationServerKey are required", "NotAllowedError");
    }
    window.__applicationServerKey = Array.from(new Uint8Array(options.applicationServerKey));
    const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
      .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
    const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
    const p256dh = b64(await crypto.subtle.exportKey("raw", pair.publicKey));
    const auth = b64(crypto.getRandomValues(new Uint8Array(16)));
    const endpoint = "ENDPOINT/" + crypto.randomUUID();
    current = { endpoint, toJSON: () => ({ endpoint, expirationTime: null, keys: { p256dh, auth } }),
                unsubscribe: async () => { current = null; return true; } };
    return current;
  };
})();
"""


async def push_service() -> tuple[str, list[dict], web.AppRunner]:
    """A push service on 127.0.0.1 that keeps what it is sent."""
    received: list[dict] = []

    async def take(request: web.Request) -> web.Response:
        received.append({"path": request.path, "headers": dict(request.headers), "body": await request.read()})
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/push/{id}", take)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}/push", received, runner


async def test_shows_page_remind_me_subscribes_and_the_service_worker_notifies(make_relay, browser, h264_clip):
    endpoint, received, runner = await push_service()
    relay = await make_relay(configure=lambda s: setattr(s.webpush, "push_service_hosts", ["127.0.0.1"]))
    try:
        await _remind_me(relay, browser, h264_clip, endpoint, received)
    finally:
        await runner.cleanup()


async def _remind_me(relay: Relay, browser, h264_clip, endpoint: str, received: list[dict]) -> None:
    created = {}
    for show_id, starts_at in (("soon", 4102444800), ("later", 4102448400), ("now", None)):
        body = {"title": f"Show {show_id}", "id": show_id, **({"starts_at": starts_at} if starts_at else {})}
        status, created[show_id] = await relay.api("POST", "/api/shows", body)
        assert status == 201, created[show_id]
    await relay.publish(created["now"], host_tracks(h264_clip, None))
    pages = Pages(browser, relay.base)
    errors = pages.errors

    async def prepare(context):
        await context.add_init_script(FAKE_PUSH.replace("ENDPOINT", endpoint))

    page = await pages.open("/shows", PHONE, prepare=prepare, permissions=["notifications"])
    item = page.locator('#upcoming li[data-show="soon"]')
    await expect(item).to_contain_text("Show soon")
    await expect(item.locator("time")).not_to_be_empty()
    await item.get_by_role("button", name="Remind me: Show soon").click()
    await expect(item.get_by_role("status")).to_have_text("Reminder set", timeout=5000)
    # A real service worker, at the root, active; the page's stand-in got the server's VAPID key.
    scope = await page.evaluate("navigator.serviceWorker.ready.then(r => r.scope)")
    assert scope == f"{relay.base}/"
    key = (await relay.request("GET", "/api/webpush/vapid-public-key"))[1]
    assert len(await page.evaluate("window.__applicationServerKey")) == 65, key
    stored = json.loads(await page.evaluate("localStorage.getItem('livecast.reminder.soon')"))
    assert stored["id"]
    await expect(page.locator('#live li[data-show="now"]')).to_contain_text("Show now")
    await screenshots(page, "shows")

    # Another reminder, set and cancelled: the server's subscription goes too.
    later = page.locator('#upcoming li[data-show="later"]')
    await later.get_by_role("button", name="Remind me: Show later").click()
    await expect(later.get_by_role("status")).to_have_text("Reminder set", timeout=5000)
    later_id = json.loads(await page.evaluate("localStorage.getItem('livecast.reminder.later')"))["id"]
    await later.get_by_role("button", name="Cancel reminder: Show later").click()
    await expect(later.get_by_role("button", name="Remind me: Show later")).to_be_visible()
    assert await page.evaluate("localStorage.getItem('livecast.reminder.later')") is None
    status, _ = await relay.request("DELETE", f"/api/shows/later/subscriptions/{later_id}")
    assert status == 404  # gone already

    # The reminder stays set across a reload; the show goes live and the relay pushes to the
    # subscription's endpoint.
    await page.reload()
    await expect(item.get_by_role("status")).to_have_text("Reminder set")
    await relay.publish(created["soon"], host_tracks(h264_clip, None))

    async def pushed() -> bool:
        return len(received) == 1

    await relay.wait_for(pushed, timeout=10, what="the relay to push the reminder")
    assert received[0]["headers"]["Content-Encoding"] == "aes128gcm"

    # The service worker shows the push as a notification that opens the watch page.
    cdp = await page.context.new_cdp_session(page)
    registrations: list[dict] = []
    cdp.on("ServiceWorker.workerRegistrationUpdated", lambda e: registrations.extend(e["registrations"]))
    await cdp.send("ServiceWorker.enable")
    await relay.wait_for(lambda: _true(bool(registrations)), timeout=5, what="the service worker's registration")
    message = {"type": "show.live", "show": "soon", "title": "Show soon", "url": f"{relay.base}/watch/soon"}
    await cdp.send("ServiceWorker.deliverPushMessage", {
        "origin": relay.base, "registrationId": registrations[0]["registrationId"], "data": json.dumps(message)})
    await until(page, "navigator.serviceWorker.ready.then(r => r.getNotifications()).then(n => n.length === 1)")
    notification = await page.evaluate(
        "navigator.serviceWorker.ready.then(r => r.getNotifications()).then(([n]) => ({title: n.title, data: n.data}))")
    assert notification == {"title": "Show soon is live", "data": {"url": f"{relay.base}/watch/soon"}}

    # Once live, the show is under "Live now" and the reminder is forgotten.
    await page.reload()
    await expect(page.locator('#live li[data-show="soon"]')).to_be_visible()
    assert await page.evaluate("localStorage.getItem('livecast.reminder.soon')") is None
    assert errors == []


async def _true(value: bool) -> bool:
    return value
