"""Where orders and refunds are kept: one narrow interface, an embedded and a Redis implementation.

Intake and refunds are decided inside the store, atomic and durable before they are answered:
an order id is taken once (a retry finds the first order), a refund id once per order, and the
money refunded never exceeds the money paid.
"""

from __future__ import annotations

from typing import Protocol

from .orders import LedgerRow, Order, Refund


class OrderBook(Protocol):
    async def close(self) -> None: ...

    async def take_order(self, order: Order) -> Order:
        """Keeps the order unless its id is taken; the order kept under the id (the earlier one
        when it was: the caller compares fingerprints)."""
        ...

    async def take_refund(self, show_id: str, order_id: str, refund_id: str, amount_cents: int,
                          now: float) -> tuple[Order, Refund, bool]:
        """Refunds part of the order (404 order_not_found; 422 refund_exceeds_payment; 409
        refund_id_reused for the same id with another amount); (order after, refund, new)."""
        ...

    async def order(self, show_id: str, order_id: str) -> Order:
        """The order with its refunds, or 404 order_not_found."""
        ...

    async def ledger(self, show_id: str) -> list[LedgerRow]:
        """What each (room, sharer) sold, commissions net of reversals."""
        ...

    async def buyers(self, show_id: str) -> dict[str, int]:
        """Distinct buyers (attributed viewers) per room."""
        ...

    async def purge_show(self, show_id: str) -> None: ...

    async def retire_room(self, show_id: str, room: str, retired: str) -> None:
        """A deleted room's sales move to `retired`: the books hold, a new room starts at zero."""
        ...
