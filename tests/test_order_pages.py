"""Orders in the pages, in Chromium against a real relay: the card's Buy link carries the viewer's
attribution (lc_attr), the shop's order then shows as a "just bought" toast on the watch page and
as the room's GMV, orders and commission on the ops page; Share copies the room's link with the
viewer as the sharer. The replay's chapters have Buy links too, credited to the replay link's room
and sharer. The shop is a Playwright route: nothing goes to the network.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from urllib.parse import parse_qs, urlsplit

from playwright.async_api import Browser, BrowserContext, Page, expect

from conftest import ADMIN_KEY, Relay
from relay_testkit.synthetic import host_tracks
from test_pages import DESKTOP, PHONE, browser, screenshots, until  # noqa: F401 (browser: the fixture)

SHOP = "https://shop.example/p1?x=1#top"


class Pages:
    """Pages in their own browser contexts, each able to reach only the relay and the stub shop,
    with console errors collected."""

    def __init__(self, browser: Browser, base: str) -> None:
        self.browser = browser
        self.base = base
        self.errors: list[str] = []

    async def open(self, path: str, viewport: dict = DESKTOP, prepare=None, **options) -> Page:
        context = await self.browser.new_context(viewport=viewport, base_url=self.base, **options)
        await self._shop_only(context)
        if prepare is not None:
            await prepare(context)
        page = await context.new_page()
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"{path}: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"{path}: {e}"))
        await page.goto(path)
        return page

    async def _shop_only(self, context: BrowserContext) -> None:
        async def refuse(route):
            await route.abort()

        async def shop(route):
            await route.fulfill(status=200, content_type="text/html",
                                body="<!doctype html><title>Shop</title><p>Glow serum</p>")

        await context.route(lambda url: not url.startswith(self.base), refuse)
        await context.route("https://shop.example/**", shop)  # the later route is asked first


async def sign_in(ops: Page) -> None:
    await ops.get_by_label("Admin key").fill(ADMIN_KEY)
    await ops.get_by_role("button", name="Sign in").click()
    await expect(ops.locator("#show-name")).to_have_text("Show sale")


async def shop_show(relay: Relay, pin: bool = True) -> dict:
    """A show with a mirror room d1 earning 10 %, and product p1 (linking to the shop) on the card
    (unless not `pin`)."""
    show = await relay.create_show("sale")
    calls = [("POST", "/api/shows/sale/mirrors", {"distributor": "d1", "name": "D1", "commission_rate": "0.10"}),
             ("POST", "/api/shows/sale/products", {"id": "p1", "title": "Glow serum", "price": "19.90", "link": SHOP}),
             ("POST", "/api/shows/sale/products/p1/pin", None)]
    for method, path, body in calls if pin else calls[:-1]:
        status, answer = await relay.api(method, path, body)
        assert status in (200, 201), answer
    return show


def claims(token: str) -> dict:
    """A JWT's payload, unverified (what the page was given)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def tap_buy(watch: Page) -> Page:
    """Tap the card's Buy link; the shop's page it opened (a new tab), loaded."""
    async with watch.expect_popup() as opened:
        await watch.get_by_role("link", name="Buy Glow serum").click()
    shop = await opened.value
    await shop.wait_for_load_state()
    return shop


async def test_buy_link_credits_the_room_and_the_sale_shows_on_watch_and_ops_pages(make_relay, browser):
    relay = await make_relay()
    await shop_show(relay)
    pages = Pages(browser, relay.base)
    ops = await pages.open("/ops?show=sale")
    await sign_in(ops)
    d1 = ops.locator('#sales tr[data-room="d1"]')
    await expect(d1.locator('[data-figure="orders"]')).to_have_text("0")
    watch = await pages.open("/watch/sale/d1", PHONE)

    # The link is made ready when the card shows, so the tap itself navigates.
    await expect(watch.locator("#card-link")).to_have_attribute("href", re.compile(r"[?&]lc_attr="), timeout=5000)
    shop = await tap_buy(watch)
    url = urlsplit(shop.url)
    query = parse_qs(url.query)
    assert (url.scheme, url.netloc, url.path, url.fragment) == ("https", "shop.example", "/p1", "top")
    assert query["x"] == ["1"]  # the link's own query is kept
    [attribution] = query["lc_attr"]
    await shop.close()

    status, order = await relay.api("POST", "/api/shows/sale/orders", {
        "order_id": "o1", "attribution": attribution, "currency": "CNY",
        "items": [{"product": "p1", "quantity": 1, "unit_price": "19.90"}]})
    assert status == 201, order
    assert order["room"] == "d1"

    # Both pages hear of it by themselves: the watch page from its event stream, ops on its refresh.
    await asyncio.gather(
        expect(watch.locator("#toast")).to_have_text("Someone just bought Glow serum", timeout=5000),
        expect(d1.locator('[data-figure="gmv"]')).to_have_text("¥19.90", timeout=5000),
        expect(d1.locator('[data-figure="orders"]')).to_have_text("1", timeout=5000))
    await expect(d1.locator('[data-figure="commission"]')).to_have_text("¥1.99")  # 10 % of 19.90
    await expect(d1.locator('[data-figure="buyers"]')).to_have_text("1")
    await expect(d1.locator('[data-figure="conversion"]')).to_have_text(re.compile(r"^\d+(\.\d)?%$"))
    await expect(ops.locator('#sales tr[data-room="hq"] [data-figure="orders"]')).to_have_text("0")
    await screenshots(watch, "watch-sale-toast")
    await screenshots(ops, "ops-sales")
    await expect(watch.locator("#toast")).to_be_hidden(timeout=10_000)  # it goes away by itself
    assert pages.errors == []


