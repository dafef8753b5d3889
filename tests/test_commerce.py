"""Viewer identity and credit, the product shelf and card, the event stream and replay chapters."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import jwt
import pytest

from relay.app import SERVICES
from relay.commerce.tokens import ViewerIdentity, ViewerTokens
from relay_testkit.synthetic import host_tracks


class SseReader:
    """Reads a server-sent event stream as a browser's EventSource would."""

    def __init__(self, url: str, last_event_id: int | None = None) -> None:
        self.url = url
        self.last_event_id = last_event_id
        self.events: list[dict] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> "SseReader":
        self._session = aiohttp.ClientSession()
        headers = {"Last-Event-ID": str(self.last_event_id)} if self.last_event_id is not None else {}
        self._response = await self._session.get(self.url, headers=headers)
        assert self._response.status == 200 and self._response.content_type == "text/event-stream"
        self._task = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        fields: dict[str, str] = {}
        async for raw in self._response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    event = json.loads(fields["data"])
                    assert int(fields["id"]) == event["seq"] and fields["event"] == event["type"]
                    self.events.append(event)
                    self._arrived.set()
                fields = {}
            elif not line.startswith(":") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.lstrip(" ")

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), max(0.01, deadline - time.monotonic()))
        return self.events

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        self._response.close()
        await self._session.close()


@pytest.fixture
async def relay(make_relay, store_url):
    """This module is a contract suite: every test runs against the embedded store and Redis."""
    return await make_relay(redis_url=store_url)


async def test_viewer_tokens_keep_the_room_and_record_the_latest_sharer(relay):
    await relay.create_show("credit", mirrors=("d1",))
    status, viewer = await relay.request("POST", "/api/shows/credit/viewers", json={"room": "d1", "ref": "amy"})
    assert status == 201 and viewer["room"] == "d1" and viewer["viewer_id"]
    created = (await relay.app[SERVICES].catalog.show("credit")).created_at
    identity = relay.app[SERVICES].tokens.verify(viewer["token"], "credit", created)
    assert identity == ViewerIdentity("credit", "d1", viewer["viewer_id"], "amy")

    # Re-shared into HQ by bob: still d1's viewer, bob is the latest sharer.
    status, again = await relay.request("POST", "/api/shows/credit/viewers", json={"room": "hq", "ref": "bob"},
                                        headers={"Authorization": f"Bearer {viewer['token']}"})
    assert status == 200 and again["viewer_id"] == viewer["viewer_id"] and again["room"] == "d1"
    assert relay.app[SERVICES].tokens.verify(again["token"], "credit", created).sharer == "bob"

    forged = jwt.encode({"sub": "v1", "show": "credit", "room": "hq", "exp": time.time() + 60}, "a-guessed-secret-that-is-long-enough-0123",
                        algorithm="HS256")
    expired = ViewerTokens("another-secret-that-is-long-enough-01234", ttl_s=-10).issue(ViewerIdentity("credit", "hq", "v2", None))
    for token in (forged, "not-a-token", expired):
        status, body = await relay.request("POST", "/api/shows/credit/viewers", json={},
                                           headers={"Authorization": f"Bearer {token}"})
        assert status == 401 and body["error"], body
    await relay.create_show("other")
    status, _ = await relay.request("POST", "/api/shows/other/viewers", json={},
                                    headers={"Authorization": f"Bearer {viewer['token']}"})
    assert status == 401
    assert (await relay.request("POST", "/api/shows/credit/viewers", json={"room": "nobody"}))[0] == 404
    assert (await relay.request("POST", "/api/shows/credit/viewers", json={"ref": "Not A Slug"}))[0] == 422


