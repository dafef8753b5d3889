"""Flash coupons and claims: atomic, idempotent, durable before they are acknowledged.

The model and the embedded store's SQL. Each function here runs on the store's SQLite thread,
where claims that queue up are decided in batches, one transaction (one disk sync) each:
never more than the quantity or a room's cap, never more than a viewer's limit, and a
retried request gets its first answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import logging
import secrets
import sqlite3
import time

from ..errors import ApiError
from .room_view import coupon_for_room, remaining_in_room

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS coupons (
    show_id TEXT NOT NULL, coupon_id TEXT NOT NULL, title TEXT NOT NULL, quantity INTEGER NOT NULL,
    per_viewer_limit INTEGER NOT NULL, duration_s REAL, starts_at REAL, ends_at REAL,
    room_caps TEXT NOT NULL, state TEXT NOT NULL, claimed INTEGER NOT NULL, created_at REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'flash', invites_required INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (show_id, coupon_id)
);
CREATE TABLE IF NOT EXISTS coupon_rooms (
    show_id TEXT NOT NULL, coupon_id TEXT NOT NULL, room TEXT NOT NULL, claimed INTEGER NOT NULL,
    PRIMARY KEY (show_id, coupon_id, room)
);
CREATE TABLE IF NOT EXISTS claims (
    show_id TEXT NOT NULL, coupon_id TEXT NOT NULL, viewer_id TEXT NOT NULL, room TEXT NOT NULL,
    sharer TEXT, claimed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS claims_by_viewer ON claims (show_id, coupon_id, viewer_id);
CREATE TABLE IF NOT EXISTS claim_requests (
    show_id TEXT NOT NULL, viewer_id TEXT NOT NULL, idempotency_key TEXT NOT NULL,
    coupon_id TEXT NOT NULL, response TEXT NOT NULL, created_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (show_id, viewer_id, idempotency_key)
);
"""


@dataclass
class Coupon:
    show_id: str
    id: str
    title: str
    quantity: int
    per_viewer_limit: int
    duration_s: float | None
    starts_at: float | None
    ends_at: float | None
    room_caps: dict[str, int]
    state: str  # draft | live | stopped
    claimed: int = 0
    rooms_claimed: dict[str, int] = field(default_factory=dict)
    kind: str = "flash"  # flash | invite (a viewer claims once it has brought invites_required viewers)
    invites_required: int = 0

    @property
    def remaining(self) -> int:
        return self.quantity - self.claimed

    def remaining_in(self, room: str) -> int:
        return remaining_in_room(self.remaining, self.room_caps, self.rooms_claimed, room)

    def status(self, now: float) -> str:
        if self.state == "draft" or (self.starts_at is not None and now < self.starts_at):
            return "scheduled" if self.state == "live" else "draft"
        if self.state == "stopped" or (self.ends_at is not None and now >= self.ends_at):
            return "ended"
        return "live"

    def view(self, room: str | None = None, now: float | None = None) -> dict:
        view = {"id": self.id, "title": self.title, "quantity": self.quantity,
                "per_viewer_limit": self.per_viewer_limit, "duration_s": self.duration_s,
                "starts_at": self.starts_at, "ends_at": self.ends_at, "state": self.status(now or time.time()),
                "claimed": self.claimed, "remaining": self.remaining,
                "room_caps": dict(self.room_caps), "rooms": dict(self.rooms_claimed), "kind": self.kind}
        if self.kind == "invite":
            view["invites_required"] = self.invites_required
        return view if room is None else coupon_for_room(view, room)


@dataclass(frozen=True)
class ClaimRequest:
    show_id: str
    coupon_id: str
    viewer_id: str
    room: str
    sharer: str | None
    idempotency_key: str


def setup(db: sqlite3.Connection) -> None:
    """The coupon tables, made or brought up to date."""
    db.executescript(_SCHEMA)
    columns = {r["name"] for r in db.execute("PRAGMA table_info(claim_requests)")}
    if "created_at" not in columns:  # a data dir made by an older version
        db.execute("ALTER TABLE claim_requests ADD COLUMN created_at REAL NOT NULL DEFAULT 0")
    columns = {r["name"] for r in db.execute("PRAGMA table_info(coupons)")}
    if "kind" not in columns:
        db.execute("ALTER TABLE coupons ADD COLUMN kind TEXT NOT NULL DEFAULT 'flash'")
        db.execute("ALTER TABLE coupons ADD COLUMN invites_required INTEGER NOT NULL DEFAULT 0")


