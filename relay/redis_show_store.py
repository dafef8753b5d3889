"""The shared show store: shows, mirror rooms and room figures in Redis, for relay nodes that
serve the same shows (`--redis URL`).

Keys, with prefix `p` and show `S` (a show's keys carry the hash tag {S}):

- `p:shows`: sorted set of show ids by created_at (`list_shows`);
- `p:show:{S}`: hash, the show's fields (values JSON); `p:show:{S}:mirrors`: hash, distributor ->
  {"name", "created_at"} (JSON); `p:show:{S}:restreams`: hash, restream id -> {"name", "url",
  "created_at"} (JSON; the URL holds the platform's stream key); `p:show:{S}:restream_state`:
  hash, restream id -> its state on the node pushing it (JSON), gone `ttl_s` after its last save;
- `p:show:{S}:nodes`: set of the nodes that saved figures or live viewers of the show;
- `p:show:{S}:figures:<node>`: hash, room -> that node's {"peak_viewers", "total_sessions"}
  (JSON, no expiry); `p:show:{S}:live:<node>`: hash, room -> viewers on that node now, gone
  `ttl_s` after the node's last save; `p:show:{S}:peak`: hash, room -> cluster-wide peak.

Each write to a show, its mirrors or its restream targets publishes the show id on the channel
`p:catalog` in the same atomic step, so every node's catalog can forget what it cached (`follow`)
and the node pushing a show reads its restream targets again. Creating and deleting
a show touch `p:shows` too, outside the show's slot: like the commerce store, this speaks to one
Redis (or a replicated primary), not a Cluster.
"""

from __future__ import annotations

import asyncio
from itertools import chain
import json
import logging
import secrets
from typing import Any, Awaitable, Callable, Iterable

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from .errors import mirror_exists, show_exists, show_not_found, too_many_restreams
from .models import HQ_ROOM, Mirror, Restream, RoomFigures, Show, ShowState
from .redis_client import UNREACHABLE, call, connect, from_hash, read_hashes, to_hash

log = logging.getLogger(__name__)

WHAT = "show store (Redis)"
RECONNECT_S = 0.1  # the first wait after losing the change feed; doubled up to RECONNECT_MAX_S
RECONNECT_MAX_S = 5.0

# Lua, shared by the figure scripts: a room may hold figures if it is HQ (ARGV[2]) or one of the
# show's mirror rooms (KEYS[2]): a node still counting a room another node deleted cannot bring
# its figures back.
_ROOM_EXISTS = """
local function room_exists(room)
  return room == ARGV[2] or redis.call('HEXISTS', KEYS[2], room) == 1
end
"""

# KEYS: show, index.  ARGV: show id, created_at, channel, field/value pairs.  1, or 0: id taken.
_CREATE_SHOW = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
"""

# KEYS: show.  ARGV: show id, channel, field/value pairs.  A deleted show stays deleted.
_UPDATE_SHOW = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
"""

# KEYS: show, mirrors.  ARGV: show id, channel, distributor, record.
_ADD_MIRROR = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'no_show' end
if redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4]) == 0 then return 'exists' end
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 'ok'
"""

# KEYS: mirrors.  ARGV: show id, catalog channel, distributor, record.  A room that is gone stays gone.
_UPDATE_MIRROR = """
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
"""

# KEYS: show, restreams.  ARGV: show id, channel, restream id, record, limit.
_ADD_RESTREAM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'no_show' end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[5]) then return 'full' end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 'ok'
"""

# KEYS: restreams.  ARGV: show id, channel, restream id.  1, or 0: there was none.
_DELETE_RESTREAM = """
if redis.call('HDEL', KEYS[1], ARGV[3]) == 0 then return 0 end
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
"""

# KEYS: show, mirrors, nodes, this node's figures.  ARGV: node, HQ, room/figures pairs.
_SAVE_FIGURES = _ROOM_EXISTS + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SADD', KEYS[3], ARGV[1])
for i = 3, #ARGV, 2 do
  if room_exists(ARGV[i]) then redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]) end
