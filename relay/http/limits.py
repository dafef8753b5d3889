"""Per-client request rate limits (token buckets), answered with 429 and Retry-After."""

from __future__ import annotations

from collections import OrderedDict
import math
import time

from aiohttp import web

from ..errors import ApiError

BURST_SECONDS = 10.0  # a client may spend this many seconds' worth of requests at once
MAX_CLIENTS = 100_000  # buckets kept; the least recently seen client is forgotten first


class RateLimiter:
    """`rate` requests per second per client address, in bursts of up to rate x BURST_SECONDS.
    A rate of 0 turns the limit off."""

    def __init__(self, name: str, rate: float, trust_forwarded_for: bool = False, burst: float | None = None) -> None:
        self.name = name
        self.rate = rate
        self._trust_forwarded_for = trust_forwarded_for
        self.burst = max(1.0, rate * BURST_SECONDS if burst is None else burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def take(self, client: str, now: float | None = None) -> float:
        """Spend one request of `client`: 0 when allowed, else the seconds until it would be."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait

    def check(self, request: web.Request) -> None:
        """429 with Retry-After when the request's client is over the limit."""
        if self.rate <= 0:
            return
        wait = self.take(client_address(request, self._trust_forwarded_for))
        if wait > 0:
            raise ApiError(429, "rate_limited", f"too many {self.name} requests from this address; "
                           f"retry in {math.ceil(wait)} s", {"Retry-After": str(math.ceil(wait))})


def client_address(request: web.Request, trust_forwarded_for: bool) -> str:
    """The client's address: the peer's, or with `trust_forwarded_for` the one the proxy in front
    put last in X-Forwarded-For."""
    if trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return request.remote or "unknown"
