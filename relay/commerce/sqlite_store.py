"""The embedded commerce store: durable SQLite in the data dir, one process.

Every statement runs on the store's SQLite thread (the event loop never waits on the disk);
writes that queue up, claims above all, commit together in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Awaitable, Callable

from ..sqlite_thread import SqliteThread
from . import coupons
from .coupons import ClaimRequest, Coupon
from .store import Comment, Event, EventListener, Pin, Product

_SCHEMA = """
CREATE TABLE IF NOT EXISTS viewers (
    show_id TEXT NOT NULL, viewer_id TEXT NOT NULL, room TEXT NOT NULL,
    first_sharer TEXT, last_sharer TEXT, created_at REAL NOT NULL,
    PRIMARY KEY (show_id, viewer_id)
);
CREATE TABLE IF NOT EXISTS products (
    show_id TEXT NOT NULL, product_id TEXT NOT NULL, title TEXT NOT NULL, price_cents INTEGER NOT NULL,
    image_url TEXT NOT NULL, link TEXT NOT NULL, position INTEGER NOT NULL, overrides TEXT NOT NULL,
    commission_rate TEXT,
    PRIMARY KEY (show_id, product_id)
);
CREATE TABLE IF NOT EXISTS pins (
    show_id TEXT NOT NULL, id INTEGER PRIMARY KEY AUTOINCREMENT, product_id TEXT NOT NULL,
    start_wall REAL NOT NULL, start_s REAL NOT NULL, end_wall REAL, end_s REAL
);
CREATE TABLE IF NOT EXISTS registrations (
    show_id TEXT NOT NULL, address TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (show_id, address)
);
CREATE TABLE IF NOT EXISTS events (
    show_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, wall REAL NOT NULL,
    stream_time REAL, data TEXT NOT NULL,
    PRIMARY KEY (show_id, seq)
);
CREATE TABLE IF NOT EXISTS comments (
    id INTEGER PRIMARY KEY AUTOINCREMENT, show_id TEXT NOT NULL, room TEXT NOT NULL, viewer_id TEXT NOT NULL,
    name TEXT NOT NULL, text TEXT NOT NULL, status TEXT NOT NULL, wall REAL NOT NULL, stream_time REAL
);
CREATE INDEX IF NOT EXISTS comments_by_room ON comments (show_id, room, id);
CREATE TABLE IF NOT EXISTS comment_mutes (
    show_id TEXT NOT NULL, viewer_id TEXT NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (show_id, viewer_id)
);
CREATE TABLE IF NOT EXISTS likes (
    show_id TEXT NOT NULL, room TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (show_id, room)
);
CREATE TABLE IF NOT EXISTS moderation (one INTEGER PRIMARY KEY CHECK (one = 1), lists TEXT NOT NULL);
"""
COMMENT_TABLES = ("comments", "comment_mutes", "likes")


class SqliteCommerceStore:
    """CommerceStore on the relay's SQLite file (its own connection, on its own thread)."""

    def __init__(self, path: Path) -> None:
        self._db = SqliteThread(path, _setup, "commerce store")
        self._listener: EventListener | None = None
        self.available = True  # an embedded store is there while the process is

    async def start(self, listener: EventListener, resync: Callable[[], Awaitable[None]] | None = None) -> None:
        self._listener = listener

    async def close(self) -> None:
        self._db.close()

    async def purge_show(self, show_id: str) -> None:
        await self._db.call(_purge_show, show_id)

    async def expire_requests(self, before: float) -> int:
        return await self._db.call(coupons.expire_requests, before)

    async def retire_room(self, show_id: str, room: str, retired: str) -> None:
        await self._db.call(coupons.retire_room, show_id, room, retired)

    async def register_viewer(self, show_id: str, viewer_id: str, room: str, sharer: str | None, now: float) -> str:
        return await self._db.call(_register_viewer, show_id, viewer_id, room, sharer, now)

    async def count_registration(self, show_id: str, address: str) -> int:
        return await self._db.call(_fetch_value,
                                   "INSERT INTO registrations VALUES (?,?,1) ON CONFLICT(show_id, address)"
                                   " DO UPDATE SET n=n+1 RETURNING n", (show_id, address))

    async def record_sharer(self, show_id: str, viewer_id: str, sharer: str) -> None:
        await self._db.call(_execute, "UPDATE viewers SET last_sharer=? WHERE show_id=? AND viewer_id=?",
                            (sharer, show_id, viewer_id))

    async def viewer_rooms(self, show_id: str) -> dict[str, int]:
        rows = await self._db.call(_fetch_all, "SELECT room, COUNT(*) AS n FROM viewers WHERE show_id=?"
                                   " GROUP BY room", (show_id,))
        return {r["room"]: r["n"] for r in rows}

    async def save_product(self, product: Product) -> None:
        await self._db.call(_execute, "INSERT OR REPLACE INTO products (show_id, product_id, title, price_cents,"
                            " image_url, link, position, overrides, commission_rate) VALUES (?,?,?,?,?,?,?,?,?)",
                            (product.show_id, product.id, product.title, product.price_cents, product.image_url,
                             product.link, product.position, json.dumps(product.overrides), product.commission_rate))

    async def delete_product(self, show_id: str, product_id: str) -> None:
        await self._db.call(_execute, "DELETE FROM products WHERE show_id=? AND product_id=?", (show_id, product_id))

    async def products(self, show_id: str) -> list[Product]:
        rows = await self._db.call(_fetch_all, "SELECT * FROM products WHERE show_id=?"
                                   " ORDER BY position, product_id", (show_id,))
        return [Product(r["show_id"], r["product_id"], r["title"], r["price_cents"], r["image_url"], r["link"],
                        r["position"], json.loads(r["overrides"]), r["commission_rate"]) for r in rows]

    async def open_pin(self, show_id: str, pin: Pin) -> None:
        await self._db.call(_execute, "INSERT INTO pins (show_id, product_id, start_wall, start_s) VALUES (?,?,?,?)",
                            (show_id, pin.product_id, pin.start_wall, pin.start_s))

    async def close_pin(self, show_id: str, end_wall: float, end_s: float | None) -> Pin | None:
        return await self._db.call(_close_pin, show_id, end_wall, end_s)

    async def pins(self, show_id: str) -> list[Pin]:
        rows = await self._db.call(_fetch_all, "SELECT * FROM pins WHERE show_id=? ORDER BY id", (show_id,))
        return [Pin(r["product_id"], r["start_wall"], r["start_s"], r["end_wall"], r["end_s"]) for r in rows]

    async def append_event(self, show_id: str, type: str, wall: float, stream_time: float | None,
                           data: dict) -> Event:
        # The sequence number and the row in one job (one savepoint); jobs run in order, so
        # events reach the listener in sequence order.
        event = await self._db.call(_append_event, show_id, type, wall, stream_time, data)
        if self._listener is not None:
            await self._listener(event)
        return event

    async def events_after(self, show_id: str, seq: int, limit: int = 1000) -> list[Event]:
        rows = await self._db.call(_fetch_all, "SELECT * FROM events WHERE show_id=? AND seq>? ORDER BY seq LIMIT ?",
                                   (show_id, seq, limit))
        return [_event(r) for r in rows]

    async def current_state(self, show_id: str) -> tuple[list[Event], int]:
        rows, newest = await self._db.call(_current_state, show_id)
        return [_event(r) for r in rows], newest

    # -- coupons ---------------------------------------------------------------------------
    async def create_coupon(self, coupon: Coupon) -> Coupon:
        return await self._db.call(coupons.create_coupon, coupon)

    async def launch_coupon(self, show_id: str, coupon_id: str) -> Coupon:
        return await self._db.call(coupons.launch_coupon, show_id, coupon_id)

    async def stop_coupon(self, show_id: str, coupon_id: str) -> Coupon:
        return await self._db.call(coupons.stop_coupon, show_id, coupon_id)

    async def load_coupon(self, show_id: str, coupon_id: str) -> Coupon:
        return await self._db.call(coupons.load_coupon, show_id, coupon_id)

    async def list_coupons(self, show_id: str) -> list[Coupon]:
        return await self._db.call(coupons.list_coupons, show_id)

    async def claim(self, request: ClaimRequest) -> dict:
        return await self._db.call(coupons.claim, request)

    async def claim_figures(self, show_id: str) -> dict:
        return await self._db.call(coupons.claim_figures, show_id)

    # -- comments, mutes, likes, moderation lists ---------------------------------------------
    async def add_comment(self, comment: Comment) -> Comment:
        comment.id = await self._db.call(_fetch_value, "INSERT INTO comments (show_id, room, viewer_id, name, text,"
                                         " status, wall, stream_time) VALUES (?,?,?,?,?,?,?,?) RETURNING id",
                                         (comment.show_id, comment.room, comment.viewer_id, comment.name,
                                          comment.text, comment.status, comment.wall, comment.stream_time))
        return comment

    async def load_comment(self, show_id: str, comment_id: int) -> Comment | None:
        rows = await self._db.call(_fetch_all, "SELECT * FROM comments WHERE show_id=? AND id=?",
                                   (show_id, comment_id))
        return _comment(rows[0]) if rows else None

    async def set_comment_status(self, show_id: str, comment_id: int, status: str) -> None:
        await self._db.call(_execute, "UPDATE comments SET status=? WHERE show_id=? AND id=?",
                            (status, show_id, comment_id))

    async def comments(self, show_id: str, room: str | None, after: int, limit: int) -> list[Comment]:
        if room is None:
            rows = await self._db.call(_fetch_all, "SELECT * FROM comments WHERE show_id=? AND id>?"
                                       " ORDER BY id LIMIT ?", (show_id, after, limit))
        else:
            rows = await self._db.call(_fetch_all, "SELECT * FROM comments WHERE show_id=? AND room=? AND id>?"
                                       " ORDER BY id LIMIT ?", (show_id, room, after, limit))
        return [_comment(r) for r in rows]

    async def mute_viewer(self, show_id: str, viewer_id: str, until: float) -> None:
        await self._db.call(_execute, "INSERT OR REPLACE INTO comment_mutes VALUES (?,?,?)",
                            (show_id, viewer_id, until))

    async def muted_until(self, show_id: str, viewer_id: str) -> float:
        rows = await self._db.call(_fetch_all, "SELECT until FROM comment_mutes WHERE show_id=? AND viewer_id=?",
                                   (show_id, viewer_id))
        return rows[0]["until"] if rows else 0.0

    async def add_likes(self, show_id: str, room: str, n: int) -> int:
        return await self._db.call(_fetch_value, "INSERT INTO likes VALUES (?,?,?) ON CONFLICT(show_id, room)"
                                   " DO UPDATE SET n=n+excluded.n RETURNING n", (show_id, room, n))

    async def likes(self, show_id: str) -> dict[str, int]:
        rows = await self._db.call(_fetch_all, "SELECT room, n FROM likes WHERE show_id=?", (show_id,))
        return {r["room"]: r["n"] for r in rows}

    async def moderation_lists(self) -> dict | None:
        rows = await self._db.call(_fetch_all, "SELECT lists FROM moderation", ())
        return json.loads(rows[0]["lists"]) if rows else None

    async def save_moderation_lists(self, lists: dict) -> None:
        await self._db.call(_execute, "INSERT OR REPLACE INTO moderation VALUES (1, ?)", (json.dumps(lists),))


