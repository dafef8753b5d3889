"""What one room sees of a product or a coupon: its price override, whether the product is on
its shelf, its cap and what is left for it. The one place that decides it, for the API, the
events and the pages alike.

Both functions take the all-rooms view (a product with "rooms": {room: {"price", "hidden"}}, a
coupon with "room_caps" and "rooms" claimed) and return the room's.
"""

from __future__ import annotations


def remaining_in_room(remaining: int, caps: dict[str, int], claimed: dict[str, int], room: str) -> int:
    """Coupons left for `room`: the coupon's own remaining, within the room's cap if it has one."""
    if room in caps:
        remaining = min(remaining, caps[room] - claimed.get(room, 0))
    return max(0, remaining)


def coupon_for_room(view: dict, room: str) -> dict:
    coupon = dict(view)
    caps, claimed = coupon.pop("room_caps"), coupon.pop("rooms")
    coupon["remaining"] = remaining_in_room(coupon["remaining"], caps, claimed, room)
    if room in caps:
        coupon["room_cap"] = caps[room]
    return coupon


def product_for_room(view: dict, room: str) -> dict | None:
    """None when the product is hidden in the room."""
    product = dict(view)
    product.pop("commission_rate", None)  # the brand's terms with its distributors, not for viewers
    override = product.pop("rooms").get(room) or {}
    if override.get("hidden"):
        return None
    if override.get("price") is not None:
        product["price"] = override["price"]
    return product
