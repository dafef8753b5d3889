"""HTTP API of comments, their moderation, and likes."""

from __future__ import annotations

from dataclasses import dataclass
import math

from aiohttp import web

from ..catalog import ShowCatalog
from ..commerce.comments import Author, CommentDesk, comment_view, display_name
from ..commerce.likes import LikeCounter
from ..commerce.tokens import ViewerIdentity
from ..errors import ApiError
from ..models import HQ_ROOM, Show, ShowState
from .limits import RateLimiter
from .openapi import (ADMIN, JSON_BODY, NO_SHOW, STORE, VIEWER, VIEWER_QUERY, Param, Reply, admin_operation,
                      operation)
from .schemas.comments import (CommentAnswer, CommentList, CommentView, LikesAnswer, ModerationChange,
                               ModerationView, Mute, MuteAnswer, NewComment, NewLikes)
from .schemas.common import parse
from .util import Auth, bearer_token, read_json

COMMENTS = "comments"
MAX_LISTS_BYTES = 4 * 1024 * 1024
NO_COMMENT = {404: "comment_not_found"}
VIEWER_ONLY = {401: "unauthorized or token_expired: a viewer token of the show (Bearer)"}
SHOW_ENDED = {409: "show_ended"}
TOO_FAST = {429: "rate_limited: this viewer's comments, [comments] per_viewer_per_s (Retry-After)"}


def _comment_id(request: web.Request) -> int:
    raw = request.match_info["comment"]
    if not raw.isdigit() or len(raw) > 15:
        raise ApiError(404, "comment_not_found", f"no comment {raw!r}")
    return int(raw)


