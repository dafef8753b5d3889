"""The show and replay stores keep one contract, embedded (SQLite) or shared (Redis): every test
taking `stores` runs against both. Figures across nodes, the change feed and an unreachable
server are the Redis store's alone."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import replace
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from relay.errors import ApiError, StoreUnavailable
from relay.models import HQ_ROOM, Mirror, Replay, ReplayState, RoomFigures, Show, ShowState
from relay.redis_show_store import RedisShowStore
from relay.replay.redis_replay_store import RedisReplayStore
from relay.replay.replay_store import SqliteReplayStore
from relay.show_store import SqliteShowStore
from relay_testkit.process import free_port

PREFIX = "test"
WAIT_S = 5.0


class Stores:
    """Makes the stores of one kind and closes them all at the end. `url` "" is SQLite: one file,
    one show store (the embedded store is the only node), whatever node is asked for."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self._db = folder / "relay.db"
        self._made: list[Any] = []
        self._embedded: SqliteShowStore | None = None

    def show(self, node_id: str = "a") -> Any:
        if not self.url:
            if self._embedded is None:
                self._embedded = self._keep(SqliteShowStore(self._db))
            return self._embedded
        return self._keep(RedisShowStore(self.url, PREFIX, node_id))

    def replay(self) -> Any:
        return self._keep(RedisReplayStore(self.url, PREFIX) if self.url else SqliteReplayStore(self._db))

    def _keep(self, store: Any) -> Any:
        self._made.append(store)
        return store

    async def close(self) -> None:
        for store in self._made:
            closed = store.close()  # (SQLite's is synchronous)
            if inspect.isawaitable(closed):
                await closed


@pytest.fixture(params=["sqlite", "redis"])
async def stores(request, tmp_path):
    made = Stores(request.getfixturevalue("redis_server").url if request.param == "redis" else "", tmp_path)
    yield made
    await made.close()


@pytest.fixture
async def redis_stores(redis_server, tmp_path):
    made = Stores(redis_server.url, tmp_path)
    yield made
    await made.close()


def a_show(show_id: str, created_at: float = 1000.0, **fields: Any) -> Show:
    return Show(show_id, f"Show {show_id}", ShowState.SCHEDULED, "ab" * 32, created_at, **fields)


async def show_with_rooms(store: Any, show_id: str, *rooms: str) -> None:
    await store.create_show(a_show(show_id))
    for n, distributor in enumerate(rooms):
        await store.add_mirror(Mirror(show_id, distributor, distributor.upper(), 2000.0 + n))


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until `check()` holds, asking every 50 ms, at most WAIT_S."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"not within {WAIT_S} s: {what}"
        await asyncio.sleep(0.05)


# -- shows -----------------------------------------------------------------------------------
async def test_a_show_reads_back_as_it_was_stored(stores):
    store = stores.show()
    show = a_show("s1", 1234.5678, replay_public=False, stream_key_expires_at=2000.25, playback="token",
                  currency="EUR", identity="shopper")
    await store.create_show(show)
    assert await store.get_show("s1") == show
    assert await store.get_show("s2") is None


async def test_shows_are_listed_oldest_first(stores):
    store = stores.show()
    for show_id, created_at in (("b", 3.0), ("a", 1.0), ("c", 2.0)):
        await store.create_show(a_show(show_id, created_at))
    assert [s.id for s in await store.list_shows()] == ["a", "c", "b"]


async def test_an_update_is_stored_and_cannot_bring_a_deleted_show_back(stores):
    store = stores.show()
    await store.create_show(a_show("s1"))
    ended = replace(a_show("s1"), title="Renamed", state=ShowState.ENDED, stream_key_hash="cd" * 32,
                    started_at=1001.0, ended_at=1002.5, end_reason="host_ended", replay_public=False,
                    stream_key_expires_at=None, playback="token")
    await store.update_show(ended)
    assert await store.get_show("s1") == ended
    await store.update_show(a_show("gone"))
    assert await store.get_show("gone") is None
    assert [s.id for s in await store.list_shows()] == ["s1"]


