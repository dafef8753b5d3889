"""What the catalog's and the replays' Redis stores share: the connection pool, an unreachable
Redis answering 503, and records kept as hashes of JSON values."""

from __future__ import annotations

import json
from typing import Any, Awaitable, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import StoreUnavailable

T = TypeVar("T")

MAX_CONNECTIONS = 32
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def connect(url: str, max_connections: int = MAX_CONNECTIONS) -> aioredis.Redis:
    """A client on a bounded pool whose callers wait for a free connection (a burst of requests
    queues here instead of opening a connection each), as the commerce store's."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5, decode_responses=True, socket_connect_timeout=2,
        socket_timeout=5, health_check_interval=5, retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2))
    return aioredis.Redis.from_pool(pool)  # (closing the client closes the pool)


async def call(what: str, awaitable: Awaitable[T]) -> T:
    """Await a Redis call; an unreachable Redis becomes a 503 naming `what`."""
    try:
        return await awaitable
    except UNREACHABLE as exc:
        raise StoreUnavailable(what, exc) from exc


async def read_hashes(redis: aioredis.Redis, what: str, keys: list[str]) -> list[dict[str, str]]:
    """HGETALL of each key, in one round trip (one that is gone reads as {})."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        return await call(what, pipe.execute())


def to_hash(fields: dict[str, Any]) -> dict[str, str]:
    """A record's fields as a Redis hash: each value JSON (None, numbers and booleans keep
    their type; a str enum is its value)."""
    return {name: json.dumps(value) for name, value in fields.items()}


def from_hash(fields: dict[str, str]) -> dict[str, Any]:
    return {name: json.loads(value) for name, value in fields.items()}
