"""WHEP: the HTTP front-end through which viewers play the HQ room or a mirror room."""

from __future__ import annotations

from aiohttp import web

from ..errors import NodeFull
from ..models import HQ_ROOM
from ..webrtc import parse_offer
from .openapi import NO_SHOW, VIEWER, VIEWER_QUERY, operation
from .util import (OFFER_ERRORS, SDP_ANSWER, SDP_TYPE, SESSION_GONE, SessionEndpoint, read_sdp, sdp_answer,
                   session_routes)


class WhepApi(SessionEndpoint):
    """WHEP: a viewer plays the HQ room or a mirror room, stops with DELETE."""

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/whep/{show}", self.play),
            web.post("/whep/{show}/{room}", self.play),
            web.delete("/whep/{show}/{room}/{session}", self.stop),
            *session_routes(["/whep/{show}", "/whep/{show}/{room}"], "/whep/{show}/{room}/{session}"),
        ]

    @operation("Play a room (WHEP)", tag="media", auth=(VIEWER, VIEWER_QUERY), public_too=True, body=SDP_TYPE,
               replies=SDP_ANSWER,
               errors=(OFFER_ERRORS, NO_SHOW, {401: "unauthorized or token_expired: a token-playback show needs "
                                                    "a viewer token of the room",
                                               403: "wrong_room", 404: "mirror_not_found", 409: "show_ended",
                                               503: "show_full or server_full (Retry-After)",
                                               307: "node_full: in a cluster, this node is full; the same "
                                                    "offer goes to the node in Location"}))
    async def play(self, request: web.Request) -> web.Response:
        self.limiter.check(request)
        room = request.match_info.get("room", HQ_ROOM)
        show = await self.live.admit_viewer(request.match_info["show"], room)
        if show.playback == "token":
            await self.auth.check_viewer_token(request, show, room)
        reader = await self.auth.reader(request, show, room)  # its data channel shows it its own held comments
        offer = parse_offer(await read_sdp(request), sending=False)
        try:
            viewer, answer = await self.live.watch(show, room, offer, self.auth.client(request), reader)
        except NodeFull as full:  # the same offer, to a node with room
            full.headers["Location"] = full.base_url + request.path_qs
            raise
        return sdp_answer(answer, self.location(f"/whep/{show.id}/{room}", viewer.id))

    @operation("Stop playing (WHEP)", tag="media", replies=SESSION_GONE,
               errors=({404: "session_not_found"},))
    async def stop(self, request: web.Request) -> web.Response:
        session = await self.session_id(request)
        if isinstance(session, web.Response):  # another node holds it
            return session
        await self.live.stop_watching(request.match_info["show"], request.match_info["room"], session)
        return web.Response(status=200)
