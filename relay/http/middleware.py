"""Middleware of every answer: errors as JSON, CORS, refusing new sessions while stopping, and
the security headers."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from aiohttp import web

from ..errors import ApiError
from .util import CORS_HEADERS, cors_origin

log = logging.getLogger(__name__)

def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        return json_error(exc.status, _HTTP_CODES.get(exc.status, "error"), message, headers)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal", "internal server error")


def draining_middleware(draining: asyncio.Event):
    """While the server stops (`draining` set), new media sessions go elsewhere (503 + Retry-After)."""

    @web.middleware
    async def refuse_new_sessions(request: web.Request, handler):
        if draining.is_set() and request.method == "POST" and request.path.startswith(("/whip/", "/whep/")):
            raise ApiError(503, "server_stopping", "this server is stopping; try again in a moment",
                           {"Retry-After": "2"})
        return await handler(request)

    return refuse_new_sessions


def cors_middleware(allowed: list[str]):
    """CORS for the origins in [server] cors_origins (browsers elsewhere play, publish, claim)."""

    @web.middleware
    async def cors(request: web.Request, handler):
        origin = cors_origin(request, allowed)
        if request.method == "OPTIONS" and not request.path.startswith(("/whip/", "/whep/")):
            response = web.Response(status=204)  # a preflight for the API (WHIP/WHEP answer their own)
        else:
            response = await handler(request)
        if origin is not None and not response.prepared:
            response.headers.update(CORS_HEADERS)
            response.headers["Access-Control-Allow-Origin"] = origin
            if origin != "*":
                response.headers["Vary"] = "Origin"
        return response

    return cors


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every answer: no MIME sniffing, no Referer (paths may carry signed links), and a
    Server header that names no versions."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers["Server"] = "livecast-relay"
