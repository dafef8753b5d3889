"""The Redis commerce store: several relay processes or machines serving the same shows.

Claims are decided by one server-side script each, sent in pipelined batches; events get their
sequence number, their place in the log and their pub/sub message in one script, and every
process hands the pub/sub feed to its own readers. Durability of an acknowledged claim is
Redis's: run it with `appendonly yes` and `appendfsync always`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any, Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, TimeoutError as RedisTimeoutError

from ..logs import redact_url
from ..errors import ApiError, StoreUnavailable
from . import redis_scripts
from .coupons import ClaimRequest, Coupon, add_claims
from .store import Comment, Event, EventListener, Pin, Product

log = logging.getLogger(__name__)

MAX_BATCH = 500
MAX_CONNECTIONS = 32
RECONNECT_S = 0.5
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def _state_slot(type: str, data: dict) -> str:
    """Which part of a room's current state an event replaces ('' for none)."""
    if type in ("product.pinned", "product.unpinned"):
        return "card"
    if type.startswith("show."):
        return "show"
    coupon = data.get("coupon")
    if type.startswith("coupon.") and isinstance(coupon, dict):
        return f"coupon:{coupon.get('id')}"
    return ""


def _event(show_id: str, raw: str) -> Event:
    body = json.loads(raw)
    return Event(show_id, body["seq"], body["type"], body["wall"], body["stream_time"], body["data"])


def _opt(value: float | None) -> str:
    return "" if value is None else repr(value)


def _float(value: str | None) -> float | None:
    return float(value) if value else None


