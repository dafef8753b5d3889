"""The order book keeps one contract, embedded (SQLite) or shared (Redis): every test taking `book`
runs against both. An order id is taken once, a refund id once per order, refunds never exceed
what was paid, and the books add up to what was sold, however many requests arrive at once."""

from __future__ import annotations

import asyncio
import inspect
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from relay.commerce import orders
from relay.commerce.orders import Attribution, LedgerRow, Order, Rates
from relay.commerce.redis_orders import RedisOrderBook
from relay.commerce.sqlite_orders import SqliteOrderBook
from relay.errors import ApiError, StoreUnavailable
from relay.models import HQ_ROOM
from relay_testkit.process import free_port

PREFIX = "test"
SHOW = "s1"
SHARER_RATE, ROOM_RATE = Decimal("0.05"), Decimal("0.10")
PRODUCT_RATES: dict[str, Decimal | None] = {"p1": None, "p2": Decimal("0.2"), "p3": Decimal("0.333333")}
RATES = Rates(sharer=SHARER_RATE, room=ROOM_RATE, products=PRODUCT_RATES)


async def close(book: Any) -> None:
    closed = book.close()
    if inspect.isawaitable(closed):
        await closed


@pytest.fixture(params=["sqlite", "redis"])
async def book(request, tmp_path):
    if request.param == "redis":
        made = RedisOrderBook(request.getfixturevalue("redis_server").url, PREFIX)
    else:
        made = SqliteOrderBook(tmp_path / "relay.db")
    yield made
    await close(made)


def an_order(order_id: str, room: str = "a", sharer: str | None = "s1", viewer: str | None = "v1",
             items: tuple[tuple[str, int, int], ...] = (("p1", 1, 1000),), show: str = SHOW,
             digest: str = "fp1") -> Order:
    return orders.price_order(show, order_id, "EUR", list(items), Attribution(room, sharer, viewer), RATES,
                              digest, 1000.0)