async def test_a_taken_id_is_refused_with_the_catalogs_409_even_when_two_nodes_race(stores):
    first, second = stores.show("a"), stores.show("b")
    outcomes = await asyncio.gather(first.create_show(a_show("s1")),
                                    second.create_show(replace(a_show("s1"), title="Other")), return_exceptions=True)
    refused = [o for o in outcomes if o is not None]
    assert len(refused) == 1 and isinstance(refused[0], ApiError), outcomes
    assert (refused[0].status, refused[0].code) == (409, "show_exists")
    assert (await first.get_show("s1")).title == ("Other" if outcomes[0] is not None else "Show s1")
    with pytest.raises(ApiError) as taken:
        await first.create_show(a_show("s1"))
    assert (taken.value.status, taken.value.code, taken.value.message) == (
        409, "show_exists", "a show with id 's1' already exists")


# -- mirror rooms ----------------------------------------------------------------------------
async def test_mirror_rooms_are_listed_oldest_first_one_per_distributor(stores):
    store = stores.show()
    await store.create_show(a_show("s1"))
    for distributor, created_at in (("late", 3.0), ("early", 1.0), ("middle", 2.0)):
        await store.add_mirror(Mirror("s1", distributor, distributor.title(), created_at))
    assert await store.list_mirrors("s1") == [Mirror("s1", "early", "Early", 1.0),
                                              Mirror("s1", "middle", "Middle", 2.0),
                                              Mirror("s1", "late", "Late", 3.0)]
    with pytest.raises(ApiError) as taken:
        await store.add_mirror(Mirror("s1", "early", "Again", 4.0))
    assert (taken.value.status, taken.value.code) == (409, "mirror_exists")
    with pytest.raises(ApiError) as no_show:
        await store.add_mirror(Mirror("gone", "early", "Early", 1.0))
    assert (no_show.value.status, no_show.value.code) == (404, "show_not_found")
    assert await store.list_mirrors("gone") == []
    assert (await store.list_mirrors("s1"))[0].name == "Early"


async def test_deleting_a_mirror_room_deletes_its_figures_and_live_viewers(stores):
    store = stores.show()
    await show_with_rooms(store, "s1", "m1", "m2")
    await store.save_room_figures("s1", {room: RoomFigures(0, 2, 3) for room in (HQ_ROOM, "m1", "m2")})
    await store.save_live_viewers("s1", {HQ_ROOM: 1, "m1": 1, "m2": 1}, 60)
    await store.delete_mirror("s1", "m1")
    assert [m.distributor for m in await store.list_mirrors("s1")] == ["m2"]
    assert set(await store.load_room_figures("s1")) == {HQ_ROOM, "m2"}
    assert await store.load_live_viewers("s1") == {HQ_ROOM: 1, "m2": 1}
    await store.add_mirror(Mirror("s1", "m1", "M1", 3000.0))  # a new room of that name starts at nothing
    assert "m1" not in await store.load_room_figures("s1")


async def test_deleting_a_show_deletes_everything_kept_for_it(stores):
    store = stores.show()
    await show_with_rooms(store, "s1", "m1")
    await show_with_rooms(store, "s2", "m1")
    for show_id in ("s1", "s2"):
        await store.save_room_figures(show_id, {HQ_ROOM: RoomFigures(0, 4, 9), "m1": RoomFigures(0, 1, 1)})
        await store.save_live_viewers(show_id, {HQ_ROOM: 3}, 60)
    await store.delete_show("s1")
    assert await store.get_show("s1") is None
    assert [s.id for s in await store.list_shows()] == ["s2"]
    await store.create_show(a_show("s1"))  # a new show with the id inherits nothing
    assert (await store.list_mirrors("s1"), await store.load_room_figures("s1"),
            await store.load_live_viewers("s1")) == ([], {}, {})
    assert await store.load_room_figures("s2") == {HQ_ROOM: RoomFigures(0, 4, 9), "m1": RoomFigures(0, 1, 1)}
    assert await store.load_live_viewers("s2") == {HQ_ROOM: 3}


