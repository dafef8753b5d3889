"""The Redis order book: orders and refunds on the Redis server every relay process shares.

Each order is one key; the books (what each room and sharer sold) and the distinct buyers per
room are counters kept beside the orders, updated in the same atomic step as the order itself,
so reading them costs one call however many orders a show has. Intakes are decided by one
server-side script each, sent in pipelined batches; a refund is computed here and committed in
an optimistic transaction on its order. Money is integer cents, computed in Python: the scripts
only add integers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from redis.exceptions import WatchError

from ..errors import ApiError, StoreUnavailable
from ..redis_client import UNREACHABLE, call, connect
from . import orders
from .orders import LedgerRow, Order, Refund

log = logging.getLogger(__name__)

MAX_BATCH = 500
_WHAT = "order book (Redis)"
# The counters of one (room, sharer) row of the books (ledger fields "room\nsharer\n<counter>"),
# and the LedgerRow field each one fills.
_COUNTERS = {"orders": "orders", "gmv": "gmv_cents", "refunds": "refunds_cents",
             "distributor": "distributor_cents", "sharer_commission": "sharer_cents"}

# KEYS: order, ledger, buyer_counts, room_gen, buyers:<room>
# ARGV: record, room, ledger row ("room\nsharer\n"), amount, distributor, sharer cents,
#       "1" when the order has a buyer ("0" otherwise), the buyer
# The order already kept under the id, or nil once this one is kept and counted.
_TAKE_ORDER = """
local kept = redis.call('HGET', KEYS[1], 'record')
if kept then
  return kept