# -- on the store's thread ---------------------------------------------------------------
def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    if "commission_rate" not in {r["name"] for r in db.execute("PRAGMA table_info(products)")}:
        db.execute("ALTER TABLE products ADD COLUMN commission_rate TEXT")  # a data dir made by an older version
    coupons.setup(db)
    db.execute("CREATE INDEX IF NOT EXISTS viewers_by_inviter ON viewers (show_id, first_sharer)")


def _purge_show(db: sqlite3.Connection, show_id: str) -> None:
    coupons.purge_show(db, show_id)
    for table in COMMENT_TABLES:
        db.execute(f"DELETE FROM {table} WHERE show_id=?", (show_id,))


def _comment(r: sqlite3.Row) -> Comment:
    return Comment(r["show_id"], r["id"], r["room"], r["viewer_id"], r["name"], r["text"], r["status"], r["wall"],
                   r["stream_time"])


def _execute(db: sqlite3.Connection, sql: str, params: tuple) -> None:
    db.execute(sql, params)


def _fetch_all(db: sqlite3.Connection, sql: str, params: tuple) -> list[sqlite3.Row]:
    return db.execute(sql, params).fetchall()


def _fetch_value(db: sqlite3.Connection, sql: str, params: tuple):
    return db.execute(sql, params).fetchone()[0]


