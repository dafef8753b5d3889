"""`GET /metrics`: Prometheus text format (prometheus-client). Live state is read at scrape time."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..errors import ApiError
from ..fanout.meter import METER
from ..metrics import SHARED
from ..live_registry import LiveRegistry
from ..webrtc import open_peer_count
from .openapi import METRICS, Reply, operation
from .util import bearer_token, key_matches


class LiveCollector:
    """Read at scrape time: shows, publishers, viewers and the media meter."""

    def __init__(self, registry: LiveRegistry) -> None:
        self._registry = registry

    def collect(self):
        publishers = GaugeMetricFamily("relay_publishers", "Hosts publishing now")
        shows = GaugeMetricFamily("relay_live_shows", "Shows live now (with or without their host)")
        viewers = GaugeMetricFamily("relay_viewers", "Viewers connected now", labels=["show", "room"])
        live_shows = list(self._registry.running.items())
        publishers.add_metric([], sum(1 for _, live in live_shows if live.publisher is not None))
        shows.add_metric([], len(live_shows))
        for show_id, live in live_shows:
            rooms: dict[str, int] = {}
            for viewer in live.viewers.values():
                rooms[viewer.room] = rooms.get(viewer.room, 0) + 1
            for room, n in rooms.items():
                viewers.add_metric([show_id, room], n)
        cluster = GaugeMetricFamily("relay_cluster_viewers", "Viewers connected now on every node of the "
                                    "cluster, of the shows running here (as of the last figures save)",
                                    labels=["show", "room"])
        for show_id, rooms in self._registry.cluster_viewers.items():
            for room, n in rooms.items():
                cluster.add_metric([show_id, room], n)
        yield publishers
        yield shows
        yield viewers
        yield cluster
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
            ("relay_packets_retransmitted", "RTP packets sent again for viewers' NACKs", METER.packets_retransmitted),
        ):
            family = CounterMetricFamily(name, doc, labels=["kind"])
            for kind, value in values.items():
                family.add_metric([kind], value)
            yield family
        requests = CounterMetricFamily("relay_keyframe_requests", "Keyframe requests", labels=["direction"])
        requests.add_metric(["from_viewers"], METER.keyframe_requests_received)
        requests.add_metric(["to_hosts"], METER.keyframe_requests_sent)
        yield requests
        skips = CounterMetricFamily("relay_viewer_loss_skips", "Viewers' video skipped to the next keyframe "
                                    "for the losses their receiver reports said")
        skips.add_metric([], METER.loss_skips)
        yield skips


def build_registry(live: LiveRegistry) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for metric in SHARED:
        registry.register(metric)
    registry.register(LiveCollector(live))
    return registry


def metrics_route(registry: CollectorRegistry, key: str):
    """The handler of GET /metrics; `key` ([auth] metrics_key, else the admin key) opens it."""

    @operation("Prometheus metrics", tag="operations", auth=(METRICS,),
               replies={200: Reply("Prometheus text format", media="text/plain")},
               errors=({401: "unauthorized: the metrics key"},))
    async def metrics(request: web.Request) -> web.Response:
        """Prometheus text format; needs the metrics key as a Bearer token."""
        expected = key
        if not key_matches(bearer_token(request), expected):
            raise ApiError(401, "unauthorized", "send the metrics key: Authorization: Bearer <key>",
                           {"WWW-Authenticate": "Bearer"})
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
