"""The embedded replay store: each show's replay record in SQLite under the data dir."""

from __future__ import annotations

from pathlib import Path
import sqlite3

from ..models import Replay, ReplayState
from ..sqlite_thread import SqliteThread

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replays (
    show_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    duration_s REAL NOT NULL DEFAULT 0,
    discontinuities INTEGER NOT NULL DEFAULT 0,
    mp4_ready INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
"""


class SqliteReplayStore:
    """ReplayStore on the relay's SQLite file (its own connection, on its own thread)."""

    def __init__(self, path: Path) -> None:
        self._db = SqliteThread(path, lambda db: db.executescript(_SCHEMA), "replay store")

    async def save_replay(self, replay: Replay) -> None:
        await self._db.call(_save, replay)

    async def get_replay(self, show_id: str) -> Replay | None:
        rows = await self._db.call(_select, "SELECT * FROM replays WHERE show_id=?", (show_id,))
        return rows[0] if rows else None

    async def list_replays(self) -> list[Replay]:
        return await self._db.call(_select, "SELECT * FROM replays", ())

    async def delete_replay(self, show_id: str) -> None:
        await self._db.call(_delete, show_id)

    async def close(self) -> None:
        self._db.close()


def _save(db: sqlite3.Connection, replay: Replay) -> None:
    db.execute("INSERT OR REPLACE INTO replays VALUES (?,?,?,?,?,?,?,?)",
               (replay.show_id, replay.state.value, replay.started_at, replay.ended_at, replay.duration_s,
                replay.discontinuities, int(replay.mp4_ready), replay.error))


def _select(db: sqlite3.Connection, sql: str, params: tuple) -> list[Replay]:
    return [Replay(show_id=r["show_id"], state=ReplayState(r["state"]), started_at=r["started_at"],
                   ended_at=r["ended_at"], duration_s=r["duration_s"], discontinuities=r["discontinuities"],
                   mp4_ready=bool(r["mp4_ready"]), error=r["error"])
            for r in db.execute(sql, params)]


def _delete(db: sqlite3.Connection, show_id: str) -> None:
    db.execute("DELETE FROM replays WHERE show_id=?", (show_id,))
