"""HTTP API of flash coupons: create, launch, stop, read, and claim."""

from __future__ import annotations

import logging

from aiohttp import web

from ..commerce.coupon_updates import RemainingTicker
from ..commerce.coupons import ClaimRequest, Coupon
from ..commerce.events import EventHub
from ..commerce.store import CommerceStore
from ..errors import ApiError, invalid_field as _invalid
from ..fields import slug_field, text_field
from ..metrics import CLAIMS, store_timer
from ..models import HQ_ROOM, ShowState
from .appkeys import COMMERCE, LIMITS, SHELF, SHOWS, TICKER, WEBHOOKS
from .util import bearer_token, read_json, require_admin, verify_viewer

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

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


def _rooms(request: web.Request, show_id: str) -> set[str]:
    return {HQ_ROOM} | {m.distributor for m in request.app[SHOWS].store.list_mirrors(show_id)}


@routes.post("/api/shows/{show}/coupons")
async def create(request: web.Request) -> web.Response:
    require_admin(request)
    show = request.app[SHOWS].get_show(request.match_info["show"])
    coupon = parse_coupon(show.id, await read_json(request), _rooms(request, show.id))
    created = await request.app[COMMERCE].create_coupon(coupon)
    return web.json_response(created.view(), status=201)


@routes.get("/api/shows/{show}/coupons")
async def list_all(request: web.Request) -> web.Response:
    require_admin(request)
    show = request.app[SHOWS].get_show(request.match_info["show"])
    found = await request.app[COMMERCE].list_coupons(show.id)
    return web.json_response({"coupons": [c.view() for c in found]})


@routes.get("/api/shows/{show}/coupons/{coupon}")
async def get(request: web.Request) -> web.Response:
    require_admin(request)
    show = request.app[SHOWS].get_show(request.match_info["show"])
    coupon = await request.app[COMMERCE].load_coupon(show.id, request.match_info["coupon"])
    return web.json_response(coupon.view())


async def _change(request: web.Request, change, event_type: str) -> web.Response:
    require_admin(request)
    show = request.app[SHOWS].get_show(request.match_info["show"])
    if event_type == "coupon.launched" and show.state is ShowState.ENDED:
        raise ApiError(409, "show_ended", f"show {show.id!r} has ended; its coupons cannot be launched")
    coupon = await change(request.app[COMMERCE])(show.id, request.match_info["coupon"])
    await request.app[SHELF].events.publish(show.id, event_type, {"coupon": coupon.view()})
    return web.json_response(coupon.view())


@routes.post("/api/shows/{show}/coupons/{coupon}/launch")
async def launch(request: web.Request) -> web.Response:
    return await _change(request, lambda store: store.launch_coupon, "coupon.launched")


@routes.post("/api/shows/{show}/coupons/{coupon}/stop")
async def stop(request: web.Request) -> web.Response:
    return await _change(request, lambda store: store.stop_coupon, "coupon.ended")


@routes.post("/api/shows/{show}/coupons/{coupon}/claim")
async def claim(request: web.Request) -> web.Response:
    request.app[LIMITS]["claims"].check(request)
    show = request.app[SHOWS].get_show(request.match_info["show"])
    viewer = verify_viewer(request, show, bearer_token(request))
    key = request.headers.get("Idempotency-Key", "")
    if not key or len(key) > 200:
        raise ApiError(400, "missing_idempotency_key", "send an Idempotency-Key header (at most 200 characters)")
    req = ClaimRequest(show.id, request.match_info["coupon"], viewer.viewer_id, viewer.room, viewer.sharer, key)
    if show.state is ShowState.ENDED:
        # Normally stopped when the show ended; stopping again is harmless and covers an end
        # whose coupon update did not reach the store. Retried keys still get their answer.
        await request.app[COMMERCE].stop_coupon(show.id, req.coupon_id)
    with store_timer("claim"):
        answer = await request.app[COMMERCE].claim(req)
    CLAIMS.labels(answer["result"]).inc()
    if answer["result"] == "claimed":
        request.app[TICKER].changed(show.id, req.coupon_id)
        request.app[WEBHOOKS].emit("coupon.claimed", {
            "show": show.id, "coupon": req.coupon_id, "viewer_id": req.viewer_id, "room": req.room,
            "sharer": req.sharer, "remaining": answer["remaining"]})
    return web.json_response(answer)


def setup(app: web.Application, store: CommerceStore, events: EventHub) -> None:
    app[TICKER] = RemainingTicker(store, events)
    app.add_routes(routes)