end
return 1
"""

# KEYS: show, mirrors, nodes, peak, this node's live viewers, then every other node's.
# ARGV: node, HQ, ttl in ms, room/viewers pairs.  This node's counts replace its last ones;
# then each room's peak rises to the sum over the nodes, if that is higher.
_SAVE_LIVE = _ROOM_EXISTS + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[5])
for i = 4, #ARGV, 2 do
  if room_exists(ARGV[i]) then redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1]) end
end
redis.call('PEXPIRE', KEYS[5], ARGV[3])
local sums = {}
for k = 5, #KEYS do
  local counts = redis.call('HGETALL', KEYS[k])
  for j = 1, #counts, 2 do sums[counts[j]] = (sums[counts[j]] or 0) + tonumber(counts[j + 1]) end
end
for room, n in pairs(sums) do
  if n > tonumber(redis.call('HGET', KEYS[4], room) or '0') then redis.call('HSET', KEYS[4], room, n) end
end
return 1
"""


def _pairs(fields: Iterable[tuple[str, Any]]) -> list[Any]:
    return list(chain.from_iterable(fields))


def _mirror_record(mirror: Mirror) -> str:
    return json.dumps({"name": mirror.name, "created_at": mirror.created_at,
                       "commission_rate": mirror.commission_rate})


def _show(fields: dict[str, str]) -> Show:
    values = from_hash(fields)
    return Show(**values | {"state": ShowState(values["state"])})


