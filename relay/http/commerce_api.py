"""HTTP API of live commerce: viewers, the shelf, the card, and the SSE event stream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import secrets
import time
from typing import Any, Callable

from aiohttp import web

from ..catalog import ShowCatalog
from ..commerce.events import EventHub, render_text
from ..commerce.products import ProductShelf, product_view
from ..commerce.store import MAX_SEQ, CommerceStore, Event
from ..commerce.tokens import ViewerIdentity, ViewerTokens, shopper_viewer_id, verify_shopper_token
from ..config import Settings
from ..commerce.money import first_over_one
from ..errors import ApiError, invalid_field
from ..models import HQ_ROOM, Show, ShowState
from .limits import RateLimiter
from .openapi import (ADMIN, JSON_BODY, NO_SHOW, RATE, STORE, VIEWER, VIEWER_QUERY, Param, Reply, admin_operation,
                      operation)
from .schemas.commerce import NewProduct, NewViewer, Pinned, ProductChange, ProductList, ProductView, ViewerToken
from .schemas.common import parse
from .util import Auth, bearer_token, cors_origin, read_json

KEEPALIVE_S = 15.0
SHELF = "shelf"
NO_ROOM = {404: "mirror_not_found: no such room"}
NO_PRODUCT = {404: "product_not_found"}
# A viewer of a token-playback show: its token, in the header or (EventSource) as ?token=.
ROOM_VIEWER = {401: "unauthorized or token_expired: a token-playback show needs a valid viewer token of a room "
                    "that exists", 403: "wrong_room: the token is for another room"}
ROOM_PARAM = Param("room", "query", "the room whose view to read; 'hq' by default")


def shelf_admin(summary: str, replies: dict[int, Reply], *errors: dict[int, str], **more: Any) -> Callable:
    """A change to the shelf or the card (the admin key)."""
    return admin_operation(summary, SHELF, replies, NO_SHOW, STORE, *errors, **more)


def _check_product_rate(show: Show, rate: str | None) -> None:
    if rate is not None and first_over_one(rate, [show.sharer_commission_rate]) is not None:
        raise invalid_field("commission_rate", f"plus the show's sharer_commission_rate "
                                               f"({show.sharer_commission_rate}) must be at most 1")


def _sse(event: Event, text: str) -> bytes:
    return f"id: {event.seq}\nevent: {event.type}\ndata: {text}\n\n".encode()


@dataclass(eq=False)
class CommerceApi:
    """Viewers (identity and credit), the shelf and card, and the event stream of a room."""

    catalog: ShowCatalog
    shelf: ProductShelf
    commerce: CommerceStore
    events: EventHub
    tokens: ViewerTokens
    settings: Settings
    auth: Auth
    limiter: RateLimiter

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/shows/{show}/viewers", self.register_viewer),
            web.get("/api/shows/{show}/products", self.list_products),
            web.post("/api/shows/{show}/products", self.add_product),
            web.patch("/api/shows/{show}/products/{product}", self.update_product),
            web.delete("/api/shows/{show}/products/{product}", self.delete_product),
            web.post("/api/shows/{show}/products/{product}/pin", self.pin),
            web.post("/api/shows/{show}/unpin", self.unpin),
            web.get("/events/{show}", self.event_stream),
            web.get("/events/{show}/{room}", self.event_stream),
        ]

    async def _show(self, request: web.Request) -> Show:
        return await self.catalog.show(request.match_info["show"])

    @operation("Register a viewer", tag="viewers", body=NewViewer, auth=(VIEWER, ADMIN), public_too=True,
               replies={201: Reply("a new viewer and its token", ViewerToken),
                        200: Reply("the viewer of the token sent (its latest sharer recorded), a fresh token",
                                   ViewerToken)},
               errors=(JSON_BODY, NO_SHOW, NO_ROOM, RATE, STORE,
                       {401: "unauthorized or token_expired: a wrong viewer or shopper token; on a token-playback "
                             "show only the admin registers new viewers",
                        403: "shopper_required: a shopper show needs shopper_id (admin) or shopper_token",
                        429: "too_many_registrations: this address's viewers for this show"}))
    async def register_viewer(self, request: web.Request) -> web.Response:
        """A viewer's identity: the room it entered through is kept for good; a new ?ref only
        records the latest sharer. On a show with identity "shopper", viewers are the brand's
        users: its backend registers them by `shopper_id` (admin key), or the page brings a
        `shopper_token` the brand signed; coupon limits then count per shopper."""
        tokens = self.tokens
        existing = bearer_token(request)
        admin = self.auth.is_admin(request)
        if not admin:  # the brand's backend issues tokens for many viewers from one address
            self.limiter.check(request)
        show = await self._show(request)
        if admin:
            existing = None  # the operator (or the brand's backend) registers a new viewer
        elif show.playback == "token" and existing is None:
            self.auth.require_admin(request)  # token playback: only the brand's backend issues viewer tokens
        body = parse(NewViewer, await read_json(request))
        room, ref = body.room, body.ref
        await self.catalog.check_room(show.id, room)
        store = self.commerce
        if existing:
            identity = await self.auth.viewer(show, existing)
            if ref and ref != identity.viewer_id:  # opening one's own share link makes no sharer
                identity = ViewerIdentity(show.id, identity.room, identity.viewer_id, ref, name=identity.name)
                await store.record_sharer(show.id, identity.viewer_id, ref)
            if body.name is not None:  # a new display name for its comments
                identity = ViewerIdentity(show.id, identity.room, identity.viewer_id, identity.sharer,
                                          name=body.name)
            return web.json_response({"viewer_id": identity.viewer_id, "room": identity.room,
                                      "token": tokens.issue(identity)}, status=200)
        viewer_id = await self._new_viewer_id(request, show, body, admin)
        if ref == viewer_id:  # a shopper registered through its own link
            ref = None
        room = await store.register_viewer(show.id, viewer_id, room, ref, time.time())
        identity = ViewerIdentity(show.id, room, viewer_id, ref, name=body.name)
        return web.json_response({"viewer_id": viewer_id, "room": room, "token": tokens.issue(identity)},
                                 status=201)

    async def _new_viewer_id(self, request: web.Request, show, body: NewViewer, admin: bool) -> str:
        """A shopper's own id (from the brand), else a fresh anonymous one (capped per address)."""
        if admin and body.shopper_id is not None:
            return shopper_viewer_id(body.shopper_id)
        if body.shopper_token is not None:
            secret = self.settings.auth.shopper_secret
            return shopper_viewer_id(verify_shopper_token(body.shopper_token, secret, show.id))
        if show.identity == "shopper":
            raise ApiError(403, "shopper_required",
                           "this show counts coupons per shopper: sign in on the brand's site (it registers you "
                           "with your shopper id or gives this page a shopper token)")
        cap = self.settings.limits.registrations_per_address_per_show
        if not admin and cap:
            held = await self.commerce.count_registration(show.id, self.auth.client(request))
            if held > cap:
                raise ApiError(429, "too_many_registrations",
                               f"this address has registered {cap} viewers for this show already; "
                               "keep using the viewer token you have")
        return "v" + secrets.token_hex(8)

    @operation("Read the shelf", tag=SHELF, auth=(VIEWER, VIEWER_QUERY, ADMIN), public_too=True,
               params=(ROOM_PARAM,),
               replies={200: Reply("one room's shelf; the admin key: every room's prices and hidden products",
                                   ProductList)},
               errors=(NO_SHOW, NO_ROOM, ROOM_VIEWER, STORE))
    async def list_products(self, request: web.Request) -> web.Response:
        """The admin sees every room's prices and hidden products; anyone else sees one room's shelf
        (?room=, HQ by default) as that room shows it, with a viewer token on token-only shows."""
        show = await self._show(request)
        shelf = self.shelf
        products, pinned = await shelf.list(show.id), await shelf.pinned(show.id)
        if self.auth.is_admin(request):
            return web.json_response({"products": [product_view(p) for p in products], "pinned": pinned})
        room = request.query.get("room", HQ_ROOM)
        await self.catalog.check_room(show.id, room)
        if show.playback == "token":
            await self.auth.check_viewer_token(request, show, room)
        views = [v for v in (product_view(p, room) for p in products) if v is not None]
        if pinned not in {v["id"] for v in views}:
            pinned = None
        return web.json_response({"products": views, "pinned": pinned})

    @shelf_admin("Add a product", {201: Reply("the product", ProductView)}, JSON_BODY,
                 {409: "product_exists"}, body=NewProduct)
    async def add_product(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self._show(request)
        new = parse(NewProduct, await read_json(request))
        _check_product_rate(show, new.commission_rate)
        product = await self.shelf.add(show.id, new.id, new.edit())
        return web.json_response(product_view(product), status=201)

    @shelf_admin("Change a product", {200: Reply("the product", ProductView)}, JSON_BODY, NO_PRODUCT,
                 body=ProductChange)
    async def update_product(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self._show(request)
        change = parse(ProductChange, await read_json(request))
        _check_product_rate(show, change.commission_rate)
        product = await self.shelf.update(show.id, request.match_info["product"], change.edit())
        return web.json_response(product_view(product))

    @shelf_admin("Remove a product", {204: Reply("gone (unpinned first if on the card)")}, NO_PRODUCT)
    async def delete_product(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self._show(request)
        await self.shelf.remove(show.id, request.match_info["product"])
        return web.Response(status=204)

    @shelf_admin("Pin a product to the card", {200: Reply("the product on the card", Pinned)}, NO_PRODUCT,
                 {409: "show_ended"})
    async def pin(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self._show(request)
        if show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", "the show has ended")
        await self.shelf.pin(show.id, request.match_info["product"])
        return web.json_response({"pinned": request.match_info["product"]})

    @shelf_admin("Clear the card", {200: Reply("no product on the card", Pinned)})
    async def unpin(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self._show(request)
        await self.shelf.unpin(show.id)
        return web.json_response({"pinned": None})

    async def _reader(self, request: web.Request, show: Show, room: str) -> tuple[str | None, bool]:
        """Who reads a room's events: (the viewer's id, whether it is the operator). The admin key
        is the operator (every room's comments); a viewer token (Bearer or ?token=) of the room
        lets its author see its own held comments; a public show needs neither."""
        if self.auth.is_admin(request):
            return None, True
        if show.playback == "token":
            await self.auth.check_viewer_token(request, show, room)
        return await self.auth.reader(request, show, room), False

    @operation("A room's events", tag="events", auth=(VIEWER, VIEWER_QUERY, ADMIN), public_too=True,
               params=(Param("Last-Event-ID", "header", "resume after this event"),
                       Param("last_event_id", "query", "the same, for a first connection")),
               replies={200: Reply("server-sent events: product.pinned, shelf.updated, coupon.*, show state, "
                                   "comment, comment.deleted, comment.pinned, likes; the admin key: every "
                                   "room's comments and likes",
                                   media="text/event-stream")},
               errors=(NO_SHOW, NO_ROOM, ROOM_VIEWER, STORE,
                       {400: "bad_last_event_id: not an event sequence number"}))
    async def event_stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events of a room; Last-Event-ID resumes with no gap and no duplicate."""
        show = await self._show(request)
        room = request.match_info.get("room", HQ_ROOM)
        await self.catalog.check_room(show.id, room)
        viewer_id, operator = await self._reader(request, show, room)
        raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        try:
            last = int(raw) if raw is not None else None
            if last is not None and not 0 <= last <= MAX_SEQ:
                raise ValueError(raw)
        except ValueError as exc:
            raise ApiError(400, "bad_last_event_id", "Last-Event-ID must be an event sequence number") from exc
        hub = self.events
        sub = hub.subscribe(show.id)  # before reading the backlog, so nothing falls in between
        try:
            origin = cors_origin(request, self.settings.server.cors_origins)
            response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                **({"Access-Control-Allow-Origin": origin} if origin else {})})
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            if last is None:
                # A new reader gets the state now (card, coupons, show), not the whole history.
                current, last = await hub.store.current_state(show.id)
                for event in current:
                    body = render_text(event, room, viewer_id, operator)
                    if body is not None:
                        await response.write(_sse(event, body))
            while True:
                backlog = await hub.store.events_after(show.id, last)
                for event in backlog:
                    body = render_text(event, room, viewer_id, operator)
                    if body is not None:
                        await response.write(_sse(event, body))
                    last = event.seq
                if len(backlog) < 1000:
                    break
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):  # no task per wait, unlike wait_for
                        event = await sub.get()
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if event is None:  # fell behind: the client reconnects with Last-Event-ID
                    break
                chunks = []  # what came meanwhile goes in the same write: one wake, one send
                for event in (event, *sub.take_ready()):
                    if event.seq <= last:
                        continue
                    last = event.seq
                    body = render_text(event, room, viewer_id, operator)
                    if body is not None:
                        chunks.append(_sse(event, body))
                if chunks:
                    await response.write(b"".join(chunks))
            return response
        except ConnectionResetError:  # the reader left; nothing to report
            return response
        finally:
            hub.unsubscribe(show.id, sub)
