"""The shared replay store: each show's replay record in Redis, for relay nodes serving the same
shows.

Keys, with prefix `p` and show `S`: `p:replay:{S}`, a hash of the record's fields (values JSON),
and `p:replays`, the set of show ids that have one.
"""

from __future__ import annotations

from typing import Any, Awaitable

from ..models import Replay, ReplayState
from ..redis_client import call, connect, from_hash, read_hashes, to_hash

WHAT = "replay store (Redis)"


def _replay(fields: dict[str, str]) -> Replay:
    values = from_hash(fields)
    return Replay(**values | {"state": ReplayState(values["state"])})


class RedisReplayStore:
    """ReplayStore on a Redis server shared by every relay node."""

    def __init__(self, url: str, prefix: str = "relay") -> None:
        self._redis = connect(url, max_connections=8)  # a few writes per show, not per viewer
        self._prefix = prefix
        self._index = f"{prefix}:replays"

    def _key(self, show_id: str) -> str:
        return f"{self._prefix}:replay:{{{show_id}}}"

    async def _do(self, awaitable: Awaitable[Any]) -> Any:
        return await call(WHAT, awaitable)

    async def save_replay(self, replay: Replay) -> None:
        """Stores the record, replacing the show's previous one."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(replay.show_id), mapping=to_hash(vars(replay)))
            pipe.sadd(self._index, replay.show_id)
            await self._do(pipe.execute())

    async def get_replay(self, show_id: str) -> Replay | None:
        fields = await self._do(self._redis.hgetall(self._key(show_id)))
        return _replay(fields) if fields else None

    async def list_replays(self) -> list[Replay]:
        """Every record, in no particular order."""
        show_ids = await self._do(self._redis.smembers(self._index))
        records = await read_hashes(self._redis, WHAT, [self._key(show_id) for show_id in show_ids])
        return [_replay(fields) for fields in records if fields]  # (one deleted meanwhile is left out)

    async def delete_replay(self, show_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(show_id))
            pipe.srem(self._index, show_id)
            await self._do(pipe.execute())

    async def close(self) -> None:
        await self._redis.aclose()
