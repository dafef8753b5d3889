"""HTTP API of show reminders: Web Push subscriptions, the VAPID public key, a show's calendar event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

from aiohttp import web

from ..catalog import ShowCatalog
from ..config import Settings
from ..errors import ApiError
from ..models import Show
from ..reminders.service import Reminders
from .limits import RateLimiter
from .openapi import ADMIN, JSON_BODY, NO_SHOW, RATE, STORE, Reply, operation
from .schemas.common import parse
from .schemas.reminders import NewSubscription, SubscriptionCreated, VapidPublicKey
from .util import Auth, read_json

REMINDERS = "reminders"
NO_SUBSCRIPTION = {404: "subscription_not_found"}


def _ics_text(value: str) -> str:
    """RFC 5545 TEXT: backslash, semicolon, comma and newlines escaped."""
    return (value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
            .replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n"))


def _fold(line: str) -> str:
    """Lines of at most 75 octets, continued with a space (RFC 5545 3.1)."""
    out, current = [], b""
    for char in line:
        encoded = char.encode()
        if len(current) + len(encoded) > (75 if not out else 74):
            out.append(current.decode())
            current = b""
        current += encoded
    out.append(current.decode())
    return "\r\n ".join(out)


def _ics_time(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def calendar(show: Show, base_url: str, now: float) -> str:
    """The show as an iCalendar (RFC 5545) file with one VEVENT."""
    watch_url = f"{base_url}/watch/{show.id}"
    start = show.starts_at if show.starts_at is not None else show.started_at
    assert start is not None
    host = urlsplit(base_url).hostname or "relay"
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//livecast relay//shows//EN", "CALSCALE:GREGORIAN",
             "METHOD:PUBLISH", "BEGIN:VEVENT", f"UID:{show.id}@{host}", f"DTSTAMP:{_ics_time(now)}",
             f"DTSTART:{_ics_time(start)}", "DURATION:PT1H", f"SUMMARY:{_ics_text(show.title)}",
             f"URL:{watch_url}", f"DESCRIPTION:{_ics_text('Watch live: ' + watch_url)}", "END:VEVENT",
             "END:VCALENDAR"]
    return "".join(_fold(line) + "\r\n" for line in lines)


@dataclass(eq=False)
class ReminderApi:
    """Reminders of public shows by Web Push, and a show's calendar event."""

    catalog: ShowCatalog
    reminders: Reminders
    auth: Auth
    settings: Settings
    limiter: RateLimiter

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/shows/{show}/subscriptions", self.subscribe),
            web.delete("/api/shows/{show}/subscriptions/{subscription}", self.unsubscribe),
            web.get("/api/webpush/vapid-public-key", self.vapid_public_key),
            web.get("/api/shows/{show}/calendar.ics", self.calendar),
        ]

    async def _public_show(self, request: web.Request) -> Show:
        """The show, if anyone may see it (playback 'public'; the admin sees any); else 404."""
        show = await self.catalog.show(request.match_info["show"])
        if show.playback != "public" and not self.auth.is_admin(request):
            raise ApiError(404, "show_not_found", f"no show {show.id!r}")
        return show

    @operation("Subscribe to a show's reminder", tag=REMINDERS, body=NewSubscription,
               replies={201: Reply("subscribed: one Web Push message when the show goes live", SubscriptionCreated)},
               errors=(JSON_BODY, NO_SHOW, RATE, STORE,
                       {409: "show_ended",
                        422: "invalid_field: webpush.endpoint not on an allowed push service (https; "
                             "[webpush] push_service_hosts), or webpush.keys not a P-256 key and 16-byte secret"}))
    async def subscribe(self, request: web.Request) -> web.Response:
        """The body's webpush is the browser's PushSubscription.toJSON(), subscribed with the key of
        GET /api/webpush/vapid-public-key. The message's JSON: type 'show.live', show, title, url."""
        self.limiter.check(request)
        show = await self._public_show(request)
        new = parse(NewSubscription, await read_json(request))
        push = new.webpush
        subscription = await self.reminders.subscribe(show, push.endpoint, push.keys.p256dh, push.keys.auth)
        return web.json_response({"id": subscription.id}, status=201)

    @operation("Withdraw a reminder", tag=REMINDERS, replies={204: Reply("gone", media=())},
               errors=(NO_SHOW, NO_SUBSCRIPTION, STORE))
    async def unsubscribe(self, request: web.Request) -> web.Response:
        """Anyone holding the subscription's id (only its browser was told it) may withdraw it."""
        show_id = request.match_info["show"]
        await self.catalog.show(show_id)
        if not await self.reminders.unsubscribe(show_id, request.match_info["subscription"]):
            raise ApiError(404, "subscription_not_found", "no such subscription")
        return web.Response(status=204)

    @operation("The VAPID public key", tag=REMINDERS, replies={200: Reply("the key", VapidPublicKey)},
               errors=(STORE,))
    async def vapid_public_key(self, request: web.Request) -> web.Response:
        return web.json_response({"public_key": await self.reminders.public_key()},
                                 headers={"Cache-Control": "public, max-age=3600"})

    @operation("A show's calendar event", tag=REMINDERS, auth=(ADMIN,), public_too=True,
               replies={200: Reply("an iCalendar file with one VEVENT", media="text/calendar")},
               errors=(NO_SHOW, {409: "no_start_time: the show has no starts_at and has not started"}))
    async def calendar(self, request: web.Request) -> web.Response:
        """The scheduled start (else when it started), title and watch URL of a public show."""
        show = await self._public_show(request)
        if show.starts_at is None and show.started_at is None:
            raise ApiError(409, "no_start_time", f"show {show.id!r} has no starts_at yet")
        text = calendar(show, self.settings.base_url, self.catalog.clock())
        return web.Response(text=text, content_type="text/calendar", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{show.id}.ics"',
                                     "Cache-Control": "no-cache"})