def decide(coupon: Coupon, room: str, mine: int, now: float, invites: int = 0) -> str:
    """The answer to one claim (the Redis store's claim script decides the same way)."""
    status = coupon.status(now)
    if status in ("draft", "scheduled"):
        return "not_started"
    if status == "ended":
        return "ended"
    if coupon.kind == "invite" and invites < coupon.invites_required:
        return "needs_invites"
    if mine >= coupon.per_viewer_limit:
        return "already_claimed"
    if coupon.remaining <= 0:
        return "sold_out"
    if room in coupon.room_caps and coupon.rooms_claimed.get(room, 0) >= coupon.room_caps[room]:
        return "room_cap_reached"
    return "claimed"


# -- jobs (run on the ledger thread, inside the batch transaction) ----------------------------
def load_coupon(db: sqlite3.Connection, show_id: str, coupon_id: str) -> Coupon:
    row = db.execute("SELECT * FROM coupons WHERE show_id=? AND coupon_id=?", (show_id, coupon_id)).fetchone()
    if row is None:
        raise ApiError(404, "coupon_not_found", f"show {show_id!r} has no coupon {coupon_id!r}")
    rooms = {r["room"]: r["claimed"] for r in db.execute(
        "SELECT room, claimed FROM coupon_rooms WHERE show_id=? AND coupon_id=?", (show_id, coupon_id))}
    return Coupon(row["show_id"], row["coupon_id"], row["title"], row["quantity"], row["per_viewer_limit"],
                  row["duration_s"], row["starts_at"], row["ends_at"], json.loads(row["room_caps"]),
                  row["state"], row["claimed"], rooms, row["kind"], row["invites_required"])


def list_coupons(db: sqlite3.Connection, show_id: str) -> list[Coupon]:
    ids = [r["coupon_id"] for r in db.execute(
        "SELECT coupon_id FROM coupons WHERE show_id=? ORDER BY created_at", (show_id,))]
    return [load_coupon(db, show_id, i) for i in ids]


def create_coupon(db: sqlite3.Connection, coupon: Coupon) -> Coupon:
    if coupon.id is None:
        coupon.id = "c" + secrets.token_hex(4)
    if db.execute("SELECT 1 FROM coupons WHERE show_id=? AND coupon_id=?", (coupon.show_id, coupon.id)).fetchone():
        raise ApiError(409, "coupon_exists", f"coupon {coupon.id!r} already exists")
    db.execute("INSERT INTO coupons VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
               (coupon.show_id, coupon.id, coupon.title, coupon.quantity, coupon.per_viewer_limit,
                coupon.duration_s, coupon.starts_at, coupon.ends_at, json.dumps(coupon.room_caps), "draft", 0,
                time.time(), coupon.kind, coupon.invites_required))
    return load_coupon(db, coupon.show_id, coupon.id)


def launch_coupon(db: sqlite3.Connection, show_id: str, coupon_id: str) -> Coupon:
    coupon = load_coupon(db, show_id, coupon_id)
    if coupon.state == "stopped":
        raise ApiError(409, "coupon_stopped", "a stopped coupon cannot be launched again")
    if coupon.state == "draft":
        now = time.time()
        starts_at = coupon.starts_at if coupon.starts_at is not None else now
        ends_at = coupon.ends_at if coupon.ends_at is not None else starts_at + (coupon.duration_s or 0)
        db.execute("UPDATE coupons SET state='live', starts_at=?, ends_at=? WHERE show_id=? AND coupon_id=?",
                   (starts_at, ends_at, show_id, coupon_id))
    return load_coupon(db, show_id, coupon_id)


def stop_coupon(db: sqlite3.Connection, show_id: str, coupon_id: str) -> Coupon:
    load_coupon(db, show_id, coupon_id)
    db.execute("UPDATE coupons SET state='stopped' WHERE show_id=? AND coupon_id=?", (show_id, coupon_id))
    return load_coupon(db, show_id, coupon_id)