# -- figures ---------------------------------------------------------------------------------
async def test_one_nodes_figures_are_the_counts_it_saved_last(stores):
    store = stores.show()
    await show_with_rooms(store, "s1", "m1")
    await store.save_room_figures("s1", {HQ_ROOM: RoomFigures(0, 3, 10), "m1": RoomFigures(0, 1, 1)})
    await store.save_room_figures("s1", {HQ_ROOM: RoomFigures(0, 5, 12)})
    assert await store.load_room_figures("s1") == {HQ_ROOM: RoomFigures(0, 5, 12), "m1": RoomFigures(0, 1, 1)}
    await store.save_room_figures("gone", {HQ_ROOM: RoomFigures(0, 1, 1)})  # deleted meanwhile: not kept
    assert await store.load_room_figures("gone") == {}


async def test_live_viewers_count_until_their_ttl_runs_out(stores):
    store = stores.show()
    await show_with_rooms(store, "s1", "m1")
    await store.save_live_viewers("s1", {HQ_ROOM: 4, "m1": 2}, 60)
    await store.save_live_viewers("s1", {HQ_ROOM: 5}, 1.0)  # replaces the last save
    assert await store.load_live_viewers("s1") == {HQ_ROOM: 5}

    async def gone() -> bool:
        return await store.load_live_viewers("s1") == {}

    await eventually(gone, "live viewers gone after their ttl")


async def test_every_nodes_figures_add_up(redis_stores):
    a, b = redis_stores.show("a"), redis_stores.show("b")
    await show_with_rooms(a, "s1", "m1")
    await a.save_room_figures("s1", {HQ_ROOM: RoomFigures(0, 3, 10), "m1": RoomFigures(0, 1, 2)})
    await b.save_room_figures("s1", {HQ_ROOM: RoomFigures(0, 4, 5), "nope": RoomFigures(0, 9, 9)})
    await a.save_room_figures("s1", {HQ_ROOM: RoomFigures(0, 3, 11)})  # a's own count, replacing its last
    expected = {HQ_ROOM: RoomFigures(0, 4, 16), "m1": RoomFigures(0, 1, 2)}  # (no room "nope" in the show)
    assert await a.load_room_figures("s1") == expected
    assert await b.load_room_figures("s1") == expected

    await a.save_live_viewers("s1", {HQ_ROOM: 3, "m1": 1}, 60)
    await b.save_live_viewers("s1", {HQ_ROOM: 4}, 60)
    assert await b.load_live_viewers("s1") == {HQ_ROOM: 7, "m1": 1}
    # The cluster's peak: 7 viewers at once, though no node had more than 4.
    assert (await a.load_room_figures("s1"))[HQ_ROOM] == RoomFigures(0, 7, 16)
    await a.save_live_viewers("s1", {}, 60)
    assert await a.load_live_viewers("s1") == {HQ_ROOM: 4}
    assert (await a.load_room_figures("s1"))[HQ_ROOM] == RoomFigures(0, 7, 16)


async def test_a_node_that_stops_saving_stops_counting_viewers_but_its_sessions_stay(redis_stores):
    a, b = redis_stores.show("a"), redis_stores.show("b")
    await show_with_rooms(a, "s1")
    await a.save_room_figures("s1", {HQ_ROOM: RoomFigures(0, 2, 2)})
    await b.save_room_figures("s1", {HQ_ROOM: RoomFigures(0, 3, 3)})
    await a.save_live_viewers("s1", {HQ_ROOM: 2}, 60)
    await b.save_live_viewers("s1", {HQ_ROOM: 3}, 0.5)

    async def only_a() -> bool:
        return await a.load_live_viewers("s1") == {HQ_ROOM: 2}

    await eventually(only_a, "b's viewers gone after their ttl")
    assert await a.load_room_figures("s1") == {HQ_ROOM: RoomFigures(0, 5, 5)}


async def test_deleting_a_show_or_room_leaves_nothing_of_it_from_any_node(redis_stores, redis_server):
    a, b = redis_stores.show("a"), redis_stores.show("b")
    await show_with_rooms(a, "s1", "m1")
    for node in (a, b):
        await node.save_room_figures("s1", {HQ_ROOM: RoomFigures(0, 1, 1), "m1": RoomFigures(0, 1, 1)})
        await node.save_live_viewers("s1", {HQ_ROOM: 1, "m1": 1}, 60)
    raw = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        await a.delete_mirror("s1", "m1")
        for key in await raw.keys(f"{PREFIX}:show:{{s1}}:*"):
            assert key.endswith(":nodes") or "m1" not in await raw.hkeys(key), key
        await b.delete_show("s1")
        assert await raw.keys(f"{PREFIX}:show:{{s1}}*") == []
        assert await raw.zrange(f"{PREFIX}:shows", 0, -1) == []
    finally:
        await raw.aclose()


