"""What a coupon's changes tell readers: remaining counts at most twice a second, and the end of
every coupon when its show ends."""

from __future__ import annotations

import asyncio
import logging

from ..errors import ApiError
from .events import EventHub
from .store import CommerceStore

log = logging.getLogger(__name__)

UPDATE_INTERVAL_S = 0.5


class RemainingTicker:
    """Publishes remaining counts at most every UPDATE_INTERVAL_S per coupon, never one
    message per claim."""

    def __init__(self, store: CommerceStore, events: EventHub) -> None:
        self._store = store
        self._events = events
        self._dirty: set[tuple[str, str]] = set()
        self._task: asyncio.Task | None = None

    def changed(self, show_id: str, coupon_id: str) -> None:
        self._dirty.add((show_id, coupon_id))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(UPDATE_INTERVAL_S)
        dirty, self._dirty = self._dirty, set()
        for show_id, coupon_id in dirty:
            try:
                coupon = await self._store.load_coupon(show_id, coupon_id)
                await self._events.publish(show_id, "coupon.updated", {"coupon": coupon.view()})
            except ApiError as exc:  # the store is down: try again with the next claim
                log.warning("show %s: remaining count of %s not published: %s", show_id, coupon_id, exc.message)
                self._dirty.add((show_id, coupon_id))


async def end_coupons(store: CommerceStore, events: EventHub, show_id: str) -> None:
    """The show ended: every coupon of it that is not stopped stops (readers hear
    coupon.ended with reason show_ended); a claim from now on answers `ended`."""
    for coupon in await store.list_coupons(show_id):
        if coupon.state != "stopped":
            stopped = await store.stop_coupon(show_id, coupon.id)
            await events.publish(show_id, "coupon.ended", {"coupon": stopped.view(), "reason": "show_ended"})
