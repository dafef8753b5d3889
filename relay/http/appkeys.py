"""Typed keys of what the application holds, shared by the HTTP front-ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ..commerce.coupon_updates import RemainingTicker
    from ..commerce.products import ProductShelf
    from ..commerce.store import CommerceStore
    from ..commerce.tokens import ViewerTokens
    from ..config import Settings
    from ..replay.service import ReplayService
    from ..shows import ShowService
    from ..webhooks import WebhookSender
    from .limits import RateLimiter

SETTINGS: "web.AppKey[Settings]" = web.AppKey("settings")
ADMIN_KEY: web.AppKey[str] = web.AppKey("admin_key", str)
SHOWS: "web.AppKey[ShowService]" = web.AppKey("shows")
REPLAYS: "web.AppKey[ReplayService]" = web.AppKey("replays")
SHELF: "web.AppKey[ProductShelf]" = web.AppKey("shelf")
TOKENS: "web.AppKey[ViewerTokens]" = web.AppKey("tokens")
COMMERCE: "web.AppKey[CommerceStore]" = web.AppKey("commerce")
TICKER: "web.AppKey[RemainingTicker]" = web.AppKey("coupon_ticker")
LIMITS: "web.AppKey[dict[str, RateLimiter]]" = web.AppKey("limits")
WEBHOOKS: "web.AppKey[WebhookSender]" = web.AppKey("webhooks")
