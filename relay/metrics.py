"""Prometheus metrics (`GET /metrics`, prometheus-client's text format).

Live state (publishers, viewers per show and room, what the media path sent) is read when the
endpoint is scraped; events that happen at request rate (joins, claims, store calls, event
delivery, recording) are observed as they happen. Nothing here runs per packet.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from typing import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .appkeys import ADMIN_KEY, SETTINGS, SHOWS
from .errors import ApiError
from .fanout.meter import METER
from .http_util import bearer_token, key_matches
from .webrtc import open_peer_count

# Observed where they happen; shared by every app of the process (each registry lists them).
JOIN_SECONDS = Histogram("relay_join_seconds", "WHEP offer received -> first video frame sent to the viewer",
                         buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10), registry=None)
CLAIMS = Counter("relay_claims", "Coupon claims answered, by result", ["result"], registry=None)
EVENT_LAG = Histogram("relay_event_delivery_lag_seconds", "Event appended -> handed to this process's readers",
                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=None)
STORE_SECONDS = Histogram("relay_store_seconds", "Commerce store call latency", ["op"],
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=None)
RECORDED_SEGMENTS = Counter("relay_recording_segments", "Replay segments written", registry=None)
RECORDING_ERRORS = Counter("relay_recording_errors", "Replay write failures (disk full, I/O errors)",
                           registry=None)
WEBHOOKS = Counter("relay_webhook_deliveries", "Webhook deliveries, by outcome", ["outcome"], registry=None)
SHARED = (JOIN_SECONDS, CLAIMS, EVENT_LAG, STORE_SECONDS, RECORDED_SEGMENTS, RECORDING_ERRORS, WEBHOOKS)


@contextmanager
def store_timer(op: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        STORE_SECONDS.labels(op).observe(time.perf_counter() - start)


class LiveCollector:
    """Read at scrape time: shows, publishers, viewers and the media meter."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self):
        service = self._app[SHOWS]
        publishers = GaugeMetricFamily("relay_publishers", "Hosts publishing now")
        shows = GaugeMetricFamily("relay_live_shows", "Shows live now (with or without their host)")
        viewers = GaugeMetricFamily("relay_viewers", "Viewers connected now", labels=["show", "room"])
        live_shows = list(service.live.items())
        publishers.add_metric([], sum(1 for _, live in live_shows if live.publisher is not None))
        shows.add_metric([], len(live_shows))
        for show_id, live in live_shows:
            rooms: dict[str, int] = {}
            for viewer in live.viewers.values():
                rooms[viewer.room] = rooms.get(viewer.room, 0) + 1
            for room, n in rooms.items():
                viewers.add_metric([show_id, room], n)
        yield publishers
        yield shows
        yield viewers
        peers = GaugeMetricFamily("relay_peer_connections", "Server peer connections not closed")
        peers.add_metric([], open_peer_count())
        yield peers
        tasks = GaugeMetricFamily("relay_asyncio_tasks", "Tasks on the event loop")
        tasks.add_metric([], len(asyncio.all_tasks()))
        yield tasks
        for name, doc, values in (
            ("relay_frames_received", "Frames received from hosts", METER.frames_received),
            ("relay_frames_forwarded", "Frames sent to viewers", METER.frames_sent),
            ("relay_packets_forwarded", "RTP packets sent to viewers", METER.packets_sent),
            ("relay_bytes_forwarded", "RTP payload bytes sent to viewers", METER.bytes_sent),
            ("relay_frames_dropped", "Frames skipped for slow viewers (to the next keyframe)", METER.frames_dropped),
        ):
            family = CounterMetricFamily(name, doc, labels=["kind"])
            for kind, value in values.items():
                family.add_metric([kind], value)
            yield family
        requests = CounterMetricFamily("relay_keyframe_requests", "Keyframe requests", labels=["direction"])
        requests.add_metric(["from_viewers"], METER.keyframe_requests_received)
        requests.add_metric(["to_hosts"], METER.keyframe_requests_sent)
        yield requests


def build_registry(app: web.Application) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for metric in SHARED:
        registry.register(metric)
    registry.register(LiveCollector(app))
    return registry


def metrics_route(registry: CollectorRegistry):
    async def metrics(request: web.Request) -> web.Response:
        """Prometheus text format; needs [auth] metrics_key (or the admin key) as a Bearer token."""
        expected = request.app[SETTINGS].auth.metrics_key or request.app[ADMIN_KEY]
        if not key_matches(bearer_token(request), expected):
            raise ApiError(401, "unauthorized", "send the metrics key: Authorization: Bearer <key>",
                           {"WWW-Authenticate": "Bearer"})
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
