"""The cluster's own HTTP: another node pulls a show from this one, its origin."""

from __future__ import annotations

from aiohttp import web

from ..cluster.edge import PULL_PATH
from ..models import EDGE_ROOM, HQ_ROOM
from ..webrtc import parse_offer
from .openapi import NO_SHOW, admin_operation
from .util import OFFER_ERRORS, SDP_ANSWER, SDP_TYPE, SESSION_GONE, SessionEndpoint, read_sdp, sdp_answer

CLUSTER = "cluster"


class ClusterApi(SessionEndpoint):
    """Node to node: an edge pulls a show (one WHEP-like session for all its viewers)."""

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post(PULL_PATH, self.pull),
            web.delete(PULL_PATH + "/{session}", self.stop),
        ]

    @admin_operation("Pull a show to another node (node to node)", CLUSTER, SDP_ANSWER, OFFER_ERRORS, NO_SHOW,
                     {409: "show_ended"}, body=SDP_TYPE)
    async def pull(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self.live.admit_viewer(request.match_info["show"], HQ_ROOM)
        offer = parse_offer(await read_sdp(request), sending=False)
        session, answer = await self.live.watch(show, EDGE_ROOM, offer, self.auth.client(request))
        return sdp_answer(answer, f"{PULL_PATH.format(show=show.id)}/{session.id}")

    @admin_operation("Stop a pull (node to node)", CLUSTER, SESSION_GONE, {404: "session_not_found"})
    async def stop(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        await self.live.stop_watching(request.match_info["show"], EDGE_ROOM, request.match_info["session"])
        return web.Response(status=200)
