"""App wiring: settings, store, service and the HTTP front-ends in one aiohttp application."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
import secrets
import time

from aiohttp import web

from . import aiortc_hooks
from .commerce.channel import serve_channel
from .commerce.coupon_updates import end_coupons
from .commerce.events import EventHub
from .commerce.products import ProductShelf
from .commerce.redis_store import RedisCommerceStore
from .commerce.sqlite_store import SqliteCommerceStore
from .commerce.store import CommerceStore
from .commerce.tokens import ViewerTokens, load_secret
from .config import ConfigError, Settings
from .errors import ApiError
from .http.appkeys import ADMIN_KEY, COMMERCE, LIMITS, REPLAYS, SETTINGS, SHELF, SHOWS, TOKENS, WEBHOOKS
from .http.commerce_api import routes as commerce_routes
from .http.coupon_api import setup as setup_coupons
from .http.limits import RateLimiter
from .http.metrics_api import build_registry, metrics_route
from .http.middleware import DRAINING, cors_middleware, draining_middleware, error_middleware, security_headers
from .http.pages import routes as page_routes
from .http.replay_api import routes as replay_routes
from .http.shows_api import routes as api_routes
from .http.whep import routes as whep_routes
from .http.whip import routes as whip_routes
from .replay.service import ReplayService
from .shows import ShowService
from .store import SqliteStore
from .webhooks import WebhookSender, signing_key

log = logging.getLogger(__name__)

RETENTION: web.AppKey[asyncio.Task] = web.AppKey("retention", asyncio.Task)
SECRET_READER: web.AppKey[asyncio.Task] = web.AppKey("secret_reader", asyncio.Task)
EXPIRY: web.AppKey[asyncio.Task] = web.AppKey("request_expiry", asyncio.Task)


async def _expire_claim_requests(store: CommerceStore, retention_s: float) -> None:
    """Stored answers to claim requests go once older than the retention window."""
    while True:
        try:
            gone = await store.expire_requests(time.time() - retention_s)
            if gone:
                log.info("forgot %d claim answers older than %.0fs", gone, retention_s)
        except ApiError as exc:
            log.warning("expiring claim answers: %s", exc.message)
        await asyncio.sleep(min(3600.0, retention_s / 4))


async def _read_shared_secret(store: RedisCommerceStore, tokens: ViewerTokens) -> None:
    tokens.use_secret(await store.shared_secret("token_secret"))
    log.info("token secret read from Redis")


def resolve_admin_key(settings: Settings) -> tuple[str, bool]:
    """The admin key from settings, else the one stored in the data dir, else a new one.

    Returns (key, created_now).
    """
    if settings.auth.admin_key:
        return settings.auth.admin_key, False
    path = settings.data_path / "admin_key"
    if path.exists():
        return path.read_text().strip(), False
    settings.data_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key, True


def open_commerce_store(settings: Settings) -> CommerceStore:
    """Redis when a URL is configured, else the embedded store in the data dir."""
    if settings.store.redis_url:
        return RedisCommerceStore(settings.store.redis_url, settings.store.redis_prefix,
                                  settings.limits.idempotency_retention_s)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    return SqliteCommerceStore(settings.data_path / "relay.db")


def build_app(settings: Settings) -> web.Application:
    aiortc_hooks.set_host_addresses(settings.ice.addresses)
    aiortc_hooks.set_consent_timeout(settings.ice.consent_timeout_s)
    aiortc_hooks.install_dtls_hooks()
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[cors_middleware, error_middleware, draining_middleware],
    )
    admin_key, created = resolve_admin_key(settings)
    if created:
        print(f"relay: generated an admin key (stored in {settings.data_path / 'admin_key'}):\n"
              f"  {admin_key}", flush=True)
    store = SqliteStore(Path(settings.data_path) / "relay.db")
    replays = ReplayService(settings.replay, store, settings.data_path / "replays")
    service = ShowService(settings, store, replays)
    app[SETTINGS] = settings
    app[DRAINING] = asyncio.Event()
    limits = settings.limits
    behind_proxy = settings.server.trust_forwarded_for
    app[LIMITS] = {"viewers": RateLimiter("viewer registration", limits.viewer_registrations_per_s, behind_proxy),
                   "claims": RateLimiter("claim", limits.claims_per_s, behind_proxy),
                   "whep": RateLimiter("WHEP", limits.whep_per_s, behind_proxy),
                   "whip": RateLimiter("WHIP", limits.whip_per_s, behind_proxy)}
    app[ADMIN_KEY] = admin_key
    app[SHOWS] = service
    app[REPLAYS] = replays
    commerce = open_commerce_store(settings)
    events = EventHub(commerce, replays.stream_time)
    app[COMMERCE] = commerce
    app[SHELF] = ProductShelf(commerce, events,
                              lambda show_id: {m.distributor for m in store.list_mirrors(show_id)},
                              replays.stream_time)
    # Processes sharing Redis sign alike: without a configured secret they read one kept there.
    shared_secret = not settings.auth.token_secret and isinstance(commerce, RedisCommerceStore)
    app[TOKENS] = ViewerTokens(None if shared_secret else load_secret(settings.auth.token_secret, settings.data_path))
    hooks = settings.webhooks
    if hooks.urls and not hooks.secret:
        raise ConfigError("[webhooks] secret is required when urls are set (RELAY_WEBHOOKS_SECRET); "
                          "make one with: python3 -c 'from relay.webhooks import new_secret; print(new_secret())'")
    try:
        signing_key(hooks.secret)
    except ValueError as exc:
        raise ConfigError(f"[webhooks] secret: {exc}") from None
    webhooks = app[WEBHOOKS] = WebhookSender(hooks.urls, hooks.secret, hooks.timeout_s, hooks.max_queue,
                                             hooks.max_attempts)
    service.on_webhook = webhooks.emit
    replays.on_ready = lambda show_id: webhooks.emit(
        "replay.ready", {"show": show_id, **(replays.describe(show_id, settings.base_url) or {})})
    service.on_state = events.publish_soon
    service.on_viewer_channel = lambda viewer, channel: serve_channel(events, viewer.show_id, viewer.room, channel)
    service.on_ended = lambda show_id: end_coupons(commerce, events, show_id)

    async def purge_commerce(show_id: str) -> None:  # a store failure (503) leaves the show to delete again
        await commerce.purge_show(show_id)
        events.forget(show_id)

    service.on_deleting = purge_commerce
    setup_coupons(app, commerce, events)
    app.add_routes(api_routes)
    app.add_routes(whip_routes)
    app.add_routes(whep_routes)
    app.add_routes(page_routes)
    app.add_routes(replay_routes)
    app.add_routes(commerce_routes)
    app.router.add_get("/metrics", metrics_route(build_registry(service), settings.auth.metrics_key or admin_key))

    async def on_startup(app: web.Application) -> None:
        await commerce.start(events.deliver, events.resync)
        await webhooks.start()
        if shared_secret:  # read in the background: media flows while Redis is away
            app[SECRET_READER] = asyncio.ensure_future(_read_shared_secret(commerce, app[TOKENS]))
        waiting = service.recover()
        if waiting:
            log.warning("shows live at the last stop, waiting %.0fs for their hosts: %s",
                        settings.media.grace_period_s, ", ".join(waiting))
        replays.recover(continuing=set(waiting))
        app[RETENTION] = asyncio.ensure_future(replays.run_retention())
        app[EXPIRY] = asyncio.ensure_future(_expire_claim_requests(commerce, settings.limits.idempotency_retention_s))

    async def on_shutdown(app: web.Application) -> None:
        # New sessions are refused from here on; readers hear that this server is stopping
        # (players reconnect, to another process or to this one when it is back).
        app[DRAINING].set()
        for show_id in list(service.live):
            try:
                await events.publish(show_id, "server.stopping", {"reconnect": True})
            except ApiError as exc:
                log.warning("show %s: could not tell readers the server stops: %s", show_id, exc.message)
        await events.drain(timeout=1.0)
        events.close()  # event streams end now, or the server would wait on them
        app[RETENTION].cancel()
        app[EXPIRY].cancel()
        if SECRET_READER in app:
            app[SECRET_READER].cancel()
        await service.shutdown()
        await replays.shutdown()
        await commerce.close()
        await webhooks.close()
        store.close()

    app.on_response_prepare.append(security_headers)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app
