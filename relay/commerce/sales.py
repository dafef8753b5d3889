"""The sales desk: every order and refund goes through here, into the book, then out to webhooks
and, as an anonymous "someone just bought" event, to the room that sold it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from ..errors import ApiError
from .events import EventHub
from .order_book import OrderBook
from .orders import Order, Refund

log = logging.getLogger(__name__)

SALE_INTERVAL_S = 2.0  # a room hears of a sale at most this often (the latest one), never one per order


class SalesDesk:
    def __init__(self, book: OrderBook, events: EventHub, emit: Callable[[str, dict], None]) -> None:
        self.book = book
        self._events = events
        self._emit = emit
        self._last: dict[tuple[str, str], float] = {}  # (show, room) -> when its last sale event went out
        self._waiting: dict[tuple[str, str], dict] = {}  # (show, room) -> the product to announce next

    async def take_order(self, order: Order, titles: dict[str, str]) -> tuple[Order, bool]:
        """The order kept under its id and whether it is new (a retry finds the first)."""
        kept = await self.book.take_order(order)
        if kept is not order:
            return kept, False
        self._emit("order.created", {"show": order.show_id, "viewer_id": order.viewer_id, **order.intake_view()})
        top = max(order.lines, key=lambda line: line.amount_cents).product
        self._announce(order.show_id, order.room, {"id": top, "title": titles.get(top, top)})
        return order, True

    async def take_refund(self, show_id: str, order_id: str, refund_id: str,
                          amount_cents: int) -> tuple[Order, Refund, bool]:
        order, refund, new = await self.book.take_refund(show_id, order_id, refund_id, amount_cents, time.time())
        if new:
            self._emit("order.refunded", {"show": show_id, "order_id": order_id, "room": order.room,
                                          "sharer": order.sharer, "refund": refund.view(),
                                          "refunded": order.view()["refunded"], "state": order.state})
        return order, refund, new

    # -- "someone just bought" -------------------------------------------------------------
    def _announce(self, show_id: str, room: str, product: dict) -> None:
        key = (show_id, room)
        wait = self._last.get(key, 0.0) + SALE_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._publish(key, product)
        else:
            if key not in self._waiting:
                asyncio.get_running_loop().call_later(wait, self._publish_waiting, key)
            self._waiting[key] = product

    def _publish_waiting(self, key: tuple[str, str]) -> None:
        product = self._waiting.pop(key, None)
        if product is not None:
            self._publish(key, product)

    def _publish(self, key: tuple[str, str], product: dict) -> None:
        self._last[key] = time.monotonic()
        task = asyncio.ensure_future(self._events.publish(key[0], "sale", {"room": key[1], "product": product}))
        task.add_done_callback(_log_failure)

    def forget(self, show_id: str) -> None:
        for key in [k for k in self._last if k[0] == show_id]:
            self._last.pop(key, None)
            self._waiting.pop(key, None)


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and isinstance(task.exception(), ApiError):
        log.warning("a sale event was not published: %s", task.exception())
    elif not task.cancelled() and task.exception() is not None:
        log.error("a sale event was not published: %s", task.exception())
