"""The commerce store: one narrow async interface over viewers, the shelf, pins, events and
coupons, with an embedded (SQLite) and a Redis implementation.

Everything the commerce front-ends keep goes through a `CommerceStore`; nothing else reaches
into the tables or keys behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from .coupons import ClaimRequest, Coupon


MAX_SEQ = 2**53  # event sequence numbers stay below this (JSON-safe, fits both stores)


@dataclass
class Product:
    show_id: str
    id: str
    title: str
    price_cents: int
    image_url: str = ""
    link: str = ""
    position: int = 0
    overrides: dict[str, dict] = field(default_factory=dict)  # room -> {"price_cents", "hidden"}
    commission_rate: str | None = None  # replaces the distributor's rate for this product


@dataclass
class Pin:
    product_id: str
    start_wall: float
    start_s: float
    end_wall: float | None = None
    end_s: float | None = None


@dataclass
class Event:
    show_id: str
    seq: int
    type: str
    wall: float
    stream_time: float | None
    data: dict
    # Each distinct view of the event rendered once (events.render_text): a room's readers share it.
    views: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Comment:
    """A viewer's comment as kept: `text` is what readers see (masked words already starred)."""

    show_id: str
    id: int  # given by the store, increasing per show
    room: str
    viewer_id: str
    name: str
    text: str
    status: str  # published | masked | held | deleted
    wall: float
    stream_time: float | None = None


EventListener = Callable[[Event], Awaitable[None]]


class CommerceStore(Protocol):
    """Where commerce state lives. Claims are decided atomically inside the store; every event
    appended is handed, in sequence order, to the listener of every process sharing the store."""

    available: bool  # reachable now (what /healthz reports)

    async def start(self, listener: EventListener, resync: Callable[[], Awaitable[None]] | None = None) -> None:
        """Begin handing events to `listener`; `resync` is called when a lost event feed is back."""
        ...

    async def close(self) -> None: ...

    async def purge_show(self, show_id: str) -> None:
        """Forget everything kept for the show (its id may be used again by a new show)."""
        ...

    async def expire_requests(self, before: float) -> int:
        """Forget stored answers to claim requests older than `before` (an Idempotency-Key is
        honoured for a retention window, not for ever); how many went, where it is counted."""
        ...

    async def retire_room(self, show_id: str, room: str, retired: str) -> None:
        """Move a deleted room's viewer and claim counts to `retired` (a name no room can have):
        totals hold, and a new room with the same id starts at zero."""
        ...

    # viewers
    async def register_viewer(self, show_id: str, viewer_id: str, room: str, sharer: str | None,
                              now: float) -> str:
        """Register the viewer unless it is known; returns the room it is credited to (the first)."""
        ...

    async def count_registration(self, show_id: str, address: str) -> int:
        """One more anonymous registration from `address` for the show; how many there are now."""
        ...
    async def record_sharer(self, show_id: str, viewer_id: str, sharer: str) -> None: ...
    async def viewer_rooms(self, show_id: str) -> dict[str, int]: ...

    # shelf and card
    async def save_product(self, product: Product) -> None: ...
    async def delete_product(self, show_id: str, product_id: str) -> None: ...
    async def products(self, show_id: str) -> list[Product]: ...
    async def open_pin(self, show_id: str, pin: Pin) -> None: ...
    async def close_pin(self, show_id: str, end_wall: float, end_s: float | None) -> Pin | None: ...
    async def pins(self, show_id: str) -> list[Pin]: ...

    # events
    async def append_event(self, show_id: str, type: str, wall: float, stream_time: float | None,
                           data: dict) -> Event: ...
    async def events_after(self, show_id: str, seq: int, limit: int = 1000) -> list[Event]: ...
    async def current_state(self, show_id: str) -> tuple[list[Event], int]:
        """The events a new reader needs to know the room's state now (the latest card event,
        the latest event of each coupon, the latest show state), and the newest seq."""
        ...

    # coupons
    async def create_coupon(self, coupon: Coupon) -> Coupon: ...
    async def launch_coupon(self, show_id: str, coupon_id: str) -> Coupon: ...
    async def stop_coupon(self, show_id: str, coupon_id: str) -> Coupon: ...
    async def load_coupon(self, show_id: str, coupon_id: str) -> Coupon: ...
    async def list_coupons(self, show_id: str) -> list[Coupon]: ...
    async def claim(self, request: ClaimRequest) -> dict: ...
    async def claim_figures(self, show_id: str) -> dict:
        """Claims per room: {"claims", "claims_by_coupon", "claims_by_sharer"}."""
        ...

    # comments, mutes, likes and the moderation lists (relay/commerce/comments.py, likes.py)
    async def add_comment(self, comment: Comment) -> Comment:
        """Keep a new comment; returns it with its id (the show's next)."""
        ...
    async def load_comment(self, show_id: str, comment_id: int) -> Comment | None: ...
    async def set_comment_status(self, show_id: str, comment_id: int, status: str) -> None: ...
    async def comments(self, show_id: str, room: str | None, after: int, limit: int) -> list[Comment]:
        """Comments with an id above `after`, oldest first; of one room, or every room's (None)."""
        ...
    async def mute_viewer(self, show_id: str, viewer_id: str, until: float) -> None:
        """The viewer's comments are held until `until` (wall clock); 0 unmutes."""
        ...
    async def muted_until(self, show_id: str, viewer_id: str) -> float: ...
    async def add_likes(self, show_id: str, room: str, n: int) -> int:
        """Add `n` likes to the room atomically; the room's total now."""
        ...
    async def likes(self, show_id: str) -> dict[str, int]: ...
    async def moderation_lists(self) -> dict | None:
        """The operator's lists, shared by every show and node ({"block", "mask", "hold_links",
        "version"}), None before any was saved."""
        ...
    async def save_moderation_lists(self, lists: dict) -> None: ...
