"""WHIP (RFC 9725): the HTTP front-end through which hosts publish."""

from __future__ import annotations

from aiohttp import web

from ..shows import ShowService
from ..webrtc import parse_offer
from .appkeys import LIMITS, SHOWS
from .util import add_session_routes, bearer_token, client_of, read_sdp, sdp_answer

routes = web.RouteTableDef()


@routes.post("/whip/{show}")
async def publish(request: web.Request) -> web.Response:
    request.app[LIMITS]["whip"].check(request)
    service: ShowService = request.app[SHOWS]
    show_id = request.match_info["show"]
    show = service.get_show(show_id)
    service.check_stream_key(show, bearer_token(request))
    offer = parse_offer(await read_sdp(request), sending=True)
    session, answer = await service.publish(show_id, bearer_token(request), offer, client_of(request))
    return sdp_answer(answer, f"/whip/{show_id}/{session.id}")


@routes.delete("/whip/{show}/{session}")
async def unpublish(request: web.Request) -> web.Response:
    service: ShowService = request.app[SHOWS]
    await service.unpublish(request.match_info["show"], request.match_info["session"], bearer_token(request))
    return web.Response(status=200)


add_session_routes(routes, ["/whip/{show}"], "/whip/{show}/{session}")
