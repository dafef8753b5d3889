"""HTTP API of flash coupons: create, launch, stop, read, and claim."""

from __future__ import annotations

from dataclasses import dataclass
import logging

from aiohttp import web

from ..catalog import ShowCatalog
from ..commerce.coupon_updates import RemainingTicker
from ..commerce.coupons import ClaimRequest, Coupon
from ..commerce.events import EventHub
from ..commerce.store import CommerceStore
from ..errors import ApiError, invalid_field as _invalid
from ..fields import slug_field, text_field
from ..metrics import CLAIMS, store_timer
from ..models import HQ_ROOM, ShowState
from ..webhooks import WebhookSender
from .limits import RateLimiter
from .util import Auth, bearer_token, read_json

log = logging.getLogger(__name__)


def _int(body: dict, field: str, low: int, high: int, default: int | None = None) -> int:
    value = body.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(field, f"must be an integer from {low} to {high}")
    return value


def _time(body: dict, field: str) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _invalid(field, "must be a Unix time in seconds")
    return float(value)


def parse_coupon(show_id: str, body: dict, rooms: set[str]) -> Coupon:
    coupon_id = slug_field(body, "id", required=False)
    title = text_field(body, "title")
    quantity = _int(body, "quantity", 1, 10_000_000)
    limit = _int(body, "per_viewer_limit", 1, quantity, default=1)
    duration = body.get("duration_s")
    starts_at, ends_at = _time(body, "starts_at"), _time(body, "ends_at")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 < duration <= 86400:
            raise _invalid("duration_s", "must be a number of seconds from 0 to 86400")
        if ends_at is not None:
            raise _invalid("duration_s", "cannot be given with 'ends_at'")
        if starts_at is not None:
            ends_at = starts_at + duration
    elif ends_at is None:
        raise _invalid("duration_s", "or 'ends_at' is required: a flash coupon has a time window")
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise _invalid("ends_at", "must be after 'starts_at'")
    caps = body.get("room_caps", {})
    if not isinstance(caps, dict):
        raise _invalid("room_caps", "must be an object of distributor -> count")
    for room, cap in caps.items():
        if room not in rooms:
            raise _invalid("room_caps", f"names {room!r}, which is not a room of this show")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise _invalid("room_caps", "counts must be non-negative integers")
    if sum(caps.values()) > quantity:
        raise _invalid("room_caps", f"add up to {sum(caps.values())}, more than the quantity {quantity}")
    return Coupon(show_id, coupon_id, title, quantity, limit,
                  float(duration) if duration is not None else None, starts_at, ends_at, dict(caps), "draft")




@dataclass(eq=False)
class CouponApi:
    """Flash coupons: create, launch, stop, read, and claim."""

    catalog: ShowCatalog
    commerce: CommerceStore
    events: EventHub
    ticker: RemainingTicker
    webhooks: WebhookSender
    auth: Auth
    limiter: RateLimiter

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/shows/{show}/coupons", self.create),
            web.get("/api/shows/{show}/coupons", self.list_all),
            web.get("/api/shows/{show}/coupons/{coupon}", self.get),
            web.post("/api/shows/{show}/coupons/{coupon}/launch", self.launch),
            web.post("/api/shows/{show}/coupons/{coupon}/stop", self.stop),
            web.post("/api/shows/{show}/coupons/{coupon}/claim", self.claim),
        ]

    async def _rooms(self, show_id: str) -> set[str]:
        return {HQ_ROOM} | {m.distributor for m in await self.catalog.mirrors(show_id)}

    async def create(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        coupon = parse_coupon(show.id, await read_json(request), await self._rooms(show.id))
        created = await self.commerce.create_coupon(coupon)
        return web.json_response(created.view(), status=201)

    async def list_all(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        found = await self.commerce.list_coupons(show.id)
        return web.json_response({"coupons": [c.view() for c in found]})

    async def get(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        coupon = await self.commerce.load_coupon(show.id, request.match_info["coupon"])
        return web.json_response(coupon.view())

    async def _change(self, request: web.Request, change, event_type: str) -> web.Response:
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        if event_type == "coupon.launched" and show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", f"show {show.id!r} has ended; its coupons cannot be launched")
        coupon = await change(self.commerce)(show.id, request.match_info["coupon"])
        await self.events.publish(show.id, event_type, {"coupon": coupon.view()})
        return web.json_response(coupon.view())

    async def launch(self, request: web.Request) -> web.Response:
        return await self._change(request, lambda store: store.launch_coupon, "coupon.launched")

    async def stop(self, request: web.Request) -> web.Response:
        return await self._change(request, lambda store: store.stop_coupon, "coupon.ended")

    async def claim(self, request: web.Request) -> web.Response:
        self.limiter.check(request)
        show = await self.catalog.show(request.match_info["show"])
        viewer = await self.auth.viewer(show, bearer_token(request))
        key = request.headers.get("Idempotency-Key", "")
        if not key or len(key) > 200:
            raise ApiError(400, "missing_idempotency_key", "send an Idempotency-Key header (at most 200 characters)")
        req = ClaimRequest(show.id, request.match_info["coupon"], viewer.viewer_id, viewer.room, viewer.sharer, key)
        if show.state is ShowState.ENDED:
            # Normally stopped when the show ended; stopping again is harmless and covers an end
            # whose coupon update did not reach the store. Retried keys still get their answer.
            await self.commerce.stop_coupon(show.id, req.coupon_id)
        with store_timer("claim"):
            answer = await self.commerce.claim(req)
        CLAIMS.labels(answer["result"]).inc()
        if answer["result"] == "claimed":
            self.ticker.changed(show.id, req.coupon_id)
            self.webhooks.emit("coupon.claimed", {
                "show": show.id, "coupon": req.coupon_id, "viewer_id": req.viewer_id, "room": req.room,
                "sharer": req.sharer, "remaining": answer["remaining"]})
        return web.json_response(answer)