async def test_buy_opens_the_plain_link_when_no_attribution_can_be_had(make_relay, browser):
    relay = await make_relay()
    await shop_show(relay)
    asked = asyncio.Event()

    async def refuse_attribution(context: BrowserContext) -> None:
        async def unavailable(route):
            asked.set()
            await route.fulfill(status=503, content_type="application/json",
                                body=json.dumps({"error": "store_unavailable", "message": "try again"}))

        await context.route("**/api/shows/sale/attribution", unavailable)

    pages = Pages(browser, relay.base)
    watch = await pages.open("/watch/sale", PHONE, prepare=refuse_attribution)
    await expect(watch.locator("#card")).to_be_visible(timeout=5000)
    await asyncio.wait_for(asked.wait(), 5)
    shop = await tap_buy(watch)
    assert shop.url == SHOP  # the sale is not blocked: the shop opens without lc_attr
    assert [e for e in pages.errors if "status of 503" not in e] == []


async def test_share_copies_the_room_link_with_the_viewer_as_sharer(make_relay, browser):
    relay = await make_relay()
    await shop_show(relay)
    pages = Pages(browser, relay.base)

    async def own_viewer_id(watch: Page) -> str:
        # The card comes from the event stream, which the page opens once the viewer is registered.
        await expect(watch.locator("#card")).to_be_visible(timeout=5000)
        return await watch.evaluate("JSON.parse(localStorage.getItem('livecast.viewer.sale')).viewer_id")

    watch = await pages.open("/watch/sale/d1?ref=amy", PHONE, permissions=["clipboard-read", "clipboard-write"])
    me = await own_viewer_id(watch)
    await watch.get_by_role("button", name="Share").click()
    await expect(watch.get_by_role("button", name="Copied")).to_be_visible()
    assert await watch.evaluate("navigator.clipboard.readText()") == f"{relay.base}/watch/sale/d1?ref={me}"

    # Opening one's own link keeps the sharer who brought this viewer (no self-referral).
    await watch.goto(f"/watch/sale/d1?ref={me}")
    link = watch.locator("#card-link")
    await expect(link).to_have_attribute("href", re.compile(r"[?&]lc_attr="), timeout=5000)
    [attribution] = parse_qs(urlsplit(await link.get_attribute("href")).query)["lc_attr"]
    assert claims(attribution)["ref"] == "amy"

    async def no_clipboard(context: BrowserContext) -> None:
        await context.add_init_script("Object.defineProperty(Navigator.prototype, 'clipboard', {get: () => undefined})")

    # Without a clipboard (plain http, a site embedding the page) the link is shown to copy.
    watch = await pages.open("/watch/sale", PHONE, prepare=no_clipboard)
    me = await own_viewer_id(watch)
    await watch.get_by_role("button", name="Share").click()
    await expect(watch.get_by_label("Copy this link to share the show")).to_have_value(
        f"{relay.base}/watch/sale?ref={me}")
    await screenshots(watch, "watch-share-link")
    await watch.get_by_role("button", name="Done").click()
    await expect(watch.locator("#share-box")).to_be_hidden()
    assert pages.errors == []


async def test_ops_page_without_order_figures_from_an_older_server(make_relay, browser):
    relay = await make_relay()
    await relay.create_show("sale", mirrors=("d1",))

    async def older_stats(context: BrowserContext) -> None:
        async def strip(route):
            response = await route.fetch()
            stats = await response.json()
            for figures in stats["rooms"].values():
                for name in ("orders", "gmv", "buyers", "conversion", "commission"):
                    figures.pop(name, None)
            await route.fulfill(response=response, json=stats)

        await context.route("**/api/shows/sale/stats", strip)

    pages = Pages(browser, relay.base)
    ops = await pages.open("/ops?show=sale", prepare=older_stats)
    await sign_in(ops)
    await expect(ops.locator('#rooms tr[data-room="d1"]')).to_be_visible()  # drawn with the sales table
    await expect(ops.locator("#sales-table")).to_be_hidden()
    assert pages.errors == []


