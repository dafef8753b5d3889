"""The web pages in a real browser: Debian's Chromium driven by Playwright, with a fake camera.

The studio page publishes, watch pages (HQ and a mirror room) play, the ops page pins a card and
runs a coupon, the host stops, and the replay page plays with chapters. Every page is captured
at phone (390x844) and desktop (1280x800) size under artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from conftest import ADMIN_KEY, Relay, relay_settings

from relay_testkit.process import REPO, free_port
from relay_testkit.synthetic import host_tracks

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--use-fake-device-for-media-stream",  # a synthetic camera and microphone
    "--use-fake-ui-for-media-stream",  # grant camera and microphone without a prompt
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",  # the relay listens on 127.0.0.1 only
    "--no-sandbox",  # CI runs as root
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
SHOTS = REPO / "artifacts" / "screenshots"


@pytest.fixture
async def browser():
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        await browser.close()


class Pages:
    """Pages in their own browser contexts (separate viewers), with console errors collected."""

    def __init__(self, browser: Browser, base: str) -> None:
        self.browser = browser
        self.base = base
        self.errors: list[str] = []

    async def open(self, path: str, viewport: dict = DESKTOP) -> Page:
        context = await self.browser.new_context(viewport=viewport, base_url=self.base)
        page = await context.new_page()
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"{path}: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"{path}: {e}"))
        await page.goto(path)
        return page


async def screenshots(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    original = page.viewport_size
    for label, size in (("phone", PHONE), ("desktop", DESKTOP)):
        await page.set_viewport_size(size)
        await page.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        await page.screenshot(path=str(SHOTS / f"{name}-{label}-{size['width']}x{size['height']}.png"))
    await page.set_viewport_size(original)


async def until(page: Page, expression: str, timeout: float = 10.0) -> None:
    """Wait until `expression` is true in the page. (Playwright's wait_for_function compiles its
    string in the page, which the pages' Content-Security-Policy forbids; evaluate does not.)"""
    deadline = time.monotonic() + timeout
    while not await page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {expression}")
        await page.wait_for_timeout(50)  # the page's own frames advance meanwhile


async def playing(page: Page, selector: str = "#video") -> None:
    """The video has a picture and new frames keep being shown (a live stream's currentTime
    advances even when frames stop, so frames are counted)."""
    video = f"document.querySelector('{selector}')"
    await until(page, f"{video}.videoWidth > 0", timeout=20)
    shown = await page.evaluate(f"{video}.getVideoPlaybackQuality().totalVideoFrames")
    await until(page, f"{video}.getVideoPlaybackQuality().totalVideoFrames > {shown} + 15", timeout=10)


async def test_studio_watch_ops_and_replay_pages_in_chromium(make_relay, browser):
    relay = await make_relay(configure=lambda s: setattr(s.replay, "segment_target_s", 1.0))
    show = await relay.create_show("launch", mirrors=("d1",))
    pages = Pages(browser, relay.base)

    # The host goes live from the studio page with the fake camera.
    studio = await pages.open("/studio/launch")
    await studio.get_by_label("Stream key").fill(show["stream_key"])
    await studio.get_by_role("button", name="Go live").click()
    await expect(studio.locator("#badge")).to_have_text("LIVE", timeout=15_000)
    await playing(studio, "#preview")

    # Viewers in HQ (phone) and in a mirror room (desktop), each its own browser context.
    hq = await pages.open("/watch/launch", PHONE)
    d1 = await pages.open("/watch/launch/d1?ref=amy")
    await playing(hq)
    await playing(d1)
    # Each room counts its own viewers; the studio sees them all.
    await expect(hq.locator("#viewers")).to_have_text("1 watching", timeout=10_000)
    await expect(d1.locator("#viewers")).to_have_text("1 watching", timeout=10_000)
    await expect(studio.locator("#viewers")).to_have_text("2", timeout=10_000)
    await expect(d1.locator("#room")).to_have_text("D1")  # the distributor's room is named
    await expect(hq.locator("#room")).to_be_hidden()
    await expect(hq.locator("#unmute")).to_be_visible()
    assert int(await studio.locator("#bitrate").inner_text()) > 50  # kbit/s going out

    # The operator stocks the shelf and pins the card; it shows on both watch pages within 1 s.
    ops = await pages.open("/ops?show=launch")
    await ops.get_by_label("Admin key").fill(ADMIN_KEY)
    await ops.get_by_role("button", name="Sign in").click()
    await expect(ops.locator("#show-name")).to_have_text("Show launch")
    await ops.get_by_label("Product title").fill("Glow serum")
    await ops.get_by_label("Product price").fill("100")
    await ops.get_by_label("Product link").fill("https://shop.example/serum")
    await ops.get_by_role("button", name="Add product").click()
    await expect(ops.get_by_role("button", name="Pin Glow serum")).to_be_visible()
    product_id = await ops.locator("#products tr").first.get_attribute("data-product")
    await relay.api("PATCH", f"/api/shows/launch/products/{product_id}", {"rooms": {"d1": {"price": 80}}})
    await ops.get_by_role("button", name="Pin Glow serum").click()
    pinned_at = time.monotonic()
    await asyncio.gather(expect(hq.locator("#card")).to_be_visible(timeout=1000),
                         expect(d1.locator("#card")).to_be_visible(timeout=1000))
    assert time.monotonic() - pinned_at < 1.0
    await expect(hq.locator("#card-price")).to_have_text("¥100.00")  # the show's currency, CNY by default
    await expect(d1.locator("#card-price")).to_have_text("¥80.00")  # the mirror room's own price
    await expect(hq.locator("#card-title")).to_have_text("Glow serum")

    # A flash coupon: the banner appears; claim, then claim again.
    await ops.get_by_label("Coupon title").fill("Flash 50% off")
    await ops.get_by_label("Quantity").fill("5")
    await ops.get_by_role("button", name="Create coupon").click()
    await ops.get_by_role("button", name="Launch Flash 50% off").click()
    await expect(hq.locator("#coupon")).to_be_visible(timeout=2000)
    await expect(d1.locator("#coupon")).to_be_visible(timeout=2000)
    await expect(hq.locator("#coupon-title")).to_have_text("Flash 50% off")
    await expect(hq.locator("#coupon-remaining")).to_have_text("5 left")
    await hq.get_by_role("button", name="Claim").click()
    await expect(hq.locator("#coupon-result")).to_have_text("Claimed! It is yours.")
    await expect(hq.get_by_role("button", name="Claim")).to_be_disabled()  # nothing more to claim
    await hq.reload()  # the same viewer again: the server remembers
    await playing(hq)
    await expect(hq.locator("#coupon")).to_be_visible(timeout=5000)
    await hq.get_by_role("button", name="Claim").click()
    await expect(hq.locator("#coupon-result")).to_have_text("Already claimed.")
    await d1.get_by_role("button", name="Claim").click()
    await expect(d1.locator("#coupon-result")).to_have_text("Claimed! It is yours.")
    await expect(ops.locator('#rooms tr[data-room="d1"] td').nth(4)).to_have_text("1", timeout=5000)
    stats = (await relay.api("GET", "/api/shows/launch/stats"))[1]
    assert stats["rooms"]["d1"]["claims_by_sharer"] == {"amy": 1}  # credited to the mirror room and sharer

    for page, name in ((studio, "studio"), (hq, "watch-hq"), (d1, "watch-mirror"), (ops, "ops")):
        await screenshots(page, name)

    # A closed tab stops counting at once (its session is ended, not left to time out).
    await d1.context.close()

    async def d1_left() -> bool:
        return (await relay.api("GET", "/api/shows/launch/stats"))[1]["rooms"]["d1"]["viewers"] == 0

    await relay.wait_for(d1_left, timeout=3, what="the closed tab's session to end")

    # The host stops: the watch page shows the ended state and links the replay.
    await studio.get_by_role("button", name="Stop").click()
    await expect(hq.locator("#state-text")).to_have_text("The show has ended.", timeout=10_000)
    await hq.get_by_role("link", name="Watch the replay").click()
    await expect(hq).to_have_url(f"{relay.base}/replay/launch")
    await expect(hq.locator("#state")).to_have_text("Replay", timeout=20_000)
    await hq.evaluate("document.querySelector('#video').muted = true")
    await hq.evaluate("document.querySelector('#video').play()")
    await playing(hq)
    chapter = hq.locator("#chapters button").first
    start = float(await chapter.get_attribute("data-start"))
    assert start > 1.0
    await hq.evaluate("document.querySelector('#video').currentTime = 0")
    await chapter.click()
    await until(hq, f"Math.abs(document.querySelector('#video').currentTime - {start}) < 0.5", timeout=5)
    await screenshots(hq, "replay")
    assert pages.errors == []


async def test_ops_page_shows_api_errors_and_watch_page_knows_a_show_not_started(make_relay, browser):
    relay = await make_relay()
    await relay.create_show("later")
    pages = Pages(browser, relay.base)
    ops = await pages.open("/ops")
    await ops.get_by_label("Admin key").fill("wrong key")
    await ops.get_by_role("button", name="Sign in").click()
    await expect(ops.get_by_role("alert")).to_have_text("wrong admin key")
    await ops.get_by_label("Admin key").fill(ADMIN_KEY)
    await ops.keyboard.press("Enter")  # the form works from the keyboard
    await expect(ops.get_by_role("button", name="Create show")).to_be_visible()
    await ops.get_by_label("Show title").fill("Bad id")
    await ops.get_by_label("Id (optional)").fill("Not A Slug!")
    await ops.get_by_role("button", name="Create show").click()
    await expect(ops.get_by_role("alert")).to_contain_text("'id' must be a slug")
    watch = await pages.open("/watch/later", PHONE)
    await expect(watch.locator("#state-text")).to_have_text(
        "The show has not started yet. It will play here as soon as it does.")
    await expect(watch.locator("#unmute")).to_be_hidden()  # nothing to hear yet
    await screenshots(watch, "watch-not-started")
    # The browser logs every 4xx answer itself; the two provoked here (401, 422) are expected.
    provoked = ("status of 401", "status of 422")
    assert [e for e in pages.errors if not any(p in e for p in provoked)] == []


async def test_watch_page_plays_again_by_itself_after_a_server_restart(server_process, browser, tmp_path,
                                                                      h264_clip):
    data, port = tmp_path / "data", free_port()
    server = server_process(data, port=port)
    relay = Relay(server.base, relay_settings(data))
    show = await relay.create_show("phoenix", mirrors=("d1",))
    await relay.publish(show, host_tracks(h264_clip, None))
    pages = Pages(browser, relay.base)
    joined_after = time.time()
    watch = await pages.open("/watch/phoenix/d1", PHONE)
    await playing(watch)
    await relay.figures_saved_since("phoenix", joined_after)  # the first session counts after the crash

    server.stop(signal.SIGKILL)  # a crash mid-show; the page is not reloaded
    await relay.close_clients()
    server = server_process(data, port=port)
    await relay.publish(show, host_tracks(h264_clip, None))  # the host's encoder reconnects
    relay = Relay(server.base, relay_settings(data))

    async def new_session() -> bool:
        stats = (await relay.api("GET", "/api/shows/phoenix/stats"))[1]
        return stats["rooms"]["d1"]["viewers"] == 1 and stats["rooms"]["d1"]["total_sessions"] >= 2

    await relay.wait_for(new_session, timeout=40, what="the page to open a WHEP session on the new server")
    await playing(watch)
    await expect(watch.locator("#badge")).to_have_text("LIVE")
    await expect(watch.locator("#state")).to_be_hidden()
    await relay.close_clients()
    server.stop()


async def test_studio_hears_at_once_that_the_operator_ended_the_show(make_relay, browser):
    relay = await make_relay()
    show = await relay.create_show("cutoff")
    pages = Pages(browser, relay.base)
    studio = await pages.open("/studio/cutoff", PHONE)
    await studio.get_by_label("Stream key").fill(show["stream_key"])
    await studio.get_by_role("button", name="Go live").click()
    await expect(studio.locator("#badge")).to_have_text("LIVE", timeout=15_000)
    await relay.api("POST", "/api/shows/cutoff/end")
    await expect(studio.locator("#badge")).to_have_text("Ended", timeout=3000)
    await expect(studio.locator("#error")).to_have_text(
        "The operator ended the show. Ask for a new show to go live again.")
    await expect(studio.get_by_role("button", name="Go live")).to_be_disabled()
    await expect(studio.locator("#bitrate")).to_have_text("–", timeout=3000)  # nothing is sent any more
    await screenshots(studio, "studio-ended")
    assert pages.errors == []


async def test_ops_page_follows_the_show_state_and_fits_a_phone(make_relay, browser, h264_clip):
    relay = await make_relay()
    show = await relay.create_show("picker", mirrors=("d1", "d2"))
    pages = Pages(browser, relay.base)
    ops = await pages.open("/ops?show=picker", PHONE)
    await ops.get_by_label("Admin key").fill(ADMIN_KEY)
    await ops.get_by_role("button", name="Sign in").click()
    picked = ops.locator("#show-select option:checked")
    await expect(picked).to_have_text("Show picker (picker, scheduled)")
    await relay.publish(show, host_tracks(h264_clip, None))
    await expect(picked).to_have_text("Show picker (picker, live)", timeout=5000)
    await relay.api("POST", "/api/shows/picker/end")
    await expect(picked).to_have_text("Show picker (picker, ended)", timeout=5000)
    copy = ops.get_by_role("button", name="Copy the watch link of D2")
    await expect(copy).to_be_visible()
    box = await copy.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box


async def test_a_token_in_a_link_is_used_only_when_the_viewer_says_so(make_relay, browser):
    relay = await make_relay()
    await relay.create_show("lure")
    await relay.api("POST", "/api/shows/lure/coupons", {"id": "c", "title": "Lure", "quantity": 10,
                                                        "per_viewer_limit": 1, "duration_s": 600})
    await relay.api("POST", "/api/shows/lure/coupons/c/launch")
    victim = (await relay.request("POST", "/api/shows/lure/viewers", json={"room": "hq"}))[1]

    async def claim_as_victim(key: str) -> str:
        status, body = await relay.request("POST", "/api/shows/lure/coupons/c/claim", headers={
            "Authorization": f"Bearer {victim['token']}", "Idempotency-Key": key})
        return body["result"]

    pages = Pages(browser, relay.base)
    page = await pages.open(f"/watch/lure?token={victim['token']}", PHONE)
    await expect(page.locator("#confirm")).to_be_visible()
    await expect(page.locator("#confirm-who")).to_have_text(victim["viewer_id"])
    assert "token" not in page.url  # out of the address (and of history) at once
    await screenshots(page, "watch-confirm-token")
    await page.get_by_role("button", name="Watch without it").click()
    await expect(page.locator("#coupon")).to_be_visible(timeout=5000)
    await page.get_by_role("button", name="Claim").click()
    await expect(page.locator("#coupon-result")).to_have_text("Claimed! It is yours.")
    assert await claim_as_victim("k1") == "claimed"  # the page claimed as someone else

    page = await pages.open(f"/watch/lure?token={victim['token']}", PHONE)
    await page.get_by_role("button", name="Continue as this account").click()
    await expect(page.locator("#coupon")).to_be_visible(timeout=5000)
    await page.get_by_role("button", name="Claim").click()
    await expect(page.locator("#coupon-result")).to_have_text("Already claimed.")  # as the token's owner
    assert pages.errors == []
