"""Per-address rate limits: 429 with Retry-After, and a limited request changes nothing."""

from __future__ import annotations

import aiohttp

from relay.http.limits import RateLimiter


def test_token_bucket_allows_a_burst_then_the_rate():
    limiter = RateLimiter("test", rate=2.0)  # bursts of 20
    assert all(limiter.take("a", now=100.0) == 0 for _ in range(20))
    assert limiter.take("a", now=100.0) == 0.5  # empty: the next token in 1/rate s
    assert limiter.take("b", now=100.0) == 0  # another address has its own bucket
    assert limiter.take("a", now=100.5) == 0  # refilled by one
    assert limiter.take("a", now=100.5) > 0
    assert RateLimiter("off", rate=0).take("a") == 0


async def test_viewer_registrations_are_limited_per_address(make_relay):
    def configure(settings):
        settings.limits.viewer_registrations_per_s = 0.5  # bursts of 5
        settings.server.trust_forwarded_for = True

    relay = await make_relay(configure=configure)
    await relay.create_show("busy")
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(6):
            async with http.post(f"{relay.base}/api/shows/busy/viewers", json={"room": "hq"},
                                 headers={"X-Forwarded-For": "198.51.100.7"}) as res:
                statuses.append(res.status)
                body = await res.json()
        assert statuses == [201] * 5 + [429]
        assert body["error"] == "rate_limited" and int(res.headers["Retry-After"]) >= 1
        async with http.post(f"{relay.base}/api/shows/busy/viewers", json={"room": "hq"},
                             headers={"X-Forwarded-For": "198.51.100.8"}) as res:
            assert res.status == 201  # another client behind the same proxy
    stats = (await relay.api("GET", "/api/shows/busy/stats"))[1]
    assert stats["rooms"]["hq"]["unique_viewers"] == 6  # the refused one was not registered
