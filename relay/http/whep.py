"""WHEP: the HTTP front-end through which viewers play the HQ room or a mirror room."""

from __future__ import annotations

from aiohttp import web

from ..models import HQ_ROOM
from ..shows import ShowService
from ..webrtc import parse_offer
from .appkeys import LIMITS, SHOWS
from .util import add_session_routes, check_viewer_token, client_of, read_sdp, sdp_answer

routes = web.RouteTableDef()


@routes.post("/whep/{show}")
@routes.post("/whep/{show}/{room}")
async def play(request: web.Request) -> web.Response:
    request.app[LIMITS]["whep"].check(request)
    service: ShowService = request.app[SHOWS]
    show_id = request.match_info["show"]
    room = request.match_info.get("room", HQ_ROOM)
    show = service.get_show(show_id)
    service.check_room(show_id, room)
    if show.playback == "token":
        check_viewer_token(request, show, room)
    offer = parse_offer(await read_sdp(request), sending=False)
    viewer, answer = await service.watch(show_id, room, offer, client_of(request))
    return sdp_answer(answer, f"/whep/{show_id}/{room}/{viewer.id}")


@routes.delete("/whep/{show}/{room}/{session}")
async def stop(request: web.Request) -> web.Response:
    service: ShowService = request.app[SHOWS]
    m = request.match_info
    await service.stop_watching(m["show"], m["room"], m["session"])
    return web.Response(status=200)


add_session_routes(routes, ["/whep/{show}", "/whep/{show}/{room}"], "/whep/{show}/{room}/{session}")
