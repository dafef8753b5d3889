"""The access log: one line per request, without query strings or the token of a signed link."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..logs import redact_path


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path (no query string), status, size, time, peer."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, duration: float) -> None:
        ms = round(duration * 1000, 1)
        path = redact_path(request.path)
        token = (getattr(request, "match_info", None) or {}).get("token")
        if token:  # a signed replay link carries its token in the path
            path = path.replace(token, "<token>")
        self.logger.info("%s %s %s %sB %sms", request.method, path, response.status,
                         response.body_length, ms,
                         extra={"method": request.method, "path": path, "status": response.status,
                                "bytes": response.body_length, "ms": ms, "remote": request.remote,
                                **_context(request)})

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _context(request: web.BaseRequest) -> dict[str, str]:
    info = getattr(request, "match_info", None) or {}
    return {k: info[k] for k in ("show", "room", "session") if k in info}
