"""Orders, refunds and the books: who sold what, and what each distributor and sharer earned.

Amounts are integer cents; commission is computed per line when the order comes in (with the
rates of that moment) and reversed in proportion when money goes back, so that a full refund
reverses exactly what was earned.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from decimal import Decimal
import hashlib
import io
import json

from ..errors import ApiError
from ..models import HQ_ROOM
from .money import commission_cents, format_cents, share_cents


@dataclass(frozen=True)
class OrderLine:
    product: str
    quantity: int
    unit_price_cents: int
    rate: str  # the distributor's rate for this line ("0" in HQ)
    amount_cents: int
    distributor_cents: int
    sharer_cents: int


@dataclass(frozen=True)
class Refund:
    refund_id: str
    amount_cents: int
    distributor_cents: int  # commission reversed by this refund
    sharer_cents: int
    created_at: float

    def view(self) -> dict:
        return {"refund_id": self.refund_id, "amount": format_cents(self.amount_cents),
                "commission_reversed": {"distributor": format_cents(self.distributor_cents),
                                        "sharer": format_cents(self.sharer_cents)},
                "created_at": self.created_at}


@dataclass
class Order:
    """One paid order of the brand's shop, credited to the room (and sharer) that brought the buyer."""

    show_id: str
    order_id: str
    room: str
    sharer: str | None
    viewer_id: str | None  # the buyer, when the order came with an attribution
    currency: str
    lines: list[OrderLine]
    fingerprint: str  # of the request: the same order_id with another body is refused
    created_at: float
    refunds: list[Refund] = field(default_factory=list)

    @property
    def amount_cents(self) -> int:
        return sum(line.amount_cents for line in self.lines)

    @property
    def distributor_cents(self) -> int:
        return sum(line.distributor_cents for line in self.lines)

    @property
    def sharer_cents(self) -> int:
        return sum(line.sharer_cents for line in self.lines)

    @property
    def refunded_cents(self) -> int:
        return sum(r.amount_cents for r in self.refunds)

    @property
    def state(self) -> str:
        if not self.refunds:
            return "paid"
        return "refunded" if self.refunded_cents >= self.amount_cents else "partially_refunded"

    def intake_view(self) -> dict:
        """The answer to the order's intake (the same for a retried intake)."""
        return {"order_id": self.order_id, "room": self.room, "sharer": self.sharer,
                "amount": format_cents(self.amount_cents),
                "commission": {"distributor": format_cents(self.distributor_cents),
                               "sharer": format_cents(self.sharer_cents)},
                "currency": self.currency, "state": "paid"}

    def view(self) -> dict:
        """The order now: its lines, refunds and what is left of its commission."""
        reversed_d = sum(r.distributor_cents for r in self.refunds)
        reversed_s = sum(r.sharer_cents for r in self.refunds)
        return {**self.intake_view(), "state": self.state, "viewer_id": self.viewer_id,
                "created_at": self.created_at,
                "items": [{"product": line.product, "quantity": line.quantity,
                           "unit_price": format_cents(line.unit_price_cents), "amount": format_cents(line.amount_cents),
                           "commission_rate": line.rate,
                           "commission": {"distributor": format_cents(line.distributor_cents),
                                          "sharer": format_cents(line.sharer_cents)}} for line in self.lines],
                "refunded": format_cents(self.refunded_cents),
                "commission_net": {"distributor": format_cents(self.distributor_cents - reversed_d),
                                   "sharer": format_cents(self.sharer_cents - reversed_s)},
                "refunds": [r.view() for r in self.refunds]}

    # -- kept as one JSON record by both stores ---------------------------------------------
    def record(self) -> str:
        return json.dumps({"room": self.room, "sharer": self.sharer, "viewer_id": self.viewer_id,
                           "currency": self.currency, "fingerprint": self.fingerprint,
                           "created_at": self.created_at,
                           "lines": [[ln.product, ln.quantity, ln.unit_price_cents, ln.rate, ln.amount_cents,
                                      ln.distributor_cents, ln.sharer_cents] for ln in self.lines],
                           "refunds": [[r.refund_id, r.amount_cents, r.distributor_cents, r.sharer_cents,
                                        r.created_at] for r in self.refunds]})

    @classmethod
    def from_record(cls, show_id: str, order_id: str, raw: str) -> "Order":
        r = json.loads(raw)
        return cls(show_id, order_id, r["room"], r["sharer"], r["viewer_id"], r["currency"],
                   [OrderLine(*line) for line in r["lines"]], r["fingerprint"], r["created_at"],
                   [Refund(*refund) for refund in r["refunds"]])


@dataclass(frozen=True)
class Attribution:
    """Who brought the buyer, from a signed attribution token (None fields: HQ, nobody)."""

    room: str = HQ_ROOM
    sharer: str | None = None
    viewer_id: str | None = None


@dataclass(frozen=True)
class Rates:
    """The show's commission rules when an order comes in."""

    sharer: Decimal
    room: Decimal  # the room's distributor rate (0 for HQ)
    products: dict[str, Decimal | None]  # product -> its own rate (None: the room's); the shelf's ids


