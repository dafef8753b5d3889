"""Webhooks: signed JSON events to the operator's URLs, delivered in the background.

Signed per the Standard Webhooks specification: `webhook-id` (the event id, kept across
retries, so receivers drop duplicates), `webhook-timestamp` and `webhook-signature:
v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, where the key is the base64 after
`whsec_` in the secret (a secret without that prefix is used as its bytes). Any Standard
Webhooks library verifies them. The older `X-Relay-*` headers are still sent for one release.
Deliveries go through a bounded queue; a failed one is retried with exponential backoff; a
slow or dead receiver costs a queue slot, never a request's time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Mapping

import aiohttp

from .logs import redact_url
from .metrics import WEBHOOKS

log = logging.getLogger(__name__)

WORKERS = 4
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0


SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: the base64 after `whsec_`, else the secret's own bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):] + "==", validate=False)
        except binascii.Error as exc:
            raise ValueError("the webhook secret after 'whsec_' is not base64") from exc
    return secret.encode()


def new_secret() -> str:
    """A fresh secret in the Standard Webhooks form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value."""
    mac = hmac.new(signing_key(secret), f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def legacy_sign(secret: str, timestamp: int, body: bytes) -> str:
    """The former `X-Relay-Signature` (hex HMAC over "<timestamp>.<body>" keyed by the secret's bytes)."""
    return "v1=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, headers: Mapping[str, str], tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """What a receiver does: one of the signatures matches and the timestamp is recent."""
    lower = {k.lower(): v for k, v in headers.items()}
    event_id, timestamp = lower.get("webhook-id", ""), lower.get("webhook-timestamp", "")
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if not event_id or abs((now or time.time()) - ts) > tolerance_s:
        return False
    expected = sign(secret, event_id, ts, body)
    return any(hmac.compare_digest(expected, given) for given in lower.get("webhook-signature", "").split())


@dataclass
class _Delivery:
    url: str
    event: dict
    body: bytes
    attempt: int = 0


class WebhookSender:
    def __init__(self, urls: list[str], secret: str, timeout_s: float = 5.0, max_queue: int = 10_000,
                 max_attempts: int = 8) -> None:
        self.urls = list(urls)
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_attempts = max_attempts
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue(max_queue)
        self._workers: list[asyncio.Task] = []
        self._retries: set[asyncio.TimerHandle] = set()
        self._http: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    def emit(self, type: str, data: dict) -> str | None:
        """Queue an event for every URL; returns its id (None when webhooks are off)."""
        if not self.urls:
            return None
        event = {"id": "evt_" + secrets.token_hex(12), "type": type, "created_at": time.time(), "data": data}
        body = json.dumps(event, separators=(",", ":")).encode()
        for url in self.urls:
            self._enqueue(_Delivery(url, event, body))
        return event["id"]

    def _enqueue(self, delivery: _Delivery) -> None:
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            WEBHOOKS.labels("dropped").inc()
            log.error("webhook queue full: %s event %s to %s dropped", delivery.event["type"],
                      delivery.event["id"], delivery.url)

    async def start(self) -> None:
        if self.urls:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
            self._workers = [asyncio.ensure_future(self._work()) for _ in range(WORKERS)]

    async def close(self, drain_s: float = 2.0) -> None:
        """Deliver what is queued (for at most `drain_s`), then stop; pending retries are dropped."""
        if self._workers:
            try:
                await asyncio.wait_for(self._queue.join(), drain_s)
            except TimeoutError:
                log.warning("webhooks: %d deliveries not made before stopping", self._queue.qsize())
        for handle in self._retries:
            handle.cancel()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                await self._attempt(delivery)
            except Exception:  # a worker must outlive any one delivery
                log.exception("webhook %s: delivery failed unexpectedly", delivery.event["id"])
            finally:
                self._queue.task_done()

    async def _attempt(self, delivery: _Delivery) -> None:
        if await self._deliver(delivery):
            WEBHOOKS.labels("delivered").inc()
            return
        delivery.attempt += 1
        if delivery.attempt >= self._max_attempts:
            WEBHOOKS.labels("failed").inc()
            log.error("webhook %s event %s to %s failed %d times; giving up", delivery.event["type"],
                      delivery.event["id"], delivery.url, delivery.attempt)
            return
        WEBHOOKS.labels("retried").inc()
        wait = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** (delivery.attempt - 1))
        handle = asyncio.get_running_loop().call_later(wait, self._retry, delivery)
        self._retries.add(handle)

    def _retry(self, delivery: _Delivery) -> None:
        now = asyncio.get_running_loop().time()  # the clock of TimerHandle.when()
        self._retries = {h for h in self._retries if not h.cancelled() and h.when() > now}
        self._enqueue(delivery)

    async def _deliver(self, delivery: _Delivery) -> bool:
        assert self._http is not None
        ts = int(time.time())  # signed at each attempt: a retry is not a replay of an old request
        event_id = delivery.event["id"]
        headers = {"Content-Type": "application/json", "webhook-id": event_id, "webhook-timestamp": str(ts),
                   "webhook-signature": sign(self._secret, event_id, ts, delivery.body),
                   # deprecated, for receivers written before the Standard Webhooks headers
                   "X-Relay-Event-Id": event_id, "X-Relay-Timestamp": str(ts),
                   "X-Relay-Signature": legacy_sign(self._secret, ts, delivery.body)}
        try:
            async with self._http.post(delivery.url, data=delivery.body, headers=headers) as res:
                if 200 <= res.status < 300:
                    return True
                log.warning("webhook %s to %s answered %d", delivery.event["id"], redact_url(delivery.url), res.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("webhook %s to %s failed: %s", delivery.event["id"], redact_url(delivery.url),
                        exc or type(exc).__name__)
        return False
