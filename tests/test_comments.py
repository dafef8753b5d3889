"""Comments, moderation and likes: room isolation, held comments, masked text, the operator's
actions, per-viewer limits, and like totals aggregated into at most two events a second."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict

import aiohttp
import pytest

from relay.commerce.moderation import ModerationLists, Moderator
from relay_testkit.synthetic import host_tracks
from test_commerce import SseReader

from conftest import ADMIN_KEY

ROOMS = ("hq", "d1", "d2")
LISTS = {"block": ["spam", "詐騙", "诈骗"], "mask": ["damn", "ｶﾞｷ", "笨蛋"], "hold_links": True}
# (text, status the room sees, text the room sees); {n} makes each comment unique
TEMPLATES = [
    ("hello {n}", "published", "hello {n}"),
    ("Damn it {n}", "masked", "**** it {n}"),
    ("ＤＡＭＮ ok {n}", "masked", "**** ok {n}"),
    ("你是笨蛋 {n}", "masked", "你是** {n}"),
    ("ガキ {n}", "masked", "** {n}"),
    ("buy SPAM now {n}", "held", None),
    ("這是詐騙 {n}", "held", None),
    ("这是诈骗 {n}", "held", None),
    ("see shop.example.com {n}", "held", None),
    ("class act {n}", "published", "class act {n}"),
]


class Reader(SseReader):
    """An SSE reader that may send headers (the operator's admin key)."""

    def __init__(self, url: str, headers: dict | None = None) -> None:
        super().__init__(url)
        self.headers = headers or {}

    async def start(self) -> "Reader":
        self._session = aiohttp.ClientSession()
        self._response = await self._session.get(self.url, headers=self.headers)
        assert self._response.status == 200, await self._response.text()
        self._task = asyncio.ensure_future(self._read())
        return self

    def comments(self) -> list[dict]:
        return [e for e in self.events if e["type"].startswith("comment")]


@pytest.fixture
async def relay(make_relay, store_url):
    return await make_relay(redis_url=store_url)


async def _viewer(http: aiohttp.ClientSession, base: str, show: str, room: str, name: str | None = None) -> dict:
    body = {"room": room, **({"name": name} if name else {})}
    async with http.post(f"{base}/api/shows/{show}/viewers", json=body) as res:
        assert res.status == 201, await res.text()
        return await res.json()


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_moderator_folds_case_and_width_and_masks_exactly():
    moderator = Moderator(ModerationLists(("spam", "詐騙", "诈骗"), ("damn", "ｶﾞｷ", "ass"), True))
    assert moderator.check("ＤａＭｎ you").text == "**** you"
    assert moderator.check("ｶﾞｷだ").text == "***だ"  # half-width: three characters in, three stars
    assert moderator.check("ガキだ").text == "**だ"
    assert moderator.check("class").status == "published"  # not inside a Latin word
    assert moderator.check("ass!").text == "***!"
    assert moderator.check("ＳＰＡＭ").status == "held"
    assert moderator.check("这是诈骗").status == moderator.check("這是詐騙").status == "held"
    for link in ("http://x.io", "HTTPS://X", "www.shop", "shop.example.com", "ｓｈｏｐ．ｅｘａｍｐｌｅ．ｃｏｍ",
                 "buy at example。com"):
        assert moderator.check(link).status == "held", link
    for text in ("3.5 kg", "e.g. fine", "ok...", "hello", "document.title", "size.large please"):
        assert moderator.check(text).status == "published", text
    assert Moderator(ModerationLists(hold_links=False)).check("www.shop.com").status == "published"


async def test_comments_at_scale(relay, h264_clip):
    """300 viewers in 3 rooms post 3,000 comments (30 of them too fast): isolation, masking,
    held comments, release, deletion, 429s, and the data channel sees what SSE sees."""
    base = relay.base
    show = await relay.create_show("chat", mirrors=("d1", "d2"))
    assert (await relay.api("PUT", "/api/moderation", LISTS))[0] == 200
    await relay.api("POST", "/api/shows/chat/products", {"id": "end", "title": "End", "price": 1})
    await relay.publish(show, host_tracks(h264_clip, None))
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400))
    try:
        viewers = [await _viewer(http, base, "chat", ROOMS[i % 3], f"fan {i}" if i % 2 else None)
                   for i in range(300)]
        # Readers: 10 posting viewers per room (their own held comments), an anonymous one per
        # room, the operator; and one viewer of d1 on the data channel beside its SSE stream.
        watched = [v for v in viewers[:30]]
        readers: dict[str, Reader] = {}
        for v in watched:
            readers[v["viewer_id"]] = await Reader(f"{base}/events/chat/{v['room']}?token={v['token']}").start()
        anonymous = {room: await Reader(f"{base}/events/chat/{room}").start() for room in ROOMS}
        operator = await Reader(f"{base}/events/chat", {"Authorization": f"Bearer {ADMIN_KEY}"}).start()
        dc_viewer = next(v for v in watched if v["room"] == "d1")
        channel = await relay.viewer("chat", "d1", kinds=("video",), decode=False, data_channel=True,
                                     token=dc_viewer["token"])
        await relay.wait_for(lambda: _async_true(channel.channel.readyState == "open"), what="the data channel")

        posted: dict[int, dict] = {}  # id -> {viewer, room, template}
        answers: Counter = Counter()
        retry_after: list[str] = []
        fast = {v["viewer_id"] for v in viewers[-30:]}

        async def post_all(v: dict) -> None:
            headers = {"Authorization": f"Bearer {v['token']}"}
            for k in range(10):
                t = random.randrange(len(TEMPLATES))
                text = TEMPLATES[t][0].format(n=f"{v['viewer_id']}-{k}")
                async with http.post(f"{base}/api/shows/chat/comments", json={"text": text}, headers=headers) as res:
                    body = await res.json()
                    answers[res.status] += 1
                    if res.status == 429:
                        assert v["viewer_id"] in fast
                        retry_after.append(res.headers["Retry-After"])
                    else:
                        assert res.status == 201, body
                        assert body["status"] in ("published", "masked")  # held is not told
                        posted[body["id"]] = {"viewer": v["viewer_id"], "room": v["room"], "t": t, "text": text,
                                              "answer": body}
                if v["viewer_id"] not in fast and k >= 4:
                    await asyncio.sleep(1.05)  # within the per-viewer rate after the burst of 5

        started = time.monotonic()
        await asyncio.gather(*(post_all(v) for v in viewers[-30:]))  # the fast ones first: nothing slows them
        await asyncio.gather(*(post_all(v) for v in viewers[:-30]))
        # The fast posters spend their burst of 5 and are refused (a slow server refills a token or so).
        assert answers[201] + answers[429] == 3000 and answers[201] >= 270 * 10 + 30 * 5, answers
        assert answers[429] >= 30 * 3 and all(int(r) >= 1 for r in retry_after), answers
        for info in posted.values():
            _, status, shown = TEMPLATES[info["t"]]
            n = info["text"].split(" ")[-1]
            if status != "held":
                assert info["answer"]["text"] == shown.format(n=n) and info["answer"]["status"] == status
            else:
                assert info["answer"]["text"] == info["text"] and info["answer"]["status"] == "published"

        # The operator: lists everything with status; releases some held, deletes some published.
        listed: list[dict] = []
        after = 0
        while True:
            status, page = await relay.api("GET", f"/api/shows/chat/comments?after={after}")
            assert status == 200
            if not page["comments"]:
                break
            listed += page["comments"]
            after = page["comments"][-1]["id"]
        assert len(listed) == len(posted)
        statuses = {c["id"]: c["status"] for c in listed}
        for cid, info in posted.items():
            assert statuses[cid] == TEMPLATES[info["t"]][1]
            assert next(c for c in listed if c["id"] == cid)["viewer_id"] == info["viewer"]
        held = [cid for cid, s in statuses.items() if s == "held"]
        watched_ids = {v["viewer_id"] for v in watched}
        held_watched = [cid for cid in held if posted[cid]["viewer"] in watched_ids]
        released = held_watched[::2] + [cid for cid in held if cid not in held_watched][:20]
        for cid in released:
            assert (await relay.api("POST", f"/api/shows/chat/comments/{cid}/release"))[0] == 200
        assert (await relay.api("POST", f"/api/shows/chat/comments/{released[0]}/release"))[0] == 409
        shown_ids = [cid for cid, s in statuses.items() if s != "held"]
        deleted = shown_ids[::50]
        for cid in deleted:
            assert (await relay.api("DELETE", f"/api/shows/chat/comments/{cid}"))[0] == 204
        assert (await relay.api("DELETE", f"/api/shows/chat/comments/{deleted[0]}"))[0] == 404
        status, pinned = await relay.api("POST", f"/api/shows/chat/comments/{shown_ids[1]}/pin")
        assert status == 200 and pinned["id"] == shown_ids[1]
        assert (await relay.api("POST", f"/api/shows/chat/comments/{held[-1]}/pin"))[0] in (200, 409)
        await relay.api("POST", "/api/shows/chat/products/end/pin")  # the last event: every room hears it

        everyone = [*readers.values(), *anonymous.values(), operator]
        await _until(lambda: all(any(e["type"] == "product.pinned" for e in r.events) for r in everyone),
                     30, "every reader to reach the end")
        took = time.monotonic() - started

        released_set, deleted_set = set(released), set(deleted)
        for viewer_id, reader in [*readers.items(), *((None, r) for r in anonymous.values())]:
            room = reader.url.split("/events/chat/")[1].split("?")[0]
            seen: dict[int, list[dict]] = defaultdict(list)
            for e in reader.comments():
                assert e["comment"]["room"] == room  # room isolation
                assert "author" not in e and "viewer_id" not in e["comment"]
                seen[e["comment"]["id"]].append(e)
            for cid, info in posted.items():
                kinds = [e["type"] for e in seen.get(cid, [])]
                if info["room"] != room:
                    assert not kinds
                    continue
                status = TEMPLATES[info["t"]][1]
                mine = info["viewer"] == viewer_id
                visible = status != "held" or mine or cid in released_set
                assert kinds.count("comment") == (1 if visible else 0), (cid, kinds, mine)
                if visible:
                    event = next(e for e in seen[cid] if e["type"] == "comment")
                    assert event["comment"]["status"] in ("published", "masked")
                    if status != "held":
                        assert event["comment"]["text"] == TEMPLATES[info["t"]][2].format(n=info["text"].split(" ")[-1])
                    assert event["comment"]["name"]
                assert kinds.count("comment.deleted") == (1 if cid in deleted_set else 0)
        # The operator sees every comment of every room, labelled, held ones with their status.
        op_comments = [e for e in operator.comments() if e["type"] == "comment"]
        assert {e["comment"]["id"] for e in op_comments} == set(posted)
        assert all(e["comment"]["viewer_id"] == posted[e["comment"]["id"]]["viewer"] for e in op_comments)

        # The data channel saw the same sequence as the same viewer's SSE stream.
        await _until(lambda: any(json.loads(m)["type"] == "product.pinned" for m in channel.messages), 10,
                     "the data channel to reach the end")
        sse_seq = [(e["seq"], e["type"]) for e in readers[dc_viewer["viewer_id"]].events
                   if e["type"].startswith("comment")]
        dc_seq = [(m["seq"], m["type"]) for m in map(json.loads, channel.messages) if m["type"].startswith("comment")]
        assert dc_seq == sse_seq and sse_seq

        # Viewers' list: the room's published and masked comments, deleted ones gone.
        status, page = await relay.request("GET", "/api/shows/chat/comments?room=d2")
        assert status == 200 and all(c["room"] == "d2" and c["status"] in ("published", "masked")
                                     for c in page["comments"])
        assert not {c["id"] for c in page["comments"]} & deleted_set
        assert "viewer_id" not in page["comments"][0]
        assert took < 60, took
    finally:
        for r in [*locals().get("readers", {}).values(), *locals().get("anonymous", {}).values()]:
            await r.close()
        if "operator" in locals():
            await operator.close()
        await http.close()


