"""App wiring: settings, store, service and the HTTP front-ends in one aiohttp application."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import logging
import os
import secrets
import socket
import time

from aiohttp import web

from . import aiortc_hooks
from .commerce.channel import serve_channel
from .commerce.comments import CommentDesk
from .commerce.likes import LikeCounter
from .commerce.coupon_updates import RemainingTicker, end_coupons
from .commerce.events import EventHub
from .commerce.order_book import OrderBook
from .commerce.redis_orders import RedisOrderBook
from .commerce.sales import SalesDesk
from .commerce.sqlite_orders import SqliteOrderBook
from .commerce.products import ProductShelf
from .commerce.redis_store import RedisCommerceStore
from .commerce.sqlite_store import SqliteCommerceStore
from .commerce.store import CommerceStore
from .commerce.tokens import ViewerTokens, load_secret
from .config import ConfigError, Settings
from .errors import ApiError, StoreUnavailable
from .http.api_docs import ApiDocs
from .http.cluster_api import ClusterApi
from .http.comment_api import CommentApi
from .http.commerce_api import CommerceApi
from .http.coupon_api import CouponApi
from .http.limits import RateLimiter
from .http.metrics_api import build_registry, metrics_route
from .http.order_api import OrderApi
from .http.middleware import cors_middleware, draining_middleware, error_middleware, security_headers
from .http.pages import Pages
from .http.replay_api import ReplayApi
from .http.reminder_api import ReminderApi
from .http.restream_api import RestreamApi
from .http.shows_api import ShowsApi
from .http.util import Auth
from .http.session_routes import SessionRoutes
from .http.whep import WhepApi
from .http.whip import WhipApi
from .catalog import ShowCatalog
from .cluster.edge import EdgeLinks, PullOptions
from .cluster.nodes import NodeDirectory
from .cluster.origins import Origin, OriginRegistry
from .cluster.replay_parts import ClusterReplayParts
from .ingest.rtmp_server import RtmpServer
from .live_registry import LiveRegistry
from .redis_show_store import RedisShowStore
from .reminders.endpoints import PushServiceHosts
from .reminders.sender import SenderOptions
from .reminders.service import Reminders
from .reminders.subscriptions import RedisSubscriptionStore, SqliteSubscriptionStore, SubscriptionStore
from .replay.redis_replay_store import RedisReplayStore
from .replay.replay_store import SqliteReplayStore
from .replay.service import ReplayService
from .restream.service import RestreamService
from .restream.target import TargetOptions
from .show_removal import ShowRemoval
from .show_store import SqliteShowStore
from .webhooks import WebhookSender, signing_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """What the app built, for the command (the demo) and for tests; handlers never look here."""

    settings: Settings
    catalog: ShowCatalog
    live: LiveRegistry
    removal: ShowRemoval
    replays: ReplayService
    commerce: CommerceStore
    events: EventHub
    shelf: ProductShelf
    tokens: ViewerTokens
    webhooks: WebhookSender
    orders: OrderBook
    restreams: RestreamService | None = None
    reminders: Reminders | None = None


SERVICES: "web.AppKey[Services]" = web.AppKey("services")


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


async def _recover(live: LiveRegistry, replays: ReplayService, grace_period_s: float) -> bool:
    """Shows and replays left live by the last stop go on (see LiveRegistry.recover); False if
    the store is unreachable."""
    try:
        waiting = await live.recover()
        if waiting:
            log.warning("shows live at the last stop, waiting %.0fs for their hosts: %s",
                        grace_period_s, ", ".join(waiting))
        await replays.recover(continuing=set(waiting))
    except StoreUnavailable as exc:
        log.error("cannot read the shows to recover: %s; trying again", exc.message)
        return False
    return True


async def _recover_when_reachable(live: LiveRegistry, replays: ReplayService, settings: Settings) -> None:
    while not await _recover(live, replays, settings.media.grace_period_s):
        await asyncio.sleep(2.0)


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


def open_order_book(settings: Settings) -> OrderBook:
    """Orders and refunds: in Redis for a cluster, else in the data dir."""
    if settings.store.redis_url:
        return RedisOrderBook(settings.store.redis_url, settings.store.redis_prefix)
    return SqliteOrderBook(settings.data_path / "relay.db")


def open_show_stores(settings: Settings) -> tuple[SqliteShowStore | RedisShowStore,
                                                 SqliteReplayStore | RedisReplayStore]:
    """Shows, rooms, figures and replay records: in Redis for a cluster, else in the data dir."""
    if settings.store.redis_url:
        url, prefix = settings.store.redis_url, settings.store.redis_prefix
        # Each process counts its own viewers under a name of its own (a restart starts anew).
        figures_node = f"{settings.node_id}~{secrets.token_hex(3)}"
        return RedisShowStore(url, prefix, figures_node), RedisReplayStore(url, prefix)
    db_path = settings.data_path / "relay.db"
    return SqliteShowStore(db_path), SqliteReplayStore(db_path)


def open_reminders(settings: Settings, catalog: ShowCatalog) -> Reminders:
    """Web Push reminders; subscriptions and the VAPID key in Redis for a cluster, else the data dir."""
    store: SubscriptionStore
    if settings.store.redis_url:
        store = RedisSubscriptionStore(settings.store.redis_url, settings.store.redis_prefix)
    else:
        store = SqliteSubscriptionStore(settings.data_path / "relay.db", settings.data_path / "vapid_private.pem")
    push = settings.webpush
    options = SenderOptions(push.workers, push.max_queue, push.timeout_s, push.max_attempts, push.ttl_s)
    return Reminders(store, PushServiceHosts(push.push_service_hosts), options, push.subject,
                     lambda: settings.base_url, catalog.find)


def cluster_edges(settings: Settings, admin_key: str) -> EdgeLinks | None:
    """With Redis, this node is one of a cluster: it registers the shows whose host publishes
    here and pulls the others' shows from their origins; alone, None."""
    if not settings.store.redis_url:
        return None
    origins = OriginRegistry(settings.store.redis_url, settings.store.redis_prefix,
                             lambda: Origin(settings.node_id, settings.node_url), settings.cluster.origin_ttl_s)
    return EdgeLinks(origins, PullOptions(admin_key, settings.media.video_codecs, settings.ice.connect_timeout_s,
                                          settings.cluster.edge_linger_s))