class RedisCommerceStore:
    """CommerceStore on a Redis server shared by every relay process."""

    def __init__(self, url: str, prefix: str = "relay", request_retention_s: float = 86400.0) -> None:
        self._url = url
        self._request_retention_s = max(1.0, request_retention_s)
        self._prefix = prefix
        # A bounded pool whose callers wait for a free connection: a burst of requests queues
        # here instead of opening a connection each.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=5, decode_responses=True, socket_connect_timeout=2,
            socket_timeout=5, health_check_interval=5, retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2))
        self._redis = aioredis.Redis(connection_pool=pool)
        self._scripts = {name: self._redis.register_script(getattr(redis_scripts, name))
                         for name in ("APPEND_EVENT", "CLOSE_PIN", "CREATE_COUPON", "LAUNCH_COUPON",
                                      "STOP_COUPON", "CLAIM", "RETIRE_ROOM")}
        self._claims: list[tuple[ClaimRequest, asyncio.Future]] = []
        self._claims_waiting = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._listener: EventListener | None = None
        self.available = False  # the event feed is connected (for /healthz)

    # -- keys ------------------------------------------------------------------------------
    def _key(self, show_id: str, *parts: str) -> str:
        return ":".join((self._prefix, "{" + show_id + "}", *parts))

    @property
    def _channel(self) -> str:
        return f"{self._prefix}:events"

    async def _do(self, call: Awaitable[Any]) -> Any:
        """Await a Redis call; an unreachable Redis becomes a 503."""
        try:
            return await call
        except _UNREACHABLE as exc:
            raise StoreUnavailable("commerce store (Redis)", exc) from exc

    # -- life ------------------------------------------------------------------------------
    async def start(self, listener: EventListener, resync: Callable[[], Awaitable[None]] | None = None) -> None:
        self._listener = listener
        self._resync = resync
        subscribed = asyncio.get_running_loop().create_future()
        self._tasks = [asyncio.ensure_future(self._follow_events(subscribed)),
                       asyncio.ensure_future(self._run_claims())]
        try:  # readers may miss nothing published after start-up
            await asyncio.wait_for(asyncio.shield(subscribed), 5)
        except TimeoutError:
            log.error("Redis at %s is unreachable; commerce calls answer 503 until it is back",
                      redact_url(self._url))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()

    async def shared_secret(self, name: str) -> str:
        """A secret every process sharing this Redis agrees on (made by the first to ask)."""
        key = f"{self._prefix}:{name}"
        while True:
            try:
                await self._redis.set(key, secrets.token_urlsafe(48), nx=True)
                return await self._redis.get(key)
            except _UNREACHABLE as exc:
                log.warning("Redis unreachable while reading %s: %s; retrying", name, exc)
                await asyncio.sleep(RECONNECT_S)

    async def _follow_events(self, subscribed: asyncio.Future) -> None:
        """Hand the pub/sub feed to the listener, reconnecting for as long as the store is open."""
        lost = False
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.available = True
                if not subscribed.done():
                    subscribed.set_result(None)
                if lost:
                    log.info("Redis event feed is back")
                    lost = False
                    if self._resync is not None:
                        await self._resync()
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    raw = message["data"]
                    show_id = json.loads(raw)["show"]
                    try:
                        await self._listener(_event(show_id, raw))
                    except ApiError as exc:  # a gap could not be filled now: the next event retries
                        log.warning("show %s: events not delivered yet: %s", show_id, exc.message)
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except (*_UNREACHABLE, RedisError) as exc:
                if not lost:
                    log.error("Redis event feed lost (%s); reconnecting", exc)
                lost = True
                self.available = False
                await pubsub.aclose()
                await asyncio.sleep(RECONNECT_S)

    # -- viewers ---------------------------------------------------------------------------
    async def purge_show(self, show_id: str) -> None:
        # The event counter stays: sequence numbers keep growing for a new show with this id,
        # so no process mistakes its first events for ones already delivered.
        keep = self._key(show_id, "seq")

        async def keys() -> list[str]:  # glob specials in a show id are excluded by the slug rule
            return [k async for k in self._redis.scan_iter(match=self._key(show_id, "*"), count=500) if k != keep]

        doomed = await self._do(keys())
        for start in range(0, len(doomed), 500):
            await self._do(self._redis.unlink(*doomed[start:start + 500]))

    async def expire_requests(self, before: float) -> int:
        return 0  # each answer is a key that expires by itself

    async def retire_room(self, show_id: str, room: str, retired: str) -> None:
        coupon_ids = await self._do(self._redis.zrange(self._key(show_id, "coupons"), 0, -1))
        keys = [self._key(show_id, "viewer_rooms"), self._key(show_id, "claim_figures")]
        keys += [self._key(show_id, "coupon", c) + ":rooms" for c in coupon_ids]
        await self._do(self._scripts["RETIRE_ROOM"](keys=keys, args=[room, retired]))

    async def register_viewer(self, show_id: str, viewer_id: str, room: str, sharer: str | None,
                              now: float) -> str:
        record = json.dumps({"room": room, "first_sharer": sharer, "last_sharer": sharer, "created_at": now})
        if await self._do(self._redis.hsetnx(self._key(show_id, "viewers"), viewer_id, record)):
            await self._do(self._redis.hincrby(self._key(show_id, "viewer_rooms"), room, 1))
            if sharer and sharer != viewer_id:  # an invitee of the viewer (or distributor) who shared
                await self._do(self._redis.hincrby(self._key(show_id, "invites"), sharer, 1))
            return room
        known = await self._do(self._redis.hget(self._key(show_id, "viewers"), viewer_id))
        return json.loads(known)["room"]

    async def count_registration(self, show_id: str, address: str) -> int:
        return await self._do(self._redis.hincrby(self._key(show_id, "registrations"), address, 1))

    async def record_sharer(self, show_id: str, viewer_id: str, sharer: str) -> None:
        key = self._key(show_id, "viewers")
        raw = await self._do(self._redis.hget(key, viewer_id))
        if raw is not None:
            record = json.loads(raw)
            record["last_sharer"] = sharer
            await self._do(self._redis.hset(key, viewer_id, json.dumps(record)))

    async def viewer_rooms(self, show_id: str) -> dict[str, int]:
        counts = await self._do(self._redis.hgetall(self._key(show_id, "viewer_rooms")))
        return {room: int(n) for room, n in counts.items()}

    # -- shelf and card --------------------------------------------------------------------
    async def save_product(self, product: Product) -> None:
        record = json.dumps({"title": product.title, "price_cents": product.price_cents,
                             "image_url": product.image_url, "link": product.link, "position": product.position,
                             "overrides": product.overrides, "commission_rate": product.commission_rate})
        await self._do(self._redis.hset(self._key(product.show_id, "products"), product.id, record))

    async def delete_product(self, show_id: str, product_id: str) -> None:
        await self._do(self._redis.hdel(self._key(show_id, "products"), product_id))

    async def products(self, show_id: str) -> list[Product]:
        records = await self._do(self._redis.hgetall(self._key(show_id, "products")))
        products = [Product(show_id, product_id, **json.loads(raw)) for product_id, raw in records.items()]
        return sorted(products, key=lambda p: (p.position, p.id))

    async def open_pin(self, show_id: str, pin: Pin) -> None:
        record = json.dumps({"product_id": pin.product_id, "start_wall": pin.start_wall, "start_s": pin.start_s,
                             "end_wall": None, "end_s": None})
        await self._do(self._redis.rpush(self._key(show_id, "pins"), record))

    async def close_pin(self, show_id: str, end_wall: float, end_s: float | None) -> Pin | None:
        closed = await self._do(self._scripts["CLOSE_PIN"](
            keys=[self._key(show_id, "pins")], args=[repr(end_wall), _opt(end_s)]))
        return Pin(**json.loads(closed)) if closed else None

    async def pins(self, show_id: str) -> list[Pin]:
        records = await self._do(self._redis.lrange(self._key(show_id, "pins"), 0, -1))
        return [Pin(**json.loads(raw)) for raw in records]

    # -- events ----------------------------------------------------------------------------
    async def append_event(self, show_id: str, type: str, wall: float, stream_time: float | None,
                           data: dict) -> Event:
        body = json.dumps({"show": show_id, "type": type, "wall": wall, "stream_time": stream_time, "data": data})
        seq = await self._do(self._scripts["APPEND_EVENT"](
            keys=[self._key(show_id, "seq"), self._key(show_id, "events"), self._key(show_id, "state")],
            args=[body, _state_slot(type, data), self._channel]))
        return Event(show_id, int(seq), type, wall, stream_time, data)  # readers get it through pub/sub

    async def events_after(self, show_id: str, seq: int, limit: int = 1000) -> list[Event]:
        raws = await self._do(self._redis.zrangebyscore(
            self._key(show_id, "events"), f"({seq}", "+inf", start=0, num=limit))
        return [_event(show_id, raw) for raw in raws]

    async def current_state(self, show_id: str) -> tuple[list[Event], int]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hvals(self._key(show_id, "state"))
            pipe.get(self._key(show_id, "seq"))
            raws, newest = await self._do(pipe.execute())
        events = sorted((_event(show_id, raw) for raw in raws), key=lambda e: e.seq)
        return events, int(newest or 0)

    # -- coupons ---------------------------------------------------------------------------
    async def create_coupon(self, coupon: Coupon) -> Coupon:
        if coupon.id is None:
            coupon.id = "c" + secrets.token_hex(4)
        fields = {"title": coupon.title, "quantity": coupon.quantity, "per_viewer_limit": coupon.per_viewer_limit,
                  "duration_s": _opt(coupon.duration_s), "starts_at": _opt(coupon.starts_at),
                  "ends_at": _opt(coupon.ends_at), "room_caps": json.dumps(coupon.room_caps),
                  "state": "draft", "claimed": 0, "kind": coupon.kind, "invites_required": coupon.invites_required}
        args: list[Any] = [coupon.id, repr(time.time())]
        for name, value in fields.items():
            args += [name, value]
        created = await self._do(self._scripts["CREATE_COUPON"](
            keys=[self._key(coupon.show_id, "coupon", coupon.id), self._key(coupon.show_id, "coupons")], args=args))
        if not created:
            raise ApiError(409, "coupon_exists", f"coupon {coupon.id!r} already exists")
        return await self.load_coupon(coupon.show_id, coupon.id)

    async def launch_coupon(self, show_id: str, coupon_id: str) -> Coupon:
        outcome = await self._do(self._scripts["LAUNCH_COUPON"](
            keys=[self._key(show_id, "coupon", coupon_id)], args=[repr(time.time())]))
        if outcome == "missing":
            raise _no_coupon(show_id, coupon_id)
        if outcome == "stopped":
            raise ApiError(409, "coupon_stopped", "a stopped coupon cannot be launched again")
        return await self.load_coupon(show_id, coupon_id)

    async def stop_coupon(self, show_id: str, coupon_id: str) -> Coupon:
        outcome = await self._do(self._scripts["STOP_COUPON"](keys=[self._key(show_id, "coupon", coupon_id)]))
        if outcome == "missing":
            raise _no_coupon(show_id, coupon_id)
        return await self.load_coupon(show_id, coupon_id)

    async def load_coupon(self, show_id: str, coupon_id: str) -> Coupon:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._key(show_id, "coupon", coupon_id))
            pipe.hgetall(self._key(show_id, "coupon", coupon_id, "rooms"))
            fields, rooms = await self._do(pipe.execute())
        if not fields:
            raise _no_coupon(show_id, coupon_id)
        return Coupon(show_id, coupon_id, fields["title"], int(fields["quantity"]), int(fields["per_viewer_limit"]),
                      _float(fields["duration_s"]), _float(fields["starts_at"]), _float(fields["ends_at"]),
                      json.loads(fields["room_caps"]), fields["state"], int(fields["claimed"]),
                      {room: int(n) for room, n in rooms.items()}, fields.get("kind", "flash"),
                      int(fields.get("invites_required", 0)))

    async def list_coupons(self, show_id: str) -> list[Coupon]:
        ids = await self._do(self._redis.zrange(self._key(show_id, "coupons"), 0, -1))
        return [await self.load_coupon(show_id, coupon_id) for coupon_id in ids]

    async def claim(self, request: ClaimRequest) -> dict:
        future = asyncio.get_running_loop().create_future()
        self._claims.append((request, future))
        self._claims_waiting.set()
        record = await future
        if record == "missing":
            raise _no_coupon(request.show_id, request.coupon_id)
        record = json.loads(record)
        if record["coupon"] != request.coupon_id:
            raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used for another request")
        return record["response"]

    async def _run_claims(self) -> None:
        """Send waiting claims as one pipeline of scripts: one round trip for many claims."""
        while True:
            await self._claims_waiting.wait()
            self._claims_waiting.clear()
            while self._claims:
                batch, self._claims = self._claims[:MAX_BATCH], self._claims[MAX_BATCH:]
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for req, _ in batch:
                            await self._scripts["CLAIM"](keys=self._claim_keys(req), args=[
                                f"{req.viewer_id}|{req.idempotency_key}", req.viewer_id, req.room, req.sharer or "",
                                req.coupon_id, repr(time.time()), str(int(self._request_retention_s))], client=pipe)
                        records = await pipe.execute(raise_on_error=False)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # unreachable: no claim of this batch is answered as done
                    if not isinstance(exc, _UNREACHABLE):
                        log.exception("claim batch failed")
                    records = [StoreUnavailable("commerce store (Redis)", exc)] * len(batch)
                for (_, future), record in zip(batch, records):
                    if future.done():
                        continue
                    if isinstance(record, Exception):
                        if not isinstance(record, ApiError):
                            log.error("claim script failed: %s", record)
                            record = StoreUnavailable("commerce store (Redis)", record)
                        future.set_exception(record)
                    else:
                        future.set_result(record)

    def _claim_keys(self, req: ClaimRequest) -> list[str]:
        coupon = self._key(req.show_id, "coupon", req.coupon_id)
        return [self._key(req.show_id, "request", req.viewer_id, req.idempotency_key), coupon, coupon + ":rooms",
                coupon + ":viewers", self._key(req.show_id, "claim_figures"),
                self._key(req.show_id, "claim_requests"), self._key(req.show_id, "invites")]

    async def claim_figures(self, show_id: str) -> dict:
        counts = await self._do(self._redis.hgetall(self._key(show_id, "claim_figures")))
        figures: dict = {}
        for key, n in counts.items():
            room, coupon_id, sharer = key.split("\n")
            add_claims(figures, room, coupon_id, sharer, int(n))
        return figures

    # -- comments, mutes, likes, moderation lists ---------------------------------------------
    # A comment is a JSON record in the show's `comments` hash, its id in one sorted set of the
    # show and one of its room (score = id) for listing after an id.
    async def add_comment(self, comment: Comment) -> Comment:
        comment.id = int(await self._do(self._redis.incr(self._key(comment.show_id, "comment_seq"))))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(comment.show_id, "comments"), str(comment.id), _comment_record(comment))
            pipe.zadd(self._key(comment.show_id, "comment_ids"), {str(comment.id): comment.id})
            pipe.zadd(self._key(comment.show_id, "comment_ids", comment.room), {str(comment.id): comment.id})
            await self._do(pipe.execute())
        return comment

    async def load_comment(self, show_id: str, comment_id: int) -> Comment | None:
        raw = await self._do(self._redis.hget(self._key(show_id, "comments"), str(comment_id)))
        return _comment(show_id, comment_id, raw) if raw else None

    async def set_comment_status(self, show_id: str, comment_id: int, status: str) -> None:
        comment = await self.load_comment(show_id, comment_id)
        if comment is not None:
            comment.status = status
            await self._do(self._redis.hset(self._key(show_id, "comments"), str(comment_id),
                                            _comment_record(comment)))

    async def comments(self, show_id: str, room: str | None, after: int, limit: int) -> list[Comment]:
        ids_key = self._key(show_id, "comment_ids") if room is None else self._key(show_id, "comment_ids", room)
        ids = await self._do(self._redis.zrangebyscore(ids_key, f"({after}", "+inf", start=0, num=limit))
        if not ids:
            return []
        raws = await self._do(self._redis.hmget(self._key(show_id, "comments"), ids))
        return [_comment(show_id, int(i), raw) for i, raw in zip(ids, raws) if raw]

    async def mute_viewer(self, show_id: str, viewer_id: str, until: float) -> None:
        await self._do(self._redis.hset(self._key(show_id, "comment_mutes"), viewer_id, repr(until)))

    async def muted_until(self, show_id: str, viewer_id: str) -> float:
        raw = await self._do(self._redis.hget(self._key(show_id, "comment_mutes"), viewer_id))
        return float(raw) if raw else 0.0

    async def add_likes(self, show_id: str, room: str, n: int) -> int:
        return int(await self._do(self._redis.hincrby(self._key(show_id, "likes"), room, n)))

    async def likes(self, show_id: str) -> dict[str, int]:
        counts = await self._do(self._redis.hgetall(self._key(show_id, "likes")))
        return {room: int(n) for room, n in counts.items()}

    async def moderation_lists(self) -> dict | None:
        raw = await self._do(self._redis.get(f"{self._prefix}:moderation"))
        return json.loads(raw) if raw else None

    async def save_moderation_lists(self, lists: dict) -> None:
        await self._do(self._redis.set(f"{self._prefix}:moderation", json.dumps(lists)))


def _comment_record(comment: Comment) -> str:
    return json.dumps({"room": comment.room, "viewer_id": comment.viewer_id, "name": comment.name,
                       "text": comment.text, "status": comment.status, "wall": comment.wall,
                       "stream_time": comment.stream_time})


def _comment(show_id: str, comment_id: int, raw: str) -> Comment:
    return Comment(show_id, comment_id, **json.loads(raw))


def _no_coupon(show_id: str, coupon_id: str) -> ApiError:
    return ApiError(404, "coupon_not_found", f"show {show_id!r} has no coupon {coupon_id!r}")
