"""Restream target URLs: what an rtmp:// or rtmps:// URL must be, its parts, and its masked form.

The last path segment (and any query) of a target URL is the platform's stream key: a secret.
It is never logged and never shown: `mask` replaces it with ****, `redact` takes it out of
any text (a receiver's error message may echo it).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 1024
DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443}
MASK = "****"
_HOST_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?",
                        re.IGNORECASE)
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


class BadUrl(ValueError):
    """The URL cannot be a restream target; the message says why (never quoting the URL)."""


@dataclass(frozen=True)
class RtmpUrl:
    """A target: rtmp[s]://host[:port]/app/stream-key[?query] (the app may have several segments)."""

    scheme: str  # rtmp | rtmps
    host: str
    port: int
    app: str
    stream: str  # the stream key: the last path segment and the query, as the platform gave them

    @property
    def tls(self) -> bool:
        return self.scheme == "rtmps"

    @property
    def tc_url(self) -> str:
        """The URL of the application, as RTMP's connect command names it (no key)."""
        return f"{self.scheme}://{self._netloc}/{self.app}"

    @property
    def masked(self) -> str:
        return f"{self.scheme}://{self._netloc}/{self.app}/{MASK}"

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def redact(self, text: str) -> str:
        """`text` without the stream key (whole, or its name before any query)."""
        for secret in sorted({self.stream, self.stream.split("?", 1)[0]}, key=len, reverse=True):
            if secret:
                text = text.replace(secret, MASK)
        return text


def parse(url: str) -> RtmpUrl:
    """The target `url` names, or BadUrl saying what is wrong with it."""
    if not isinstance(url, str) or not url:
        raise BadUrl("must be an rtmp:// or rtmps:// URL")
    if len(url) > MAX_URL_LENGTH:
        raise BadUrl(f"must be at most {MAX_URL_LENGTH} characters")
    if _UNSAFE.search(url):
        raise BadUrl("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadUrl("must be a well-formed URL with a valid port") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BadUrl("must start with rtmp:// or rtmps://")
    if parts.username is not None or parts.password is not None:
        raise BadUrl("must not carry a user name or password")
    if parts.fragment or "#" in url:
        raise BadUrl("must not have a #fragment")
    host = parts.hostname or ""
    if not host:
        raise BadUrl("must name a host: rtmp://host/app/stream-key")
    if not _valid_host(host):
        raise BadUrl("must name a valid host name or IP address")
    if port == 0:
        raise BadUrl("must have a port from 1 to 65535")
    path = parts.path.strip("/")
    app, _, name = path.rpartition("/")
    if not app or not name:
        raise BadUrl("must name an application and a stream key: rtmp://host/app/stream-key")
    stream = name + (f"?{parts.query}" if parts.query else "")
    return RtmpUrl(scheme, host, port or DEFAULT_PORTS[scheme], app, stream)


def mask(url: str) -> str:
    """`url` with its stream key as ****; a URL that does not parse is masked whole after its host."""
    try:
        return parse(url).masked
    except BadUrl:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}/{MASK}" if rest else MASK


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST_NAME.fullmatch(host))
