"""Sending Web Push messages: a bounded queue, a few workers, retries with backoff.

Each message is encrypted for its subscription (RFC 8291, aes128gcm) with pywebpush's
`WebPusher.encode` (http_ece underneath) on a small thread pool, since it is CPU work (an ECDH
and AES per message) that would otherwise hold the event loop; the request itself (RFC 8030) is
posted with aiohttp on the loop: a push service that is slow costs a waiting coroutine, not a
blocked thread, and one connection pool serves every send.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
import logging
from typing import Awaitable, Callable

import aiohttp
from pywebpush import WebPusher

from .subscriptions import Subscription
from .vapid import VapidKeys

log = logging.getLogger(__name__)

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0
GONE = (404, 410)  # the subscription expired or was withdrawn: it goes


@dataclass(frozen=True)
class SenderOptions:
    workers: int = 8
    max_queue: int = 100_000
    timeout_s: float = 10.0
    max_attempts: int = 5
    ttl_s: int = 3600
    first_retry_s: float = FIRST_RETRY_S


@dataclass
class PushMessage:
    subscription: Subscription
    payload: bytes
    attempt: int = 0


def encrypt(subscription: Subscription, payload: bytes) -> bytes:
    """The payload encrypted for the browser (aes128gcm body, with its header and key id)."""
    info = {"endpoint": subscription.endpoint, "keys": {"p256dh": subscription.p256dh, "auth": subscription.auth}}
    return WebPusher(info).encode(payload, "aes128gcm")["body"]


class PushSender:
    """Delivers queued messages with a few workers. The queue is bounded: a go-live of a big audience
    waits for room (in its own background task, never the show's), so every subscriber is told."""

    def __init__(self, options: SenderOptions, keys: Callable[[], Awaitable[VapidKeys]],
                 on_gone: Callable[[Subscription], Awaitable[None]]) -> None:
        self._options = options
        self._keys = keys
        self._on_gone = on_gone
        self._queue: asyncio.Queue[PushMessage] = asyncio.Queue(options.max_queue)
        self._workers: list[asyncio.Task] = []
        self._retries: set[asyncio.TimerHandle] = set()
        self._waiting: set[asyncio.Task] = set()  # retries waiting for room in the queue
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="webpush-encrypt")
        self._http: aiohttp.ClientSession | None = None
        self.sent = self.gone = self.failed = self.dropped = 0

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def enqueue(self, message: PushMessage) -> bool:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    async def put(self, message: PushMessage) -> None:
        """Queue `message`, waiting while the queue is full."""
        await self._queue.put(message)

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._options.timeout_s))
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(self._options.workers)]

    async def close(self) -> None:
        for handle in self._retries:
            handle.cancel()
        for task in self._waiting:
            task.cancel()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _work(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._attempt(message)
            except Exception:  # a worker outlives any one message
                log.exception("web push to %s failed unexpectedly", message.subscription.id)
            finally:
                self._queue.task_done()

    async def _attempt(self, message: PushMessage) -> None:
        status = await self._send(message)
        if status is not None and 200 <= status < 300:
            self.sent += 1
            return
        if status in GONE:
            self.gone += 1
            await self._on_gone(message.subscription)
            return
        message.attempt += 1
        retriable = status is None or status == 429 or status >= 500
        if not retriable or message.attempt >= self._options.max_attempts:
            self.failed += 1
            log.warning("web push to subscription %s of show %s: giving up (%s, %d attempts)",
                        message.subscription.id, message.subscription.show_id, status or "no answer", message.attempt)
            return
        wait = min(MAX_RETRY_S, self._options.first_retry_s * 2 ** (message.attempt - 1))
        handle = asyncio.get_running_loop().call_later(wait, self._retry, message)
        self._retries.add(handle)

    def _retry(self, message: PushMessage) -> None:
        now = asyncio.get_running_loop().time()
        self._retries = {h for h in self._retries if not h.cancelled() and h.when() > now}
        if not self.enqueue(message):  # behind a go-live's audience: it waits its turn
            task = asyncio.ensure_future(self.put(message))
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)

    async def _send(self, message: PushMessage) -> int | None:
        """The push service's status, or None if it could not be reached."""
        assert self._http is not None
        subscription = message.subscription
        keys = await self._keys()
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(self._pool, encrypt, subscription, message.payload)
        headers = {"Authorization": keys.authorization(subscription.endpoint), "TTL": str(self._options.ttl_s),
                   "Content-Encoding": "aes128gcm", "Content-Type": "application/octet-stream", "Urgency": "high"}
        try:
            async with self._http.post(subscription.endpoint, data=body, headers=headers,
                                       allow_redirects=False) as res:
                return res.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("web push to %s: %s", subscription.id, exc or type(exc).__name__)
            return None