async def test_shelf_api_and_bad_input(relay):
    await relay.create_show("shelf", mirrors=("d1",))
    status, lipstick = await relay.api("POST", "/api/shows/shelf/products", {
        "id": "lipstick", "title": "Lipstick", "price": "19.90", "image_url": "https://img.example/l.png",
        "link": "https://shop.example/l"})
    assert status == 201 and lipstick["price"] == 19.9 and lipstick["position"] == 0
    status, serum = await relay.api("POST", "/api/shows/shelf/products", {"title": "Serum", "price": 35})
    assert status == 201 and serum["position"] == 1
    status, updated = await relay.api("PATCH", "/api/shows/shelf/products/lipstick", {
        "position": 5, "rooms": {"d1": {"price": 17.5, "hidden": False}}})
    assert status == 200 and updated["rooms"] == {"d1": {"price": 17.5, "hidden": False}}
    before = (await relay.request("GET", "/api/shows/shelf/products"))[1]
    assert [p["id"] for p in before["products"]] == [serum["id"], "lipstick"]

    for body, field in (({"title": "", "price": 1}, "title"), ({"title": "x", "price": -1}, "price"),
                        ({"title": "x", "price": 1.234}, "price"), ({"title": "x", "price": "abc"}, "price"),
                        ({"title": "x", "price": 1, "link": "javascript:alert(1)"}, "link"),
                        ({"title": "x", "price": 1, "id": "Bad Id"}, "id"),
                        ({"title": "x", "price": 1, "rooms": {"nobody": {"price": 1}}}, "rooms")):
        status, error = await relay.api("POST", "/api/shows/shelf/products", body)
        assert status == 422 and field in error["message"], (body, error)
    assert (await relay.api("POST", "/api/shows/shelf/products", {"id": "lipstick", "title": "x", "price": 1}))[0] == 409
    assert (await relay.api("PATCH", "/api/shows/shelf/products/nope", {"title": "x"}))[0] == 404
    assert (await relay.api("PATCH", "/api/shows/shelf/products/lipstick", {"price": -5}))[0] == 422
    assert (await relay.api("POST", "/api/shows/shelf/products/nope/pin"))[0] == 404
    assert (await relay.request("POST", "/api/shows/shelf/products", json={"title": "x", "price": 1}))[0] == 401
    assert (await relay.request("GET", "/api/shows/shelf/products"))[1] == before

    assert (await relay.api("DELETE", f"/api/shows/shelf/products/{serum['id']}"))[0] == 204
    after = (await relay.request("GET", "/api/shows/shelf/products"))[1]
    assert [p["id"] for p in after["products"]] == ["lipstick"]


async def test_pins_reach_every_room_in_its_own_price_and_resume_without_gaps(relay):
    await relay.create_show("live", mirrors=("d1", "d2"))
    await relay.api("POST", "/api/shows/live/products", {"id": "bag", "title": "Bag", "price": 100,
                                                         "rooms": {"d1": {"price": 80}, "d2": {"hidden": True}}})
    await relay.api("POST", "/api/shows/live/products", {"id": "hat", "title": "Hat", "price": 20})
    hq = await SseReader(f"{relay.base}/events/live", last_event_id=0).start()
    d1 = await SseReader(f"{relay.base}/events/live/d1", last_event_id=0).start()
    d2 = await SseReader(f"{relay.base}/events/live/d2", last_event_id=0).start()
    try:
        sent = time.time()
        assert (await relay.api("POST", "/api/shows/live/products/bag/pin"))[0] == 200
        hq_events = await hq.wait_for(3)
        pinned = hq_events[-1]
        assert pinned["type"] == "product.pinned" and pinned["product"]["price"] == 100
        assert abs(pinned["wall_time"] - sent) < 1 and "stream_time" in pinned
        assert (await d1.wait_for(3))[-1]["product"]["price"] == 80
        await relay.api("POST", "/api/shows/live/products/hat/pin")
        d2_events = await d2.wait_for(3)
        # d2 hides the bag: its card never shows there, the hat's does.
        assert [e["type"] for e in d2_events] == ["shelf.updated", "shelf.updated", "product.pinned"]
        assert d2_events[-1]["product"]["id"] == "hat"
        seen = (await hq.wait_for(4))[-1]["seq"]
    finally:
        await hq.close()

    # While the HQ reader is away, three more events happen; it resumes with exactly those.
    await relay.api("POST", "/api/shows/live/unpin")
    await relay.api("PATCH", "/api/shows/live/products/hat", {"price": 25})
    await relay.api("POST", "/api/shows/live/products/hat/pin")
    resumed = await SseReader(f"{relay.base}/events/live", last_event_id=seen).start()
    try:
        events = await resumed.wait_for(3)
        assert [e["seq"] for e in events] == [seen + 1, seen + 2, seen + 3]
        assert [e["type"] for e in events] == ["product.unpinned", "shelf.updated", "product.pinned"]
        await relay.api("POST", "/api/shows/live/unpin")
        events = await resumed.wait_for(4)
        assert [e["seq"] for e in events] == [seen + 1, seen + 2, seen + 3, seen + 4]
    finally:
        await resumed.close()
        await d1.close()
        await d2.close()
    # A new reader (no Last-Event-ID) gets the state now, not the history: the card.
    newcomer = await SseReader(f"{relay.base}/events/live").start()
    try:
        assert [e["type"] for e in await newcomer.wait_for(1)] == ["product.unpinned"]
        await relay.api("POST", "/api/shows/live/products/bag/pin")
        assert [e["type"] for e in await newcomer.wait_for(2)] == ["product.unpinned", "product.pinned"]
    finally:
        await newcomer.close()
    status, body = await relay.request("GET", "/events/live", headers={"Last-Event-ID": "abc"})
    assert status == 400
    assert (await relay.request("GET", "/events/live/nobody"))[0] == 404


