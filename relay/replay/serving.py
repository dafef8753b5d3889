"""Serving replays: the playlist, init and media segments, and the MP4 download."""

from __future__ import annotations

import re

from aiohttp import web

from ..appkeys import REPLAYS, SHOWS
from ..errors import ApiError
from ..http_util import require_admin
from ..models import is_slug

routes = web.RouteTableDef()

_FILES = {
    re.compile(r"^index\.m3u8$"): ("application/vnd.apple.mpegurl", "no-cache"),
    re.compile(r"^init-\d{1,6}\.mp4$"): ("video/mp4", "public, max-age=31536000, immutable"),
    re.compile(r"^seg-\d{5,9}\.m4s$"): ("video/iso.segment", "public, max-age=31536000, immutable"),
    re.compile(r"^show\.mp4$"): ("video/mp4", "public, max-age=3600"),
}


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "no such replay file")


@routes.get("/replay/{show}/{name}")
async def replay_file(request: web.Request) -> web.StreamResponse:
    show_id, name = request.match_info["show"], request.match_info["name"]
    kind = next((v for pattern, v in _FILES.items() if pattern.match(name)), None)
    if not is_slug(show_id) or kind is None:
        raise _not_found()  # anything else (.., encoded slashes, absolute paths) reads nothing
    replays = request.app[REPLAYS]
    show = request.app[SHOWS].store.get_show(show_id)
    if show is None or replays.store.get_replay(show_id) is None:
        raise _not_found()
    if not show.replay_public:
        require_admin(request)
    path = replays.folder(show_id) / name
    if not path.is_file():
        raise _not_found()
    content_type, cache = kind
    if name == "index.m3u8" and replays.store.get_replay(show_id).state.value == "recording":
        cache = "no-cache"
    response = web.FileResponse(path, headers={"Cache-Control": cache, "Access-Control-Allow-Origin": "*"})
    response.content_type = content_type
    return response


@routes.get("/api/shows/{show}/replay")
async def replay_info(request: web.Request) -> web.Response:
    show = request.app[SHOWS].get_show(request.match_info["show"])
    if not show.replay_public:
        require_admin(request)
    info = request.app[REPLAYS].describe(show.id, request.app[SHOWS].settings.base_url)
    if info is None:
        raise ApiError(404, "replay_not_found", f"show {show.id!r} has not been recorded (it never went live)")
    return web.json_response(info)
