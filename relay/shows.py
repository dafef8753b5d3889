"""The service layer: shows and mirror rooms, their state changes, and who publishes and watches.

Every change of a show's state goes through `ShowService` (persisted in the store first),
and it knows which shows are running here (`LiveShow`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from typing import Awaitable, Callable

from .address_counter import AddressCounter
from .config import Settings
from .errors import ApiError
from .fanout.viewer import ViewerSession
from .ingest.publisher import PublisherSession
from .live import LiveShow
from .models import HQ_ROOM, Mirror, RoomFigures, Show, ShowFigures, ShowState, is_slug
from .replay.service import ReplayService
from .store import ShowStore
from .webrtc import Offer, watch_handshake

log = logging.getLogger(__name__)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_stream_key() -> str:
    return secrets.token_urlsafe(24)


class PendingSessions:
    """Sessions answered but not yet connected, per client address: one address may hold at most
    `limit` (0: no limit), so half-open offers cannot take every slot and socket."""

    def __init__(self, limit: int) -> None:
        self._counts = AddressCounter(limit)

    def open(self, address: str) -> None:
        if not self._counts.take(address):
            raise ApiError(429, "too_many_pending_sessions",
                           f"this address has {self._counts.held(address)} sessions still connecting; "
                           "finish or end those first", {"Retry-After": "5"})

    def close(self, address: str) -> None:
        self._counts.release(address)


class ShowService:
    def __init__(self, settings: Settings, store: ShowStore, replays: ReplayService) -> None:
        self.settings = settings
        self.store = store
        self.replays = replays
        self.live: dict[str, LiveShow] = {}
        # Set by the app: where show state changes and viewers' data channels go.
        self.on_state: Callable[[str, str, dict], None] = lambda show_id, type, data: None
        self.on_viewer_channel: Callable[[ViewerSession, object], None] | None = None
        self.on_webhook: Callable[[str, dict], None] = lambda type, data: None
        self.on_ended: Callable[[str], Awaitable[None]] | None = None  # e.g. the show's coupons end
        self.on_deleting: Callable[[str], Awaitable[None]] | None = None  # e.g. its commerce data goes
        # (show, room, retired name): a deleted room's commerce counts move to a name no room has
        self.on_room_deleting: Callable[[str, str, str], Awaitable[None]] | None = None
        self.pending = PendingSessions(settings.limits.max_pending_sessions_per_address)
        self._room_since: dict[tuple[str, str], float] = {}  # (show, room) -> the mirror's created_at

    # -- lifecycle -------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """After a restart: shows that were live when the server stopped wait for their host
        again for the grace period, as after a dropped connection (a restarted encoder
        republishes with the same key and the show, its links and its replay go on).
        Returns their ids. Runs on the event loop."""
        waiting = []
        for show in self.store.list_shows():
            if show.state is ShowState.LIVE:
                self._live_show(show).await_host()
                waiting.append(show.id)
        return waiting

    async def shutdown(self) -> None:
        await asyncio.gather(*(live.close() for live in self.live.values()), return_exceptions=True)
        self.live.clear()

    # -- shows -----------------------------------------------------------------------------
    def create_show(self, title: str, show_id: str | None, replay_public: bool | None = None,
                    stream_key_ttl_s: float | None = None, playback: str = "public",
                    currency: str = "CNY", identity: str = "anonymous") -> tuple[Show, str]:
        if show_id is None:
            show_id = secrets.token_hex(4)
            while self.store.get_show(show_id):
                show_id = secrets.token_hex(4)
        elif self.store.get_show(show_id):
            raise ApiError(409, "show_exists", f"a show with id {show_id!r} already exists")
        key = new_stream_key()
        if replay_public is None:  # a token-only show's replay is not for everyone either
            replay_public = playback != "token"
        now = time.time()
        show = Show(show_id, title, ShowState.SCHEDULED, hash_key(key), now, replay_public=replay_public,
                    stream_key_expires_at=now + stream_key_ttl_s if stream_key_ttl_s else None, playback=playback,
                    currency=currency, identity=identity)
        self.store.create_show(show)
        return show, key

    def get_show(self, show_id: str) -> Show:
        show = self.store.get_show(show_id) if is_slug(show_id) else None
        if show is None:
            raise ApiError(404, "show_not_found", f"no show {show_id!r}")
        return show

    def check_stream_key(self, show: Show, key: str | None) -> None:
        if not key:
            raise ApiError(401, "unauthorized", "missing stream key: send Authorization: Bearer <stream_key>",
                           {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(hash_key(key), show.stream_key_hash):
            raise ApiError(401, "unauthorized", "wrong stream key", {"WWW-Authenticate": "Bearer"})
        if show.stream_key_expires_at is not None and time.time() >= show.stream_key_expires_at:
            raise ApiError(401, "stream_key_expired", "the stream key has expired; ask the operator for a new one",
                           {"WWW-Authenticate": "Bearer"})

    def rotate_stream_key(self, show_id: str, ttl_s: float | None) -> tuple[Show, str]:
        """A new stream key; the old one stops working for new publishes (a host already live
        stays on air)."""
        show = self.get_show(show_id)
        if show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", f"show {show_id!r} has ended; its stream key cannot be used again")
        key = new_stream_key()
        show.stream_key_hash = hash_key(key)
        show.stream_key_expires_at = time.time() + ttl_s if ttl_s else None
        self.store.update_show(show)
        log.info("show %s: stream key rotated", show_id)
        return show, key

    async def end_show(self, show_id: str, reason: str) -> Show:
        show = self.get_show(show_id)
        if show.state is not ShowState.ENDED:
            show.state = ShowState.ENDED
            show.ended_at = time.time()
            show.end_reason = reason
            self.store.update_show(show)
            log.info("show %s ended (%s)", show_id, reason)
            self.on_state(show_id, "show.ended", {"state": "ended", "reason": reason})
            self.on_webhook("show.ended", {"show": show_id, "reason": reason})
            if self.on_ended is not None:
                try:
                    await self.on_ended(show_id)
                except Exception:  # the show is ended all the same; claims check it again
                    log.exception("show %s: ending its coupons failed", show_id)
        live = self.live.pop(show_id, None)
        if live is not None:
            await live.close()
        self.replays.on_show_end(show_id)
        return show

    async def close_live(self, show_id: str) -> None:
        """Close the show's sessions here (host and viewers), as a deletion begins."""
        live = self.live.pop(show_id, None)
        if live is not None:
            await live.close()

    async def delete_show(self, show_id: str) -> None:
        """The show and everything kept for it; a new show may take the id and inherits nothing.
        If its other data cannot be deleted now (a store is down), the show stays, to delete again."""
        self.get_show(show_id)
        await self.close_live(show_id)  # no claim or event lands while its data goes
        if self.on_deleting is not None:
            await self.on_deleting(show_id)
        await self.replays.delete(show_id)
        self.store.delete_show(show_id)
        self._room_since = {k: v for k, v in self._room_since.items() if k[0] != show_id}

    def _mark_live(self, show_id: str) -> None:
        show = self.get_show(show_id)  # fresh: a key rotated meanwhile must not be written back
        if show.state is ShowState.SCHEDULED:
            show.state = ShowState.LIVE
            show.started_at = time.time()
            self.store.update_show(show)
            self.on_state(show.id, "show.live", {"state": "live"})

    def _live_show(self, show: Show) -> LiveShow:
        live = self.live.get(show.id)
        if live is None:
            figures = ShowFigures(self.store.load_room_figures(show.id))
            live = LiveShow(show.id, self.settings.media, figures, self._host_gone_for_good,
                            lambda until: self._host_lost(show.id, until))
            self.live[show.id] = live
        return live

    def _host_lost(self, show_id: str, until: float) -> None:
        self.on_state(show_id, "show.host_reconnecting", {"state": "live", "reconnecting_until": until})
        self.on_webhook("unpublish", {"show": show_id, "reason": "host_lost", "reconnecting_until": until})

    async def _host_gone_for_good(self, show_id: str) -> None:
        live = self.live.get(show_id)
        if live is not None and live.publisher is None:
            await self.end_show(show_id, "host_left")

    # -- mirror rooms ----------------------------------------------------------------------
    def add_mirror(self, show_id: str, distributor: str, name: str) -> Mirror:
        self.get_show(show_id)
        if self.store.get_mirror(show_id, distributor):
            raise ApiError(409, "mirror_exists", f"distributor {distributor!r} already has a room in this show")
        mirror = Mirror(show_id, distributor, name, time.time())
        self.store.add_mirror(mirror)
        self._room_since.pop((show_id, distributor), None)
        return mirror

    def get_mirror(self, show_id: str, distributor: str) -> Mirror:
        self.get_show(show_id)
        mirror = self.store.get_mirror(show_id, distributor) if is_slug(distributor) else None
        if mirror is None:
            raise ApiError(404, "mirror_not_found", f"show {show_id!r} has no mirror room {distributor!r}")
        return mirror

    def room_since(self, show_id: str, room: str) -> float | None:
        """When the mirror room was made (None if there is none): read on every claim, so kept."""
        key = (show_id, room)
        if key not in self._room_since:
            mirror = self.store.get_mirror(show_id, room) if is_slug(room) else None
            if mirror is None:
                return None  # not cached: a room made later is found then
            self._room_since[key] = mirror.created_at
        return self._room_since[key]

    async def delete_mirror(self, show_id: str, distributor: str) -> None:
        """The room goes: its viewers are disconnected, its tokens no longer work (they are older
        than any new room with its id) and its counts are retired."""
        mirror = self.get_mirror(show_id, distributor)
        if self.on_room_deleting is not None:  # a store failure (503) leaves the room to delete again
            await self.on_room_deleting(show_id, distributor, f"{distributor}~{mirror.created_at:.6f}")
        live = self.live.get(show_id)
        if live is not None:
            for viewer in live.room_viewers(distributor):
                live.remove_viewer(viewer)
            for viewer in [v for v in live.joining.values() if v.room == distributor]:
                await viewer.close()  # its handshake watch lets go of it
            live.figures.rooms.pop(distributor, None)
        self.store.delete_mirror(show_id, distributor)
        self._room_since.pop((show_id, distributor), None)

    def check_room(self, show_id: str, room: str) -> None:
        if room != HQ_ROOM:
            self.get_mirror(show_id, room)

    # -- media sessions --------------------------------------------------------------------
    async def publish(self, show_id: str, key: str | None, offer: Offer,
                      client: str = "") -> tuple[PublisherSession, str]:
        """Answer a host's offer. The session becomes the show's publisher (taking over from any
        other) once ICE and DTLS are done; a handshake that fails leaves the show as it was."""
        show = self.get_show(show_id)
        self.check_stream_key(show, key)
        if show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", f"show {show_id!r} has ended; create a new show")
        live = self._live_show(show)
        self.pending.open(client)
        session = PublisherSession(show_id, live.on_frame, live.publisher_gone)
        try:
            answer = await session.answer(offer, self.settings.media.video_codecs)
            # The show may have ended, or its key been rotated, while the answer was being made.
            current = self.store.get_show(show_id)
            if current is None or current.state is ShowState.ENDED or self.live.get(show_id) is not live:
                raise ApiError(409, "show_ended", f"show {show_id!r} has ended")
            self.check_stream_key(current, key)
        except BaseException:
            self.pending.close(client)
            await session.close()
            raise
        session.key_hash = current.stream_key_hash
        live.pending[session.id] = session
        log.info("show %s: publisher %s answered, connecting", show_id, session.id,
                 extra={"show": show_id, "session": session.id})
        watch_handshake(session.pc, self.settings.ice.connect_timeout_s,
                        lambda: self._publisher_connected(live, session, client),
                        lambda reason: self._publisher_failed(live, session, client, reason))
        return session, answer

    def _publisher_connected(self, live: LiveShow, session: PublisherSession, client: str) -> None:
        current = self.store.get_show(live.show_id)
        ended = current is None or current.state is ShowState.ENDED or self.live.get(live.show_id) is not live
        if session.closed or ended:
            self._publisher_failed(live, session, client, "the show ended while the host connected")
            return
        self.pending.close(client)
        live.pending.pop(session.id, None)
        live.attach_publisher(session)
        self.replays.on_publish(live.show_id, live.forwarders, session.codecs)
        self._mark_live(live.show_id)
        log.info("show %s: publisher %s connected (%s)", live.show_id, session.id, session.codecs,
                 extra={"show": live.show_id, "session": session.id})
        self.on_webhook("publish", {"show": live.show_id, "session": session.id, "codecs": session.codecs})

    def _publisher_failed(self, live: LiveShow, session: PublisherSession, client: str, reason: str) -> None:
        self.pending.close(client)
        live.pending.pop(session.id, None)
        if not session.closed:
            log.warning("show %s: publish attempt %s failed: %s; the show is unchanged", live.show_id,
                        session.id, reason, extra={"show": live.show_id, "session": session.id})
        asyncio.ensure_future(session.close())

    async def unpublish(self, show_id: str, session_id: str, key: str | None) -> None:
        show = self.get_show(show_id)
        live = self.live.get(show_id)
        publisher = live.publisher if live is not None else None
        # The host may end its own session with the key it published with, even if the key
        # was rotated or has expired since.
        if not (publisher is not None and publisher.id == session_id and key
                and hmac.compare_digest(hash_key(key), publisher.key_hash)):
            self.check_stream_key(show, key)
        pending = live.pending.pop(session_id, None) if live is not None else None
        if pending is not None:  # a host giving up before it connected: the show is unchanged
            await pending.close()
            return
        if publisher is None or publisher.id != session_id:
            raise ApiError(404, "session_not_found", "no such publishing session")
        # An explicit DELETE ends the show: the host said it is done.
        self.on_webhook("unpublish", {"show": show_id, "reason": "host_ended"})
        await self.end_show(show_id, "host_ended")

    async def watch(self, show_id: str, room: str, offer: Offer, client: str = "") -> tuple[ViewerSession, str]:
        """Answer a viewer's offer. The viewer counts (figures, caps) once ICE and DTLS are done;
        until then it holds a slot, for at most [ice] connect_timeout_s."""
        show = self.get_show(show_id)
        self.check_room(show_id, room)
        self._check_capacity(show_id)
        if show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", f"show {show_id!r} has ended")
        self.pending.open(client)
        live = self._live_show(show)
        viewer = ViewerSession(show_id, room, self.settings.media.viewer_queue_frames, live.remove_viewer,
                               self.on_viewer_channel)
        live.joining[viewer.id] = viewer  # joins in progress hold their place: a burst cannot overshoot
        try:
            answer = await viewer.answer(offer, live.codec_choices(self.settings.media.video_codecs),
                                         live.keyframes.request)
            if self.live.get(show_id) is not live:  # ended meanwhile
                raise ApiError(409, "show_ended", f"show {show_id!r} has ended")
        except BaseException:
            live.joining.pop(viewer.id, None)
            self.pending.close(client)
            await viewer.close()
            raise
        watch_handshake(viewer.pc, self.settings.ice.connect_timeout_s,
                        lambda: self._viewer_connected(live, viewer, client),
                        lambda reason: self._viewer_failed(live, viewer, client, reason))
        return viewer, answer

    def _viewer_connected(self, live: LiveShow, viewer: ViewerSession, client: str) -> None:
        self.pending.close(client)
        if live.joining.pop(viewer.id, None) is None or viewer.closed or self.live.get(live.show_id) is not live:
            asyncio.ensure_future(viewer.close())
            return
        live.add_viewer(viewer)
        self.store.save_room_figures(live.show_id, viewer.room, live.figures.room(viewer.room))

    def _viewer_failed(self, live: LiveShow, viewer: ViewerSession, client: str, reason: str) -> None:
        self.pending.close(client)
        live.joining.pop(viewer.id, None)
        if not viewer.closed:
            log.info("show %s: viewer %s in %s did not connect: %s", live.show_id, viewer.id, viewer.room, reason,
                     extra={"show": live.show_id, "room": viewer.room, "session": viewer.id})
        asyncio.ensure_future(viewer.close())

    def _check_capacity(self, show_id: str) -> None:
        limits = self.settings.limits
        live = self.live.get(show_id)
        if limits.max_viewers_per_show and (live.audience if live else 0) >= limits.max_viewers_per_show:
            raise ApiError(503, "show_full", f"show {show_id!r} has its maximum of {limits.max_viewers_per_show}"
                           " viewers; try again shortly", {"Retry-After": "10"})
        total = sum(s.audience for s in self.live.values())
        if limits.max_viewers_per_process and total >= limits.max_viewers_per_process:
            raise ApiError(503, "server_full", "this server is at its viewer capacity; try again shortly",
                           {"Retry-After": "10"})

    async def stop_watching(self, show_id: str, room: str, session_id: str) -> None:
        live = self.live.get(show_id)
        viewer = (live.viewers.get(session_id) or live.joining.get(session_id)) if live else None
        if viewer is None or viewer.room != room:
            raise ApiError(404, "session_not_found", "no such viewing session")
        if live.joining.pop(session_id, None) is not None:
            await viewer.close()  # its handshake watch frees the address's slot
        else:
            live.remove_viewer(viewer)

    # -- figures ---------------------------------------------------------------------------
    def figures(self, show_id: str) -> ShowFigures:
        live = self.live.get(show_id)
        if live is not None:
            return live.figures
        return ShowFigures(self.store.load_room_figures(show_id))

    def stats(self, show_id: str) -> dict:
        show = self.get_show(show_id)
        figures = self.figures(show_id)
        rooms = {HQ_ROOM: figures.room(HQ_ROOM).as_dict()}
        for mirror in self.store.list_mirrors(show_id):
            rooms[mirror.distributor] = figures.rooms.get(mirror.distributor, RoomFigures()).as_dict()
        live = self.live.get(show_id)
        dropped = sum(v.dropped for v in live.viewers.values()) if live else 0
        return {"show": show.id, "state": show.state.value, "rooms": rooms, "dropped_frames": dropped}
