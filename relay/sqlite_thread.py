"""One thread that owns one SQLite connection: the event loop never waits on the disk."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
import logging
import os
from pathlib import Path
import queue
import sqlite3
import threading
from typing import Any, Callable

from .errors import StoreUnavailable

log = logging.getLogger(__name__)

MAX_BATCH = 500


def keep_private(db: Path) -> None:
    """The database and its WAL files readable by this user only (they hold key hashes, viewer
    records and claims). SQLite gives -wal and -shm the database file's mode."""
    os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists():
            path.chmod(0o600)


class SqliteThread:
    """Runs jobs `fn(db, *args)` on its own thread, in order.

    Jobs that queue up meanwhile share one transaction (one disk sync for many writes, WAL
    with synchronous=FULL: an answered write is on disk); each job has its own savepoint, so
    a job that raises undoes only its own changes. `setup(db)` makes the schema first.
    """

    def __init__(self, path: Path, setup: Callable[[sqlite3.Connection], None], name: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        keep_private(path)
        self.name = name
        self._path = path
        self._setup = setup
        self._jobs: queue.Queue = queue.Queue()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._failed is not None:
            raise self._failed

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """The result of `fn(db, *args)`, run on the thread inside a transaction."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((fn, args, lambda ok, value: loop.call_soon_threadsafe(_settle, future, ok, value)))
        return await future

    def call_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """The same, for a caller not on the event loop (startup, tests): waits for it."""
        future: Future = Future()
        self._jobs.put((fn, args, lambda ok, value: _settle(future, ok, value)))
        return future.result()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(10)

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            db = sqlite3.connect(str(self._path), isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA foreign_keys=ON")
            self._setup(db)
        except BaseException as exc:
            self._failed = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            job = self._jobs.get()
            if job is None:
                break
            batch = [job]
            while len(batch) < MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)
                    break
                batch.append(job)
            self._run_batch(db, batch)
        db.close()

    def _run_batch(self, db: sqlite3.Connection, batch: list) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for fn, args, _ in batch:
                db.execute("SAVEPOINT job")
                try:
                    outcomes.append((True, fn(db, *args)))
                    db.execute("RELEASE job")
                except Exception as exc:  # this job's changes only are undone
                    db.execute("ROLLBACK TO job")
                    db.execute("RELEASE job")
                    outcomes.append((False, exc))
            db.execute("COMMIT")  # durable before any answer goes out
        except sqlite3.Error as exc:
            log.exception("%s: a batch of %d failed", self.name, len(batch))
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            outcomes = [(False, StoreUnavailable(self.name, exc))] * len(batch)
        for (ok, value), (_, _, settle) in zip(outcomes, batch):
            settle(ok, value)


def _settle(future: asyncio.Future | Future, ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
