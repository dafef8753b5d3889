"""Minimal built-in pages: a watch page that plays a room over WHEP."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from .models import HQ_ROOM
from .appkeys import SHOWS

routes = web.RouteTableDef()


def _static(name: str) -> str:
    return resources.files("relay").joinpath("static", name).read_text()


@routes.get("/watch/{show}")
@routes.get("/watch/{show}/{room}")
async def watch(request: web.Request) -> web.Response:
    service = request.app[SHOWS]
    show_id = request.match_info["show"]
    room = request.match_info.get("room", HQ_ROOM)
    service.get_show(show_id)
    service.check_room(show_id, room)
    return web.Response(text=_static("watch.html"), content_type="text/html")


@routes.get("/static/{name}")
async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ("watch.js",):
        raise web.HTTPNotFound(text="no such file")
    return web.Response(text=_static(name), content_type="text/javascript")
