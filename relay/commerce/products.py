"""The product shelf and the "now explaining" card of a show."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
import re
import secrets
import time
from typing import Awaitable, Callable

from ..errors import ApiError, invalid_field as _invalid
from ..fields import text_field
from ..models import is_slug
from .events import EventHub
from .room_view import product_for_room
from .store import CommerceStore, Pin, Product

MAX_PRICE_CENTS = 100_000_000_00
_URL = re.compile(r"^https?://[^\s]{1,2000}$")


def parse_price(value: object, field: str = "price") -> int:
    """A price as a JSON number or decimal string with at most 2 decimals, in cents."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _invalid(field, "must be a number")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise _invalid(field, "must be a number") from exc
    if not amount.is_finite() or amount < 0:
        raise _invalid(field, "must be a non-negative amount with at most 2 decimals")
    if amount * 100 > MAX_PRICE_CENTS:  # before quantize, which cannot hold 1e400
        raise _invalid(field, "is too large")
    if amount != amount.quantize(Decimal("0.01")):
        raise _invalid(field, "must be a non-negative amount with at most 2 decimals")
    cents = int(amount * 100)
    return cents


def product_view(product: Product, room: str | None = None) -> dict | None:
    """The product as `room` sees it (its price override), None if hidden there; all rooms' view
    (with overrides) when `room` is None."""
    view = {"id": product.id, "title": product.title, "image_url": product.image_url, "link": product.link,
            "position": product.position, "price": product.price_cents / 100,
            "rooms": {r: {"price": o["price_cents"] / 100 if o.get("price_cents") is not None else None,
                          "hidden": bool(o.get("hidden"))} for r, o in product.overrides.items()}}
    return view if room is None else product_for_room(view, room)


class ProductShelf:
    """Every change to a show's shelf or card goes through here and becomes an event."""

    def __init__(self, store: CommerceStore, events: EventHub, rooms: Callable[[str], Awaitable[set[str]]],
                 stream_time: Callable[[str, float], float | None]) -> None:
        self.store = store
        self.events = events
        self._rooms = rooms
        self._stream_time = stream_time

    async def list(self, show_id: str) -> list[Product]:
        return await self.store.products(show_id)

    async def get(self, show_id: str, product_id: str) -> Product:
        product = next((p for p in await self.store.products(show_id) if p.id == product_id), None)
        if product is None:
            raise ApiError(404, "product_not_found", f"show {show_id!r} has no product {product_id!r}")
        return product

    async def add(self, show_id: str, body: dict) -> Product:
        product_id = body.get("id")
        if product_id is None:
            product_id = "p" + secrets.token_hex(4)
        elif not is_slug(product_id):
            raise _invalid("id", "must be a slug: 1-64 of a-z, 0-9, '-', '_'")
        existing = await self.store.products(show_id)
        if any(p.id == product_id for p in existing):
            raise ApiError(409, "product_exists", f"product {product_id!r} is already on the shelf")
        product = Product(show_id, product_id, "", 0, position=max((p.position for p in existing), default=-1) + 1)
        self._apply(product, body, await self._rooms(show_id), creating=True)
        await self.store.save_product(product)
        await self.events.publish(show_id, "shelf.updated", {"product": product_view(product), "change": "added"})
        return product

    async def update(self, show_id: str, product_id: str, body: dict) -> Product:
        product = await self.get(show_id, product_id)
        self._apply(product, body, await self._rooms(show_id), creating=False)
        await self.store.save_product(product)
        await self.events.publish(show_id, "shelf.updated", {"product": product_view(product), "change": "updated"})
        return product

    async def remove(self, show_id: str, product_id: str) -> None:
        await self.get(show_id, product_id)
        if await self.pinned(show_id) == product_id:
            await self.unpin(show_id)
        await self.store.delete_product(show_id, product_id)
        await self.events.publish(show_id, "shelf.updated", {"product": {"id": product_id}, "change": "removed"})

    def _apply(self, product: Product, body: dict, known: set[str], creating: bool) -> None:
        if creating or "title" in body:
            product.title = text_field(body, "title")
        if creating or "price" in body:
            product.price_cents = parse_price(body.get("price"))
        for field in ("image_url", "link"):
            if field in body:
                value = body[field]
                if not isinstance(value, str) or (value and not _URL.fullmatch(value)):
                    raise _invalid(field, "must be an http(s) URL")
                setattr(product, field, value)
        if "position" in body:
            position = body["position"]
            if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= 10_000:
                raise _invalid("position", "must be an integer from 0 to 10000")
            product.position = position
        if "rooms" in body:
            rooms = body["rooms"]
            if not isinstance(rooms, dict):
                raise _invalid("rooms", "must be an object of distributor -> {price, hidden}")
            overrides = dict(product.overrides)
            for room, override in rooms.items():
                if room not in known:
                    raise _invalid("rooms", f"names {room!r}, which is not a mirror room of this show")
                if override is None:
                    overrides.pop(room, None)
                    continue
                if not isinstance(override, dict) or set(override) - {"price", "hidden"}:
                    raise _invalid("rooms", "entries must be {\"price\": number|null, \"hidden\": bool}")
                hidden = override.get("hidden", False)
                if not isinstance(hidden, bool):
                    raise _invalid("rooms", "'hidden' must be true or false")
                price = override.get("price")
                overrides[room] = {"price_cents": None if price is None else parse_price(price, "rooms.price"),
                                   "hidden": hidden}
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
