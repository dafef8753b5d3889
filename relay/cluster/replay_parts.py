"""The parts of replays recorded across a cluster: who recorded what (in Redis), and reading a
replay file from the node that wrote it.

Keys, with prefix `p` and show `S`: `p:replay:{S}:parts`, a hash of the show's parts (tag ->
JSON); `p:replay:{S}:assembler`, the node putting the replay together once the show ended;
`p:replay:{S}:home`, the base URL of the node that did (it has every file).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Callable

import aiohttp
import redis.asyncio as aioredis

from ..models import LOCAL_ONLY_HEADER, ReplayPart
from ..redis_client import call
from .nodes import NodeDirectory
from .origins import Origin

log = logging.getLogger(__name__)

WHAT = "replay parts (Redis)"
FETCH_TIMEOUT_S = 15.0
ASSEMBLY_CLAIM_S = 24 * 3600


class ClusterReplayParts:
    """ReplayCluster on Redis and the other nodes' replay endpoints (read with the admin key)."""

    def __init__(self, url: str, prefix: str, me: Callable[[], Origin], admin_key: str, nodes: NodeDirectory) -> None:
        self._redis = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5)
        self._prefix = prefix
        self._me = me  # (read when used: a server's port may be known only once it listens)
        self._admin_key = admin_key
        self._nodes = nodes
        self._http: aiohttp.ClientSession | None = None

    @property
    def node(self) -> str:
        return self._me().node

    @property
    def url(self) -> str:
        return self._me().url

    def _key(self, show_id: str, what: str) -> str:
        return f"{self._prefix}:replay:{{{show_id}}}:{what}"

    async def add_part(self, show_id: str, part: ReplayPart) -> None:
        await call(WHAT, self._redis.hsetnx(self._key(show_id, "parts"), part.tag, json.dumps(dataclasses.asdict(part))))

    async def end_part(self, show_id: str, tag: str) -> None:
        key = self._key(show_id, "parts")
        raw = await call(WHAT, self._redis.hget(key, tag))
        if raw is not None:  # (only this node writes its parts)
            await call(WHAT, self._redis.hset(key, tag, json.dumps(json.loads(raw) | {"ended": True})))

    async def parts(self, show_id: str) -> list[ReplayPart]:
        """The show's parts, in the order they began."""
        raw = await call(WHAT, self._redis.hvals(self._key(show_id, "parts")))
        return sorted((ReplayPart(**json.loads(value)) for value in raw), key=lambda p: (p.started_at, p.tag))

    async def claim_assembly(self, show_id: str) -> bool:
        """True for the one node that puts the ended show's replay together."""
        return bool(await call(WHAT, self._redis.set(self._key(show_id, "assembler"), self.node, nx=True,
                                                     ex=ASSEMBLY_CLAIM_S)))

    async def set_home(self, show_id: str, url: str) -> None:
        await call(WHAT, self._redis.set(self._key(show_id, "home"), url))

    async def home(self, show_id: str) -> str | None:
        return await call(WHAT, self._redis.get(self._key(show_id, "home")))

    async def forget(self, show_id: str) -> None:
        await call(WHAT, self._redis.delete(*(self._key(show_id, what) for what in ("parts", "assembler", "home"))))

    async def alive(self, node: str) -> bool:
        return node == self.node or await self._nodes.alive(node)

    async def fetch(self, base_url: str, show_id: str, name: str) -> bytes | None:
        """A replay file as the node at `base_url` has it on its disk; None if it has not or
        cannot be reached."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self._admin_key}", LOCAL_ONLY_HEADER: "1"}
        try:
            async with self._http.get(f"{base_url}/replay/{show_id}/{name}", headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)) as res:
                if res.status == 200:
                    return await res.read()
                log.info("show %s: %s has no %s (%d)", show_id, base_url, name, res.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("show %s: reading %s from %s failed: %s", show_id, name, base_url, exc)
        return None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        await self._redis.aclose()
