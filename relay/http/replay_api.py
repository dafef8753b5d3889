"""Serving replays: the playlist, init and media segments, and the MP4 download."""

from __future__ import annotations

from dataclasses import dataclass
import json
import re

from aiohttp import web

from ..catalog import ShowCatalog
from ..commerce.products import ProductShelf
from ..commerce.tokens import ViewerTokens
from ..config import Settings
from ..errors import ApiError
from ..models import LOCAL_ONLY_HEADER, Show, is_slug
from ..replay.service import ReplayService
from .openapi import ADMIN, NO_SHOW, Param, Reply, operation
from .schemas.replay import ReplayInfo
from .util import Auth

# (In a cluster, a node's part of a replay is part-<tag>.m3u8, init-<tag>-N.mp4, seg-<tag>-N.m4s.)
_PART = r"(?:[a-z0-9-]{1,80}-p\d{1,6}-)?"
_FILES = {
    re.compile(r"^index\.m3u8$"): ("application/vnd.apple.mpegurl", "no-cache"),
    re.compile(r"^part-[a-z0-9-]{1,80}-p\d{1,6}\.m3u8$"): ("application/vnd.apple.mpegurl", "no-cache"),
    re.compile(rf"^init-{_PART}\d{{1,6}}\.mp4$"): ("video/mp4", "public, max-age=31536000, immutable"),
    re.compile(rf"^seg-{_PART}\d{{5,9}}\.m4s$"): ("video/iso.segment", "public, max-age=31536000, immutable"),
    re.compile(r"^show\.mp4$"): ("video/mp4", "public, max-age=3600"),
}


REPLAYS = "replays"
PRIVATE_FILE = {401: "unauthorized, link_expired: a private replay needs the admin key or a signed link",
                404: "not_found: no such show, replay or file"}


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "no such replay file")


def _vtt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


@dataclass(eq=False)
class ReplayApi:
    """Replay files (playlist, segments, MP4, chapters) and the replay info of a show."""

    catalog: ShowCatalog
    replays: ReplayService
    shelf: ProductShelf
    tokens: ViewerTokens
    auth: Auth
    settings: Settings

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/replay/{show}/signed/{token}/chapters.vtt", self.chapters_vtt),
            web.get("/replay/{show}/chapters.vtt", self.chapters_vtt),
            web.get("/replay/{show}/signed/{token}/{name}", self.replay_file),
            web.get("/replay/{show}/{name}", self.replay_file),
            web.get("/api/shows/{show}/replay", self.replay_info),
        ]

    def check_access(self, request: web.Request, show: Show) -> None:
        """A private replay's files open with the admin key or a signed link (token in the path, so
        that the playlist's relative segment URIs carry it too)."""
        signed = request.match_info.get("token")
        if signed is not None:
            self.tokens.verify_replay(signed, show.id, show.created_at)
        elif not show.replay_public:
            self.auth.require_admin(request)

    @operation("A replay's chapters", tag=REPLAYS, auth=(ADMIN,), public_too=True,
               replies={200: Reply("WebVTT cues", media="text/vtt")}, errors=(PRIVATE_FILE,))
    async def chapters_vtt(self, request: web.Request) -> web.Response:
        """WebVTT chapters: one cue per product card, over the time it was pinned."""
        show_id = request.match_info["show"]
        show = await self.catalog.find(show_id)
        info = await self.replays.describe(show_id, "") if show else None
        if info is None:
            raise _not_found()
        self.check_access(request, show)
        lines = ["WEBVTT", ""]
        for i, chapter in enumerate(await self.shelf.chapters(show_id, info["duration_s"]), 1):
            lines += [str(i), f"{_vtt_time(chapter['start_s'])} --> {_vtt_time(chapter['end_s'])}",
                      json.dumps({"product": chapter["product"], "title": chapter["title"]}), ""]
        return web.Response(text="\n".join(lines), content_type="text/vtt",
                            headers={"Cache-Control": "no-cache"})

    @operation("A replay file", tag=REPLAYS, auth=(ADMIN,), public_too=True,
               replies={200: Reply("index.m3u8, init-N.mp4, seg-N.m4s or show.mp4",
                                   media=tuple(sorted({kind[0] for kind in _FILES.values()})))},
               errors=(PRIVATE_FILE,))
    async def replay_file(self, request: web.Request) -> web.StreamResponse:
        """A replay file: the playlist, an init or media segment, or the MP4."""
        show_id, name = request.match_info["show"], request.match_info["name"]
        kind = next((v for pattern, v in _FILES.items() if pattern.fullmatch(name)), None)
        if not is_slug(show_id) or kind is None:
            raise _not_found()  # anything else (.., encoded slashes, absolute paths) reads nothing
        replays = self.replays
        show = await self.catalog.find(show_id)
        replay = await replays.record(show_id) if show else None
        if replay is None:
            raise _not_found()
        self.check_access(request, show)
        found = await replays.open_file(show_id, name, replay, local_only=LOCAL_ONLY_HEADER in request.headers)
        if found is None:
            raise _not_found()
        if found.elsewhere is not None:  # (in a cluster: the MP4, on the node that made it)
            raise web.HTTPTemporaryRedirect(found.elsewhere + request.path_qs)
        content_type, cache = kind
        if name == "index.m3u8" and replay.state.value == "recording":
            cache = "no-cache"
        if not show.replay_public:  # a shared cache must never keep what a key or a link unlocked
            cache = cache.replace("public", "private")
        if found.body is not None:
            return web.Response(body=found.body, content_type=content_type, headers={"Cache-Control": cache})
        response = web.FileResponse(found.path, headers={"Cache-Control": cache})
        response.content_type = content_type
        return response

    @operation("A show's replay", tag=REPLAYS, auth=(ADMIN,), public_too=True,
               params=(Param("link_ttl_s", "query", "a private replay's signed links last this long (60-2592000 s, "
                             "1 day by default)", {"type": "integer", "minimum": 60, "maximum": 2592000}),),
               replies={200: Reply("the recording; a private one's signed links for viewers", ReplayInfo)},
               errors=(NO_SHOW, {401: "unauthorized: a private replay needs the admin key",
                                 404: "replay_not_found: the show never went live",
                                 400: "bad_link_ttl"}))
    async def replay_info(self, request: web.Request) -> web.Response:
        show = await self.catalog.show(request.match_info["show"])
        if not show.replay_public:
            self.auth.require_admin(request)
        info = await self.replays.describe(show.id, self.settings.base_url)
        if info is None:
            raise ApiError(404, "replay_not_found", f"show {show.id!r} has not been recorded (it never went live)")
        info["chapters"] = await self.shelf.chapters(show.id, info["duration_s"])
        info["chapters_url"] = f"{self.settings.base_url}/replay/{show.id}/chapters.vtt"
        if not show.replay_public:  # only the operator gets here: links to hand to viewers
            try:
                ttl = int(request.query.get("link_ttl_s", "86400"))
            except ValueError:
                ttl = 0
            if not 60 <= ttl <= 30 * 86400:
                raise ApiError(400, "bad_link_ttl", "link_ttl_s must be a number of seconds from 60 to 2592000")
            token, exp = self.tokens.issue_replay(show.id, ttl)
            base = f"{self.settings.base_url}/replay/{show.id}/signed/{token}"
            info["signed_links"] = {"hls_url": f"{base}/index.m3u8",
                                    "mp4_url": f"{base}/show.mp4" if info["mp4_url"] else None,
                                    "chapters_url": f"{base}/chapters.vtt", "expires_at": exp}
        return web.json_response(info)
