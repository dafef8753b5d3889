"""Bodies of the reminders API: a browser's Web Push subscription and what the relay answers."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from .common import RequestBody, Rule

Key = Annotated[str, Field(min_length=1, max_length=200), Rule("must be a base64url string")]


class PushKeys(RequestBody):
    """The subscription's keys (PushSubscription.toJSON().keys)."""

    p256dh: Key = Field(description="the browser's P-256 public key (65 bytes, uncompressed), base64url")
    auth: Key = Field(description="the browser's 16-byte auth secret, base64url")


class PushSubscriptionJson(RequestBody):
    """PushSubscription.toJSON() as the browser gives it (expirationTime is ignored)."""

    endpoint: Annotated[str, Field(min_length=1, max_length=2048), Rule("must be a push service URL")]
    keys: PushKeys


class NewSubscription(RequestBody):
    """A reminder of a show by Web Push."""

    webpush: PushSubscriptionJson


class SubscriptionCreated(BaseModel):
    id: str = Field(description="the subscription's id: DELETE /api/shows/{show}/subscriptions/{id} withdraws it")


class VapidPublicKey(BaseModel):
    public_key: str = Field(description="the VAPID public key, base64url (uncompressed P-256 point): "
                                        "pushManager.subscribe's applicationServerKey")
