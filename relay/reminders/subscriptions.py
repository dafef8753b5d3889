"""Where reminder subscriptions and the VAPID key are kept: the `SubscriptionStore` contract and
its SQLite (embedded, the data dir) and Redis (a cluster) implementations."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
import json
import logging
import os
from pathlib import Path
import sqlite3
from typing import Callable, Protocol

from ..redis_client import UNREACHABLE, call, connect
from ..sqlite_thread import SqliteThread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subscription:
    """A browser's Web Push subscription to one show's reminder."""

    id: str
    show_id: str
    endpoint: str
    p256dh: str  # the browser's P-256 public key, base64url (RFC 8291 ua_public)
    auth: str  # its 16-byte auth secret, base64url
    created_at: float


class SubscriptionStore(Protocol):
    """The subscriptions of each show, and the VAPID key every process shares."""

    async def add(self, subscription: Subscription) -> None: ...
    async def remove(self, show_id: str, subscription_id: str) -> bool: ...
    async def for_show(self, show_id: str) -> list[Subscription]: ...
    async def purge_show(self, show_id: str) -> None: ...
    async def vapid_key(self, make: Callable[[], str]) -> str: ...
    async def close(self) -> None: ...


# -- SQLite ------------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS webpush_subscriptions (
    show_id TEXT NOT NULL,
    id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    p256dh TEXT NOT NULL,
    auth TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (show_id, id)
);
"""


def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)


def _execute(db: sqlite3.Connection, sql: str, params: tuple) -> int:
    return db.execute(sql, params).rowcount


def _rows(db: sqlite3.Connection, sql: str, params: tuple) -> list[Subscription]:
    return [Subscription(**dict(r)) for r in db.execute(sql, params).fetchall()]


class SqliteSubscriptionStore:
    """Subscriptions in the data dir's SQLite file (own table, own thread); the VAPID key in a
    file beside it (0600), made on first use."""

    def __init__(self, db_path: Path, key_path: Path) -> None:
        self._db = SqliteThread(db_path, _setup, "reminder store")
        self._key_path = key_path

    async def add(self, subscription: Subscription) -> None:
        s = subscription
        await self._db.call(_execute, "INSERT OR REPLACE INTO webpush_subscriptions (show_id, id, endpoint, p256dh,"
                            " auth, created_at) VALUES (?,?,?,?,?,?)",
                            (s.show_id, s.id, s.endpoint, s.p256dh, s.auth, s.created_at))

    async def remove(self, show_id: str, subscription_id: str) -> bool:
        return bool(await self._db.call(_execute, "DELETE FROM webpush_subscriptions WHERE show_id=? AND id=?",
                                        (show_id, subscription_id)))

    async def for_show(self, show_id: str) -> list[Subscription]:
        return await self._db.call(_rows, "SELECT * FROM webpush_subscriptions WHERE show_id=? ORDER BY created_at",
                                   (show_id,))

    async def purge_show(self, show_id: str) -> None:
        await self._db.call(_execute, "DELETE FROM webpush_subscriptions WHERE show_id=?", (show_id,))

    async def vapid_key(self, make: Callable[[], str]) -> str:
        return await asyncio.to_thread(_key_file, self._key_path, make)

    async def close(self) -> None:
        self._db.close()


def _key_file(path: Path, make: Callable[[], str]) -> str:
    """The key in `path`, else a new one written there readable by this user only."""
    try:
        return path.read_text()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: theirs it is
        return path.read_text()
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


# -- Redis -------------------------------------------------------------------------------------
WHAT = "reminder store (Redis)"
RETRY_S = 0.5


class RedisSubscriptionStore:
    """Subscriptions in Redis: `p:show:{S}:webpush`, a hash id -> record (JSON); the VAPID key at
    `p:webpush_vapid_key`, made by the first process to ask."""

    def __init__(self, url: str, prefix: str = "relay") -> None:
        self._redis = connect(url)
        self._prefix = prefix

    def _key(self, show_id: str) -> str:
        return f"{self._prefix}:show:{{{show_id}}}:webpush"

    async def add(self, subscription: Subscription) -> None:
        record = json.dumps({k: v for k, v in asdict(subscription).items() if k not in ("id", "show_id")})
        await call(WHAT, self._redis.hset(self._key(subscription.show_id), subscription.id, record))

    async def remove(self, show_id: str, subscription_id: str) -> bool:
        return bool(await call(WHAT, self._redis.hdel(self._key(show_id), subscription_id)))

    async def for_show(self, show_id: str) -> list[Subscription]:
        records = await call(WHAT, self._redis.hgetall(self._key(show_id)))
        found = [Subscription(id=i, show_id=show_id, **json.loads(r)) for i, r in records.items()]
        return sorted(found, key=lambda s: s.created_at)

    async def purge_show(self, show_id: str) -> None:
        await call(WHAT, self._redis.delete(self._key(show_id)))

    async def vapid_key(self, make: Callable[[], str]) -> str:
        """Every process sharing this Redis signs with one key (retries while Redis is away)."""
        key = f"{self._prefix}:webpush_vapid_key"
        while True:
            try:
                await self._redis.set(key, make(), nx=True)
                return await self._redis.get(key)
            except UNREACHABLE as exc:
                log.warning("Redis unreachable while reading the VAPID key: %s; retrying", exc)
                await asyncio.sleep(RETRY_S)

    async def close(self) -> None:
        await self._redis.aclose()