async def _async_true(value: bool) -> bool:
    return value


async def test_likes_are_exact_and_aggregated(relay):
    """400 viewers x 50 taps over 10 s: exact totals, at most 2 likes events a second per room."""
    await relay.create_show("hearts", mirrors=("d1", "d2"))
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=500))
    readers = {room: await Reader(f"{relay.base}/events/hearts/{room}").start() for room in ROOMS}
    try:
        viewers = await asyncio.gather(*(_viewer(http, relay.base, "hearts", ROOMS[i % 3]) for i in range(400)))
        expected = Counter()

        async def tap(v: dict) -> None:
            await asyncio.sleep(random.uniform(0, 0.2))
            for _ in range(50):
                async with http.post(f"{relay.base}/api/shows/hearts/likes", json={"count": 1},
                                     headers={"Authorization": f"Bearer {v['token']}"}) as res:
                    assert res.status == 202, await res.text()
                expected[v["room"]] += 1
                await asyncio.sleep(random.uniform(0.1, 0.3))

        await asyncio.gather(*(tap(v) for v in viewers))
        assert sum(expected.values()) == 20000
        status, stats = await relay.api("GET", "/api/shows/hearts/stats")
        assert status == 200
        assert {room: stats["rooms"][room]["likes"] for room in ROOMS} == dict(expected)
        await _until(lambda: all(r.events and r.events[-1].get("likes") == expected[room]
                                 for room, r in readers.items()), 5, "the last totals")
        for room, reader in readers.items():
            likes = [e for e in reader.events if e["type"] == "likes"]
            assert all(e["room"] == room for e in likes)
            totals = [e["likes"] for e in likes]
            assert totals == sorted(totals)
            per_second = Counter(int(e["wall_time"]) for e in likes)
            walls = [e["wall_time"] for e in likes]
            assert all(b - a >= 0.45 for a, b in zip(walls, walls[1:])), walls  # twice a second at most
            assert max(per_second.values()) <= 3  # (two half-second slots can straddle a second's edge)
        for body in ({"count": 0}, {"count": 51}, {"count": "1"}):
            status, error = await relay.request("POST", "/api/shows/hearts/likes", json=body,
                                                headers={"Authorization": f"Bearer {viewers[0]['token']}"})
            assert status == 422 and "'count'" in error["message"]
        assert (await relay.request("POST", "/api/shows/hearts/likes", json={"count": 1}))[0] == 401
    finally:
        for r in readers.values():
            await r.close()
        await http.close()