def fingerprint(body: dict) -> str:
    """The request as the shop sent it, normalised (amounts in cents), hashed."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def price_order(show_id: str, order_id: str, currency: str, items: list[tuple[str, int, int]], who: Attribution,
                rates: Rates, digest: str, now: float) -> Order:
    """The order with each line's amount and commission. `items`: (product, quantity, unit cents)."""
    lines = []
    for product, quantity, unit in items:
        if product not in rates.products:
            raise ApiError(422, "unknown_product", f"items: product {product!r} is not on this show's shelf")
        rate = Decimal(0)
        if who.room != HQ_ROOM:  # a distributor earns on what its room sold
            own = rates.products[product]
            rate = own if own is not None else rates.room
        amount = quantity * unit
        lines.append(OrderLine(product, quantity, unit, format(rate, "f"), amount, commission_cents(amount, rate),
                               commission_cents(amount, rates.sharer) if who.sharer else 0))
    return Order(show_id, order_id, who.room, who.sharer, who.viewer_id, currency, lines, digest, now)


def refund(order: Order, refund_id: str, amount_cents: int, now: float) -> Refund:
    """A refund of the order, its commissions reversed in proportion to the money given back so
    far (rounded half-up on the running total: a full refund reverses exactly what was earned)."""
    if amount_cents <= 0:
        raise ApiError(422, "invalid_field", "'amount' must be a positive amount")
    if order.refunded_cents + amount_cents > order.amount_cents:
        raise ApiError(422, "refund_exceeds_payment",
                       f"'amount' would refund {format_cents(order.refunded_cents + amount_cents)} in all, more than "
                       f"the {format_cents(order.amount_cents)} paid")
    after = order.refunded_cents + amount_cents
    reversed_d = sum(r.distributor_cents for r in order.refunds)
    reversed_s = sum(r.sharer_cents for r in order.refunds)
    return Refund(refund_id, amount_cents,
                  share_cents(order.distributor_cents, after, order.amount_cents) - reversed_d,
                  share_cents(order.sharer_cents, after, order.amount_cents) - reversed_s, now)


# -- the books ---------------------------------------------------------------------------------
@dataclass
class LedgerRow:
    """What one (room, sharer) pair sold; commissions net of reversals."""

    room: str
    sharer: str  # "" for orders without a sharer
    orders: int = 0
    gmv_cents: int = 0
    refunds_cents: int = 0
    distributor_cents: int = 0
    sharer_cents: int = 0

    def add(self, other: "LedgerRow") -> None:
        self.orders += other.orders
        self.gmv_cents += other.gmv_cents
        self.refunds_cents += other.refunds_cents
        self.distributor_cents += other.distributor_cents
        self.sharer_cents += other.sharer_cents


def _money(row: LedgerRow) -> dict:
    return {"orders": row.orders, "gmv": format_cents(row.gmv_cents), "refunds": format_cents(row.refunds_cents),
            "net": format_cents(row.gmv_cents - row.refunds_cents),
            "commission": format_cents(row.distributor_cents),
            "sharer_commission": format_cents(row.sharer_cents)}


def settlement(currency: str, rows: list[LedgerRow], rooms: list[str]) -> dict:
    """Per room, per sharer and in total; every room of the show appears, sold or not. The totals
    are the sum of the rooms."""
    by_room = {room: LedgerRow(room, "") for room in [HQ_ROOM, *rooms]}
    by_sharer: dict[str, LedgerRow] = {}
    sharer_rooms: dict[str, list[str]] = {}
    total = LedgerRow("", "")
    for row in rows:
        by_room.setdefault(row.room, LedgerRow(row.room, "")).add(row)
        total.add(row)
        if row.sharer:
            by_sharer.setdefault(row.sharer, LedgerRow("", row.sharer)).add(row)
            sharer_rooms.setdefault(row.sharer, []).append(row.room)
    sharers = {}
    for sharer, row in sorted(by_sharer.items()):
        view = _money(row)
        sharers[sharer] = {"room": sorted(sharer_rooms[sharer])[0], "orders": row.orders, "gmv": view["gmv"],
                           "refunds": view["refunds"], "commission": view["sharer_commission"]}
        if len(sharer_rooms[sharer]) > 1:
            sharers[sharer]["rooms"] = sorted(sharer_rooms[sharer])
    return {"currency": currency, "rooms": {room: _money(row) for room, row in by_room.items()},
            "sharers": sharers, "totals": _money(total)}


CSV_COLUMNS = ["room", "sharer", "orders", "gmv", "refunds", "net", "commission", "sharer_commission"]


def settlement_csv(rows: list[LedgerRow]) -> str:
    """One row per (room, sharer) that sold, with a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in sorted(rows, key=lambda r: (r.room != HQ_ROOM, r.room, r.sharer)):
        money = _money(row)
        writer.writerow([row.room, row.sharer, *(money[c] for c in CSV_COLUMNS[2:])])
    return out.getvalue()