def build_app(settings: Settings, rtmp_listener: socket.socket | None = None) -> web.Application:
    """The app; `rtmp_listener` is the RTMP port bound by the command (else bound at startup)."""
    aiortc_hooks.set_host_addresses(settings.ice.addresses)
    aiortc_hooks.set_consent_timeout(settings.ice.consent_timeout_s)
    aiortc_hooks.install_dtls_hooks()
    draining = asyncio.Event()
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[cors_middleware(settings.server.cors_origins), error_middleware, draining_middleware(draining)],
    )
    admin_key, created = resolve_admin_key(settings)
    if created:
        print(f"relay: generated an admin key (stored in {settings.data_path / 'admin_key'}):\n"
              f"  {admin_key}", flush=True)
    hooks = settings.webhooks
    if hooks.urls and not hooks.secret:
        raise ConfigError("[webhooks] secret is required when urls are set (RELAY_WEBHOOKS_SECRET); "
                          "make one with: python3 -c 'from relay.webhooks import new_secret; print(new_secret())'")
    try:
        signing_key(hooks.secret)
    except ValueError as exc:
        raise ConfigError(f"[webhooks] secret: {exc}") from None

    # Stores and services, each given what it uses
    show_store, replay_store = open_show_stores(settings)
    catalog = ShowCatalog(show_store)
    commerce = open_commerce_store(settings)
    orders = open_order_book(settings)
    webhooks = WebhookSender(hooks.urls, hooks.secret, hooks.timeout_s, hooks.max_queue, hooks.max_attempts)

    edges = cluster_edges(settings, admin_key)
    nodes = None if edges is None else NodeDirectory(
        settings.store.redis_url, settings.store.redis_prefix, lambda: Origin(settings.node_id, settings.node_url),
        lambda: live.totals()[1], settings.cluster.max_viewers_per_node)
    replay_parts = None if nodes is None else ClusterReplayParts(
        settings.store.redis_url, settings.store.redis_prefix, lambda: Origin(settings.node_id, settings.node_url),
        admin_key, nodes)

    async def replay_ready(show_id: str) -> None:
        webhooks.emit("replay.ready", {"show": show_id, **(await replays.describe(show_id, settings.base_url) or {})})

    replays = ReplayService(settings.replay, replay_store, settings.replay_path, replay_ready, replay_parts)

    events = EventHub(commerce, replays.stream_time)

    async def mirror_ids(show_id: str) -> set[str]:
        return {m.distributor for m in await catalog.mirrors(show_id)}

    shelf = ProductShelf(commerce, events, mirror_ids, replays.stream_time)
    restream = settings.restream
    restreams = RestreamService(show_store, TargetOptions(
        restream.connect_timeout_s, restream.write_timeout_s, restream.retry_min_s, restream.retry_max_s,
        restream.queue_frames), restream.max_targets_per_show, restream.aac_bitrate)
    reminders = open_reminders(settings, catalog)

    def on_state(show_id: str, type: str, data: dict) -> None:
        events.publish_soon(show_id, type, data)
        if type == "show.live":  # (only a scheduled show going live: a host reconnecting is not news)
            reminders.show_live(show_id)

    live = LiveRegistry(
        settings, catalog, replays, show_store, on_state=on_state, on_webhook=webhooks.emit,
        on_viewer_channel=lambda viewer, channel: serve_channel(events, viewer.show_id, viewer.room, channel,
                                                                     viewer.reader),
        on_ended=lambda show_id: end_coupons(commerce, events, show_id), edges=edges, nodes=nodes,
        restreams=restreams)

    desk = SalesDesk(orders, events, webhooks.emit)

    async def purge_commerce(show_id: str) -> None:  # a store failure (503) leaves the show to delete again
        await commerce.purge_show(show_id)
        await orders.purge_show(show_id)
        await reminders.forget_show(show_id)
        events.forget(show_id)
        desk.forget(show_id)

    async def retire_room(show_id: str, room: str, retired: str) -> None:
        await commerce.retire_room(show_id, room, retired)
        await orders.retire_room(show_id, room, retired)

    removal = ShowRemoval(catalog, live, replays, on_deleting=purge_commerce, on_room_deleting=retire_room)
    # Processes sharing Redis sign alike: without a configured secret they read one kept there.
    shared_secret = not settings.auth.token_secret and isinstance(commerce, RedisCommerceStore)
    tokens = ViewerTokens(None if shared_secret else load_secret(settings.auth.token_secret, settings.data_path))
    ticker = RemainingTicker(commerce, events)
    comments = CommentDesk(commerce, events, replays.stream_time)
    likes = LikeCounter(commerce, events)
    app[SERVICES] = Services(settings, catalog, live, removal, replays, commerce, events, shelf, tokens, webhooks,
                             orders, restreams, reminders)

    # HTTP front-ends, each given what it uses
    limits = settings.limits
    behind_proxy = settings.server.trust_forwarded_for
    auth = Auth(admin_key, tokens, catalog, behind_proxy, settings.auth.shop_key)
    # aiohttp tries the routes under one path prefix in the order they were added: the storms'
    # routes (claims, viewers, events, WHEP) come first.
    app.add_routes(CouponApi(catalog, commerce, events, ticker, webhooks, auth,
                             RateLimiter("claim", limits.claims_per_s, behind_proxy)).routes())
    app.add_routes(CommerceApi(catalog, shelf, commerce, events, tokens, settings, auth,
                               RateLimiter("viewer registration", limits.viewer_registrations_per_s,
                                           behind_proxy)).routes())
    sessions = None if nodes is None else SessionRoutes(nodes, lambda: Origin(settings.node_id, settings.node_url))
    app.add_routes(WhepApi(live, auth, RateLimiter("WHEP", limits.whep_per_s, behind_proxy), sessions).routes())
    app.add_routes(WhipApi(live, auth, RateLimiter("WHIP", limits.whip_per_s, behind_proxy), sessions).routes())
    if edges is not None:
        app.add_routes(ClusterApi(live, auth, RateLimiter("pull", 0, behind_proxy)).routes())
    app.add_routes(OrderApi(catalog, shelf, desk, orders, tokens, settings, auth,
                            RateLimiter("attribution", limits.attributions_per_s, behind_proxy)).routes())
    app.add_routes(CommentApi(catalog, comments, likes, auth,
                              RateLimiter("comment", settings.comments.per_viewer_per_s, False,
                                          settings.comments.per_viewer_burst)).routes())
    app.add_routes(ShowsApi(catalog, live, removal, replays, commerce, orders, auth, settings).routes())
    app.add_routes(RestreamApi(catalog, restreams, auth).routes())
    app.add_routes(ReminderApi(catalog, reminders, auth, settings,
                               RateLimiter("subscription", settings.webpush.subscriptions_per_s,
                                           behind_proxy)).routes())
    app.add_routes(ReplayApi(catalog, replays, shelf, tokens, auth, settings).routes())
    app.add_routes(Pages(catalog, settings).routes())
    app.router.add_get("/metrics", metrics_route(build_registry(live), settings.auth.metrics_key or admin_key))
    app.add_routes(ApiDocs().routes())  # describes every route above: the last to be added
    rtmp = None if not settings.rtmp.enabled else RtmpServer(
        settings.rtmp_host, settings.rtmp.port, live.open_stream, setup_timeout_s=settings.server.read_timeout_s,
        max_setup_per_address=limits.max_pending_sessions_per_address,
        publish_wait=RateLimiter("RTMP publish", limits.whip_per_s).take)
    background: dict[str, asyncio.Task] = {}

    async def on_startup(app: web.Application) -> None:
        await commerce.start(events.deliver, events.resync)
        await webhooks.start()
        await reminders.start()
        if shared_secret:  # read in the background: media flows while Redis is away
            background["secret"] = asyncio.ensure_future(_read_shared_secret(commerce, tokens))
        if not await _recover(live, replays, settings.media.grace_period_s):  # Redis is away: when it is back
            background["recover"] = asyncio.ensure_future(_recover_when_reachable(live, replays, settings))
        background["retention"] = asyncio.ensure_future(replays.run_retention())
        background["figures"] = asyncio.ensure_future(live.run_figures_saver())
        background["restream_state"] = asyncio.ensure_future(restreams.run_state_saver())
        if nodes is not None:
            nodes.start()
        if isinstance(show_store, RedisShowStore):  # what other nodes change, this one reads again
            background["catalog"] = asyncio.ensure_future(show_store.follow(live.show_changed))
        background["expiry"] = asyncio.ensure_future(_expire_claim_requests(commerce, limits.idempotency_retention_s))
        if rtmp is not None:  # (port 0: the show views give the port it got)
            settings.rtmp.port = await rtmp.start(rtmp_listener)

    async def on_shutdown(app: web.Application) -> None:
        # New sessions are refused from here on; readers hear that this server is stopping
        # (players reconnect, to another process or to this one when it is back).
        draining.set()
        if rtmp is not None:
            await rtmp.close()
        for show_id in list(live.running):
            try:
                await events.publish(show_id, "server.stopping", {"reconnect": True})
            except ApiError as exc:
                log.warning("show %s: could not tell readers the server stops: %s", show_id, exc.message)
        await events.drain(timeout=1.0)
        events.close()  # event streams end now, or the server would wait on them
        for task in background.values():
            task.cancel()
        await live.shutdown()
        await restreams.close()
        if edges is not None:
            await edges.close()
        if nodes is not None:
            await nodes.close()
        await replays.shutdown()
        if replay_parts is not None:
            await replay_parts.close()
        if sessions is not None:
            await sessions.close()
        await commerce.close()
        await orders.close()
        await webhooks.close()
        await reminders.close()
        await replay_store.close()
        await show_store.close()

    app.on_response_prepare.append(security_headers)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app
