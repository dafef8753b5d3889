"""The admin API of restreaming: a show's targets on other platforms (RTMP/RTMPS)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..catalog import ShowCatalog
from ..errors import ApiError
from ..models import ShowState
from ..restream.service import RestreamService
from .openapi import JSON_BODY, NO_SHOW, STORE, Reply, admin_operation as admin
from .schemas.common import parse
from .schemas.restreams import NewRestream, RestreamList, RestreamView
from .util import Auth, read_json

RESTREAMS = "restreams"
NO_RESTREAM = {404: "restream_not_found"}


@dataclass(eq=False)
class RestreamApi:
    """Add, list and remove the platforms a show is pushed to while it is live."""

    catalog: ShowCatalog
    restreams: RestreamService
    auth: Auth

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/shows/{show}/restreams", self.add_restream),
            web.get("/api/shows/{show}/restreams", self.list_restreams),
            web.delete("/api/shows/{show}/restreams/{restream}", self.delete_restream),
        ]

    @admin("Add a restream target", RESTREAMS, {201: Reply("the target, its URL masked", RestreamView)}, JSON_BODY,
           NO_SHOW, STORE, {409: "show_ended; too_many_restreams: [restream] max_targets_per_show"},
           body=NewRestream)
    async def add_restream(self, request: web.Request) -> web.Response:
        """While the show is live, its host's H.264 (as sent) and AAC audio (converted once per show
        from its Opus) are pushed to the URL; a target that fails or drops is connected again with
        backoff. The stream key in the URL is never shown again: answers mask it."""
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        new = parse(NewRestream, await read_json(request))
        if show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", f"show {show.id!r} has ended; it is not pushed anywhere any more")
        return web.json_response(await self.restreams.add(show.id, new.name, new.url), status=201)

    @admin("List a show's restream targets", RESTREAMS, {200: Reply("the targets with their state", RestreamList)},
           NO_SHOW, STORE)
    async def list_restreams(self, request: web.Request) -> web.Response:
        """Each target's state (waiting while the show is not live here, connecting, live, retrying,
        failed), since when, bytes sent and its last error."""
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        return web.json_response({"restreams": await self.restreams.list(show.id)})

    @admin("Remove a restream target", RESTREAMS, {204: Reply("gone; if it was live, it was unpublished")}, NO_SHOW,
           NO_RESTREAM, STORE)
    async def delete_restream(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        await self.restreams.remove(show.id, request.match_info["restream"])
        return web.Response(status=204)
