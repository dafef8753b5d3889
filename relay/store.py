"""The embedded store: shows, mirror rooms and room figures in SQLite under the data dir.

Calls are small synchronous statements made from admin and session-lifecycle paths only,
never from the packet path.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Protocol

from .models import Mirror, Replay, ReplayState, RoomFigures, Show, ShowState


class ShowStore(Protocol):
    def create_show(self, show: Show) -> None: ...
    def get_show(self, show_id: str) -> Show | None: ...
    def list_shows(self) -> list[Show]: ...
    def update_show(self, show: Show) -> None: ...
    def delete_show(self, show_id: str) -> None: ...
    def add_mirror(self, mirror: Mirror) -> None: ...
    def get_mirror(self, show_id: str, distributor: str) -> Mirror | None: ...
    def list_mirrors(self, show_id: str) -> list[Mirror]: ...
    def delete_mirror(self, show_id: str, distributor: str) -> None: ...
    def save_room_figures(self, show_id: str, room: str, figures: RoomFigures) -> None: ...
    def save_replay(self, replay: Replay) -> None: ...
    def get_replay(self, show_id: str) -> Replay | None: ...
    def list_replays(self) -> list[Replay]: ...
    def delete_replay(self, show_id: str) -> None: ...
    def load_room_figures(self, show_id: str) -> dict[str, RoomFigures]: ...
    def close(self) -> None: ...


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
    identity TEXT NOT NULL DEFAULT 'anonymous'
);
CREATE TABLE IF NOT EXISTS mirrors (
    show_id TEXT NOT NULL REFERENCES shows(id) ON DELETE CASCADE,
    distributor TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (show_id, distributor)
);
CREATE TABLE IF NOT EXISTS replays (
    show_id TEXT PRIMARY KEY REFERENCES shows(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    duration_s REAL NOT NULL DEFAULT 0,
    discontinuities INTEGER NOT NULL DEFAULT 0,
    mp4_ready INTEGER NOT NULL DEFAULT 0,
    error TEXT
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
    return Show(
        id=row["id"],
        title=row["title"],
        state=ShowState(row["state"]),
        stream_key_hash=row["stream_key_hash"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        end_reason=row["end_reason"],
        replay_public=bool(row["replay_public"]),
        stream_key_expires_at=row["stream_key_expires_at"],
        playback=row["playback"],
        currency=row["currency"],
        identity=row["identity"],
    )


def _replay(row: sqlite3.Row) -> Replay:
    return Replay(
        show_id=row["show_id"], state=ReplayState(row["state"]), started_at=row["started_at"],
        ended_at=row["ended_at"], duration_s=row["duration_s"], discontinuities=row["discontinuities"],
        mp4_ready=bool(row["mp4_ready"]), error=row["error"],
    )


def keep_private(db: Path) -> None:
    """The database and its WAL files readable by this user only (they hold key hashes, viewer
    records and claims). SQLite gives -wal and -shm the database file's mode."""
    os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists():
            path.chmod(0o600)


