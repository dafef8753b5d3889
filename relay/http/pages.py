"""The pages the server ships: watch, studio (host), ops (operator), replay and the shows list.

Plain HTML, CSS and JS modules from relay/static; everything loads from this server.
"""

from __future__ import annotations

from dataclasses import dataclass
import html
from importlib import resources

from aiohttp import web

from ..config import Settings
from ..models import HQ_ROOM
from ..catalog import ShowCatalog
from .openapi import NO_SHOW, Reply, operation

ASSETS = {
    "style.css": "text/css",
    "common.js": "text/javascript",
    "watch.js": "text/javascript",
    "studio.js": "text/javascript",
    "ops.js": "text/javascript",
    "replay.js": "text/javascript",
    "chat.js": "text/javascript",
    "moderation.js": "text/javascript",
    "shows.js": "text/javascript",
}
# Everything loads from this server; product images may come from the shop over https.
_CSP = ("default-src 'self'; img-src 'self' https: data:; media-src 'self' blob:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors {ancestors}")


_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="{viewport}">
<title>{title}</title>
<link rel="stylesheet" href="/static/style.css">
<link rel="icon" href="data:,">
</head>
<body>
"""
_VIEWPORT = "width=device-width, initial-scale=1"
# Each page's first title (the page script sets the show's) and viewport.
_PAGES = {"watch.html": ("Live", _VIEWPORT + ", viewport-fit=cover"), "studio.html": ("Studio", _VIEWPORT),
          "ops.html": ("Ops", _VIEWPORT), "replay.html": ("Replay", _VIEWPORT), "shows.html": ("Shows", _VIEWPORT)}


def _static(name: str) -> str:
    return resources.files("relay").joinpath("static", name).read_text()


def _html(title: str, viewport: str, body: str) -> str:
    return _HEAD.format(title=title, viewport=viewport) + body + "</body>\n</html>\n"


def _document(name: str) -> str:
    title, viewport = _PAGES[name]
    return _html(title, viewport, _static(name))


def _page(name: str, embeddable_by: list[str] | None = None) -> web.Response:
    return page_response(_document(name), embeddable_by)


def render_page(title: str, body: str) -> web.Response:
    """A page of the server's own markup `body` (its text escaped by the caller) in the pages'
    head, stylesheet and headers; no other site may frame it."""
    return page_response(_html(html.escape(title), _VIEWPORT, body))


def page_response(document: str, embeddable_by: list[str] | None = None) -> web.Response:
    """A page that no other site may frame (ops, studio), or that the configured sites may
    embed (watch, replay: a brand's own shop page)."""
    headers = {"Cache-Control": "no-cache"}
    if embeddable_by is None:
        headers["Content-Security-Policy"] = _CSP.format(ancestors="'none'")
        headers["X-Frame-Options"] = "DENY"
    else:
        headers["Content-Security-Policy"] = _CSP.format(ancestors=" ".join(["'self'", *embeddable_by]))
        if not embeddable_by:
            headers["X-Frame-Options"] = "SAMEORIGIN"
    return web.Response(text=document, content_type="text/html", headers=headers)


PAGE = {200: Reply("the page", media="text/html")}


@dataclass(eq=False)
class Pages:
    """The watch, studio, ops and replay pages and their assets."""

    catalog: ShowCatalog
    settings: Settings

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/watch/{show}", self.watch),
            web.get("/watch/{show}/{room}", self.watch),
            web.get("/studio/{show}", self.studio),
            web.get("/ops", self.ops),
            web.get("/replay/{show}", self.replay),
            web.get("/shows", self.shows),
            web.get("/sw.js", self.service_worker),
            web.get("/static/{name}", self.static),
        ]

    @operation("The watch page", tag="pages", replies=PAGE, errors=(NO_SHOW, {404: "mirror_not_found"}))
    async def watch(self, request: web.Request) -> web.Response:
        await self.catalog.check_room(request.match_info["show"], request.match_info.get("room", HQ_ROOM))
        return _page("watch.html", self.settings.server.embed_origins)

    @operation("The studio page (the host publishes)", tag="pages", replies=PAGE, errors=(NO_SHOW,))
    async def studio(self, request: web.Request) -> web.Response:
        await self.catalog.show(request.match_info["show"])
        return _page("studio.html")

    @operation("The ops page (the operator)", tag="pages", replies=PAGE)
    async def ops(self, request: web.Request) -> web.Response:
        return _page("ops.html")

    @operation("The replay page", tag="pages", replies=PAGE, errors=(NO_SHOW,))
    async def replay(self, request: web.Request) -> web.Response:
        await self.catalog.show(request.match_info["show"])
        return _page("replay.html", self.settings.server.embed_origins)

    @operation("The shows page (live now, coming up with reminders, replays)", tag="pages", replies=PAGE)
    async def shows(self, request: web.Request) -> web.Response:
        return _page("shows.html", self.settings.server.embed_origins)

    @operation("The service worker of show reminders (at the root: its scope is the whole site)", tag="pages",
               replies={200: Reply("the script", media="text/javascript")})
    async def service_worker(self, request: web.Request) -> web.Response:
        return web.Response(text=_static("sw.js"), content_type="text/javascript",
                            headers={"Cache-Control": "no-cache"})

    @operation("A page's script or stylesheet", tag="pages",
               replies={200: Reply("the file", media=tuple(sorted(set(ASSETS.values()))))},
               errors=({404: "not_found"},))
    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound(text="no such file")
        return web.Response(text=_static(name), content_type=ASSETS[name], headers={"Cache-Control": "no-cache"})
