"""The admin HTTP API: shows, mirror rooms and figures (Bearer admin key)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from ..catalog import ShowCatalog
from ..commerce.money import first_over_one, format_cents
from ..commerce.order_book import OrderBook
from ..commerce.store import CommerceStore
from ..errors import invalid_field
from ..config import Settings
from ..live_registry import LiveRegistry
from ..models import HQ_ROOM, Mirror, Show, ShowState
from ..replay.service import ReplayService
from ..show_removal import ShowRemoval
from .openapi import ADMIN, JSON_BODY, NO_SHOW, STORE, Param, Reply, admin_operation as admin, operation
from .schemas.common import parse
from .schemas.shows import (Health, MirrorChange, MirrorList, MirrorView, NewMirror, NewShow, NewStreamKey,
                            PublicStatus, ShowChange, ShowCreated, ShowDetail, ShowList, ShowStats, StreamKey)
from .util import Auth, read_json


def show_links(settings: Settings, show_id: str) -> dict[str, str]:
    base = settings.base_url
    return {
        "whip_url": f"{base}/whip/{show_id}",
        "whep_url": f"{base}/whep/{show_id}",
        "watch_url": f"{base}/watch/{show_id}",
    }


def rtmp_url(settings: Settings) -> str | None:
    """Where hosts push RTMP (OBS: Server): the base URL's host, the RTMP port. None if RTMP is off."""
    if not settings.rtmp.enabled:
        return None
    host = urlsplit(settings.base_url).hostname or settings.server.host
    return f"rtmp://{f'[{host}]' if ':' in host else host}:{settings.rtmp.port}/live"


def rtmp_stream_key(settings: Settings, show_id: str, key: str) -> str | None:
    """The RTMP stream name (OBS: Stream Key) for a stream key; None if RTMP is off."""
    return f"{show_id}?key={key}" if settings.rtmp.enabled else None


def mirror_view(settings: Settings, mirror: Mirror, viewers: int | None = None) -> dict:
    base = settings.base_url
    view = {
        "distributor": mirror.distributor,
        "name": mirror.name,
        "whep_url": f"{base}/whep/{mirror.show_id}/{mirror.distributor}",
        "watch_url": f"{base}/watch/{mirror.show_id}/{mirror.distributor}",
        "created_at": mirror.created_at,
        "commission_rate": mirror.commission_rate,
    }
    if viewers is not None:
        view["viewers"] = viewers
    return view


SHOWS, MIRRORS = "shows", "mirror rooms"
NO_MIRROR = {404: "mirror_not_found"}


def show_view(settings: Settings, show: Show) -> dict:
    return {
        "id": show.id,
        "title": show.title,
        "state": show.state.value,
        **show_links(settings, show.id),
        "rtmp_url": rtmp_url(settings),
        "created_at": show.created_at,
        "started_at": show.started_at,
        "ended_at": show.ended_at,
        "end_reason": show.end_reason,
        "replay_public": show.replay_public,
        "playback": show.playback,
        "currency": show.currency,
        "identity": show.identity,
        "stream_key_expires_at": show.stream_key_expires_at,
        "sharer_commission_rate": show.sharer_commission_rate,
        "starts_at": show.starts_at,
    }


def public_show_view(settings: Settings, show: Show) -> dict:
    """A public show as anyone may list it: what the /shows page needs, nothing secret."""
    base = settings.base_url
    return {
        "id": show.id, "title": show.title, "state": show.state.value, "starts_at": show.starts_at,
        "started_at": show.started_at, "ended_at": show.ended_at, "watch_url": f"{base}/watch/{show.id}",
        "replay_url": f"{base}/replay/{show.id}" if show.replay_public and show.started_at is not None else None,
        "calendar_url": f"{base}/api/shows/{show.id}/calendar.ics",
        "subscriptions_url": f"{base}/api/shows/{show.id}/subscriptions",
    }


def is_public(show: Show) -> bool:
    """Listed for anyone: token-playback shows are for their invited viewers only."""
    return show.playback == "public"


