"""The show's event stream: one sequence per show, persisted before it is delivered."""

from __future__ import annotations

import asyncio
from collections import deque
import logging
import time
from typing import Callable

from ..metrics import EVENT_LAG, store_timer
from .room_view import coupon_for_room, product_for_room
from .store import CommerceStore, Event

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 1000


class Subscription:
    """One live reader of a show's events. A reader that falls SUBSCRIBER_QUEUE events behind
    is cut off (its client reconnects with Last-Event-ID and loses nothing)."""

    def __init__(self) -> None:
        self._events: deque[Event] = deque()
        self._wake = asyncio.Event()
        self.overflowed = False

    def deliver(self, event: Event) -> bool:
        if len(self._events) >= SUBSCRIBER_QUEUE:
            self.overflowed = True
            self._events.clear()
        else:
            self._events.append(event)
        self._wake.set()
        return not self.overflowed

    @property
    def pending(self) -> int:
        return len(self._events)

    def end(self) -> None:
        """No more events: the reader's next get() returns None (the server is stopping)."""
        self.overflowed = True
        self._events.clear()
        self._wake.set()

    async def get(self) -> Event | None:
        """The next event; None once the reader has fallen too far behind."""
        while not self._events and not self.overflowed:
            self._wake.clear()
            await self._wake.wait()
        return None if self.overflowed else self._events.popleft()


class EventHub:
    """Appends a show's events to the store and hands each, in sequence order, to this process's
    readers of the show, whichever process published it."""

    def __init__(self, store: CommerceStore, stream_time: Callable[[str, float], float | None]) -> None:
        self.store = store
        self._stream_time = stream_time
        self._subscribers: dict[str, set[Subscription]] = {}
        self._delivered: dict[str, int] = {}  # show -> newest seq handed to its readers
        self._order = asyncio.Lock()  # appends from this process keep the order they were made in

    async def publish(self, show_id: str, type: str, data: dict) -> Event:
        async with self._order:
            wall = time.time()
            with store_timer("append_event"):
                return await self.store.append_event(show_id, type, wall, self._stream_time(show_id, wall), data)

    def publish_soon(self, show_id: str, type: str, data: dict) -> None:
        """publish() from synchronous code; a store failure is logged."""
        task = asyncio.ensure_future(self.publish(show_id, type, data))
        task.add_done_callback(_log_failure)

    async def deliver(self, event: Event) -> None:
        """The store's listener: every event of every show, from this process or another."""
        last = self._delivered.get(event.show_id)
        if last is not None and event.seq <= last:
            return
        if event.show_id not in self._subscribers:
            self._delivered[event.show_id] = event.seq
            return
        events = [event]
        if last is not None and event.seq > last + 1:  # missed some (a dropped pub/sub link)
            events = await self.store.events_after(event.show_id, last, limit=event.seq - last)
        for e in events:
            if e.seq > self._delivered.get(event.show_id, 0):
                self._delivered[event.show_id] = e.seq
                EVENT_LAG.observe(max(0.0, time.time() - e.wall))
                self._hand_out(e)

    async def resync(self) -> None:
        """Deliver what readers may have missed while the store's event feed was down."""
        for show_id in list(self._subscribers):
            last = self._delivered.get(show_id)
            if last is None:
                continue
            for event in await self.store.events_after(show_id, last):
                await self.deliver(event)

    def _hand_out(self, event: Event) -> None:
        for sub in list(self._subscribers.get(event.show_id, ())):
            if not sub.deliver(event):
                log.warning("show %s: an event reader fell behind; disconnecting it", event.show_id)
                self.unsubscribe(event.show_id, sub)

    def subscribe(self, show_id: str) -> Subscription:
        sub = Subscription()
        self._subscribers.setdefault(show_id, set()).add(sub)
        return sub

    def unsubscribe(self, show_id: str, sub: Subscription) -> None:
        subs = self._subscribers.get(show_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[show_id]

    def forget(self, show_id: str) -> None:
        """The show was deleted: its readers' streams end and its sequence starts anew."""
        for sub in self._subscribers.pop(show_id, ()):
            sub.end()
        self._delivered.pop(show_id, None)

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout`) until every reader has taken what was handed to it."""
        deadline = time.monotonic() + timeout
        while any(sub.pending for subs in self._subscribers.values() for sub in subs):
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.01)  # readers run on this loop: give them their turn

    def close(self) -> None:
        """End every reader's stream (clients reconnect with Last-Event-ID to another process)."""
        for subs in self._subscribers.values():
            for sub in subs:
                sub.end()
        self._subscribers.clear()



def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("an event could not be published: %s", task.exception())


def render(event: Event, room: str) -> dict | None:
    """The event as `room` sees it: its own prices and caps; a product hidden there is only
    {id, hidden} (and a card pinned for it is not sent at all)."""
    data = dict(event.data)
    if event.type == "sale":  # a room hears of its own sales only
        if data.pop("room", None) != room:
            return None
    if isinstance(data.get("coupon"), dict) and "rooms" in data["coupon"]:
        data["coupon"] = coupon_for_room(data["coupon"], room)
    if isinstance(data.get("product"), dict) and "rooms" in data["product"]:
        product = product_for_room(data["product"], room)
        if product is None:
            if event.type == "product.pinned":
                return None
            product = {"id": data["product"]["id"], "hidden": True}  # not on this room's shelf
        data["product"] = product
    return {"seq": event.seq, "type": event.type, "wall_time": event.wall, "stream_time": event.stream_time, **data}
