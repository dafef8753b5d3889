"""Which push endpoints a subscription may name: the relay POSTs to them, and a stranger gave them."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

MAX_ENDPOINT = 2048


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PushServiceHosts:
    """The push services allowed (`[webpush] push_service_hosts`): a host, or "*.domain" for any
    host under it. https only; plain http only to a loopback host listed (a test's push service)."""

    def __init__(self, hosts: list[str]) -> None:
        self._exact = {h.lower().rstrip(".") for h in hosts if not h.startswith("*.")}
        self._suffixes = tuple(h[1:].lower().rstrip(".") for h in hosts if h.startswith("*."))

    def allows_host(self, host: str) -> bool:
        return host in self._exact or (host.endswith(self._suffixes) and bool(self._suffixes))

    def problem(self, endpoint: str) -> str | None:
        """Why the relay will not post to `endpoint`, or None if it will."""
        if len(endpoint) > MAX_ENDPOINT:
            return f"must be at most {MAX_ENDPOINT} characters"
        try:
            parts = urlsplit(endpoint)
            parts.port  # noqa: B018 (a bad port raises here)
        except ValueError:
            return "must be a URL"
        host = (parts.hostname or "").rstrip(".")
        if parts.username is not None or parts.password is not None or not host:
            return "must be a push service URL without credentials"
        if not self.allows_host(host):
            return "must be on a known push service (see [webpush] push_service_hosts)"
        if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host)):
            return None
        return "must be an https URL"
