"""The origin registry: which node a show's host publishes to, kept in Redis with a short TTL.

The node a host connects to claims the show (the key moves to it, whoever held it); while the
host is there it refreshes the claim every third of the TTL, so a dead node's claims lapse on
their own. Any node looks a show's origin up when a viewer asks for it there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import json
import logging
from typing import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Refresh the claim only if it is still this node's (another may have taken the show over).
_REFRESH = """
local value = redis.call('GET', KEYS[1])
if value and cjson.decode(value)['node'] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
local value = redis.call('GET', KEYS[1])
if value and cjson.decode(value)['node'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Origin:
    node: str
    url: str  # the node's base URL for other nodes


class OriginRegistry:
    """Claims, refreshes and looks up shows' origins (a claim another node took is let go)."""

    def __init__(self, url: str, prefix: str, node: Callable[[], Origin], ttl_s: float) -> None:
        self._node = node  # (read when used: a server's port may be known only once it listens)
        self._redis = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5)
        self._prefix = prefix
        self._ttl_ms = int(ttl_s * 1000)
        self._claimed: set[str] = set()
        self._refresh = self._redis.register_script(_REFRESH)
        self._release = self._redis.register_script(_RELEASE)
        self._heartbeat: asyncio.Task | None = None

    @property
    def me(self) -> Origin:
        return self._node()

    def _key(self, show_id: str) -> str:
        return f"{self._prefix}:{{{show_id}}}:origin"

    async def claim(self, show_id: str) -> None:
        """This node is the show's origin from now on."""
        self._claimed.add(show_id)
        value = json.dumps({"node": self.me.node, "url": self.me.url})
        try:
            await self._redis.set(self._key(show_id), value, px=self._ttl_ms)
        except (RedisError, OSError) as exc:  # the heartbeat claims it again when Redis is back
            log.warning("show %s: could not claim it in Redis (%s); retrying with the heartbeat", show_id, exc)
        if self._heartbeat is None:
            self._heartbeat = asyncio.ensure_future(self._beat())

    async def release(self, show_id: str) -> None:
        """The show is no longer published here (its end, or its host gone for good)."""
        if show_id in self._claimed:
            self._claimed.discard(show_id)
            try:
                await self._release(keys=[self._key(show_id)], args=[self.me.node])
            except (RedisError, OSError) as exc:
                log.warning("show %s: could not release it in Redis (%s); it lapses by itself", show_id, exc)

    def holds(self, show_id: str) -> bool:
        return show_id in self._claimed

    async def lookup(self, show_id: str) -> Origin | None:
        try:
            value = await self._redis.get(self._key(show_id))
        except (RedisError, OSError) as exc:
            log.warning("show %s: origin lookup failed: %s", show_id, exc)
            return None
        if not value:
            return None
        body = json.loads(value)
        return Origin(body["node"], body["url"])

    async def _beat(self) -> None:
        """Refresh this node's claims; a claim another node took is let go. After Redis was
        away (a restart empties it), the claims are made again."""
        interval = self._ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            for show_id in list(self._claimed):
                key = self._key(show_id)
                try:
                    if await self._refresh(keys=[key], args=[self.me.node, self._ttl_ms]):
                        continue
                    current = await self._redis.get(key)
                    if current is None:  # lapsed or Redis was emptied: still ours
                        await self._redis.set(key, json.dumps({"node": self.me.node, "url": self.me.url}),
                                              px=self._ttl_ms, nx=True)
                        continue
                except (RedisError, OSError) as exc:
                    log.warning("origin heartbeat: Redis unreachable (%s)", exc)
                    break
                if show_id in self._claimed:
                    self._claimed.discard(show_id)
                    log.info("show %s: its host now publishes to %s", show_id, json.loads(current)["node"])

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for show_id in list(self._claimed):
            await self.release(show_id)
        await self._redis.aclose()