class RedisShowStore:
    """ShowStore and FiguresStore on a Redis server shared by every relay node.

    `node_id` names this process among the nodes: its room figures and live viewers are kept
    apart from the other nodes' and added up when read. Each process needs its own (the default
    is a random one); a restarted process takes a new one, and what the old one counted stays.

    Figures read back (`load_room_figures`) are the cluster's: total_sessions is the sum over
    the nodes; peak_viewers is the higher of the nodes' own peaks and the highest sum of the
    nodes' live viewers seen when any node saved them (`save_live_viewers`). That sum adds up
    each node's latest save, so it can miss a spike between saves (the nodes' own peaks catch
    one that happened on one node) and can count a viewer twice who moved nodes within a save
    interval.
    """

    def __init__(self, url: str, prefix: str = "relay", node_id: str | None = None) -> None:
        self.node_id = node_id or secrets.token_hex(6)
        self._prefix = prefix
        self._redis = connect(url)
        self._index = f"{prefix}:shows"
        self._channel = f"{prefix}:catalog"
        self._create = self._redis.register_script(_CREATE_SHOW)
        self._update = self._redis.register_script(_UPDATE_SHOW)
        self._add_mirror = self._redis.register_script(_ADD_MIRROR)
        self._update_mirror = self._redis.register_script(_UPDATE_MIRROR)
        self._add_restream = self._redis.register_script(_ADD_RESTREAM)
        self._delete_restream = self._redis.register_script(_DELETE_RESTREAM)
        self._save_figures = self._redis.register_script(_SAVE_FIGURES)
        self._save_live = self._redis.register_script(_SAVE_LIVE)

    def _key(self, show_id: str, *parts: str) -> str:
        return ":".join((self._prefix, "show", "{" + show_id + "}", *parts))

    async def _do(self, awaitable: Awaitable[Any]) -> Any:
        return await call(WHAT, awaitable)

    async def close(self) -> None:
        await self._redis.aclose()

    # -- shows -----------------------------------------------------------------------------
    async def create_show(self, show: Show) -> None:
        """Stores a new show; 409 if the id is taken (two nodes may race for one)."""
        args = [show.id, repr(show.created_at), self._channel, *_pairs(to_hash(vars(show)).items())]
        if not await self._do(self._create(keys=[self._key(show.id), self._index], args=args)):
            raise show_exists(show.id)

    async def get_show(self, show_id: str) -> Show | None:
        fields = await self._do(self._redis.hgetall(self._key(show_id)))
        return _show(fields) if fields else None

    async def list_shows(self) -> list[Show]:
        """Every show, oldest first."""
        ids = await self._do(self._redis.zrange(self._index, 0, -1))
        return [_show(fields) for fields in await self._hashes([self._key(i) for i in ids]) if fields]

    async def update_show(self, show: Show) -> None:
        """Writes the show's fields but its id and created_at; a show that is gone stays gone."""
        fields = to_hash(vars(show))
        del fields["id"], fields["created_at"]
        await self._do(self._update(keys=[self._key(show.id)], args=[show.id, self._channel, *_pairs(fields.items())]))

    async def delete_show(self, show_id: str) -> None:
        """The show, its mirror rooms, restream targets, figures and live viewers, at once."""

        def delete(pipe: Pipeline, nodes: list[str]) -> None:
            pipe.delete(self._key(show_id), self._key(show_id, "mirrors"), self._key(show_id, "restreams"),
                        self._key(show_id, "restream_state"), self._key(show_id, "nodes"),
                        self._key(show_id, "peak"), *self._node_keys(show_id, nodes))
            pipe.zrem(self._index, show_id)

        await self._rewrite(show_id, delete)

    # -- mirror rooms ----------------------------------------------------------------------
    async def add_mirror(self, mirror: Mirror) -> None:
        """Stores a new mirror room; 409 if the distributor has one, 404 if the show is gone."""
        record = _mirror_record(mirror)
        outcome = await self._do(self._add_mirror(
            keys=[self._key(mirror.show_id), self._key(mirror.show_id, "mirrors")],
            args=[mirror.show_id, self._channel, mirror.distributor, record]))
        if outcome == "no_show":
            raise show_not_found(mirror.show_id)
        if outcome == "exists":
            raise mirror_exists(mirror.distributor)

    async def update_mirror(self, mirror: Mirror) -> None:
        """Writes the room's name and rate; a room that is gone stays gone."""
        await self._do(self._update_mirror(keys=[self._key(mirror.show_id, "mirrors")],
                                           args=[mirror.show_id, self._channel, mirror.distributor,
                                                 _mirror_record(mirror)]))

    async def list_mirrors(self, show_id: str) -> list[Mirror]:
        """The show's mirror rooms, oldest first."""
        records = await self._do(self._redis.hgetall(self._key(show_id, "mirrors")))
        mirrors = [Mirror(show_id, distributor, **json.loads(raw)) for distributor, raw in records.items()]
        return sorted(mirrors, key=lambda m: (m.created_at, m.distributor))

    async def delete_mirror(self, show_id: str, distributor: str) -> None:
        """The room, and its figures and live viewers on every node, at once."""

        def delete(pipe: Pipeline, nodes: list[str]) -> None:
            pipe.hdel(self._key(show_id, "mirrors"), distributor)
            for key in (self._key(show_id, "peak"), *self._node_keys(show_id, nodes)):
                pipe.hdel(key, distributor)

        await self._rewrite(show_id, delete)

    # -- restream targets ------------------------------------------------------------------
    async def add_restream(self, restream: Restream, limit: int) -> None:
        """Stores a new restream target; 404 if the show is gone, 409 if it has `limit` already."""
        record = json.dumps({"name": restream.name, "url": restream.url, "created_at": restream.created_at})
        outcome = await self._do(self._add_restream(
            keys=[self._key(restream.show_id), self._key(restream.show_id, "restreams")],
            args=[restream.show_id, self._channel, restream.id, record, limit]))
        if outcome == "no_show":
            raise show_not_found(restream.show_id)
        if outcome == "full":
            raise too_many_restreams(limit)

    async def list_restreams(self, show_id: str) -> list[Restream]:
        """The show's restream targets, oldest first."""
        records = await self._do(self._redis.hgetall(self._key(show_id, "restreams")))
        restreams = [Restream(show_id, restream_id, **json.loads(raw)) for restream_id, raw in records.items()]
        return sorted(restreams, key=lambda r: (r.created_at, r.id))

    async def delete_restream(self, show_id: str, restream_id: str) -> bool:
        return bool(await self._do(self._delete_restream(keys=[self._key(show_id, "restreams")],
                                                         args=[show_id, self._channel, restream_id])))

    async def save_restream_states(self, show_id: str, states: dict[str, dict], ttl_s: float) -> None:
        """The targets' state as the node pushing them sees it, replacing the last, for `ttl_s`."""
        key = self._key(show_id, "restream_state")
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        if states:
            pipe.hset(key, mapping={i: json.dumps(state) for i, state in states.items()})
            pipe.pexpire(key, max(1, round(ttl_s * 1000)))
        await self._do(pipe.execute())

    async def load_restream_states(self, show_id: str) -> dict[str, dict]:
        records = await self._do(self._redis.hgetall(self._key(show_id, "restream_state")))
        return {i: json.loads(raw) for i, raw in records.items()}

    # -- figures ---------------------------------------------------------------------------
    async def save_room_figures(self, show_id: str, rooms: dict[str, RoomFigures]) -> None:
        """This node's own absolute counts (peak and total sessions of the viewers it served);
        rooms of a show or mirror room that is gone are not saved."""
        records = ((room, json.dumps({"peak_viewers": f.peak_viewers, "total_sessions": f.total_sessions}))
                   for room, f in rooms.items())
        keys = [self._key(show_id), self._key(show_id, "mirrors"), self._key(show_id, "nodes"),
                self._key(show_id, "figures", self.node_id)]
        await self._do(self._save_figures(keys=keys, args=[self.node_id, HQ_ROOM, *_pairs(records)]))

    async def load_room_figures(self, show_id: str) -> dict[str, RoomFigures]:
        """The cluster's figures (see the class)."""
        nodes = await self._nodes(show_id)
        *per_node, peaks = await self._hashes(
            [self._key(show_id, "figures", node) for node in nodes] + [self._key(show_id, "peak")])
        rooms: dict[str, RoomFigures] = {}
        for records in per_node:
            for room, raw in records.items():
                node_figures, figures = json.loads(raw), rooms.setdefault(room, RoomFigures())
                figures.peak_viewers = max(figures.peak_viewers, node_figures["peak_viewers"])
                figures.total_sessions += node_figures["total_sessions"]
        for room, peak in peaks.items():
            figures = rooms.setdefault(room, RoomFigures())
            figures.peak_viewers = max(figures.peak_viewers, int(peak))
        return rooms

    async def save_live_viewers(self, show_id: str, rooms: dict[str, int], ttl_s: float) -> None:
        """This node's viewers per room now, replacing its last save; they count for `ttl_s`
        (a node that stops saving, having died, stops counting)."""
        others = [self._key(show_id, "live", node) for node in await self._nodes(show_id) if node != self.node_id]
        keys = [self._key(show_id), self._key(show_id, "mirrors"), self._key(show_id, "nodes"),
                self._key(show_id, "peak"), self._key(show_id, "live", self.node_id), *others]
        args = [self.node_id, HQ_ROOM, max(1, round(ttl_s * 1000)), *_pairs(rooms.items())]
        await self._do(self._save_live(keys=keys, args=args))

    async def load_live_viewers(self, show_id: str) -> dict[str, int]:
        """Viewers per room now, summed over the nodes that saved within their ttl."""
        nodes = await self._nodes(show_id)
        viewers: dict[str, int] = {}
        for counts in await self._hashes([self._key(show_id, "live", node) for node in nodes]):
            for room, n in counts.items():
                viewers[room] = viewers.get(room, 0) + int(n)
        return viewers

    # -- changes made by any node ----------------------------------------------------------
    async def follow(self, on_change: Callable[[str | None], None]) -> None:
        """Calls `on_change(show_id)` after any node changed a show or its mirror rooms, and
        `on_change(None)` each time the feed is (re)connected (changes may have gone unseen:
        forget everything). Runs until cancelled; reconnects with backoff."""
        delay, lost = RECONNECT_S, False
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":  # the server has us: nothing is missed from here
                        if lost:
                            log.info("catalog change feed is back")
                        delay, lost = RECONNECT_S, False
                        _tell(on_change, None)
                    elif message["type"] == "message":
                        _tell(on_change, message["data"])
            except (*UNREACHABLE, RedisError) as exc:
                if not lost:
                    log.warning("catalog change feed lost (%s); reconnecting", exc)
                lost = True
            finally:
                await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    # -- helpers ---------------------------------------------------------------------------
    def _node_keys(self, show_id: str, nodes: list[str]) -> list[str]:
        return [self._key(show_id, kind, node) for node in nodes for kind in ("figures", "live")]

    async def _nodes(self, show_id: str) -> list[str]:
        return sorted(await self._do(self._redis.smembers(self._key(show_id, "nodes"))))

    async def _hashes(self, keys: list[str]) -> list[dict[str, str]]:
        return await read_hashes(self._redis, WHAT, keys)

    async def _rewrite(self, show_id: str, build: Callable[[Pipeline, list[str]], None]) -> None:
        """Run `build`'s commands, given the show's nodes, as one transaction that publishes the
        change; done again if a node joined meanwhile (its keys would be left behind)."""
        nodes_key = self._key(show_id, "nodes")

        async def transaction(pipe: Pipeline) -> None:
            nodes = sorted(await pipe.smembers(nodes_key))
            pipe.multi()
            build(pipe, nodes)
            pipe.publish(self._channel, show_id)

        await self._do(self._redis.transaction(transaction, nodes_key))


def _tell(on_change: Callable[[str | None], None], show_id: str | None) -> None:
    try:
        on_change(show_id)
    except Exception:  # a listener's bug must not stop every later change reaching it
        log.exception("catalog change listener failed on %r", show_id)