def _register_viewer(db: sqlite3.Connection, show_id: str, viewer_id: str, room: str, sharer: str | None,
                     now: float) -> str:
    db.execute("INSERT OR IGNORE INTO viewers VALUES (?,?,?,?,?,?)", (show_id, viewer_id, room, sharer, sharer, now))
    return db.execute("SELECT room FROM viewers WHERE show_id=? AND viewer_id=?", (show_id, viewer_id)).fetchone()[0]


def _close_pin(db: sqlite3.Connection, show_id: str, end_wall: float, end_s: float | None) -> Pin | None:
    row = db.execute("SELECT * FROM pins WHERE show_id=? AND end_wall IS NULL ORDER BY id DESC LIMIT 1",
                     (show_id,)).fetchone()
    if row is None:
        return None
    db.execute("UPDATE pins SET end_wall=?, end_s=? WHERE id=?", (end_wall, end_s, row["id"]))
    return Pin(row["product_id"], row["start_wall"], row["start_s"], end_wall, end_s)


def _append_event(db: sqlite3.Connection, show_id: str, type: str, wall: float, stream_time: float | None,
                  data: dict) -> Event:
    seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE show_id=?", (show_id,)).fetchone()[0]
    db.execute("INSERT INTO events VALUES (?,?,?,?,?,?)", (show_id, seq, type, wall, stream_time, json.dumps(data)))
    return Event(show_id, seq, type, wall, stream_time, data)


def _current_state(db: sqlite3.Connection, show_id: str) -> tuple[list[sqlite3.Row], int]:
    rows = db.execute(
        "SELECT * FROM events WHERE seq IN ("
        " SELECT MAX(seq) FROM events WHERE show_id=:s AND type IN ('product.pinned', 'product.unpinned')"
        " UNION SELECT MAX(seq) FROM events WHERE show_id=:s AND type LIKE 'show.%'"
        " UNION SELECT MAX(seq) FROM events WHERE show_id=:s AND type LIKE 'coupon.%'"
        "  GROUP BY json_extract(data, '$.coupon.id')"
        ") AND show_id=:s ORDER BY seq", {"s": show_id}).fetchall()
    newest = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE show_id=?", (show_id,)).fetchone()[0]
    return rows, newest


def _event(r: sqlite3.Row) -> Event:
    return Event(r["show_id"], r["seq"], r["type"], r["wall"], r["stream_time"], json.loads(r["data"]))
