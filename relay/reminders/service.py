"""What the API and the registry call: subscribe, unsubscribe, and a show going live."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
import time
from typing import Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import ApiError, invalid_field
from ..models import Show, ShowState
from .endpoints import PushServiceHosts
from .sender import PushMessage, PushSender, SenderOptions
from .subscriptions import Subscription, SubscriptionStore
from .vapid import VapidKeys, new_private_pem

log = logging.getLogger(__name__)

KEY_WAIT_S = 5.0  # an API call waits this long for the VAPID key (Redis away at start) before a 503


def _b64url(value: str, field: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise invalid_field(field, "must be base64url") from None


def check_keys(p256dh: str, auth: str) -> None:
    """422 unless p256dh is a P-256 point (65 bytes, uncompressed) and auth 16 bytes (RFC 8291)."""
    point = _b64url(p256dh, "webpush.keys.p256dh")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        if len(point) != 65:
            raise ValueError(point)
    except ValueError:
        raise invalid_field("webpush.keys.p256dh", "must be an uncompressed P-256 public key, base64url") from None
    if len(_b64url(auth, "webpush.keys.auth")) != 16:
        raise invalid_field("webpush.keys.auth", "must be a 16-byte secret, base64url")


class Reminders:
    """Web Push reminders of shows: stored subscriptions, one message each when the show goes live."""

    def __init__(self, store: SubscriptionStore, hosts: PushServiceHosts, options: SenderOptions, subject: str,
                 base_url: Callable[[], str], find_show: Callable[[str], Awaitable[Show | None]]) -> None:
        self._store = store
        self._hosts = hosts
        self._subject = subject
        self._base_url = base_url
        self._find_show = find_show
        self._keys: asyncio.Future[VapidKeys] | None = None
        self._notified: set[str] = set()  # shows this process announced (a host reconnecting is no news)
        self._tasks: set[asyncio.Task] = set()
        self.sender = PushSender(options, self.keys, self._forget)

    async def start(self) -> None:
        await self.sender.start()
        self._loading()  # read or made in the background: media flows while Redis is away

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._keys is not None and not self._keys.done():
            self._keys.cancel()
        await self.sender.close()
        await self._store.close()

    # -- the VAPID key ---------------------------------------------------------------------------
    def _loading(self) -> asyncio.Future[VapidKeys]:
        if self._keys is None:
            self._keys = asyncio.ensure_future(self._load())
        return self._keys

    async def _load(self) -> VapidKeys:
        keys = VapidKeys(await self._store.vapid_key(new_private_pem), self._subject or self._base_url())
        log.info("web push: VAPID public key %s", keys.public_key)
        return keys

    async def keys(self) -> VapidKeys:
        return await asyncio.shield(self._loading())

    async def public_key(self) -> str:
        """The application server key browsers subscribe with (503 until it is read)."""
        try:
            return (await asyncio.wait_for(self.keys(), KEY_WAIT_S)).public_key
        except TimeoutError:
            raise ApiError(503, "store_unavailable", "the VAPID key is not read yet; retry",
                           {"Retry-After": "2"}) from None

    # -- subscriptions ---------------------------------------------------------------------------
    async def subscribe(self, show: Show, endpoint: str, p256dh: str, auth: str) -> Subscription:
        """A new subscription to the show's reminder; 422 naming the field, nothing stored, if the
        endpoint is not an allowed push service or the keys are not what RFC 8291 needs."""
        problem = self._hosts.problem(endpoint)
        if problem is not None:
            raise invalid_field("webpush.endpoint", problem)
        check_keys(p256dh, auth)
        if show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", f"show {show.id!r} has ended")
        subscription = Subscription(secrets.token_urlsafe(16), show.id, endpoint, p256dh, auth, time.time())
        await self._store.add(subscription)
        return subscription

    async def unsubscribe(self, show_id: str, subscription_id: str) -> bool:
        return await self._store.remove(show_id, subscription_id)

    async def forget_show(self, show_id: str) -> None:
        """The show is deleted: its subscriptions go with it."""
        await self._store.purge_show(show_id)
        self._notified.discard(show_id)

    async def _forget(self, subscription: Subscription) -> None:
        await self._store.remove(subscription.show_id, subscription.id)
        log.info("web push: subscription %s of show %s is gone at its push service; removed",
                 subscription.id, subscription.show_id)

    # -- a show going live -----------------------------------------------------------------------
    def show_live(self, show_id: str) -> None:
        """The show went live (called synchronously, from the registry's state change): its
        subscribers are told in the background, once."""
        if show_id in self._notified:
            return
        self._notified.add(show_id)
        task = asyncio.ensure_future(self.announce(show_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def announce(self, show_id: str) -> int:
        """Queue the show's live message for each of its subscribers; how many were queued."""
        try:
            show = await self._find_show(show_id)
            if show is None:
                return 0
            subscriptions = await self._store.for_show(show_id)
        except ApiError as exc:
            log.error("show %s went live but its reminders could not be read: %s", show_id, exc.message)
            return 0
        watch_url = f"{self._base_url()}/watch/{show_id}"
        payload = json.dumps({"type": "show.live", "show": show_id, "title": show.title, "url": watch_url,
                              "watch_url": watch_url}, ensure_ascii=False, separators=(",", ":")).encode()
        for subscription in subscriptions:  # waits while the queue is full: this task, not the show
            await self.sender.put(PushMessage(subscription, payload))
        log.info("show %s is live: %d reminders queued", show_id, len(subscriptions), extra={"show": show_id})
        return len(subscriptions)