async def replay_with_a_chapter(relay: Relay, h264_clip) -> None:
    """The shop show, live for a few seconds with p1 on the card for a while, ended and its
    replay ready: p1 has a chapter."""
    show = await shop_show(relay, pin=False)
    media = host_tracks(h264_clip, None)
    host = await relay.publish(show, media)

    def sent(n: int):
        async def check() -> bool:
            return media[0].sent >= n
        return check

    await relay.wait_for(sent(30), timeout=15, what="1 s of media")
    status, answer = await relay.api("POST", "/api/shows/sale/products/p1/pin")
    assert status == 200, answer
    await relay.wait_for(sent(90), timeout=15, what="2 more seconds")
    await host.stop()

    async def ready() -> bool:
        return (await relay.api("GET", "/api/shows/sale/replay"))[1]["state"] == "ready"

    await relay.wait_for(ready, timeout=20, what="the replay")


def replay_buy_link(replay: Page):
    return replay.get_by_role("link", name="Buy Glow serum")


async def test_replay_chapter_buy_link_credits_the_room_and_sharer_of_the_replay_link(make_relay, browser, h264_clip):
    relay = await make_relay(configure=lambda s: setattr(s.replay, "segment_target_s", 1.0))
    await replay_with_a_chapter(relay, h264_clip)
    pages = Pages(browser, relay.base)
    replay = await pages.open("/replay/sale?room=d1&ref=amy", PHONE)
    chapter = replay.get_by_role("button", name=re.compile(r"^Play from .*: Glow serum$"))
    await expect(chapter).to_be_visible(timeout=5000)
    # The attribution is had once the page has a viewer and a product with a link: the tap navigates.
    await expect(replay_buy_link(replay)).to_have_attribute("href", re.compile(r"[?&]lc_attr="), timeout=5000)
    await screenshots(replay, "replay-buy")
    shop = await tap_buy(replay)
    url = urlsplit(shop.url)
    query = parse_qs(url.query)
    assert (url.scheme, url.netloc, url.path, url.fragment) == ("https", "shop.example", "/p1", "top")
    assert query["x"] == ["1"]  # the link's own query is kept
    [attribution] = query["lc_attr"]
    await shop.close()
    viewer = await replay.evaluate("JSON.parse(localStorage.getItem('livecast.viewer.sale'))")
    assert viewer["room"] == "d1" and claims(attribution)["sub"] == viewer["viewer_id"]

    status, order = await relay.api("POST", "/api/shows/sale/orders", {
        "order_id": "r1", "attribution": attribution, "currency": "CNY",
        "items": [{"product": "p1", "quantity": 1, "unit_price": "19.90"}]})
    assert status == 201, order
    assert (order["room"], order["sharer"]) == ("d1", "amy")
    assert pages.errors == []


async def test_replay_buy_link_keeps_the_watch_pages_viewer_or_stays_plain_without_one(make_relay, browser, h264_clip):
    relay = await make_relay(configure=lambda s: setattr(s.replay, "segment_target_s", 1.0))
    await replay_with_a_chapter(relay, h264_clip)
    pages = Pages(browser, relay.base)

    # A viewer who came through HQ's watch page keeps its credit on a replay link of another room.
    watch = await pages.open("/watch/sale", PHONE)
    await until(watch, "localStorage.getItem('livecast.viewer.sale') !== null", timeout=5)
    watched = await watch.evaluate("JSON.parse(localStorage.getItem('livecast.viewer.sale'))")
    await watch.goto("/replay/sale?room=d1")
    link = replay_buy_link(watch)
    await expect(link).to_have_attribute("href", re.compile(r"[?&]lc_attr="), timeout=5000)
    [attribution] = parse_qs(urlsplit(await link.get_attribute("href")).query)["lc_attr"]
    assert (claims(attribution)["sub"], claims(attribution)["room"]) == (watched["viewer_id"], "hq")
    assert await watch.evaluate("JSON.parse(localStorage.getItem('livecast.viewer.sale'))") == watched

    # No viewer to be had (as on a token or shopper show): the Buy link opens the plain link.
    asked = asyncio.Event()

    async def refuse_viewers(context: BrowserContext) -> None:
        async def forbidden(route):
            asked.set()
            await route.fulfill(status=403, content_type="application/json",
                                body=json.dumps({"error": "shopper_required", "message": "sign in"}))

        await context.route("**/api/shows/sale/viewers", forbidden)

    replay = await pages.open("/replay/sale?room=d1&ref=amy", PHONE, prepare=refuse_viewers)
    await expect(replay_buy_link(replay)).to_be_visible(timeout=5000)
    await asyncio.wait_for(asked.wait(), 5)
    shop = await tap_buy(replay)
    assert shop.url == SHOP
    assert [e for e in pages.errors if "status of 403" not in e] == []