async def test_moderation_lists_mute_and_bad_input(relay):
    await relay.create_show("mod", mirrors=("d1",))
    async with aiohttp.ClientSession() as http:
        amy = await _viewer(http, relay.base, "mod", "d1", "Amy")
        bob = await _viewer(http, relay.base, "mod", "d1")
    assert (await relay.request("GET", "/api/moderation"))[0] == 401
    status, lists = await relay.api("GET", "/api/moderation")
    assert status == 200 and lists == {"block": [], "mask": [], "hold_links": True}
    assert (await relay.api("PUT", "/api/moderation", LISTS))[0] == 200
    for body, field in (({"block": "spam", "mask": []}, "block"), ({"block": [], "mask": [""]}, "mask"),
                        ({"block": [], "mask": [1]}, "mask"), ({"block": [], "mask": [], "hold_links": "no"},
                                                               "hold_links"),
                        ({"mask": []}, "block"), ({"block": ["x" * 101], "mask": []}, "block")):
        status, error = await relay.api("PUT", "/api/moderation", body)
        assert status == 422 and f"'{field}'" in error["message"], (body, error)
    assert (await relay.api("GET", "/api/moderation"))[1] == LISTS  # nothing changed

    async def post(viewer: dict, text) -> tuple[int, dict]:
        return await relay.request("POST", "/api/shows/mod/comments", json={"text": text},
                                   headers={"Authorization": f"Bearer {viewer['token']}"})

    for text in ("", "   ", "x" * 201, 5, None):
        status, error = await post(amy, text)
        assert status == 422 and "'text'" in error["message"], (text, error)
    assert (await post(amy, "  " + "x" * 200 + "  "))[0] == 201  # 200 after trimming
    status, c = await post(amy, "ＤＡＭＮ nice ｶﾞｷ")
    assert status == 201 and c == {"id": c["id"], "text": "**** nice ***", "status": "masked"}
    status, c = await post(amy, "visit WWW.EXAMPLE.COM")
    assert status == 201 and c["status"] == "published"  # held, but its author is not told
    assert (await relay.api("GET", "/api/shows/mod/comments"))[1]["comments"][-1]["status"] == "held"
    status, c = await post(bob, "诈骗!")
    assert status == 201 and c["status"] == "published"
    listed = (await relay.api("GET", "/api/shows/mod/comments?room=d1"))[1]["comments"]
    assert listed[-1]["status"] == "held" and listed[-1]["name"].startswith("viewer ")
    assert [c["name"] for c in listed if c["viewer_id"] == amy["viewer_id"]][0] == "Amy"

    # Mute: bob's comments are held until unmuted.
    status, muted = await relay.api("POST", f"/api/shows/mod/viewers/{bob['viewer_id']}/mute", {"duration_s": 60})
    assert status == 200 and muted["muted_until"] > time.time()
    status, c = await post(bob, "hello there")
    assert status == 201 and c["status"] == "published"
    assert (await relay.api("GET", "/api/shows/mod/comments"))[1]["comments"][-1]["status"] == "held"
    for body in ({"duration_s": -1}, {"duration_s": "5"}, {}):
        status, error = await relay.api("POST", f"/api/shows/mod/viewers/{bob['viewer_id']}/mute", body)
        assert status == 422 and "'duration_s'" in error["message"]
    status, muted = await relay.api("POST", f"/api/shows/mod/viewers/{bob['viewer_id']}/mute", {"duration_s": 0})
    assert status == 200 and muted["muted_until"] is None
    await post(bob, "hello again")
    assert (await relay.api("GET", "/api/shows/mod/comments"))[1]["comments"][-1]["status"] == "published"

    # Without hold_links a link goes through; the viewers' list hides held ones.
    await relay.api("PUT", "/api/moderation", {**LISTS, "hold_links": False})
    assert (await post(amy, "www.example.com"))[0] == 201
    public = (await relay.request("GET", "/api/shows/mod/comments?room=d1"))[1]["comments"]
    assert public[-1]["text"] == "www.example.com"
    assert all(c["status"] in ("published", "masked") for c in public)
    assert (await relay.request("GET", "/api/shows/mod/comments?after=x"))[0] == 400
    assert (await relay.request("GET", "/api/shows/mod/comments?room=nobody"))[0] == 404
    assert (await relay.api("DELETE", "/api/shows/mod/comments/999999"))[0] == 404
    assert (await relay.request("DELETE", f"/api/shows/mod/comments/{c['id']}"))[0] == 401
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{relay.base}/api/shows/mod/viewers", json={"name": " " * 3}) as res:
            assert res.status == 422 and "'name'" in (await res.json())["message"]
