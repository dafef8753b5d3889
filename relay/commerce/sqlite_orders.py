"""The embedded order book: orders and refunds in the relay's SQLite file, one process."""

from __future__ import annotations

from pathlib import Path
import sqlite3

from ..errors import ApiError
from ..sqlite_thread import SqliteThread
from . import orders
from .orders import LedgerRow, Order, Refund

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    show_id TEXT NOT NULL, order_id TEXT NOT NULL, room TEXT NOT NULL, sharer TEXT NOT NULL,
    viewer_id TEXT, amount INTEGER NOT NULL, refunded INTEGER NOT NULL,
    distributor INTEGER NOT NULL, sharer_commission INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (show_id, order_id)
);
"""


class SqliteOrderBook:
    """OrderBook on the relay's SQLite file (its own connection, on its own thread). Commission
    columns are net of reversals; the record holds the whole order."""

    def __init__(self, path: Path) -> None:
        self._db = SqliteThread(path, _setup, "order book")

    async def close(self) -> None:
        self._db.close()

    async def take_order(self, order: Order) -> Order:
        return await self._db.call(_take_order, order)

    async def take_refund(self, show_id: str, order_id: str, refund_id: str, amount_cents: int,
                          now: float) -> tuple[Order, Refund, bool]:
        return await self._db.call(_take_refund, show_id, order_id, refund_id, amount_cents, now)

    async def order(self, show_id: str, order_id: str) -> Order:
        return await self._db.call(_load, show_id, order_id)

    async def ledger(self, show_id: str) -> list[LedgerRow]:
        rows = await self._db.call(_fetch_all, "SELECT room, sharer, COUNT(*), SUM(amount), SUM(refunded),"
                                   " SUM(distributor), SUM(sharer_commission) FROM orders WHERE show_id=?"
                                   " GROUP BY room, sharer ORDER BY room, sharer", (show_id,))
        return [LedgerRow(*row) for row in rows]

    async def buyers(self, show_id: str) -> dict[str, int]:
        rows = await self._db.call(_fetch_all, "SELECT room, COUNT(DISTINCT viewer_id) FROM orders"
                                   " WHERE show_id=? AND viewer_id IS NOT NULL GROUP BY room", (show_id,))
        return {room: n for room, n in rows}

    async def purge_show(self, show_id: str) -> None:
        await self._db.call(_execute, "DELETE FROM orders WHERE show_id=?", (show_id,))

    async def retire_room(self, show_id: str, room: str, retired: str) -> None:
        await self._db.call(_execute, "UPDATE orders SET room=? WHERE show_id=? AND room=?", (retired, show_id, room))


# -- on the store's thread ---------------------------------------------------------------
def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)


def _execute(db: sqlite3.Connection, sql: str, params: tuple) -> None:
    db.execute(sql, params)


def _fetch_all(db: sqlite3.Connection, sql: str, params: tuple) -> list[tuple]:
    return [tuple(row) for row in db.execute(sql, params)]


def _take_order(db: sqlite3.Connection, order: Order) -> Order:
    inserted = db.execute(
        "INSERT INTO orders VALUES (?,?,?,?,?,?,0,?,?,?) ON CONFLICT(show_id, order_id) DO NOTHING",
        (order.show_id, order.order_id, order.room, order.sharer or "", order.viewer_id, order.amount_cents,
         order.distributor_cents, order.sharer_cents, order.record())).rowcount
    return order if inserted else _load(db, order.show_id, order.order_id)


def _load(db: sqlite3.Connection, show_id: str, order_id: str) -> Order:
    row = db.execute("SELECT record FROM orders WHERE show_id=? AND order_id=?", (show_id, order_id)).fetchone()
    if row is None:
        raise ApiError(404, "order_not_found", f"show {show_id!r} has no order {order_id!r}")
    return Order.from_record(show_id, order_id, row[0])


def _take_refund(db: sqlite3.Connection, show_id: str, order_id: str, refund_id: str, amount_cents: int,
                 now: float) -> tuple[Order, Refund, bool]:
    order = _load(db, show_id, order_id)
    known = next((r for r in order.refunds if r.refund_id == refund_id), None)
    if known is not None:
        if known.amount_cents != amount_cents:
            raise ApiError(409, "refund_id_reused", f"refund {refund_id!r} of this order was for another amount")
        return order, known, False
    made = orders.refund(order, refund_id, amount_cents, now)
    order.refunds.append(made)
    db.execute("UPDATE orders SET refunded=refunded+?, distributor=distributor-?,"
               " sharer_commission=sharer_commission-?, record=? WHERE show_id=? AND order_id=?",
               (made.amount_cents, made.distributor_cents, made.sharer_cents, order.record(), show_id, order_id))
    return order, made, True
