"""Prometheus metrics observed where things happen (joins, claims, store calls, event delivery,
recording, webhooks): at request rate, never per packet. What is live (publishers, viewers, the
media meter) is read at scrape time by relay/http/metrics_api.py."""

from __future__ import annotations

from contextlib import contextmanager
import time
from typing import Iterator

from prometheus_client import Counter, Histogram

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
ORDERS_TAKEN = Counter("relay_orders", "Orders and refunds answered: taken (new), retried (the same again)",
                 ["kind", "outcome"], registry=None)
WEBHOOKS = Counter("relay_webhook_deliveries", "Webhook deliveries, by outcome", ["outcome"], registry=None)
RTMP_CONNECTIONS = Counter("relay_rtmp_connections", "RTMP ingest connections, by outcome: published, refused "
                           "(show, key or rate), failed (not RTMP, broken, or no publish in time)", ["outcome"],
                           registry=None)
SHARED = (JOIN_SECONDS, CLAIMS, EVENT_LAG, STORE_SECONDS, RECORDED_SEGMENTS, RECORDING_ERRORS, ORDERS_TAKEN, WEBHOOKS,
          RTMP_CONNECTIONS)


@contextmanager
def store_timer(op: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        STORE_SECONDS.labels(op).observe(time.perf_counter() - start)
