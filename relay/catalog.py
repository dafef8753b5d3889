"""The show catalog: stored shows, their stream keys and their distributors' mirror rooms.

Every change to a stored show or room goes through `ShowCatalog`, which writes it to the
store before answering and keeps recently used shows and rooms in memory, so the hot reads
(each WHEP join, claim and page) do not wait on the store.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
import hashlib
import hmac
import logging
import secrets
import time
from typing import Callable, Protocol

from .errors import ApiError
from .models import HQ_ROOM, Mirror, Show, ShowState, is_slug

log = logging.getLogger(__name__)

CACHED_SHOWS = 4096


class ShowStore(Protocol):
    """Where the catalog keeps shows and mirror rooms."""

    async def create_show(self, show: Show) -> None: ...
    async def get_show(self, show_id: str) -> Show | None: ...
    async def list_shows(self) -> list[Show]: ...
    async def update_show(self, show: Show) -> None: ...
    async def delete_show(self, show_id: str) -> None: ...
    async def add_mirror(self, mirror: Mirror) -> None: ...
    async def list_mirrors(self, show_id: str) -> list[Mirror]: ...
    async def update_mirror(self, mirror: Mirror) -> None: ...
    async def delete_mirror(self, show_id: str, distributor: str) -> None: ...


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_stream_key() -> str:
    return secrets.token_urlsafe(24)


def key_hash_matches(key: str | None, key_hash: str) -> bool:
    return bool(key) and hmac.compare_digest(hash_key(key or ""), key_hash)


class _Entry:
    """A cached show and, once asked for, its mirror rooms by distributor."""

    __slots__ = ("show", "mirrors")

    def __init__(self, show: Show) -> None:
        self.show = show
        self.mirrors: dict[str, Mirror] | None = None


class ShowCatalog:
    """Shows, stream keys and mirror rooms, stored in a `ShowStore` and cached here.

    Shows returned are copies: a caller changing one changes nothing until it goes through
    a method here. A change is made to the cached show at once (no await between the check
    and the change, so two changes never undo each other) and then written to the store.
    In a cluster the store tells every node what another changed (`forget`).
    """

    def __init__(self, store: ShowStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.clock = clock  # what "now" is for stream key expiry
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._writing: dict[str, asyncio.Task] = {}  # show -> its latest change being written

    # -- shows -----------------------------------------------------------------------------
    async def create_show(self, title: str, show_id: str | None, replay_public: bool | None = None,
                          stream_key_ttl_s: float | None = None, playback: str = "public",
                          currency: str = "CNY", identity: str = "anonymous",
                          starts_at: float | None = None) -> tuple[Show, str]:
        """A new scheduled show and its stream key (given out once; only its hash is kept)."""
        if show_id is None:
            show_id = secrets.token_hex(4)
            while await self._entry(show_id) or show_id in self._cache:
                show_id = secrets.token_hex(4)
        elif await self._entry(show_id) or show_id in self._cache:  # (cached by a create meanwhile)
            raise ApiError(409, "show_exists", f"a show with id {show_id!r} already exists")
        key = new_stream_key()
        if replay_public is None:  # a token-only show's replay is not for everyone either
            replay_public = playback != "token"
        now = time.time()
        show = Show(show_id, title, ShowState.SCHEDULED, hash_key(key), now, replay_public=replay_public,
                    stream_key_expires_at=now + stream_key_ttl_s if stream_key_ttl_s else None, playback=playback,
                    currency=currency, identity=identity, starts_at=starts_at)
        self._remember(show).mirrors = {}  # the id is taken from here on
        try:
            await self._store.create_show(_copy(show))
        except BaseException:
            self._cache.pop(show_id, None)
            raise
        return _copy(show), key

    async def show(self, show_id: str) -> Show:
        """The show (as it is on disk), or 404."""
        await self._written(show_id)
        return _copy((await self._existing(show_id)).show)

    async def find(self, show_id: str) -> Show | None:
        await self._written(show_id)
        entry = await self._entry(show_id)
        return _copy(entry.show) if entry else None

    async def list_shows(self) -> list[Show]:
        return await self._store.list_shows()

    def check_stream_key(self, show: Show, key: str | None) -> None:
        if not key:
            raise ApiError(401, "unauthorized", "missing stream key: send Authorization: Bearer <stream_key>",
                           {"WWW-Authenticate": "Bearer"})
        if not key_hash_matches(key, show.stream_key_hash):
            raise ApiError(401, "unauthorized", "wrong stream key", {"WWW-Authenticate": "Bearer"})
        if show.stream_key_expires_at is not None and self.clock() >= show.stream_key_expires_at:
            raise ApiError(401, "stream_key_expired", "the stream key has expired; ask the operator for a new one",
                           {"WWW-Authenticate": "Bearer"})

    async def rotate_stream_key(self, show_id: str, ttl_s: float | None) -> tuple[Show, str]:
        """A new stream key; the old one stops working for new publishes (a host already live
        stays on air)."""
        show = (await self._existing(show_id)).show
        if show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", f"show {show_id!r} has ended; its stream key cannot be used again")
        key = new_stream_key()
        show.stream_key_hash = hash_key(key)
        show.stream_key_expires_at = time.time() + ttl_s if ttl_s else None
        await self._write(show)
        log.info("show %s: stream key rotated", show_id)
        return _copy(show), key

    def mark_live(self, show_id: str) -> bool:
        """A scheduled show goes live now (its host connected; the show is in memory since
        the host's offer read it) and is written to the store in the background. True if it
        changed."""
        entry = self._cache.get(show_id)
        if entry is None or entry.show.state is not ShowState.SCHEDULED:
            return False
        entry.show.state = ShowState.LIVE
        entry.show.started_at = time.time()
        self._write(entry.show).add_done_callback(_log_failure)
        return True

    async def mark_ended(self, show_id: str, reason: str) -> bool:
        """The show ends for good; True if it changed (it had not ended already)."""
        show = (await self._existing(show_id)).show
        if show.state is ShowState.ENDED:
            return False
        show.state = ShowState.ENDED
        show.ended_at = time.time()
        show.end_reason = reason
        await self._write(show)
        log.info("show %s ended (%s)", show_id, reason)
        return True

    def is_ended(self, show_id: str) -> bool:
        """From memory, for the media path (a show being published to is in memory)."""
        entry = self._cache.get(show_id)
        return entry is not None and entry.show.state is ShowState.ENDED

    async def delete_show(self, show_id: str) -> None:
        await self._store.delete_show(show_id)
        self._cache.pop(show_id, None)

    # -- mirror rooms ----------------------------------------------------------------------
    async def add_mirror(self, show_id: str, distributor: str, name: str, commission_rate: str = "0") -> Mirror:
        mirrors = await self._mirrors(show_id)
        if distributor in mirrors:
            raise ApiError(409, "mirror_exists", f"distributor {distributor!r} already has a room in this show")
        mirror = mirrors[distributor] = Mirror(show_id, distributor, name, time.time(), commission_rate)
        try:
            await self._store.add_mirror(mirror)
        except BaseException:
            mirrors.pop(distributor, None)
            raise
        return mirror

    async def change_mirror(self, show_id: str, distributor: str, name: str | None,
                            commission_rate: str | None) -> Mirror:
        """The room with its new name and/or rate, written to the store."""
        mirror = await self.mirror(show_id, distributor)
        changed = Mirror(show_id, distributor, name if name is not None else mirror.name, mirror.created_at,
                         commission_rate if commission_rate is not None else mirror.commission_rate)
        await self._store.update_mirror(changed)
        entry = self._cache.get(show_id)
        if entry is not None and entry.mirrors is not None and distributor in entry.mirrors:
            entry.mirrors[distributor] = changed
        return changed

    async def change_show(self, show_id: str, title: str | None, sharer_commission_rate: str | None,
                          starts_at: float | None = None) -> Show:
        """The show with its new title, sharer rate and/or scheduled start, written to the store."""
        show = (await self._existing(show_id)).show
        if starts_at is not None:
            show.starts_at = starts_at
        if title is not None:
            show.title = title
        if sharer_commission_rate is not None:
            show.sharer_commission_rate = sharer_commission_rate
        await self._write(show)
        return _copy(show)

    async def mirror(self, show_id: str, distributor: str) -> Mirror:
        """The mirror room, or 404 (for the show or the room)."""
        mirror = (await self._mirrors(show_id)).get(distributor)
        if mirror is None:
            raise ApiError(404, "mirror_not_found", f"show {show_id!r} has no mirror room {distributor!r}")
        return mirror

    async def mirrors(self, show_id: str) -> list[Mirror]:
        """The show's mirror rooms, oldest first (404 if there is no such show)."""
        return sorted((await self._mirrors(show_id)).values(), key=lambda m: m.created_at)

    async def room_since(self, show_id: str, room: str) -> float | None:
        """When the mirror room was made (None if there is none)."""
        entry = await self._entry(show_id)
        if entry is None:
            return None
        mirror = (await self._mirrors(show_id)).get(room)
        return mirror.created_at if mirror else None

    async def check_room(self, show_id: str, room: str) -> None:
        """404 unless the show exists and has the room (HQ or a mirror room)."""
        if room == HQ_ROOM:
            await self._existing(show_id)
        else:
            await self.mirror(show_id, room)

    async def delete_mirror(self, show_id: str, distributor: str) -> None:
        await self._store.delete_mirror(show_id, distributor)
        entry = self._cache.get(show_id)
        if entry is not None and entry.mirrors is not None:
            entry.mirrors.pop(distributor, None)

    def forget(self, show_id: str | None) -> None:
        """Another node changed the show (None: any show may have changed): read it again."""
        if show_id is None:
            self._cache.clear()
        else:
            self._cache.pop(show_id, None)

    # -- the cache -------------------------------------------------------------------------
    async def _entry(self, show_id: str) -> _Entry | None:
        entry = self._cache.get(show_id)
        if entry is not None:
            self._cache.move_to_end(show_id)
            return entry
        if not is_slug(show_id):
            return None
        show = await self._store.get_show(show_id)
        if show is None:
            return None
        return self._cache.get(show_id) or self._remember(show)  # another read may have cached it meanwhile

    async def _existing(self, show_id: str) -> _Entry:
        entry = await self._entry(show_id)
        if entry is None:
            raise ApiError(404, "show_not_found", f"no show {show_id!r}")
        return entry

    async def _mirrors(self, show_id: str) -> dict[str, Mirror]:
        entry = await self._existing(show_id)
        if entry.mirrors is None:
            mirrors = {m.distributor: m for m in await self._store.list_mirrors(show_id)}
            if entry.mirrors is None:
                entry.mirrors = mirrors
        return entry.mirrors

    def _remember(self, show: Show) -> _Entry:
        entry = self._cache[show.id] = _Entry(show)
        while len(self._cache) > CACHED_SHOWS:
            self._cache.popitem(last=False)
        return entry

    def _write(self, show: Show) -> asyncio.Task:
        """Write the cached show as it is now; if that fails, forget it (the store says what is).
        From this call on, reads of the show wait for the write: what the API says is on disk."""
        task = asyncio.ensure_future(self._store_show(_copy(show)))
        self._writing[show.id] = task
        task.add_done_callback(lambda _: self._writing.get(show.id) is task and self._writing.pop(show.id))
        return task

    async def _store_show(self, show: Show) -> None:
        try:
            await self._store.update_show(show)
        except BaseException:
            self._cache.pop(show.id, None)
            raise

    async def _written(self, show_id: str) -> None:
        writing = self._writing.get(show_id)  # (writes reach the store in order: the last covers all)
        if writing is not None:
            await asyncio.wait([writing])


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("writing a show's state failed: %s", task.exception())


def _copy(show: Show) -> Show:
    return Show(**vars(show))
