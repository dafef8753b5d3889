"""Deleting a show or a mirror room, and everything kept for it."""

from __future__ import annotations

from typing import Awaitable, Callable

from .catalog import ShowCatalog
from .live_registry import LiveRegistry
from .replay.service import ReplayService


class ShowRemoval:
    """A deletion closes what runs here first, then deletes the data of every package, then the
    catalog entry: if a store fails midway (503), what is left can be deleted again."""

    def __init__(self, catalog: ShowCatalog, live: LiveRegistry, replays: ReplayService,
                 on_deleting: Callable[[str], Awaitable[None]],
                 on_room_deleting: Callable[[str, str, str], Awaitable[None]]) -> None:
        self._catalog = catalog
        self._live = live
        self._replays = replays
        self._on_deleting = on_deleting  # e.g. the show's commerce data goes
        self._on_room_deleting = on_room_deleting  # (show, room, retired name): its counts move there

    async def delete_show(self, show_id: str) -> None:
        """The show and everything kept for it; a new show may take the id and inherits nothing."""
        await self._catalog.show(show_id)
        await self._live.close_show(show_id)  # no claim or event lands while its data goes
        await self._on_deleting(show_id)
        await self._replays.delete(show_id)
        await self._catalog.delete_show(show_id)

    async def delete_mirror(self, show_id: str, distributor: str) -> None:
        """The room goes: its viewers are disconnected, its tokens no longer work (they are older
        than any new room with its id) and its counts are retired under a name no room has."""
        mirror = await self._catalog.mirror(show_id, distributor)
        await self._on_room_deleting(show_id, distributor, f"{distributor}~{mirror.created_at:.6f}")
        await self._live.close_room(show_id, distributor)
        await self._catalog.delete_mirror(show_id, distributor)