# -- the change feed -------------------------------------------------------------------------
async def follow(store: RedisShowStore) -> tuple[asyncio.Task, asyncio.Queue]:
    """Follow the store's feed; returns once it is connected."""
    heard: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.ensure_future(store.follow(heard.put_nowait))
    assert await asyncio.wait_for(heard.get(), WAIT_S) is None
    return task, heard


async def test_a_node_hears_every_change_made_by_another(redis_stores):
    a, b = redis_stores.show("a"), redis_stores.show("b")
    task, heard = await follow(a)
    try:
        await b.create_show(a_show("s1"))
        await b.create_show(a_show("s2"))
        await b.save_room_figures("s2", {HQ_ROOM: RoomFigures(0, 1, 1)})  # figures are not cached: no message
        await b.save_live_viewers("s2", {HQ_ROOM: 1}, 60)
        await b.update_show(replace(a_show("s1"), title="Renamed"))
        await b.add_mirror(Mirror("s1", "m1", "M1", 1.0))
        await b.delete_mirror("s1", "m1")
        await b.delete_show("s1")
        said = [await asyncio.wait_for(heard.get(), WAIT_S) for _ in range(6)]
        assert said == ["s1", "s2", "s1", "s1", "s1", "s1"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_after_losing_redis_the_feed_comes_back_and_says_forget_everything(redis_stores, redis_server):
    a, b = redis_stores.show("a"), redis_stores.show("b")
    task, heard = await follow(a)
    try:
        await asyncio.to_thread(redis_server.kill)
        await asyncio.to_thread(redis_server.start)
        assert await asyncio.wait_for(heard.get(), WAIT_S) is None
        await b.create_show(a_show("s1"))
        assert await asyncio.wait_for(heard.get(), WAIT_S) == "s1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_unreachable_redis_answers_503(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    stores = Stores(url, tmp_path)
    shows, replays = stores.show(), stores.replay()
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: shows.create_show(a_show("s1")), lambda: shows.get_show("s1"), shows.list_shows,
        lambda: shows.update_show(a_show("s1")), lambda: shows.delete_show("s1"),
        lambda: shows.add_mirror(Mirror("s1", "m", "M", 1.0)), lambda: shows.list_mirrors("s1"),
        lambda: shows.delete_mirror("s1", "m"), lambda: shows.save_room_figures("s1", {HQ_ROOM: RoomFigures(0, 1, 1)}),
        lambda: shows.load_room_figures("s1"), lambda: shows.save_live_viewers("s1", {HQ_ROOM: 1}, 60),
        lambda: shows.load_live_viewers("s1"), lambda: replays.save_replay(Replay("s1", ReplayState.RECORDING, 1.0)),
        lambda: replays.get_replay("s1"), replays.list_replays, lambda: replays.delete_replay("s1")]
    try:
        for made in calls:
            with pytest.raises(StoreUnavailable) as unavailable:
                await made()
            assert unavailable.value.status == 503
    finally:
        await stores.close()


# -- replays ---------------------------------------------------------------------------------
async def test_replay_records_are_kept_replaced_listed_and_deleted(stores):
    store = stores.replay()
    recording = Replay("s1", ReplayState.RECORDING, 10.5)
    await store.save_replay(recording)
    assert await store.get_replay("s1") == recording
    ready = replace(recording, state=ReplayState.READY, ended_at=70.25, duration_s=59.75, discontinuities=2,
                    mp4_ready=True)
    await store.save_replay(ready)
    failed = Replay("s2", ReplayState.FAILED, 20.0, 21.0, error="remux failed")
    await store.save_replay(failed)
    assert await store.get_replay("s1") == ready
    assert sorted(await store.list_replays(), key=lambda r: r.show_id) == [ready, failed]
    await store.delete_replay("s1")
    assert await store.get_replay("s1") is None
    assert await store.list_replays() == [failed]
