"""The node directory: every node of a cluster says where it is and how many viewers it has,
every second, so that a full node can send a viewer to the least loaded one."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .origins import Origin

log = logging.getLogger(__name__)

BEAT_S = 1.0
FRESH_S = 3.0  # an entry older than this is a node that stopped


def route_key(node: str) -> str:
    """A short, URL-safe name of a node, for the session URLs it hands out."""
    return hashlib.sha1(node.encode()).hexdigest()[:10]


class NodeDirectory:
    """Publishes this node's load and finds a node with room."""

    def __init__(self, url: str, prefix: str, me: Callable[[], Origin], load: Callable[[], int],
                 max_viewers: int) -> None:
        self._redis = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5)
        self._key = f"{prefix}:nodes"
        self._me = me
        self._load = load  # this node's viewers now
        self.max_viewers = max_viewers
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._beat())

    async def least_loaded(self) -> Origin | None:
        """Another live node with room for a viewer, the least loaded first; None if none."""
        try:
            entries = await self._redis.hgetall(self._key)
        except (RedisError, OSError) as exc:
            log.warning("node directory unreachable: %s", exc)
            return None
        now, me = time.time(), self._me().node
        candidates = []
        for node, raw in entries.items():
            entry = json.loads(raw)
            if node == me or now - entry["at"] > FRESH_S:
                continue
            if not entry["max"] or entry["viewers"] < entry["max"]:
                candidates.append((entry["viewers"] / (entry["max"] or 1e9), node, entry["url"]))
        if not candidates:
            return None
        _, node, url = min(candidates)
        return Origin(node, url)

    async def find(self, key: str) -> Origin | None:
        """The node whose route key is `key` (None if no node that beat lately has it)."""
        try:
            entries = await self._redis.hgetall(self._key)
        except (RedisError, OSError) as exc:
            log.warning("node directory unreachable: %s", exc)
            return None
        for node, raw in entries.items():
            entry = json.loads(raw)
            if route_key(node) == key and time.time() - entry["at"] <= FRESH_S:
                return Origin(node, entry["url"])
        return None

    async def alive(self, node: str) -> bool:
        """The node beat lately (False if Redis cannot tell)."""
        try:
            raw = await self._redis.hget(self._key, node)
        except (RedisError, OSError):
            return False
        return raw is not None and time.time() - json.loads(raw)["at"] <= FRESH_S

    async def _beat(self) -> None:
        while True:
            me = self._me()
            entry = {"url": me.url, "viewers": self._load(), "max": self.max_viewers, "at": time.time()}
            try:
                await self._redis.hset(self._key, me.node, json.dumps(entry))
                stale = [n for n, raw in (await self._redis.hgetall(self._key)).items()
                         if time.time() - json.loads(raw)["at"] > 60 * FRESH_S]
                if stale:  # nodes long gone
                    await self._redis.hdel(self._key, *stale)
            except (RedisError, OSError) as exc:
                log.debug("node directory heartbeat failed: %s", exc)
            await asyncio.sleep(BEAT_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            await self._redis.hdel(self._key, self._me().node)
        except (RedisError, OSError):
            pass
        await self._redis.aclose()
