"""The embedded show store: shows, mirror rooms, restream targets and room figures in SQLite
under the data dir.

Every statement runs on the store's own thread; the event loop only awaits the answer.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from .errors import mirror_exists, show_exists, show_not_found, too_many_restreams
from .models import Mirror, Restream, RoomFigures, Show, ShowState
from .sqlite_thread import SqliteThread


_SCHEMA = """
CREATE TABLE IF NOT EXISTS shows (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    state TEXT NOT NULL,
    stream_key_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    end_reason TEXT,
    replay_public INTEGER NOT NULL DEFAULT 1,
    stream_key_expires_at REAL,
    playback TEXT NOT NULL DEFAULT 'public',
    currency TEXT NOT NULL DEFAULT 'CNY',
    identity TEXT NOT NULL DEFAULT 'anonymous',
    sharer_commission_rate TEXT NOT NULL DEFAULT '0',
    starts_at REAL
);
CREATE TABLE IF NOT EXISTS mirrors (
    show_id TEXT NOT NULL REFERENCES shows(id) ON DELETE CASCADE,
    distributor TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    commission_rate TEXT NOT NULL DEFAULT '0',
    PRIMARY KEY (show_id, distributor)
);
CREATE TABLE IF NOT EXISTS restreams (
    show_id TEXT NOT NULL REFERENCES shows(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (show_id, id)
);
CREATE TABLE IF NOT EXISTS room_figures (
    show_id TEXT NOT NULL REFERENCES shows(id) ON DELETE CASCADE,
    room TEXT NOT NULL,
    peak_viewers INTEGER NOT NULL,
    total_sessions INTEGER NOT NULL,
    PRIMARY KEY (show_id, room)
);
"""


def _show(row: sqlite3.Row) -> Show:
    values = dict(row)  # the columns are the fields
    return Show(**values | {"state": ShowState(values["state"]), "replay_public": bool(values["replay_public"])})


class SqliteShowStore:
    """The show catalog's store, the restream targets' and the live figures', on one SQLite file."""

    def __init__(self, path: Path) -> None:
        self._db = SqliteThread(path, _setup, "show store")
        self._live: dict[str, tuple[float, dict[str, int]]] = {}  # show -> (counts until, viewers per room)
        self._restream_states: dict[str, tuple[float, dict[str, dict]]] = {}  # show -> (valid until, states)

    async def create_show(self, show: Show) -> None:
        """Stores a new show; 409 if the id is taken."""
        created = await self._db.call(
            _execute,
            "INSERT INTO shows (id, title, state, stream_key_hash, created_at, started_at, ended_at,"
            " end_reason, replay_public, stream_key_expires_at, playback, currency, identity,"
            " sharer_commission_rate, starts_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO NOTHING",
            (show.id, show.title, show.state.value, show.stream_key_hash, show.created_at, show.started_at,
             show.ended_at, show.end_reason, int(show.replay_public), show.stream_key_expires_at, show.playback,
             show.currency, show.identity, show.sharer_commission_rate, show.starts_at))
        if not created:
            raise show_exists(show.id)

    async def get_show(self, show_id: str) -> Show | None:
        rows = await self._db.call(_fetch_all, "SELECT * FROM shows WHERE id=?", (show_id,))
        return _show(rows[0]) if rows else None

    async def list_shows(self) -> list[Show]:
        return [_show(r) for r in await self._db.call(_fetch_all, "SELECT * FROM shows ORDER BY created_at", ())]

    async def update_show(self, show: Show) -> None:
        await self._db.call(_execute,
                            "UPDATE shows SET title=?, state=?, stream_key_hash=?, started_at=?, ended_at=?,"
                            " end_reason=?, replay_public=?, stream_key_expires_at=?, playback=?, sharer_commission_rate=?,"
                            " starts_at=? WHERE id=?",
                            (show.title, show.state.value, show.stream_key_hash, show.started_at, show.ended_at,
                             show.end_reason, int(show.replay_public), show.stream_key_expires_at, show.playback,
                             show.sharer_commission_rate, show.starts_at, show.id))

    async def delete_show(self, show_id: str) -> None:
        await self._db.call(_execute, "DELETE FROM shows WHERE id=?", (show_id,))
        self._live.pop(show_id, None)
        self._restream_states.pop(show_id, None)

    async def add_mirror(self, mirror: Mirror) -> None:
        """Stores a new mirror room; 409 if the distributor has one, 404 if the show is gone."""
        await self._db.call(_add_mirror, mirror)

    async def list_mirrors(self, show_id: str) -> list[Mirror]:
        rows = await self._db.call(_fetch_all, "SELECT * FROM mirrors WHERE show_id=? ORDER BY created_at",
                                   (show_id,))
        return [Mirror(**dict(r)) for r in rows]

    async def update_mirror(self, mirror: Mirror) -> None:
        """Writes the room's name and rate; a room that is gone stays gone."""
        await self._db.call(_execute, "UPDATE mirrors SET name=?, commission_rate=? WHERE show_id=? AND distributor=?",
                            (mirror.name, mirror.commission_rate, mirror.show_id, mirror.distributor))

    async def delete_mirror(self, show_id: str, distributor: str) -> None:
        await self._db.call(_delete_mirror, show_id, distributor)
        self._live.get(show_id, (0.0, {}))[1].pop(distributor, None)

    async def add_restream(self, restream: Restream, limit: int) -> None:
        """Stores a new restream target; 404 if the show is gone, 409 if it has `limit` already."""
        await self._db.call(_add_restream, restream, limit)

    async def list_restreams(self, show_id: str) -> list[Restream]:
        rows = await self._db.call(_fetch_all, "SELECT * FROM restreams WHERE show_id=? ORDER BY created_at, id",
                                   (show_id,))
        return [Restream(**dict(r)) for r in rows]

    async def delete_restream(self, show_id: str, restream_id: str) -> bool:
        return bool(await self._db.call(_execute, "DELETE FROM restreams WHERE show_id=? AND id=?",
                                        (show_id, restream_id)))

    async def save_restream_states(self, show_id: str, states: dict[str, dict], ttl_s: float) -> None:
        """The targets' state as the node pushing them sees it: this process is the only node,
        so it stays in its memory."""
        if states:
            self._restream_states[show_id] = (time.monotonic() + ttl_s, dict(states))
        else:
            self._restream_states.pop(show_id, None)

    async def load_restream_states(self, show_id: str) -> dict[str, dict]:
        until, states = self._restream_states.get(show_id, (0.0, {}))
        return dict(states) if time.monotonic() < until else {}

    async def save_room_figures(self, show_id: str, rooms: dict[str, RoomFigures]) -> None:
        await self._db.call(_save_room_figures, show_id, rooms)

    async def load_room_figures(self, show_id: str) -> dict[str, RoomFigures]:
        rows = await self._db.call(_fetch_all, "SELECT room, peak_viewers, total_sessions FROM room_figures"
                                   " WHERE show_id=?", (show_id,))
        return {r["room"]: RoomFigures(peak_viewers=r["peak_viewers"], total_sessions=r["total_sessions"])
                for r in rows}

    async def save_live_viewers(self, show_id: str, rooms: dict[str, int], ttl_s: float) -> None:
        """Viewers per room now, for `ttl_s`. This process is the only node, so they stay in its
        memory: what it reads back is what it saved, until then."""
        self._live[show_id] = (time.monotonic() + ttl_s, dict(rooms))

    async def load_live_viewers(self, show_id: str) -> dict[str, int]:
        until, rooms = self._live.get(show_id, (0.0, {}))
        return dict(rooms) if time.monotonic() < until else {}

    async def close(self) -> None:
        self._db.close()


# -- on the store's thread ---------------------------------------------------------------
def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    columns = {r["name"] for r in db.execute("PRAGMA table_info(shows)")}
    for column, kind in (("stream_key_expires_at", "REAL"), ("playback", "TEXT NOT NULL DEFAULT 'public'"),
                         ("currency", "TEXT NOT NULL DEFAULT 'CNY'"),
                         ("identity", "TEXT NOT NULL DEFAULT 'anonymous'"),
                         ("sharer_commission_rate", "TEXT NOT NULL DEFAULT '0'"), ("starts_at", "REAL")):
        if column not in columns:  # a data dir made by an older version
            db.execute(f"ALTER TABLE shows ADD COLUMN {column} {kind}")
    if "commission_rate" not in {r["name"] for r in db.execute("PRAGMA table_info(mirrors)")}:
        db.execute("ALTER TABLE mirrors ADD COLUMN commission_rate TEXT NOT NULL DEFAULT '0'")


def _execute(db: sqlite3.Connection, sql: str, params: tuple) -> int:
    """How many rows it changed."""
    return db.execute(sql, params).rowcount


def _fetch_all(db: sqlite3.Connection, sql: str, params: tuple) -> list[sqlite3.Row]:
    return db.execute(sql, params).fetchall()


def _add_mirror(db: sqlite3.Connection, mirror: Mirror) -> None:
    if db.execute("SELECT 1 FROM shows WHERE id=?", (mirror.show_id,)).fetchone() is None:
        raise show_not_found(mirror.show_id)
    if not db.execute("INSERT INTO mirrors (show_id, distributor, name, created_at, commission_rate)"
                      " VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                      (mirror.show_id, mirror.distributor, mirror.name, mirror.created_at,
                       mirror.commission_rate)).rowcount:
        raise mirror_exists(mirror.distributor)