def claim(db: sqlite3.Connection, req: ClaimRequest) -> dict:
    seen = db.execute(
        "SELECT coupon_id, response FROM claim_requests WHERE show_id=? AND viewer_id=? AND idempotency_key=?",
        (req.show_id, req.viewer_id, req.idempotency_key)).fetchone()
    if seen is not None:
        if seen["coupon_id"] != req.coupon_id:
            raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used for another request")
        return json.loads(seen["response"])
    coupon = load_coupon(db, req.show_id, req.coupon_id)
    mine = db.execute("SELECT COUNT(*) FROM claims WHERE show_id=? AND coupon_id=? AND viewer_id=?",
                      (req.show_id, req.coupon_id, req.viewer_id)).fetchone()[0]
    invites = 0
    if coupon.kind == "invite":  # viewers who registered through this viewer's share link
        invites = db.execute("SELECT COUNT(*) FROM viewers WHERE show_id=? AND first_sharer=? AND viewer_id<>?",
                             (req.show_id, req.viewer_id, req.viewer_id)).fetchone()[0]
    result = decide(coupon, req.room, mine, time.time(), invites)
    if result == "needs_invites":  # nothing changed: not kept for the key, a later claim is decided anew
        return {"result": result, "invites": invites, "invites_required": coupon.invites_required}
    if result == "claimed":
        db.execute("UPDATE coupons SET claimed=claimed+1 WHERE show_id=? AND coupon_id=?",
                   (req.show_id, req.coupon_id))
        db.execute("INSERT INTO coupon_rooms VALUES (?,?,?,1) ON CONFLICT(show_id, coupon_id, room)"
                   " DO UPDATE SET claimed=claimed+1", (req.show_id, req.coupon_id, req.room))
        db.execute("INSERT INTO claims VALUES (?,?,?,?,?,?)",
                   (req.show_id, req.coupon_id, req.viewer_id, req.room, req.sharer, time.time()))
        coupon.claimed += 1
        coupon.rooms_claimed[req.room] = coupon.rooms_claimed.get(req.room, 0) + 1
    response = {"result": result, "remaining": coupon.remaining_in(req.room)}
    db.execute("INSERT INTO claim_requests VALUES (?,?,?,?,?,?)",
               (req.show_id, req.viewer_id, req.idempotency_key, req.coupon_id, json.dumps(response), time.time()))
    return response


SHOW_TABLES = ("claim_requests", "claims", "coupon_rooms", "coupons", "events", "pins", "products",
               "registrations", "viewers")


def purge_show(db: sqlite3.Connection, show_id: str) -> None:
    """Every commerce row of the show, in one transaction with the claims around it."""
    for table in SHOW_TABLES:
        db.execute(f"DELETE FROM {table} WHERE show_id=?", (show_id,))


def expire_requests(db: sqlite3.Connection, before: float) -> int:
    """Forget answers to claim requests made before `before` (retries come within minutes)."""
    return db.execute("DELETE FROM claim_requests WHERE created_at < ?", (before,)).rowcount


def retire_room(db: sqlite3.Connection, show_id: str, room: str, retired: str) -> None:
    """A deleted room's viewers and claims move to its retired name: coupon totals hold, and a
    new room with the same id starts at zero."""
    for table in ("viewers", "claims", "coupon_rooms"):
        db.execute(f"UPDATE {table} SET room=? WHERE show_id=? AND room=?", (retired, show_id, room))


def add_claims(figures: dict, room: str, coupon_id: str, sharer: str | None, n: int) -> None:
    """Count `n` claims into figures: room -> {"claims", "claims_by_coupon", "claims_by_sharer"}."""
    view = figures.setdefault(room, {"claims": 0, "claims_by_coupon": {}, "claims_by_sharer": {}})
    view["claims"] += n
    view["claims_by_coupon"][coupon_id] = view["claims_by_coupon"].get(coupon_id, 0) + n
    if sharer:
        view["claims_by_sharer"][sharer] = view["claims_by_sharer"].get(sharer, 0) + n


def claim_figures(db: sqlite3.Connection, show_id: str) -> dict:
    """Claims per room, per coupon and per (room, sharer)."""
    figures: dict = {}
    for row in db.execute("SELECT room, coupon_id, sharer, COUNT(*) AS n FROM claims WHERE show_id=?"
                          " GROUP BY room, coupon_id, sharer", (show_id,)):
        add_claims(figures, row["room"], row["coupon_id"], row["sharer"], row["n"])
    return figures
