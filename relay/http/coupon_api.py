"""HTTP API of flash coupons: create, launch, stop, read, and claim."""

from __future__ import annotations

from dataclasses import dataclass
import logging
from typing import Any, Callable

from aiohttp import web

from ..catalog import ShowCatalog
from ..commerce.coupon_updates import RemainingTicker
from ..commerce.coupons import ClaimRequest
from ..commerce.events import EventHub
from ..commerce.store import CommerceStore
from ..errors import ApiError, invalid_field
from ..metrics import CLAIMS, store_timer
from ..models import HQ_ROOM, ShowState
from ..webhooks import WebhookSender
from .limits import RateLimiter
from .openapi import JSON_BODY, NO_SHOW, RATE, STORE, VIEWER, Param, Reply, admin_operation, operation
from .schemas.commerce import ClaimAnswer, CouponList, CouponView, NewCoupon
from .schemas.common import parse
from .util import Auth, bearer_token, read_json

log = logging.getLogger(__name__)

NO_COUPON = {404: "coupon_not_found"}


def coupon_admin(summary: str, replies: dict[int, Reply], *errors: dict[int, str], **more: Any) -> Callable:
    """An operation on a show's coupons (the admin key)."""
    return admin_operation(summary, "coupons", replies, NO_SHOW, STORE, *errors, **more)


CHANGED = {200: Reply("the coupon", CouponView)}


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

    @coupon_admin("Create a coupon", {201: Reply("the draft coupon", CouponView)}, JSON_BODY,
                  {409: "coupon_exists"}, body=NewCoupon)
    async def create(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        new = parse(NewCoupon, await read_json(request))
        unknown = sorted(set(new.room_caps) - await self._rooms(show.id))
        if unknown:
            raise invalid_field("room_caps", f"names {unknown[0]!r}, which is not a room of this show")
        coupon = new.coupon(show.id)
        created = await self.commerce.create_coupon(coupon)
        return web.json_response(created.view(), status=201)

    @coupon_admin("List coupons", {200: Reply("every coupon of the show", CouponList)})
    async def list_all(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        found = await self.commerce.list_coupons(show.id)
        return web.json_response({"coupons": [c.view() for c in found]})

    @coupon_admin("Read a coupon", {200: Reply("claimed and remaining, per room", CouponView)}, NO_COUPON)
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

    @coupon_admin("Launch a coupon", CHANGED, NO_COUPON, {409: "show_ended or coupon_stopped"})
    async def launch(self, request: web.Request) -> web.Response:
        return await self._change(request, lambda store: store.launch_coupon, "coupon.launched")

    @coupon_admin("Stop a coupon", CHANGED, NO_COUPON)
    async def stop(self, request: web.Request) -> web.Response:
        return await self._change(request, lambda store: store.stop_coupon, "coupon.ended")

    @operation("Claim a coupon", tag="coupons", auth=(VIEWER,),
               params=(Param("Idempotency-Key", "header", "one per claim: a retry gets the first answer",
                             {"type": "string", "minLength": 1, "maxLength": 200}, required=True),),
               replies={200: Reply("the answer: claimed or why not", ClaimAnswer)},
               errors=(NO_SHOW, NO_COUPON, RATE, STORE,
                       {400: "missing_idempotency_key", 401: "unauthorized or token_expired: the viewer token",
                        409: "idempotency_key_reused: the key was used for another coupon"}))
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
