"""The admin HTTP API: shows, mirror rooms and figures (Bearer admin key)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..catalog import ShowCatalog
from ..commerce.store import CommerceStore
from ..config import Settings
from ..errors import ApiError
from ..fields import slug_field, text_field
from ..models import HQ_ROOM, Mirror, Show, ShowState, is_currency
from ..live_registry import LiveRegistry
from ..replay.service import ReplayService
from ..show_removal import ShowRemoval
from .util import Auth, read_json


def show_links(settings: Settings, show_id: str) -> dict[str, str]:
    base = settings.base_url
    return {
        "whip_url": f"{base}/whip/{show_id}",
        "whep_url": f"{base}/whep/{show_id}",
        "watch_url": f"{base}/watch/{show_id}",
    }


def mirror_view(settings: Settings, mirror: Mirror, viewers: int | None = None) -> dict:
    base = settings.base_url
    view = {
        "distributor": mirror.distributor,
        "name": mirror.name,
        "whep_url": f"{base}/whep/{mirror.show_id}/{mirror.distributor}",
        "watch_url": f"{base}/watch/{mirror.show_id}/{mirror.distributor}",
        "created_at": mirror.created_at,
    }
    if viewers is not None:
        view["viewers"] = viewers
    return view


def show_view(settings: Settings, show: Show) -> dict:
    return {
        "id": show.id,
        "title": show.title,
        "state": show.state.value,
        **show_links(settings, show.id),
        "created_at": show.created_at,
        "started_at": show.started_at,
        "ended_at": show.ended_at,
        "end_reason": show.end_reason,
        "replay_public": show.replay_public,
        "playback": show.playback,
        "currency": show.currency,
        "identity": show.identity,
        "stream_key_expires_at": show.stream_key_expires_at,
    }


def _ttl_field(body: dict, name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 60 <= value <= 365 * 86400:
        raise ApiError(422, "invalid_field", f"{name!r} must be a number of seconds from 60 to 31536000")
    return float(value)


@dataclass(eq=False)
class ShowsApi:
    """The admin API of shows and mirror rooms, their figures, the public status and /healthz."""

    catalog: ShowCatalog
    live: LiveRegistry
    removal: ShowRemoval
    replays: ReplayService
    commerce: CommerceStore
    auth: Auth
    settings: Settings

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/shows", self.create_show),
            web.post("/api/shows/{show}/stream-key", self.rotate_stream_key),
            web.get("/api/shows", self.list_shows),
            web.get("/api/shows/{show}", self.get_show),
            web.delete("/api/shows/{show}", self.delete_show),
            web.post("/api/shows/{show}/end", self.end_show),
            web.post("/api/shows/{show}/mirrors", self.add_mirror),
            web.get("/api/shows/{show}/mirrors", self.list_mirrors),
            web.get("/api/shows/{show}/mirrors/{distributor}", self.get_mirror),
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
        live = self.live.running.get(show.id)
        view.update(live.describe() if live else {"publisher": None, "reconnecting_until": None})
        mirrors = await self.catalog.mirrors(show.id)
        view["viewers"] = {HQ_ROOM: figures.room(HQ_ROOM).viewers} | {
            m.distributor: figures.rooms[m.distributor].viewers if m.distributor in figures.rooms else 0
            for m in mirrors
        }
        view["mirrors"] = [mirror_view(self.settings, m) for m in mirrors]
        return view

    async def create_show(self, request: web.Request) -> web.Response:
        catalog = self._admin(request)
        body = await read_json(request)
        title = text_field(body, "title")
        show_id = slug_field(body, "id", required=False)
        public = body.get("replay_public")
        if public is not None and not isinstance(public, bool):
            raise ApiError(422, "invalid_field", "'replay_public' must be true or false")
        playback = body.get("playback", "public")
        if playback not in ("public", "token"):
            raise ApiError(422, "invalid_field", "'playback' must be 'public' or 'token'")
        ttl = _ttl_field(body, "stream_key_ttl_s")
        currency = body.get("currency", "CNY")
        if not is_currency(currency):
            raise ApiError(422, "invalid_field", "'currency' must be an ISO 4217 code such as CNY, USD or EUR")
        identity = body.get("identity", "anonymous")
        if identity not in ("anonymous", "shopper"):
            raise ApiError(422, "invalid_field", "'identity' must be 'anonymous' or 'shopper'")
        show, key = await catalog.create_show(title, show_id, public, ttl, playback, currency, identity)
        return web.json_response({**show_view(self.settings, show), "stream_key": key}, status=201)

    async def rotate_stream_key(self, request: web.Request) -> web.Response:
        """A new stream key (shown once); the old one no longer publishes."""
        catalog = self._admin(request)
        body = await read_json(request) if request.can_read_body else {}
        show, key = await catalog.rotate_stream_key(request.match_info["show"], _ttl_field(body, "ttl_s"))
        return web.json_response({"stream_key": key, "stream_key_expires_at": show.stream_key_expires_at})

    async def list_shows(self, request: web.Request) -> web.Response:
        catalog = self._admin(request)
        return web.json_response({"shows": [show_view(self.settings, s) for s in await catalog.list_shows()]})

    async def get_show(self, request: web.Request) -> web.Response:
        show = await self._admin(request).show(request.match_info["show"])
        return web.json_response(await self._detail(show))

    async def delete_show(self, request: web.Request) -> web.Response:
        """The show, its rooms, figures, replay and commerce data (shelf, coupons, claims, events)
        are gone: a new show may take the id and inherits nothing."""
        self._admin(request)
        await self.removal.delete_show(request.match_info["show"])
        return web.Response(status=204)

    async def end_show(self, request: web.Request) -> web.Response:
        self._admin(request)
        show = await self.live.end_show(request.match_info["show"], "ended_by_operator")
        return web.json_response(await self._detail(show))

    async def add_mirror(self, request: web.Request) -> web.Response:
        catalog = self._admin(request)
        show_id = request.match_info["show"]
        await catalog.show(show_id)
        body = await read_json(request)
        distributor = slug_field(body, "distributor", required=True)
        if distributor == HQ_ROOM:
            raise ApiError(422, "invalid_field", "'hq' is the headquarters room; pick another distributor id")
        name = text_field(body, "name")
        mirror = await catalog.add_mirror(show_id, distributor, name)
        return web.json_response(mirror_view(self.settings, mirror), status=201)

    async def list_mirrors(self, request: web.Request) -> web.Response:
        show_id = request.match_info["show"]
        mirrors = await self._admin(request).mirrors(show_id)
        figures = await self.live.figures(show_id)
        return web.json_response({"mirrors": [
            mirror_view(self.settings, m, figures.rooms[m.distributor].viewers if m.distributor in figures.rooms
                        else 0)
            for m in mirrors
        ]})

    async def get_mirror(self, request: web.Request) -> web.Response:
        show_id, distributor = request.match_info["show"], request.match_info["distributor"]
        mirror = await self._admin(request).mirror(show_id, distributor)
        room = (await self.live.figures(show_id)).rooms.get(distributor)
        return web.json_response(mirror_view(self.settings, mirror, room.viewers if room else 0))

    async def delete_mirror(self, request: web.Request) -> web.Response:
        """The room goes: its viewers are disconnected, its tokens no longer work and its counts are
        retired (coupon totals keep them; a new room with the same id starts at zero)."""
        self._admin(request)
        await self.removal.delete_mirror(request.match_info["show"], request.match_info["distributor"])
        return web.Response(status=204)

    async def stats(self, request: web.Request) -> web.Response:
        self._admin(request)
        figures = await self.live.stats(request.match_info["show"])
        show_id = figures["show"]
        unique = await self.commerce.viewer_rooms(show_id)
        claims = await self.commerce.claim_figures(show_id)
        for room, view in figures["rooms"].items():
            view["unique_viewers"] = unique.get(room, 0)
            view.update(claims.get(room, {"claims": 0, "claims_by_coupon": {}, "claims_by_sharer": {}}))
        return web.json_response(figures)

    async def public_status(self, request: web.Request) -> web.Response:
        """What a watch or studio page shows: no secrets, no per-room figures."""
        show = await self.catalog.show(request.match_info["show"])
        live = self.live.running.get(show.id)
        if show.state is not ShowState.LIVE:
            host = "none"
        elif live is not None and live.publisher is not None:
            host = "live"
        else:
            host = "reconnecting"
        figures = await self.live.figures(show.id)
        viewers = sum(r.viewers for r in figures.rooms.values()) if live else 0
        replay = await self.replays.record(show.id) if show.replay_public else None
        room = request.query.get("room", HQ_ROOM)
        mirrors = await self.catalog.mirrors(show.id) if room != HQ_ROOM else []
        mirror = next((m for m in mirrors if m.distributor == room), None)
        known_room = room == HQ_ROOM or mirror is not None
        room_viewers = figures.rooms[room].viewers if live and known_room and room in figures.rooms else 0
        return web.json_response({
            "id": show.id, "title": show.title, "state": show.state.value, "host": host, "viewers": viewers,
            "room_viewers": room_viewers, "room_name": mirror.name if mirror else None, "playback": show.playback,
            "currency": show.currency,
            "started_at": show.started_at, "ended_at": show.ended_at,
            "replay_page": f"/replay/{show.id}" if replay is not None else None,
        }, headers={"Cache-Control": "no-cache"})

    async def healthz(self, request: web.Request) -> web.Response:
        running = self.live.running.values()
        return web.json_response({
            "ok": True,
            "store": "ok" if self.commerce.available else "unavailable",
            "live_shows": sum(1 for live in running if live.publisher is not None),
            "viewers": sum(len(live.viewers) for live in running),
        })