@dataclass(eq=False)
class CommentApi:
    """Viewers post comments and likes; the operator moderates (lists, delete, release, pin, mute)."""

    catalog: ShowCatalog
    comments: CommentDesk
    likes: LikeCounter
    auth: Auth
    limiter: RateLimiter  # per viewer, not per address

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/shows/{show}/comments", self.post_comment),
            web.get("/api/shows/{show}/comments", self.list_comments),
            web.delete("/api/shows/{show}/comments/{comment}", self.delete_comment),
            web.post("/api/shows/{show}/comments/{comment}/release", self.release),
            web.post("/api/shows/{show}/comments/{comment}/pin", self.pin),
            web.post("/api/shows/{show}/viewers/{viewer_id}/mute", self.mute),
            web.post("/api/shows/{show}/likes", self.like),
            web.get("/api/moderation", self.get_lists),
            web.put("/api/moderation", self.put_lists),
        ]

    async def _viewer(self, request: web.Request) -> tuple[Show, ViewerIdentity]:
        show = await self.catalog.show(request.match_info["show"])
        return show, await self.auth.viewer(show, bearer_token(request))

    def _check_rate(self, show: Show, viewer_id: str) -> None:
        wait = self.limiter.take(f"{show.id}\n{viewer_id}")
        if wait > 0:
            retry = str(math.ceil(wait))
            raise ApiError(429, "rate_limited", f"too many comments; retry in {retry} s", {"Retry-After": retry})

    @operation("Post a comment", tag=COMMENTS, auth=(VIEWER,), body=NewComment,
               replies={201: Reply("the comment as its author sees it", CommentAnswer)},
               errors=(VIEWER_ONLY, JSON_BODY, NO_SHOW, SHOW_ENDED, TOO_FAST, STORE))
    async def post_comment(self, request: web.Request) -> web.Response:
        """The comment goes to the viewer's room (a `comment` event with its display name): as
        written, with the operator's mask words starred, or held for the operator (a block word,
        a link, a muted viewer), which only its author sees until released."""
        show, viewer = await self._viewer(request)
        if show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", "the show has ended")
        new = parse(NewComment, await read_json(request))
        self._check_rate(show, viewer.viewer_id)
        author = Author(viewer.viewer_id, viewer.room, display_name(viewer.viewer_id, viewer.name))
        comment, status = await self.comments.post(show.id, author, new.text)
        return web.json_response({"id": comment.id, "text": comment.text, "status": status}, status=201)

    @operation("Read comments", tag=COMMENTS, auth=(VIEWER, VIEWER_QUERY, ADMIN), public_too=True,
               params=(Param("room", "query", "the room; 'hq' by default (the admin key: every room by default)"),
                       Param("after", "query", "only comments with a greater id", {"type": "integer"})),
               replies={200: Reply("the room's published and masked comments; the admin key: every comment, "
                                   "with its status and author", CommentList)},
               errors=(NO_SHOW, STORE, {400: "bad_after: not a comment id",
                                        401: "unauthorized: a token-playback show needs a viewer token of the room",
                                        403: "wrong_room", 404: "mirror_not_found"}))
    async def list_comments(self, request: web.Request) -> web.Response:
        show = await self.catalog.show(request.match_info["show"])
        raw = request.query.get("after", "0")
        if not raw.isdigit() or len(raw) > 15:
            raise ApiError(400, "bad_after", "after must be a comment id")
        operator = self.auth.is_admin(request)
        room = request.query.get("room", None if operator else HQ_ROOM)
        if room is not None:
            await self.catalog.check_room(show.id, room)
        if not operator and show.playback == "token":
            await self.auth.check_viewer_token(request, show, room)
        comments = await self.comments.list(show.id, room, int(raw), operator)
        return web.json_response({"comments": comments})

    @admin_operation("Delete a comment", COMMENTS, {204: Reply("gone for everyone (a comment.deleted event)")},
                     NO_SHOW, NO_COMMENT, STORE)
    async def delete_comment(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        await self.comments.delete(show.id, _comment_id(request))
        return web.Response(status=204)

    @admin_operation("Release a held comment", COMMENTS,
                     {200: Reply("published to its room (a comment event)", CommentView)},
                     NO_SHOW, NO_COMMENT, STORE, {409: "comment_not_held"})
    async def release(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        comment = await self.comments.release(show.id, _comment_id(request))
        return web.json_response(comment_view(comment, operator=True))

    @admin_operation("Pin a comment over the video", COMMENTS,
                     {200: Reply("pinned (a comment.pinned event)", CommentView)},
                     NO_SHOW, NO_COMMENT, STORE, {409: "comment_not_published: release a held comment first"})
    async def pin(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        comment = await self.comments.pin(show.id, _comment_id(request))
        return web.json_response(comment_view(comment, operator=True))

    @admin_operation("Mute a viewer's comments", COMMENTS,
                     {200: Reply("its comments are held until then", MuteAnswer)}, JSON_BODY, NO_SHOW, STORE,
                     body=Mute)
    async def mute(self, request: web.Request) -> web.Response:
        """For `duration_s` the viewer's comments are held (its author still sees them as
        published); 0 unmutes."""
        self.auth.require_admin(request)
        show = await self.catalog.show(request.match_info["show"])
        body = parse(Mute, await read_json(request))
        viewer_id = request.match_info["viewer_id"]
        until = await self.comments.mute(show.id, viewer_id, body.duration_s)
        return web.json_response({"viewer_id": viewer_id, "muted_until": until or None})

    @operation("Like", tag=COMMENTS, auth=(VIEWER,), body=NewLikes,
               replies={202: Reply("counted; the room hears its total in a `likes` event within 0.5 s", LikesAnswer)},
               errors=(VIEWER_ONLY, JSON_BODY, NO_SHOW, STORE))
    async def like(self, request: web.Request) -> web.Response:
        """Taps of the like button (the page batches them: `count`); the room's total is exact and
        in GET /api/shows/{show}/stats."""
        show, viewer = await self._viewer(request)
        body = parse(NewLikes, await read_json(request))
        total = await self.likes.add(show.id, viewer.room, body.count)
        return web.json_response({"room": viewer.room, "likes": total}, status=202)

    @admin_operation("The moderation lists", COMMENTS, {200: Reply("the lists in force", ModerationView)}, STORE)
    async def get_lists(self, request: web.Request) -> web.Response:
        self.auth.require_admin(request)
        return web.json_response((await self.comments.lists()).view())

    @admin_operation("Set the moderation lists", COMMENTS, {200: Reply("the lists now in force", ModerationView)},
                     JSON_BODY, STORE, body=ModerationChange)
    async def put_lists(self, request: web.Request) -> web.Response:
        """Every node uses them within 2 s. Matching ignores case and full-/half-width forms (NFKC);
        a variant spelling (traditional and simplified characters) is another word of the list.
        `block`: held for the operator; `mask`: starred; `hold_links`: a comment with a link is held."""
        self.auth.require_admin(request)
        request = request.clone(client_max_size=MAX_LISTS_BYTES)  # thousands of words: more than other bodies
        body = parse(ModerationChange, await read_json(request))
        lists = await self.comments.set_lists(body.block, body.mask, body.hold_links)
        return web.json_response(lists.view())