class SqliteStore:
    """ShowStore on one SQLite file (WAL, synchronous=FULL: a 201 means it is on disk)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        keep_private(path)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(shows)")}
        for column, kind in (("stream_key_expires_at", "REAL"), ("playback", "TEXT NOT NULL DEFAULT 'public'"),
                             ("currency", "TEXT NOT NULL DEFAULT 'CNY'"),
                             ("identity", "TEXT NOT NULL DEFAULT 'anonymous'")):
            if column not in columns:  # a data dir made by an older version
                self._db.execute(f"ALTER TABLE shows ADD COLUMN {column} {kind}")

    def create_show(self, show: Show) -> None:
        self._db.execute(
            "INSERT INTO shows (id, title, state, stream_key_hash, created_at, started_at, ended_at, end_reason,"
            " replay_public, stream_key_expires_at, playback, currency, identity) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (show.id, show.title, show.state.value, show.stream_key_hash, show.created_at,
             show.started_at, show.ended_at, show.end_reason, int(show.replay_public),
             show.stream_key_expires_at, show.playback, show.currency, show.identity),
        )

    def get_show(self, show_id: str) -> Show | None:
        row = self._db.execute("SELECT * FROM shows WHERE id=?", (show_id,)).fetchone()
        return _show(row) if row else None

    def list_shows(self) -> list[Show]:
        rows = self._db.execute("SELECT * FROM shows ORDER BY created_at").fetchall()
        return [_show(r) for r in rows]

    def update_show(self, show: Show) -> None:
        self._db.execute(
            "UPDATE shows SET title=?, state=?, stream_key_hash=?, started_at=?, ended_at=?,"
            " end_reason=?, replay_public=?, stream_key_expires_at=?, playback=? WHERE id=?",
            (show.title, show.state.value, show.stream_key_hash, show.started_at, show.ended_at,
             show.end_reason, int(show.replay_public), show.stream_key_expires_at, show.playback, show.id),
        )

    def delete_show(self, show_id: str) -> None:
        self._db.execute("DELETE FROM shows WHERE id=?", (show_id,))

    def add_mirror(self, mirror: Mirror) -> None:
        self._db.execute(
            "INSERT INTO mirrors VALUES (?,?,?,?)",
            (mirror.show_id, mirror.distributor, mirror.name, mirror.created_at),
        )

    def get_mirror(self, show_id: str, distributor: str) -> Mirror | None:
        row = self._db.execute(
            "SELECT * FROM mirrors WHERE show_id=? AND distributor=?", (show_id, distributor)
        ).fetchone()
        return Mirror(**dict(row)) if row else None

    def list_mirrors(self, show_id: str) -> list[Mirror]:
        rows = self._db.execute(
            "SELECT * FROM mirrors WHERE show_id=? ORDER BY created_at", (show_id,)
        ).fetchall()
        return [Mirror(**dict(r)) for r in rows]

    def delete_mirror(self, show_id: str, distributor: str) -> None:
        self._db.execute(
            "DELETE FROM mirrors WHERE show_id=? AND distributor=?", (show_id, distributor)
        )
        self._db.execute(
            "DELETE FROM room_figures WHERE show_id=? AND room=?", (show_id, distributor)
        )

    def save_room_figures(self, show_id: str, room: str, figures: RoomFigures) -> None:
        self._db.execute(
            "INSERT INTO room_figures VALUES (?,?,?,?) ON CONFLICT(show_id, room) DO UPDATE SET"
            " peak_viewers=excluded.peak_viewers, total_sessions=excluded.total_sessions",
            (show_id, room, figures.peak_viewers, figures.total_sessions),
        )

    def load_room_figures(self, show_id: str) -> dict[str, RoomFigures]:
        rows = self._db.execute(
            "SELECT room, peak_viewers, total_sessions FROM room_figures WHERE show_id=?",
            (show_id,),
        ).fetchall()
        return {
            r["room"]: RoomFigures(peak_viewers=r["peak_viewers"], total_sessions=r["total_sessions"])
            for r in rows
        }

    def save_replay(self, replay: Replay) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO replays VALUES (?,?,?,?,?,?,?,?)",
            (replay.show_id, replay.state.value, replay.started_at, replay.ended_at, replay.duration_s,
             replay.discontinuities, int(replay.mp4_ready), replay.error),
        )

    def get_replay(self, show_id: str) -> Replay | None:
        row = self._db.execute("SELECT * FROM replays WHERE show_id=?", (show_id,)).fetchone()
        return _replay(row) if row else None

    def list_replays(self) -> list[Replay]:
        return [_replay(r) for r in self._db.execute("SELECT * FROM replays").fetchall()]

    def delete_replay(self, show_id: str) -> None:
        self._db.execute("DELETE FROM replays WHERE show_id=?", (show_id,))

    def close(self) -> None:
        self._db.close()
