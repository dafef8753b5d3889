"""HTTP API of orders: attribution for viewers, intake and refunds for the shop, the books for the brand."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
import time

from aiohttp import web

from ..catalog import ShowCatalog
from ..commerce.order_book import OrderBook
from ..commerce.orders import Attribution, Order, Rates, fingerprint, price_order, settlement, settlement_csv
from ..commerce.products import ProductShelf
from ..commerce.sales import SalesDesk
from ..commerce.tokens import ViewerTokens
from ..config import Settings
from ..errors import ApiError, invalid_field
from ..models import HQ_ROOM
from ..metrics import ORDERS_TAKEN, store_timer
from .limits import RateLimiter
from .openapi import ADMIN, JSON_BODY, NO_SHOW, RATE, SHOP, STORE, VIEWER, Param, Reply, admin_operation, operation
from .schemas.common import parse
from .schemas.orders import (AttributionToken, NewOrder, NewRefund, OrderAnswer, OrderView, RefundAnswer,
                             Settlement)
from .util import Auth, bearer_token, read_json

ORDERS = "orders"
NO_ORDER = {404: "order_not_found"}
SHOP_ONLY = {401: "unauthorized: the shop key (or the admin key) is missing or wrong"}


@dataclass(eq=False)
class OrderApi:
    """Attribution, order intake, refunds and the settlement of a show."""

    catalog: ShowCatalog
    shelf: ProductShelf
    desk: SalesDesk
    book: OrderBook
    tokens: ViewerTokens
    settings: Settings
    auth: Auth
    limiter: RateLimiter

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/shows/{show}/orders", self.take_order),
            web.post("/api/shows/{show}/attribution", self.attribution),
            web.post("/api/shows/{show}/orders/{order_id}/refunds", self.refund),
            web.get("/api/shows/{show}/orders/{order_id}", self.get_order),
            web.get("/api/shows/{show}/settlement", self.settlement),
        ]

    @operation("Attribution for a purchase", tag=ORDERS, auth=(VIEWER,),
               replies={201: Reply("a signed token binding show, room, sharer and viewer", AttributionToken)},
               errors=(NO_SHOW, RATE, STORE, {401: "unauthorized or token_expired: the viewer token"}))
    async def attribution(self, request: web.Request) -> web.Response:
        """What the watch and replay pages add to a product link as lc_attr when the viewer taps
        Buy; the shop sends it back with the order, which credits the viewer's room and sharer."""
        self.limiter.check(request)
        show = await self.catalog.show(request.match_info["show"])
        viewer = await self.auth.viewer(show, bearer_token(request))
        token, expires_at = self.tokens.issue_attribution(viewer, self.settings.commerce.attribution_ttl_s)
        return web.json_response({"attribution": token, "expires_at": expires_at}, status=201)

    @operation("Take an order", tag=ORDERS, auth=(SHOP, ADMIN), body=NewOrder,
               replies={201: Reply("the order, credited", OrderAnswer),
                        200: Reply("the order was taken before with this body: the same answer", OrderAnswer)},
               errors=(SHOP_ONLY, JSON_BODY, NO_SHOW, STORE,
                       {409: "order_id_reused: this order_id was taken with another body",
                        422: "invalid_field, unknown_product, or invalid_attribution (forged, expired, another "
                             "show's): nothing is recorded"}))
    async def take_order(self, request: web.Request) -> web.Response:
        """A paid order from the brand's shop. Commission per line: amount x (the product's rate, else
        the room's distributor rate; none in HQ) and amount x the show's sharer rate when a sharer
        brought the buyer, each rounded half-up to the cent."""
        self.auth.require_shop(request)
        show = await self.catalog.show(request.match_info["show"])
        new = parse(NewOrder, await read_json(request))
        if new.currency != show.currency:
            raise invalid_field("currency", f"must be the show's currency, {show.currency}")
        digest = fingerprint(new.normalised())
        who = Attribution()
        if new.attribution is not None:
            try:
                identity = self.tokens.verify_attribution(new.attribution, show.id, show.created_at)
            except ApiError:  # a retry of an order taken while its attribution was valid still gets its answer
                kept = await self._taken(show.id, new.order_id)
                if kept is not None and kept.fingerprint == digest:
                    return web.json_response(kept.intake_view())
                raise
            who = Attribution(identity.room, identity.sharer, identity.viewer_id)
        room_rate = Decimal(0)
        if who.room != HQ_ROOM:
            mirror = next((m for m in await self.catalog.mirrors(show.id) if m.distributor == who.room), None)
            room_rate = Decimal(mirror.commission_rate) if mirror is not None else Decimal(0)
        products = await self.shelf.recent(show.id)
        rates = Rates(Decimal(show.sharer_commission_rate), room_rate,
                      {p.id: Decimal(p.commission_rate) if p.commission_rate else None for p in products})
        items = [(i.product, i.quantity, i.unit_price) for i in new.items]
        order = price_order(show.id, new.order_id, new.currency, items, who, rates, digest, time.time())
        with store_timer("order"):
            kept, created = await self.desk.take_order(order, {p.id: p.title for p in products})
        if not created and kept.fingerprint != order.fingerprint:
            raise ApiError(409, "order_id_reused", f"order {new.order_id!r} was taken with another body")
        ORDERS_TAKEN.labels("order", "new" if created else "retried").inc()
        return web.json_response(kept.intake_view(), status=201 if created else 200)

    async def _taken(self, show_id: str, order_id: str) -> Order | None:
        try:
            return await self.book.order(show_id, order_id)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    @operation("Refund an order", tag=ORDERS, auth=(SHOP, ADMIN), body=NewRefund,
               replies={201: Reply("the refund, its commission reversed in proportion", RefundAnswer),
                        200: Reply("this refund_id was taken before with this amount: the same refund", RefundAnswer)},
               errors=(SHOP_ONLY, JSON_BODY, NO_SHOW, NO_ORDER, STORE,
                       {409: "refund_id_reused: this refund_id was taken with another amount",
                        422: "invalid_field, or refund_exceeds_payment: more than was paid, in total"}))
    async def refund(self, request: web.Request) -> web.Response:
        self.auth.require_shop(request)
        show = await self.catalog.show(request.match_info["show"])
        new = parse(NewRefund, await read_json(request))
        with store_timer("refund"):
            order, refund, created = await self.desk.take_refund(show.id, request.match_info["order_id"],
                                                                 new.refund_id, new.amount)
        ORDERS_TAKEN.labels("refund", "new" if created else "retried").inc()
        return web.json_response({**refund.view(), "order": order.view()}, status=201 if created else 200)

    @admin_operation("Read an order", ORDERS, {200: Reply("the order with its refunds", OrderView)}, NO_SHOW,
                     NO_ORDER, STORE)
    async def get_order(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        order = await self.book.order(show.id, request.match_info["order_id"])
        return web.json_response(order.view())

    @admin_operation("The settlement", ORDERS,
                     {200: Reply("per room, per sharer and in total; ?format=csv: one row per (room, sharer)",
                                 Settlement)}, NO_SHOW, STORE,
                     {400: "bad_format: format is json or csv"},
                     params=(Param("format", "query", "json (default) or csv"),))
    async def settlement(self, request: web.Request) -> web.Response:
        """Who sold what and what each distributor and sharer earned, net of refunds; live and after."""
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        kind = request.query.get("format", "json")
        if kind not in ("json", "csv"):
            raise ApiError(400, "bad_format", "format must be json or csv")
        rows = await self.book.ledger(show.id)
        if kind == "csv":
            return web.Response(text=settlement_csv(rows), content_type="text/csv", headers={
                "Content-Disposition": f'attachment; filename="settlement-{show.id}.csv"'})
        rooms = [m.distributor for m in await self.catalog.mirrors(show.id)]
        return web.json_response(settlement(show.currency, rows, rooms))