def _add_restream(db: sqlite3.Connection, restream: Restream, limit: int) -> None:
    if db.execute("SELECT 1 FROM shows WHERE id=?", (restream.show_id,)).fetchone() is None:
        raise show_not_found(restream.show_id)
    if db.execute("SELECT COUNT(*) FROM restreams WHERE show_id=?", (restream.show_id,)).fetchone()[0] >= limit:
        raise too_many_restreams(limit)
    db.execute("INSERT INTO restreams (show_id, id, name, url, created_at) VALUES (?,?,?,?,?)",
               (restream.show_id, restream.id, restream.name, restream.url, restream.created_at))


def _delete_mirror(db: sqlite3.Connection, show_id: str, distributor: str) -> None:
    db.execute("DELETE FROM mirrors WHERE show_id=? AND distributor=?", (show_id, distributor))
    db.execute("DELETE FROM room_figures WHERE show_id=? AND room=?", (show_id, distributor))


def _save_room_figures(db: sqlite3.Connection, show_id: str, rooms: dict[str, RoomFigures]) -> None:
    if db.execute("SELECT 1 FROM shows WHERE id=?", (show_id,)).fetchone() is None:
        return  # deleted meanwhile
    db.executemany(
        "INSERT INTO room_figures VALUES (?,?,?,?) ON CONFLICT(show_id, room) DO UPDATE SET"
        " peak_viewers=excluded.peak_viewers, total_sessions=excluded.total_sessions",
        [(show_id, room, f.peak_viewers, f.total_sessions) for room, f in rooms.items()])
