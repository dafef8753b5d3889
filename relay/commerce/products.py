"""The product shelf and the "now explaining" card of a show."""

from __future__ import annotations

from dataclasses import dataclass
import secrets
import time
from typing import Awaitable, Callable

from ..errors import ApiError, invalid_field
from .events import EventHub
from .room_view import product_for_room
from .store import CommerceStore, Pin, Product


@dataclass(frozen=True)
class RoomPrice:
    """How one mirror room shows a product: its own price (None: the show's), or hidden."""

    price_cents: int | None
    hidden: bool = False


@dataclass
class ProductEdit:
    """What a request sets on a product (the HTTP layer has checked each value); None leaves
    a field as it is. In `rooms`, None drops that room's override."""

    title: str | None = None
    price_cents: int | None = None
    image_url: str | None = None
    link: str | None = None
    position: int | None = None
    rooms: dict[str, RoomPrice | None] | None = None
    commission_rate: str | None = None  # "" drops the product's own rate (the room's applies)


def product_view(product: Product, room: str | None = None) -> dict | None:
    """The product as `room` sees it (its price override), None if hidden there; all rooms' view
    (with overrides) when `room` is None."""
    view = {"id": product.id, "title": product.title, "image_url": product.image_url, "link": product.link,
            "position": product.position, "price": product.price_cents / 100,
            "rooms": {r: {"price": o["price_cents"] / 100 if o.get("price_cents") is not None else None,
                          "hidden": bool(o.get("hidden"))} for r, o in product.overrides.items()},
            "commission_rate": product.commission_rate}
    return view if room is None else product_for_room(view, room)


SHELF_CACHE_S = 1.0  # how stale a shelf read for pricing orders may be (another node's change)


class ProductShelf:
    """Every change to a show's shelf or card goes through here and becomes an event."""

    def __init__(self, store: CommerceStore, events: EventHub, rooms: Callable[[str], Awaitable[set[str]]],
                 stream_time: Callable[[str, float], float | None]) -> None:
        self.store = store
        self.events = events
        self._rooms = rooms
        self._stream_time = stream_time
        self._recent: dict[str, tuple[float, list[Product]]] = {}  # show -> (read at, its products)

    async def list(self, show_id: str) -> list[Product]:
        return await self.store.products(show_id)

    async def recent(self, show_id: str) -> list[Product]:
        """The shelf as read at most SHELF_CACHE_S ago (changes made here are seen at once): what
        a burst of orders is priced with, without a store read per order."""
        now = time.monotonic()
        read = self._recent.get(show_id)
        if read is not None and now - read[0] < SHELF_CACHE_S:
            return read[1]
        products = await self.store.products(show_id)
        if len(self._recent) > 1000:
            self._recent.clear()
        self._recent[show_id] = (now, products)
        return products

    async def get(self, show_id: str, product_id: str) -> Product:
        product = next((p for p in await self.store.products(show_id) if p.id == product_id), None)
        if product is None:
            raise ApiError(404, "product_not_found", f"show {show_id!r} has no product {product_id!r}")
        return product

    async def add(self, show_id: str, product_id: str | None, fields: ProductEdit) -> Product:
        """A new product (title and price set), last on the shelf unless placed."""
        product_id = product_id or "p" + secrets.token_hex(4)
        existing = await self.store.products(show_id)
        if any(p.id == product_id for p in existing):
            raise ApiError(409, "product_exists", f"product {product_id!r} is already on the shelf")
        product = Product(show_id, product_id, "", 0, position=max((p.position for p in existing), default=-1) + 1)
        self._apply(product, fields, await self._rooms(show_id))
        await self.store.save_product(product)
        self._recent.pop(show_id, None)
        await self.events.publish(show_id, "shelf.updated", {"product": product_view(product), "change": "added"})
        return product

    async def update(self, show_id: str, product_id: str, change: ProductEdit) -> Product:
        product = await self.get(show_id, product_id)
        self._apply(product, change, await self._rooms(show_id))
        await self.store.save_product(product)
        self._recent.pop(show_id, None)
        await self.events.publish(show_id, "shelf.updated", {"product": product_view(product), "change": "updated"})
        return product

    async def remove(self, show_id: str, product_id: str) -> None:
        await self.get(show_id, product_id)
        if await self.pinned(show_id) == product_id:
            await self.unpin(show_id)
        await self.store.delete_product(show_id, product_id)
        self._recent.pop(show_id, None)
        await self.events.publish(show_id, "shelf.updated", {"product": {"id": product_id}, "change": "removed"})

    def _apply(self, product: Product, change: ProductEdit, known: set[str]) -> None:
        for name in ("title", "price_cents", "image_url", "link", "position"):
            value = getattr(change, name)
            if value is not None:
                setattr(product, name, value)
        if change.commission_rate is not None:
            product.commission_rate = change.commission_rate or None
        if change.rooms is not None:
            overrides = dict(product.overrides)
            for room, override in change.rooms.items():
                if room not in known:
                    raise invalid_field("rooms", f"names {room!r}, which is not a mirror room of this show")
                if override is None:
                    overrides.pop(room, None)
                else:
                    overrides[room] = {"price_cents": override.price_cents, "hidden": override.hidden}
            product.overrides = overrides

    # -- the card --------------------------------------------------------------------------
    async def pinned(self, show_id: str) -> str | None:
        pins = await self.store.pins(show_id)
        return pins[-1].product_id if pins and pins[-1].end_wall is None else None

    async def pin(self, show_id: str, product_id: str) -> Product:
        product = await self.get(show_id, product_id)
        now = time.time()
        start_s = self._stream_time(show_id, now)
        await self.store.close_pin(show_id, now, start_s)
        await self.store.open_pin(show_id, Pin(product_id, now, start_s if start_s is not None else 0.0))
        await self.events.publish(show_id, "product.pinned", {"product": product_view(product)})
        return product

    async def unpin(self, show_id: str) -> None:
        now = time.time()
        closed = await self.store.close_pin(show_id, now, self._stream_time(show_id, now))
        if closed is not None:
            await self.events.publish(show_id, "product.unpinned", {"product": {"id": closed.product_id}})

    async def chapters(self, show_id: str, replay_duration: float) -> list[dict]:
        """Product chapters of the replay: when each card was pinned, in replay time."""
        titles = {p.id: p.title for p in await self.store.products(show_id)}
        out = []
        for pin in await self.store.pins(show_id):
            end = pin.end_s if pin.end_s is not None else replay_duration
            end = min(end, replay_duration)
            if end > pin.start_s:
                out.append({"product": pin.product_id, "title": titles.get(pin.product_id, pin.product_id),
                            "start_s": round(pin.start_s, 3), "end_s": round(end, 3)})
        return out
