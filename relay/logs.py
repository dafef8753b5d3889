"""Logging: plain text or one JSON object per line, and what keeps secrets out of log lines.

Records may carry `show`, `room` and `session` (logging's `extra=`); JSON lines keep them as
fields. URLs and paths are written through `redact_url` and `redact_path`.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import urlsplit, urlunsplit

CONTEXT_FIELDS = ("show", "room", "session")


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        for name in CONTEXT_FIELDS + ("method", "path", "status", "bytes", "ms", "remote"):
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(level: str, fmt: str, worker: int | None = None) -> None:
    """Log lines to stderr; a supervisor's worker names itself in each (`[w1]`, "worker": 1),
    as the workers share the supervisor's stderr."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        who = "" if worker is None else f"[w{worker}] "
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aioice").setLevel(logging.WARNING)


_SIGNED = re.compile(r"(/signed/)[^/]+")


def redact_url(url: str) -> str:
    """`url` fit for a log line: no password, no query string (either may hold a secret)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        if parts.username or parts.password:
            host = f"{parts.username or ''}:***@{host}" if parts.password else f"{parts.username}@{host}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparsable URL>"


def redact_path(path: str) -> str:
    """A request path without the token a signed link carries, matched by a route or not."""
    return _SIGNED.sub(r"\1<token>", path)
