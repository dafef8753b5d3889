"""WHIP (RFC 9725): the HTTP front-end through which hosts publish."""

from __future__ import annotations

from aiohttp import web

from ..webrtc import parse_offer
from .openapi import NO_SHOW, STREAM_KEY, operation
from .util import (OFFER_ERRORS, SDP_ANSWER, SDP_TYPE, SESSION_GONE, SessionEndpoint, bearer_token, read_sdp,
                   sdp_answer, session_routes)


class WhipApi(SessionEndpoint):
    """WHIP: a host publishes with its stream key, ends with DELETE."""

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/whip/{show}", self.publish),
            web.delete("/whip/{show}/{session}", self.unpublish),
            *session_routes(["/whip/{show}"], "/whip/{show}/{session}"),
        ]

    @operation("Publish (WHIP)", tag="media", auth=(STREAM_KEY,), body=SDP_TYPE, replies=SDP_ANSWER,
               errors=(OFFER_ERRORS, NO_SHOW, {401: "unauthorized or stream_key_expired: the stream key",
                                               409: "show_ended"}))
    async def publish(self, request: web.Request) -> web.Response:
        self.limiter.check(request)
        key = bearer_token(request)
        show = await self.live.admit_host(request.match_info["show"], key)
        offer = parse_offer(await read_sdp(request), sending=True)
        session, answer = await self.live.publish(show, key, offer, self.auth.client(request))
        return sdp_answer(answer, self.location(f"/whip/{show.id}", session.id))

    @operation("Stop publishing (WHIP): ends the show", tag="media", auth=(STREAM_KEY,), replies=SESSION_GONE,
               errors=(NO_SHOW, {401: "unauthorized: the stream key (the one it published with works too)",
                                 404: "session_not_found"}))
    async def unpublish(self, request: web.Request) -> web.Response:
        session = await self.session_id(request)
        if isinstance(session, web.Response):  # another node holds it
            return session
        await self.live.unpublish(request.match_info["show"], session, bearer_token(request))
        return web.Response(status=200)