def cents(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def expected_row(specs: list[dict]) -> tuple[int, int, int, int, int]:
    """(orders, gmv, refunds, distributor, sharer) of orders with no refunds, from their items and
    the rates, computed here rather than by the order model."""
    gmv = distributor = sharer = 0
    for spec in specs:
        for product, quantity, unit in spec["items"]:
            amount = quantity * unit
            gmv += amount
            if spec["room"] != HQ_ROOM:
                own = PRODUCT_RATES[product]
                distributor += cents(amount * (own if own is not None else ROOM_RATE))
            if spec["sharer"]:
                sharer += cents(amount * SHARER_RATE)
    return len(specs), gmv, 0, distributor, sharer


def books(rows: list[LedgerRow]) -> dict[tuple[str, str], tuple[int, int, int, int, int]]:
    return {(r.room, r.sharer): (r.orders, r.gmv_cents, r.refunds_cents, r.distributor_cents, r.sharer_cents)
            for r in rows}


# -- intake ----------------------------------------------------------------------------------
async def test_an_order_id_is_taken_once(book):
    first = an_order("o1", digest="fp1")
    assert await book.take_order(first) is first
    # A retry, or another body under the same id: the first order answers (the caller compares).
    again = await book.take_order(an_order("o1", room="b", items=(("p2", 5, 300),), digest="fp2"))
    assert again.fingerprint == "fp1"
    assert (again.room, again.amount_cents, again.distributor_cents) == ("a", 1000, 100)
    kept = await book.order(SHOW, "o1")
    assert kept == first
    assert books(await book.ledger(SHOW)) == {("a", "s1"): (1, 1000, 0, 100, 50)}
    assert await book.buyers(SHOW) == {"a": 1}


async def test_an_unknown_order_is_404(book):
    for call in (book.order(SHOW, "nope"), book.take_refund(SHOW, "nope", "r1", 100, 1.0)):
        with pytest.raises(ApiError) as missing:
            await call
        assert (missing.value.status, missing.value.code) == (404, "order_not_found")
    assert await book.ledger(SHOW) == []
    assert await book.buyers(SHOW) == {}


def intake_spec(n: int) -> dict:
    items = [("p1", 1 + n % 3, 199 + n)]
    if n % 2:
        items.append(("p3", n % 4 + 1, 1001))
    if n % 5 == 1:
        items.append(("p2", 1, 12345))
    return {"room": (HQ_ROOM, "a", "ab", "b")[n % 4], "sharer": (None, "s1", "s2")[n % 3],
            "viewer": None if n % 5 == 0 else f"v{n % 7}", "items": tuple(items)}


async def test_concurrent_intakes_add_up(book):
    distinct = 250
    ids = [n % distinct for n in range(300)]  # 50 ids come twice, at the same time as the first
    taken = await asyncio.gather(*(book.take_order(an_order(f"o{n}", spec["room"], spec["sharer"], spec["viewer"],
                                                            spec["items"]))
                                   for n in ids for spec in [intake_spec(n)]))
    assert [order.order_id for order in taken] == [f"o{n}" for n in ids]
    by_row: dict[tuple[str, str], list[dict]] = {}
    buyers: dict[str, set[str]] = {}
    for n in range(distinct):
        spec = intake_spec(n)
        by_row.setdefault((spec["room"], spec["sharer"] or ""), []).append(spec)
        if spec["viewer"] is not None:
            buyers.setdefault(spec["room"], set()).add(spec["viewer"])
    assert books(await book.ledger(SHOW)) == {key: expected_row(specs) for key, specs in by_row.items()}
    assert await book.buyers(SHOW) == {room: len(viewers) for room, viewers in buyers.items()}


# -- refunds ---------------------------------------------------------------------------------
async def test_refunds_reverse_commission_in_proportion(book):
    # 9.99 at 10 % and 5 %: 1.00 and 0.50 earned; thirds of it reversed on the running total.
    await book.take_order(an_order("o1", items=(("p1", 1, 999),)))
    reversed_d = reversed_s = 0
    for n in range(1, 4):
        order, refund, new = await book.take_refund(SHOW, "o1", f"r{n}", 333, 2000.0 + n)
        assert new
        want_d, want_s = cents(Decimal(100) * 333 * n / 999), cents(Decimal(50) * 333 * n / 999)
        assert (refund.amount_cents, refund.distributor_cents, refund.sharer_cents) == (
            333, want_d - reversed_d, want_s - reversed_s)
        reversed_d, reversed_s = want_d, want_s
        assert [r.refund_id for r in order.refunds] == [f"r{k}" for k in range(1, n + 1)]
        assert books(await book.ledger(SHOW)) == {("a", "s1"): (1, 999, 333 * n, 100 - want_d, 50 - want_s)}
    assert [r.distributor_cents for r in order.refunds] == [33, 34, 33]
    assert [r.sharer_cents for r in order.refunds] == [17, 16, 17]
    kept = await book.order(SHOW, "o1")
    assert kept.state == "refunded" and kept.refunds == order.refunds
    assert books(await book.ledger(SHOW)) == {("a", "s1"): (1, 999, 999, 0, 0)}  # exactly what was earned


async def test_a_full_refund_reverses_exactly(book):
    await book.take_order(an_order("o1", items=(("p1", 3, 333), ("p3", 1, 77))))
    order, refund, _ = await book.take_refund(SHOW, "o1", "all", 1076, 2000.0)
    assert (refund.distributor_cents, refund.sharer_cents) == (order.distributor_cents, order.sharer_cents)
    assert books(await book.ledger(SHOW)) == {("a", "s1"): (1, 1076, 1076, 0, 0)}


async def test_a_refund_beyond_the_payment_is_422_and_changes_nothing(book):
    await book.take_order(an_order("o1"))
    await book.take_refund(SHOW, "o1", "r1", 600, 2000.0)
    before, ledger = await book.order(SHOW, "o1"), await book.ledger(SHOW)
    with pytest.raises(ApiError) as exceeded:
        await book.take_refund(SHOW, "o1", "r2", 401, 2001.0)
    assert (exceeded.value.status, exceeded.value.code) == (422, "refund_exceeds_payment")
    assert await book.order(SHOW, "o1") == before
    assert await book.ledger(SHOW) == ledger
    _, last, _ = await book.take_refund(SHOW, "o1", "r2", 400, 2002.0)  # the id was not used up
    assert last.amount_cents == 400


async def test_a_refund_id_is_taken_once_per_order(book):
    await book.take_order(an_order("o1"))
    await book.take_order(an_order("o2"))
    order, first, new = await book.take_refund(SHOW, "o1", "r1", 250, 2000.0)
    assert new
    ledger = await book.ledger(SHOW)
    again, refund, new = await book.take_refund(SHOW, "o1", "r1", 250, 3000.0)
    assert (again, refund, new) == (order, first, False)  # the first refund, its time too
    assert await book.ledger(SHOW) == ledger
    with pytest.raises(ApiError) as reused:
        await book.take_refund(SHOW, "o1", "r1", 300, 3000.0)
    assert (reused.value.status, reused.value.code) == (409, "refund_id_reused")
    assert (await book.order(SHOW, "o1")).refunds == [first]
    _, other, new = await book.take_refund(SHOW, "o2", "r1", 300, 3000.0)  # another order's own ids
    assert new and other.amount_cents == 300
    assert books(await book.ledger(SHOW)) == {("a", "s1"): (2, 2000, 550, 200 - 25 - 30, 100 - 13 - 15)}


async def test_concurrent_refunds_never_exceed_the_payment(book):
    await book.take_order(an_order("o1"))
    outcomes = await asyncio.gather(*(book.take_refund(SHOW, "o1", f"r{n}", 300, 2000.0 + n) for n in range(10)),
                                    return_exceptions=True)
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(done) == 3 and all(new for _, _, new in done)
    assert all(isinstance(e, ApiError) and e.code == "refund_exceeds_payment" for e in refused)
    kept = await book.order(SHOW, "o1")
    assert kept.refunded_cents == 900
    assert sorted(r.refund_id for r in kept.refunds) == sorted(refund.refund_id for _, refund, _ in done)
    assert books(await book.ledger(SHOW)) == {("a", "s1"): (1, 1000, 900, 10, 5)}


async def test_a_refund_retried_concurrently_is_counted_once(book):
    await book.take_order(an_order("o1"))
    outcomes = await asyncio.gather(*(book.take_refund(SHOW, "o1", "r1", 300, 2000.0 + n) for n in range(10)))
    assert [new for _, _, new in outcomes].count(True) == 1
    assert len({refund for _, refund, _ in outcomes}) == 1
    assert books(await book.ledger(SHOW)) == {("a", "s1"): (1, 1000, 300, 70, 35)}


# -- buyers, rooms, shows --------------------------------------------------------------------
async def test_buyers_are_distinct_per_room(book):
    for order in (an_order("o1", "a", viewer="v1"), an_order("o2", "a", viewer="v1"),
                  an_order("o3", "a", sharer=None, viewer="v2"), an_order("o4", "a", viewer=None),
                  an_order("o5", "ab", viewer="v1"), an_order("o6", HQ_ROOM, viewer="v3")):
        await book.take_order(order)
    assert await book.buyers(SHOW) == {"a": 2, "ab": 1, HQ_ROOM: 1}
    assert await book.buyers("other") == {}


async def test_a_retired_rooms_sales_move_and_a_new_room_starts_at_zero(book):
    await book.take_order(an_order("o1", "a", "s1", "v1"))
    await book.take_order(an_order("o2", "a", None, "v2", items=(("p2", 2, 500),)))
    await book.take_order(an_order("o3", "ab", "s1", "v1"))  # "a" is not a prefix of another room
    await book.take_order(an_order("o4", "a~0", "s1", "v1"))  # (a retired name is never a room; the
    await book.take_refund(SHOW, "o1", "r1", 100, 2000.0)     #  merge is what matters here)
    await book.retire_room(SHOW, "a", "a~0")
    assert books(await book.ledger(SHOW)) == {
        ("a~0", "s1"): (2, 2000, 100, 200 - 10, 100 - 5), ("a~0", ""): (1, 1000, 0, 200, 0),
        ("ab", "s1"): (1, 1000, 0, 100, 50)}
    assert await book.buyers(SHOW) == {"a~0": 2, "ab": 1}  # v1 bought in both: one buyer
    # A new room "a": its buyers and sales are its own.
    await book.take_order(an_order("o5", "a", "s1", "v1"))
    assert await book.buyers(SHOW) == {"a~0": 2, "ab": 1, "a": 1}
    # Refunds of the old room's orders go with their sales; the new room's stay with it.
    await book.take_refund(SHOW, "o1", "r2", 900, 2001.0)
    await book.take_refund(SHOW, "o5", "r1", 500, 2002.0)
    assert books(await book.ledger(SHOW)) == {
        ("a~0", "s1"): (2, 2000, 1000, 100, 50), ("a~0", ""): (1, 1000, 0, 200, 0),
        ("ab", "s1"): (1, 1000, 0, 100, 50), ("a", "s1"): (1, 1000, 500, 50, 25)}
    # Retired again, the new room's sales go to their own retired name.
    await book.retire_room(SHOW, "a", "a~1")
    await book.take_refund(SHOW, "o5", "r2", 500, 2003.0)
    assert books(await book.ledger(SHOW)) == {
        ("a~0", "s1"): (2, 2000, 1000, 100, 50), ("a~0", ""): (1, 1000, 0, 200, 0),
        ("ab", "s1"): (1, 1000, 0, 100, 50), ("a~1", "s1"): (1, 1000, 1000, 0, 0)}
    assert await book.buyers(SHOW) == {"a~0": 2, "ab": 1, "a~1": 1}


async def test_a_purged_show_leaves_nothing(book, request):
    for show in (SHOW, "s2"):
        await book.take_order(an_order("o1", show=show))
        await book.take_refund(show, "o1", "r1", 100, 2000.0)
        await book.retire_room(show, "a", "a~0")
        await book.take_order(an_order("o2", show=show))
    await book.purge_show(SHOW)
    assert await book.ledger(SHOW) == []
    assert await book.buyers(SHOW) == {}
    with pytest.raises(ApiError):
        await book.order(SHOW, "o1")
    if isinstance(book, RedisOrderBook):
        client = aioredis.from_url(request.getfixturevalue("redis_server").url, decode_responses=True)
        try:
            assert [k async for k in client.scan_iter(match=f"{PREFIX}:{{{SHOW}}}:*")] == []
        finally:
            await client.aclose()
    # The other show is whole; a new show with the id starts afresh.
    assert books(await book.ledger("s2")) == {("a~0", "s1"): (1, 1000, 100, 90, 45), ("a", "s1"): (1, 1000, 0, 100, 50)}
    fresh = an_order("o1", digest="new")
    assert await book.take_order(fresh) is fresh
    assert (await book.take_refund(SHOW, "o1", "r1", 100, 3000.0))[2]
    assert books(await book.ledger(SHOW)) == {("a", "s1"): (1, 1000, 100, 90, 45)}


# -- Redis only ------------------------------------------------------------------------------
async def test_the_redis_purge_leaves_the_commerce_stores_keys(redis_server):
    """The commerce store shares the show's namespace: its keys (the event counter) stay."""
    book = RedisOrderBook(redis_server.url, PREFIX)
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.set(f"{PREFIX}:{{{SHOW}}}:seq", 41)
        await book.take_order(an_order("o1"))
        await book.purge_show(SHOW)
        assert [k async for k in client.scan_iter(match=f"{PREFIX}:{{{SHOW}}}:*")] == [f"{PREFIX}:{{{SHOW}}}:seq"]
    finally:
        await client.aclose()
        await book.close()


async def test_an_unreachable_redis_answers_503():
    book = RedisOrderBook(f"redis://127.0.0.1:{free_port()}/0", PREFIX)  # nobody listens there
    try:
        for call in (book.take_order(an_order("o1")), book.take_refund(SHOW, "o1", "r1", 100, 1.0),
                     book.order(SHOW, "o1"), book.ledger(SHOW), book.buyers(SHOW), book.purge_show(SHOW),
                     book.retire_room(SHOW, "a", "a~0")):
            with pytest.raises(StoreUnavailable) as unavailable:
                await call
            assert unavailable.value.status == 503
    finally:
        await book.close()
