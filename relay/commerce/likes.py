"""Likes: taps counted exactly in the store, told to a room as its running total at most twice a
second, never one message per tap."""

from __future__ import annotations

import asyncio
import logging

from ..errors import ApiError
from .events import EventHub
from .store import CommerceStore

log = logging.getLogger(__name__)

UPDATE_INTERVAL_S = 0.5


class LikeCounter:
    """Adds taps atomically in the store, and publishes a `likes` event ({room, likes}: the
    room's total) at most every UPDATE_INTERVAL_S per room of this node."""

    def __init__(self, store: CommerceStore, events: EventHub) -> None:
        self._store = store
        self._events = events
        self._totals: dict[tuple[str, str], int] = {}  # (show, room) -> newest total, waiting to be told
        self._task: asyncio.Task | None = None

    async def add(self, show_id: str, room: str, count: int) -> int:
        """Count `count` taps of the room; its total now."""
        total = await self._store.add_likes(show_id, room, count)
        key = (show_id, room)
        self._totals[key] = max(total, self._totals.get(key, 0))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._flush_later())
        return total

    async def totals(self, show_id: str) -> dict[str, int]:
        return await self._store.likes(show_id)

    async def _flush_later(self) -> None:
        while self._totals:  # taps that came while publishing wait for the next turn
            await asyncio.sleep(UPDATE_INTERVAL_S)
            waiting, self._totals = self._totals, {}
            for (show_id, room), total in waiting.items():
                try:
                    await self._events.publish(show_id, "likes", {"room": room, "likes": total})
                except ApiError as exc:  # the store is down: the next tap tells the total
                    log.warning("show %s: likes of room %s not published: %s", show_id, room, exc.message)