async def test_two_pins_become_two_replay_chapters_at_the_pin_times(relay, h264_clip):
    show = await relay.create_show("chapters")
    await relay.api("POST", "/api/shows/chapters/products", {"id": "a", "title": "Product A", "price": 1})
    await relay.api("POST", "/api/shows/chapters/products", {"id": "b", "title": "Product B", "price": 2})
    media = host_tracks(h264_clip, None)
    host = await relay.publish(show, media)

    async def sent(n: int) -> bool:
        return media[0].sent >= n

    await relay.wait_for(lambda: sent(60), timeout=15, what="2 s of media")
    pinned_a = time.time()
    await relay.api("POST", "/api/shows/chapters/products/a/pin")
    await relay.wait_for(lambda: sent(150), timeout=15, what="3 more seconds")
    pinned_b = time.time()
    await relay.api("POST", "/api/shows/chapters/products/b/pin")
    await relay.wait_for(lambda: sent(240), timeout=15, what="3 more seconds")
    unpinned = time.time()
    await relay.api("POST", "/api/shows/chapters/unpin")
    await relay.wait_for(lambda: sent(300), timeout=15, what="2 more seconds")
    await host.stop()

    async def ready() -> bool:
        return (await relay.api("GET", "/api/shows/chapters/replay"))[1]["state"] == "ready"

    await relay.wait_for(ready, timeout=20, what="the replay")
    info = (await relay.api("GET", "/api/shows/chapters/replay"))[1]
    playlist = (Path(relay.settings.server.data_dir) / "replays" / "chapters" / "index.m3u8").read_text()
    first_pdt = next(line.split(":", 1)[1] for line in playlist.splitlines()
                     if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"))
    replay_start = datetime.fromisoformat(first_pdt.replace("Z", "+00:00")).timestamp()
    chapters = info["chapters"]
    assert [c["product"] for c in chapters] == ["a", "b"]
    for chapter, start, end in ((chapters[0], pinned_a, pinned_b), (chapters[1], pinned_b, unpinned)):
        assert abs(chapter["start_s"] - (start - replay_start)) <= 0.5, (chapter, start - replay_start)
        assert abs(chapter["end_s"] - (end - replay_start)) <= 0.5, (chapter, end - replay_start)
    status, vtt = await relay.request("GET", "/replay/chapters/chapters.vtt")
    assert status == 200 and vtt.startswith("WEBVTT")
    assert vtt.count(" --> ") == 2 and "Product A" in vtt and "Product B" in vtt


async def test_a_pinned_card_reaches_a_data_channel_viewer_and_an_sse_viewer(relay, h264_clip):
    show = await relay.create_show("both", mirrors=("d1",))
    await relay.api("POST", "/api/shows/both/products", {"id": "mug", "title": "Mug", "price": 12,
                                                         "rooms": {"d1": {"price": 10}}})
    await relay.publish(show, host_tracks(h264_clip, None))
    viewer = await relay.viewer("both", "d1", kinds=("video",), decode=False, data_channel=True)
    await viewer.first_frame("video")

    async def channel_open() -> bool:
        return viewer.channel.readyState == "open"

    await relay.wait_for(channel_open, what="the data channel to open")
    sse = await SseReader(f"{relay.base}/events/both/d1").start()
    try:
        await relay.api("POST", "/api/shows/both/products/mug/pin")
        events = await sse.wait_for(1)
        while not any(e["type"] == "product.pinned" for e in events):
            events = await sse.wait_for(len(events) + 1)
        pinned = [e for e in events if e["type"] == "product.pinned"]
        assert pinned and pinned[0]["product"]["price"] == 10

        async def dc_pinned() -> bool:
            return any(json.loads(m)["type"] == "product.pinned" for m in viewer.messages)

        await relay.wait_for(dc_pinned, what="the card on the data channel")
        message = next(json.loads(m) for m in viewer.messages if json.loads(m)["type"] == "product.pinned")
        assert message["seq"] == pinned[0]["seq"] and message["product"]["price"] == 10
        assert message["stream_time"] is not None  # the show is being recorded
    finally:
        await sse.close()


async def test_two_relays_on_one_redis_serve_one_show(make_relay, redis_server):
    """Two relays (separate apps sharing only Redis, as two processes would): an operator call on
    one reaches readers on the other; a viewer registered on one
    claims on the other and is credited once, to its room."""
    a = await make_relay(redis_url=redis_server.url)
    b = await make_relay(redis_url=redis_server.url)
    await a.create_show("multi", mirrors=("d1",))  # made on one, known to both (the catalog is in Redis)
    assert (await b.show("multi"))["mirrors"][0]["distributor"] == "d1"
    await a.api("POST", "/api/shows/multi/products", {"id": "bag", "title": "Bag", "price": 100,
                                                      "rooms": {"d1": {"price": 80}}})
    reader = await SseReader(f"{b.base}/events/multi/d1").start()
    try:
        await a.api("POST", "/api/shows/multi/products/bag/pin")
        pinned = next(e for e in await reader.wait_for(1) if e["type"] == "product.pinned")
        assert pinned["product"]["price"] == 80
        await a.api("POST", "/api/shows/multi/coupons", {"id": "c", "title": "C", "quantity": 1, "duration_s": 60})
        await b.api("POST", "/api/shows/multi/coupons/c/launch")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{a.base}/api/shows/multi/viewers", json={"room": "d1", "ref": "amy"}) as res:
                viewer = await res.json()
            auth = {"Authorization": f"Bearer {viewer['token']}"}
            answers = []
            for node, key in ((b, "k1"), (a, "k1"), (a, "k2")):
                async with http.post(f"{node.base}/api/shows/multi/coupons/c/claim",
                                     headers={**auth, "Idempotency-Key": key}) as res:
                    answers.append((res.status, (await res.json())["result"]))
        assert answers == [(200, "claimed"), (200, "claimed"), (200, "already_claimed")]
        stats = (await a.api("GET", "/api/shows/multi/stats"))[1]
        assert stats["rooms"]["d1"]["claims_by_sharer"] == {"amy": 1}
        assert stats["rooms"]["hq"]["claims"] == 0
        launched = [e for e in await reader.wait_for(3) if e["type"] == "coupon.launched"]
        assert launched and launched[0]["coupon"]["remaining"] == 1
    finally:
        await reader.close()
