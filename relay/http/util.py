"""Small request helpers shared by the HTTP front-ends."""

from __future__ import annotations

from dataclasses import dataclass
import hmac
import json
from typing import Any

from aiohttp import web

from ..commerce.tokens import ViewerIdentity, ViewerTokens
from ..errors import ApiError
from ..models import HQ_ROOM, Show
from ..catalog import ShowCatalog
from ..live_registry import LiveRegistry
from .limits import RateLimiter, client_address
from .openapi import RATE, Reply, merge_errors, operation
from .session_routes import SessionRoutes

SDP_TYPE = "application/sdp"
# What WHIP and WHEP answer alike (RFC 9725).
SDP_ANSWER = {201: Reply("the SDP answer, with every candidate (no trickle ICE)", media=SDP_TYPE,
                         headers={"Location": "the session's URL: DELETE it to stop"})}
SESSION_GONE = {200: Reply("the session is over", media=())}
OFFER_ERRORS = merge_errors({400: "bad_sdp: a malformed offer, no supported codec, or the wrong direction",
                             413: "body_too_large", 415: "unsupported_media_type: send application/sdp",
                             429: "too_many_pending_sessions: this address's sessions still connecting",
                             503: "server_stopping: try another server or again shortly (Retry-After)"}, RATE)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(given: str | None, expected: str) -> bool:
    """`given` is the secret `expected` (compared in constant time); never for an empty secret."""
    return given is not None and bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


class Auth:
    """Who is asking: the admin (its key), a viewer (a signed token of a room that still exists),
    and from which address (behind a proxy or not)."""

    def __init__(self, admin_key: str, tokens: ViewerTokens, catalog: ShowCatalog, trust_forwarded_for: bool,
                 shop_key: str = "") -> None:
        self._admin_key = admin_key
        self._shop_key = shop_key
        self._tokens = tokens
        self._catalog = catalog
        self._trust_forwarded_for = trust_forwarded_for

    def client(self, request: web.Request) -> str:
        """The client's address as this server is set to see it."""
        return client_address(request, self._trust_forwarded_for)

    def is_admin(self, request: web.Request) -> bool:
        return key_matches(bearer_token(request), self._admin_key)

    def require_admin(self, request: web.Request) -> None:
        token = bearer_token(request)
        if token is None:
            raise ApiError(401, "unauthorized", "missing admin key: send Authorization: Bearer <admin key>",
                           {"WWW-Authenticate": "Bearer"})
        if not key_matches(token, self._admin_key):
            raise ApiError(401, "unauthorized", "wrong admin key", {"WWW-Authenticate": "Bearer"})

    def require_shop(self, request: web.Request) -> None:
        """The brand's shop (its key opens order intake and refunds only) or the admin."""
        token = bearer_token(request)
        if token is not None and self._shop_key and key_matches(token, self._shop_key):
            return
        if token is None:
            raise ApiError(401, "unauthorized", "missing key: send Authorization: Bearer <shop key or admin key>",
                           {"WWW-Authenticate": "Bearer"})
        if not key_matches(token, self._admin_key):
            raise ApiError(401, "unauthorized", "wrong shop or admin key", {"WWW-Authenticate": "Bearer"})

    async def viewer(self, show: Show, token: str | None) -> ViewerIdentity:
        """The identity in a valid viewer token of this show whose room still exists, and existed
        when the token was made (a deleted room's tokens do not open a new room with its id)."""
        identity = self._tokens.verify(token, show.id, show.created_at)
        if identity.room != HQ_ROOM:
            since = await self._catalog.room_since(show.id, identity.room)
            if since is None or identity.issued_at < since:
                raise ApiError(401, "unauthorized", "viewer token is for a room that was removed; get a new one")
        return identity

    async def reader(self, request: web.Request, show: Show, room: str) -> str | None:
        """The viewer id of a valid viewer token of this room (Bearer or ?token=), else None: an
        anonymous reader (a public show needs no token)."""
        token = bearer_token(request) or request.query.get("token")
        if token is None:
            return None
        try:
            identity = await self.viewer(show, token)
        except ApiError:
            return None
        return identity.viewer_id if identity.room == room else None

    async def check_viewer_token(self, request: web.Request, show: Show, room: str) -> None:
        """For shows whose playback needs a token: a valid viewer token of this show and room, from
        the Authorization header or (for EventSource, which cannot set headers) ?token=."""
        identity = await self.viewer(show, bearer_token(request) or request.query.get("token"))
        if identity.room != room:
            raise ApiError(403, "wrong_room", f"this viewer token is for room {identity.room!r}")


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large a number")
    return value


async def read_json(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    raw = await request.read()
    try:
        body = json.loads(raw or b"{}", parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ApiError(400, "bad_json", "body is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    return body


async def read_sdp(request: web.Request) -> str:
    if request.content_type != SDP_TYPE:
        raise ApiError(415, "unsupported_media_type", f"send the offer as {SDP_TYPE}, not {request.content_type or 'nothing'}")
    raw = await request.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_sdp", "SDP offer is not UTF-8 text") from exc


def sdp_answer(answer: str, location: str) -> web.Response:
    return web.Response(
        status=201, text=answer, content_type=SDP_TYPE,
        headers={"Location": location, "Access-Control-Expose-Headers": "Location"},
    )


def cors_origin(request: web.Request, allowed: list[str]) -> str | None:
    """The Access-Control-Allow-Origin for this request ([server] cors_origins), None if not allowed."""
    if "*" in allowed:
        return "*"
    origin = request.headers.get("Origin")
    return origin if origin in allowed else None


CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match, Idempotency-Key, Last-Event-ID",
    "Access-Control-Expose-Headers": "Location, Link",
}


@operation("CORS preflight", tag="media", replies={204: Reply(
    "the methods and headers a browser may use (for the origins in [server] cors_origins)", media=(),
    headers={"Accept-Post": SDP_TYPE})})
async def _preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Accept-Post": SDP_TYPE})  # CORS headers: the middleware


@operation("Trickle ICE or ICE restart (not supported)", tag="media", replies={},
           errors=({405: "method_not_allowed: the answer carries all candidates (Allow: DELETE, OPTIONS)"},))
async def _not_patchable(request: web.Request) -> web.Response:
    """RFC 9725 lets a server without trickle ICE or ICE restart answer PATCH with 405."""
    raise ApiError(405, "method_not_allowed",
                   "trickle ICE and ICE restart are not supported: the answer carries all candidates",
                   {"Allow": "DELETE, OPTIONS"})


@dataclass(eq=False)
class SessionEndpoint:
    """What a WHIP or WHEP front-end is given: the live registry, who is asking, its rate limit
    and, in a cluster, how session URLs name the node that holds the session."""

    live: LiveRegistry
    auth: Auth
    limiter: RateLimiter
    sessions: SessionRoutes | None = None

    def location(self, base: str, session_id: str) -> str:
        """The URL of a session made here."""
        return f"{base}/{session_id if self.sessions is None else self.sessions.session_ref(session_id)}"

    async def session_id(self, request: web.Request) -> str | web.Response:
        """The id of the session a request is about, or (in a cluster, when another node holds
        it) that node's answer to the request."""
        ref = request.match_info["session"]
        return ref if self.sessions is None else await self.sessions.local_id(request, ref)


def session_routes(offer_paths: list[str], session_path: str) -> list[web.AbstractRouteDef]:
    """What WHIP and WHEP answer alike: PATCH on a session (405) and CORS preflights."""
    return [web.patch(session_path, _not_patchable),
            *(web.route("OPTIONS", path, _preflight) for path in [*offer_paths, session_path])]