end
local gen = redis.call('HGET', KEYS[4], ARGV[2]) or '0'
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'gen', gen)
local row = ARGV[3]
redis.call('HINCRBY', KEYS[2], row .. 'orders', 1)
redis.call('HINCRBY', KEYS[2], row .. 'gmv', ARGV[4])
redis.call('HINCRBY', KEYS[2], row .. 'distributor', ARGV[5])
redis.call('HINCRBY', KEYS[2], row .. 'sharer_commission', ARGV[6])
redis.call('HINCRBY', KEYS[2], row .. 'refunds', 0)
if ARGV[7] == '1' and redis.call('SADD', KEYS[5], ARGV[8]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
end
return false
"""

# KEYS: ledger, buyer_counts, buyers:<room>, buyers:<retired>, room_gen, retired
# ARGV: room, retired
_RETIRE_ROOM = """
local room, retired = ARGV[1], ARGV[2]
local prefix = room .. '\\n'  -- with the separator: room "a" is not room "ab"
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local field = fields[i]
  if string.sub(field, 1, #prefix) == prefix then
    redis.call('HINCRBY', KEYS[1], retired .. string.sub(field, #room + 1), fields[i + 1])
    redis.call('HDEL', KEYS[1], field)
  end
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  local n = redis.call('SUNIONSTORE', KEYS[4], KEYS[4], KEYS[3])
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[2], retired, n)
end
redis.call('HDEL', KEYS[2], room)
local gen = redis.call('HINCRBY', KEYS[5], room, 1) - 1
redis.call('HSET', KEYS[6], room .. '\\n' .. gen, retired)
return 1
"""


class RedisOrderBook:
    """OrderBook on a Redis server shared by every relay process.

    Keys, all under the show's hash tag (one cluster slot per show):
      prefix:{show}:order:<order_id>  hash: record (Order.record()), gen (its room's generation)
      prefix:{show}:ledger            hash "room\\nsharer\\n<counter>" -> cents or count, net of refunds
      prefix:{show}:buyers:<room>     set of the room's buyers (viewer ids)
      prefix:{show}:buyer_counts      hash room -> distinct buyers
      prefix:{show}:room_gen          hash room -> how many times a room of that name was retired
      prefix:{show}:retired           hash "room\\ngen" -> the retired name that generation's sales moved to
    """

    def __init__(self, url: str, prefix: str = "relay") -> None:
        self._prefix = prefix
        self._redis = connect(url)
        self._take_script = self._redis.register_script(_TAKE_ORDER)
        self._retire_script = self._redis.register_script(_RETIRE_ROOM)
        self._intakes: list[tuple[Order, asyncio.Future]] = []
        self._intakes_waiting = asyncio.Event()
        self._task: asyncio.Task | None = None

    # -- keys ------------------------------------------------------------------------------
    def _key(self, show_id: str, *parts: str) -> str:
        return ":".join((self._prefix, "{" + show_id + "}", *parts))

    async def _do(self, awaitable: Awaitable[Any]) -> Any:
        """Await a Redis call; an unreachable Redis becomes a 503."""
        return await call(_WHAT, awaitable)

    # -- life ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start sending intakes (take_order also starts it: the OrderBook protocol has no start)."""
        self._start()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run_intakes())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        # Intakes not answered yet may or may not be kept: their callers retry with the same id.
        for _, future in self._intakes:
            if not future.done():
                future.set_exception(StoreUnavailable(_WHAT, "the order book is closed"))
        self._intakes = []
        await self._redis.aclose()

    # -- orders ----------------------------------------------------------------------------
    async def take_order(self, order: Order) -> Order:
        self._start()
        future = asyncio.get_running_loop().create_future()
        self._intakes.append((order, future))
        self._intakes_waiting.set()
        kept = await future
        return order if kept is None else Order.from_record(order.show_id, order.order_id, kept)

    async def _run_intakes(self) -> None:
        """Send waiting intakes as one pipeline of scripts: one round trip for many orders."""
        while True:
            await self._intakes_waiting.wait()
            self._intakes_waiting.clear()
            while self._intakes:
                batch, self._intakes = self._intakes[:MAX_BATCH], self._intakes[MAX_BATCH:]
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for order, _ in batch:
                            await self._take_script(keys=self._intake_keys(order), args=self._intake_args(order),
                                                    client=pipe)
                        results = await pipe.execute(raise_on_error=False)
                except asyncio.CancelledError:
                    for _, future in batch:  # close() answers the others still waiting
                        if not future.done():
                            future.set_exception(StoreUnavailable(_WHAT, "the order book is closed"))
                    raise
                except Exception as exc:  # unreachable: no intake of this batch is answered as done
                    if not isinstance(exc, UNREACHABLE):
                        log.exception("order intake batch failed")
                    results = [StoreUnavailable(_WHAT, exc)] * len(batch)
                for (_, future), result in zip(batch, results):
                    if future.done():  # its caller went away
                        continue
                    if isinstance(result, Exception):
                        if not isinstance(result, ApiError):
                            log.error("order intake script failed: %s", result)
                            result = StoreUnavailable(_WHAT, result)
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    def _intake_keys(self, order: Order) -> list[str]:
        show = order.show_id
        return [self._key(show, "order", order.order_id), self._key(show, "ledger"),
                self._key(show, "buyer_counts"), self._key(show, "room_gen"), self._key(show, "buyers", order.room)]

    @staticmethod
    def _intake_args(order: Order) -> list[str]:
        return [order.record(), order.room, _row(order.room, order.sharer), str(order.amount_cents),
                str(order.distributor_cents), str(order.sharer_cents),
                "0" if order.viewer_id is None else "1", order.viewer_id or ""]

    async def order(self, show_id: str, order_id: str) -> Order:
        raw = await self._do(self._redis.hget(self._key(show_id, "order", order_id), "record"))
        if raw is None:
            raise _no_order(show_id, order_id)
        return Order.from_record(show_id, order_id, raw)

    # -- refunds ---------------------------------------------------------------------------
    async def take_refund(self, show_id: str, order_id: str, refund_id: str, amount_cents: int,
                          now: float) -> tuple[Order, Refund, bool]:
        return await self._do(self._take_refund(show_id, order_id, refund_id, amount_cents, now))

    async def _take_refund(self, show_id: str, order_id: str, refund_id: str, amount_cents: int,
                           now: float) -> tuple[Order, Refund, bool]:
        key, ledger = self._key(show_id, "order", order_id), self._key(show_id, "ledger")
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    # room_gen too: a room retired meanwhile changes where the reversal is booked.
                    await pipe.watch(key, self._key(show_id, "room_gen"))
                    raw, gen = await pipe.hmget(key, ["record", "gen"])
                    if raw is None:
                        raise _no_order(show_id, order_id)
                    order = Order.from_record(show_id, order_id, raw)
                    known = next((r for r in order.refunds if r.refund_id == refund_id), None)
                    if known is not None:
                        if known.amount_cents != amount_cents:
                            raise ApiError(409, "refund_id_reused",
                                           f"refund {refund_id!r} of this order was for another amount")
                        return order, known, False
                    made = orders.refund(order, refund_id, amount_cents, now)
                    order.refunds.append(made)
                    # The record keeps the room the order was sold in; its sales may since have
                    # moved to the room's retired name, and so does its reversal.
                    room = await pipe.hget(self._key(show_id, "retired"), f"{order.room}\n{gen}") or order.room
                    row = _row(room, order.sharer)
                    pipe.multi()
                    pipe.hset(key, "record", order.record())
                    pipe.hincrby(ledger, row + "refunds", made.amount_cents)
                    pipe.hincrby(ledger, row + "distributor", -made.distributor_cents)
                    pipe.hincrby(ledger, row + "sharer_commission", -made.sharer_cents)
                    await pipe.execute()
                    return order, made, True
                except WatchError:
                    continue  # the order (or the rooms) changed since it was read: read it again

    # -- the books -------------------------------------------------------------------------
    async def ledger(self, show_id: str) -> list[LedgerRow]:
        fields = await self._do(self._redis.hgetall(self._key(show_id, "ledger")))
        rows: dict[tuple[str, str], LedgerRow] = {}
        for field, value in fields.items():
            room, rest = field.split("\n", 1)
            sharer, counter = rest.rsplit("\n", 1)
            if counter in _COUNTERS:
                setattr(rows.setdefault((room, sharer), LedgerRow(room, sharer)), _COUNTERS[counter], int(value))
        # The embedded book groups orders: a row with none (debris of a race with a purge) is not one.
        return [row for _, row in sorted(rows.items()) if row.orders]

    async def buyers(self, show_id: str) -> dict[str, int]:
        counts = await self._do(self._redis.hgetall(self._key(show_id, "buyer_counts")))
        return {room: int(n) for room, n in counts.items() if int(n)}

    async def purge_show(self, show_id: str) -> None:
        # Only the order book's keys: the commerce store shares the show's namespace (and keeps
        # its event counter across purges). Orders go first, so that a refund racing the purge
        # fails its transaction instead of booking into a ledger already gone.
        async def keys() -> list[str]:  # glob specials in a show id are excluded by the slug rule
            found = [k async for k in self._redis.scan_iter(match=self._key(show_id, "order", "*"), count=500)]
            found += [k async for k in self._redis.scan_iter(match=self._key(show_id, "buyers", "*"), count=500)]
            return found + [self._key(show_id, name) for name in ("ledger", "buyer_counts", "room_gen", "retired")]

        doomed = await self._do(keys())
        for start in range(0, len(doomed), 500):
            await self._do(self._redis.unlink(*doomed[start:start + 500]))

    async def retire_room(self, show_id: str, room: str, retired: str) -> None:
        # Order records keep the room they were sold in (as the embedded book's do); the room's
        # generation tells an old order's refund that its sales are now booked under `retired`.
        keys = [self._key(show_id, "ledger"), self._key(show_id, "buyer_counts"),
                self._key(show_id, "buyers", room), self._key(show_id, "buyers", retired),
                self._key(show_id, "room_gen"), self._key(show_id, "retired")]
        await self._do(self._retire_script(keys=keys, args=[room, retired]))


def _row(room: str, sharer: str | None) -> str:
    """The ledger fields' prefix for the (room, sharer) row ("" for no sharer)."""
    return f"{room}\n{sharer or ''}\n"


def _no_order(show_id: str, order_id: str) -> ApiError:
    return ApiError(404, "order_not_found", f"show {show_id!r} has no order {order_id!r}")