@dataclass(eq=False)
class ShowsApi:
    """The admin API of shows and mirror rooms, their figures, the public status and /healthz."""

    catalog: ShowCatalog
    live: LiveRegistry
    removal: ShowRemoval
    replays: ReplayService
    commerce: CommerceStore
    orders: OrderBook
    auth: Auth
    settings: Settings

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/shows", self.create_show),
            web.post("/api/shows/{show}/stream-key", self.rotate_stream_key),
            web.get("/api/shows", self.list_shows),
            web.get("/api/shows/{show}", self.get_show),
            web.patch("/api/shows/{show}", self.change_show),
            web.delete("/api/shows/{show}", self.delete_show),
            web.post("/api/shows/{show}/end", self.end_show),
            web.post("/api/shows/{show}/mirrors", self.add_mirror),
            web.get("/api/shows/{show}/mirrors", self.list_mirrors),
            web.get("/api/shows/{show}/mirrors/{distributor}", self.get_mirror),
            web.patch("/api/shows/{show}/mirrors/{distributor}", self.change_mirror),
            web.delete("/api/shows/{show}/mirrors/{distributor}", self.delete_mirror),
            web.get("/api/shows/{show}/stats", self.stats),
            web.get("/api/shows/{show}/status", self.public_status),
            web.get("/healthz", self.healthz),
        ]

    def _admin(self, request: web.Request) -> ShowCatalog:
        self.auth.require_admin(request)
        return self.catalog

    async def _detail(self, show: Show) -> dict:
        """A show as the admin API shows it alone: with its publisher, tracks, rooms and viewers."""
        view = show_view(self.settings, show)
        figures = await self.live.figures(show.id)
        view.update(self.live.describe(show.id))
        mirrors = await self.catalog.mirrors(show.id)
        view["viewers"] = {HQ_ROOM: figures.room(HQ_ROOM).viewers} | {
            m.distributor: figures.rooms[m.distributor].viewers if m.distributor in figures.rooms else 0
            for m in mirrors
        }
        view["mirrors"] = [mirror_view(self.settings, m) for m in mirrors]
        return view

    @admin("Create a show", SHOWS, {201: Reply("the show, with its stream key (shown this once)", ShowCreated)},
           JSON_BODY, {409: "show_exists: a show has this id"}, body=NewShow)
    async def create_show(self, request: web.Request) -> web.Response:
        catalog = self._admin(request)
        new = parse(NewShow, await read_json(request))
        show, key = await catalog.create_show(new.title, new.id, new.replay_public, new.stream_key_ttl_s,
                                              new.playback, new.currency, new.identity, new.starts_at)
        return web.json_response({**show_view(self.settings, show), "stream_key": key,
                                  "rtmp_stream_key": rtmp_stream_key(self.settings, show.id, key)}, status=201)

    @admin("Rotate the stream key", SHOWS, {200: Reply("the new key (shown this once)", StreamKey)},
           JSON_BODY, NO_SHOW, {409: "show_ended"}, body=NewStreamKey, body_required=False)
    async def rotate_stream_key(self, request: web.Request) -> web.Response:
        """A new stream key (shown once); the old one no longer publishes."""
        catalog = self._admin(request)
        options = parse(NewStreamKey, await read_json(request) if request.can_read_body else {})
        show, key = await catalog.rotate_stream_key(request.match_info["show"], options.ttl_s)
        return web.json_response({"stream_key": key, "rtmp_stream_key": rtmp_stream_key(self.settings, show.id, key),
                                  "stream_key_expires_at": show.stream_key_expires_at})

    @operation("List shows", tag=SHOWS, auth=(ADMIN,), public_too=True,
               replies={200: Reply("with the admin key every show (ShowView); else the public shows "
                                   "(playback 'public') as PublicShowView", ShowList)},
               errors=({401: "unauthorized: a wrong admin key (send none for the public listing)",
                        422: "invalid_field: state"},),
               params=(Param("state", "query", "only shows in this state",
                             {"type": "string", "enum": [s.value for s in ShowState]}),))
    async def list_shows(self, request: web.Request) -> web.Response:
        """Oldest first. Without a key: the public shows only, each as the /shows page lists it."""
        admin = request.headers.get("Authorization") is not None
        if admin:
            self.auth.require_admin(request)
        state = request.query.get("state")
        if state is not None and state not in {s.value for s in ShowState}:
            raise invalid_field("state", "must be 'scheduled', 'live' or 'ended'")
        shows = [s for s in await self.catalog.list_shows() if state is None or s.state.value == state]
        if admin:
            return web.json_response({"shows": [show_view(self.settings, s) for s in shows]})
        return web.json_response({"shows": [public_show_view(self.settings, s) for s in shows if is_public(s)]},
                                 headers={"Cache-Control": "no-cache"})

    @admin("Read a show", SHOWS, {200: Reply("the show with its live state", ShowDetail)}, NO_SHOW)
    async def get_show(self, request: web.Request) -> web.Response:
        show = await self._admin(request).show(request.match_info["show"])
        return web.json_response(await self._detail(show))

    @admin("Change a show", SHOWS, {200: Reply("the show with its live state", ShowDetail)}, JSON_BODY, NO_SHOW,
           STORE, body=ShowChange)
    async def change_show(self, request: web.Request) -> web.Response:
        """Its title, its scheduled start (starts_at) or its sharer commission rate (for orders from now
        on; orders taken keep theirs)."""
        catalog = self._admin(request)
        show = await catalog.show(request.match_info["show"])
        change = parse(ShowChange, await read_json(request))
        if change.sharer_commission_rate is not None:
            others = [m.commission_rate for m in await catalog.mirrors(show.id)]
            others += [p.commission_rate for p in await self.commerce.products(show.id) if p.commission_rate]
            if first_over_one(change.sharer_commission_rate, others) is not None:
                raise invalid_field("sharer_commission_rate", f"plus the highest distributor or product rate "
                                                              f"({max(others, key=float)}) must be at most 1")
        show = await catalog.change_show(show.id, change.title, change.sharer_commission_rate, change.starts_at)
        return web.json_response(await self._detail(show))

    @admin("Delete a show", SHOWS, {204: Reply("gone, with everything it had")}, NO_SHOW, STORE)
    async def delete_show(self, request: web.Request) -> web.Response:
        """The show, its rooms, figures, replay and commerce data (shelf, coupons, claims, events)
        are gone: a new show may take the id and inherits nothing."""
        self._admin(request)
        await self.removal.delete_show(request.match_info["show"])
        return web.Response(status=204)

    @admin("End a show", SHOWS, {200: Reply("the ended show", ShowDetail)}, NO_SHOW)
    async def end_show(self, request: web.Request) -> web.Response:
        self._admin(request)
        show = await self.live.end_show(request.match_info["show"], "ended_by_operator")
        return web.json_response(await self._detail(show))

    @admin("Add a mirror room", MIRRORS, {201: Reply("the room", MirrorView)}, JSON_BODY, NO_SHOW,
           {409: "mirror_exists: the distributor has a room in this show"}, body=NewMirror)
    async def add_mirror(self, request: web.Request) -> web.Response:
        catalog = self._admin(request)
        show_id = request.match_info["show"]
        await catalog.show(show_id)
        new = parse(NewMirror, await read_json(request))
        await self._check_room_rate(show_id, new.commission_rate)
        mirror = await catalog.add_mirror(show_id, new.distributor, new.name, new.commission_rate)
        return web.json_response(mirror_view(self.settings, mirror), status=201)

    @admin("List a show's mirror rooms", MIRRORS, {200: Reply("the rooms with their viewers now", MirrorList)},
           NO_SHOW)
    async def list_mirrors(self, request: web.Request) -> web.Response:
        show_id = request.match_info["show"]
        mirrors = await self._admin(request).mirrors(show_id)
        figures = await self.live.figures(show_id)
        return web.json_response({"mirrors": [
            mirror_view(self.settings, m, figures.rooms[m.distributor].viewers if m.distributor in figures.rooms
                        else 0)
            for m in mirrors
        ]})

    @admin("Read a mirror room", MIRRORS, {200: Reply("the room with its viewers now", MirrorView)}, NO_SHOW,
           NO_MIRROR)
    async def get_mirror(self, request: web.Request) -> web.Response:
        show_id, distributor = request.match_info["show"], request.match_info["distributor"]
        mirror = await self._admin(request).mirror(show_id, distributor)
        room = (await self.live.figures(show_id)).rooms.get(distributor)
        return web.json_response(mirror_view(self.settings, mirror, room.viewers if room else 0))

    @admin("Change a mirror room", MIRRORS, {200: Reply("the room", MirrorView)}, JSON_BODY, NO_SHOW, NO_MIRROR,
           body=MirrorChange)
    async def change_mirror(self, request: web.Request) -> web.Response:
        """Its name or its commission rate (for orders from now on; orders taken keep theirs)."""
        catalog = self._admin(request)
        show_id, distributor = request.match_info["show"], request.match_info["distributor"]
        await catalog.mirror(show_id, distributor)
        change = parse(MirrorChange, await read_json(request))
        if change.commission_rate is not None:
            await self._check_room_rate(show_id, change.commission_rate)
        mirror = await catalog.change_mirror(show_id, distributor, change.name, change.commission_rate)
        room = (await self.live.figures(show_id)).rooms.get(distributor)
        return web.json_response(mirror_view(self.settings, mirror, room.viewers if room else 0))

    async def _check_room_rate(self, show_id: str, rate: str) -> None:
        sharer = (await self.catalog.show(show_id)).sharer_commission_rate
        if first_over_one(rate, [sharer]) is not None:
            raise invalid_field("commission_rate", f"plus the show's sharer_commission_rate ({sharer}) must be at most 1")

    @admin("Delete a mirror room", MIRRORS, {204: Reply("gone")}, NO_SHOW, NO_MIRROR, STORE)
    async def delete_mirror(self, request: web.Request) -> web.Response:
        """The room goes: its viewers are disconnected, its tokens no longer work and its counts are
        retired (coupon totals keep them; a new room with the same id starts at zero)."""
        self._admin(request)
        await self.removal.delete_mirror(request.match_info["show"], request.match_info["distributor"])
        return web.Response(status=204)

    @admin("A show's figures", SHOWS, {200: Reply("viewers, sessions, unique viewers and claims per room",
                                                  ShowStats)}, NO_SHOW, STORE)
    async def stats(self, request: web.Request) -> web.Response:
        self._admin(request)
        figures = await self.live.stats(request.match_info["show"])
        show_id = figures["show"]
        unique = await self.commerce.viewer_rooms(show_id)
        claims = await self.commerce.claim_figures(show_id)
        likes = await self.commerce.likes(show_id)
        buyers = await self.orders.buyers(show_id)
        sales: dict[str, list[int]] = {}  # room -> [orders, gmv, commission]
        for row in await self.orders.ledger(show_id):
            room_sales = sales.setdefault(row.room, [0, 0, 0])
            room_sales[0] += row.orders
            room_sales[1] += row.gmv_cents
            room_sales[2] += row.distributor_cents
        for room, view in figures["rooms"].items():
            view["unique_viewers"] = unique.get(room, 0)
            view["likes"] = likes.get(room, 0)
            view.update(claims.get(room, {"claims": 0, "claims_by_coupon": {}, "claims_by_sharer": {}}))
            orders, gmv, commission = sales.get(room, (0, 0, 0))
            view.update(orders=orders, gmv=format_cents(gmv), commission=format_cents(commission),
                        buyers=buyers.get(room, 0),
                        conversion=round(buyers.get(room, 0) / view["unique_viewers"], 4)
                        if view["unique_viewers"] else 0.0)
        return web.json_response(figures)

    @operation("A show's public status", tag=SHOWS, replies={200: Reply("the status", PublicStatus)},
               errors=(NO_SHOW,), params=(Param("room", "query", "the room whose viewers to count; 'hq' by default"),))
    async def public_status(self, request: web.Request) -> web.Response:
        """What a watch or studio page shows: no secrets, no per-room figures."""
        show = await self.catalog.show(request.match_info["show"])
        if show.state is not ShowState.LIVE:
            host = "none"
        else:
            host = "live" if self.live.host_on_air(show.id) else "reconnecting"
        now = await self.live.viewers_now(show.id)
        replay = await self.replays.record(show.id) if show.replay_public else None
        room = request.query.get("room", HQ_ROOM)
        mirrors = await self.catalog.mirrors(show.id) if room != HQ_ROOM else []
        mirror = next((m for m in mirrors if m.distributor == room), None)
        known_room = room == HQ_ROOM or mirror is not None
        room_viewers = now.get(room, 0) if known_room else 0
        return web.json_response({
            "id": show.id, "title": show.title, "state": show.state.value, "host": host,
            "viewers": sum(now.values()),
            "room_viewers": room_viewers, "room_name": mirror.name if mirror else None, "playback": show.playback,
            "currency": show.currency,
            "started_at": show.started_at, "ended_at": show.ended_at,
            "replay_page": f"/replay/{show.id}" if replay is not None else None,
        }, headers={"Cache-Control": "no-cache"})

    @operation("Health", tag="operations", replies={200: Reply("up; whether the commerce store is reachable",
                                                                Health)})
    async def healthz(self, request: web.Request) -> web.Response:
        live_shows, viewers = self.live.totals()
        return web.json_response({
            "ok": True,
            "store": "ok" if self.commerce.available else "unavailable",
            "live_shows": live_shows,
            "viewers": viewers,
            "node": self.settings.cluster.node_id,
        })
