"""The live registry: which shows run here, who publishes and who watches them.

Publishing, watching, capacity, the live room figures (saved periodically) and the end of a
show go through `LiveRegistry`; what a show is (its key, its rooms) it asks the catalog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Protocol

from .address_counter import AddressCounter
from .catalog import ShowCatalog, key_hash_matches
from .cluster.edge import EdgeLinks
from .cluster.nodes import NodeDirectory
from .config import Settings
from .errors import ApiError, NodeFull
from .fanout.viewer import ViewerSession
from .ingest.publisher import PublisherSession
from .live import LiveShow
from .media import FrameHandler, GoneHandler, StreamSource
from .models import EDGE_ROOM, HQ_ROOM, RoomFigures, Show, ShowFigures, ShowState
from .replay.service import ReplayService
from .restream.service import RestreamService
from .webrtc import Offer, watch_handshake

log = logging.getLogger(__name__)


class FiguresStore(Protocol):
    """Where room figures outlive the process. In a cluster each node saves its own counts and
    loads the cluster's (sessions summed, peaks of the sum, viewers now of every live node)."""

    async def save_room_figures(self, show_id: str, rooms: dict[str, RoomFigures]) -> None: ...
    async def load_room_figures(self, show_id: str) -> dict[str, RoomFigures]: ...
    async def save_live_viewers(self, show_id: str, rooms: dict[str, int], ttl_s: float) -> None: ...
    async def load_live_viewers(self, show_id: str) -> dict[str, int]: ...


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


SENDING_WAIT_S = 5.0  # a connected viewer's tracks start sending within this
EDGE_WAIT_S = 3.0  # a viewer on an edge waits this long at most for the pull to start
StateListener = Callable[[str, str, dict], None]  # (show, event type, data): viewers hear it
WebhookListener = Callable[[str, dict], None]  # (event type, data): the brand's systems hear it


class LiveRegistry:
    def __init__(self, settings: Settings, catalog: ShowCatalog, replays: ReplayService, figures: FiguresStore,
                 on_state: StateListener, on_webhook: WebhookListener,
                 on_viewer_channel: Callable[[ViewerSession, object], None] | None = None,
                 on_ended: Callable[[str], Awaitable[None]] | None = None, edges: EdgeLinks | None = None,
                 nodes: NodeDirectory | None = None, restreams: RestreamService | None = None) -> None:
        self.settings = settings
        self.running: dict[str, LiveShow] = {}  # shows with a host or viewers here
        self.pending = PendingSessions(settings.limits.max_pending_sessions_per_address)
        self._catalog = catalog
        self._replays = replays
        self._figures = figures
        self._on_state = on_state
        self._on_webhook = on_webhook
        self._on_viewer_channel = on_viewer_channel
        self._on_ended = on_ended  # e.g. the show's coupons end
        self._edges = edges  # in a cluster: pulls of shows whose host is on another node
        self._nodes = nodes  # in a cluster: where a viewer goes when this node is full
        self._restreams = restreams  # other platforms the shows whose host is here are pushed to
        self.cluster_viewers: dict[str, dict[str, int]] = {}  # in a cluster: viewers now, all nodes, per show
        self._unsaved: set[str] = set()  # shows whose figures changed since they were saved
        self._saved_at: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------------------
    async def recover(self) -> list[str]:
        """After a restart: shows that were live when the server stopped wait for their host
        again for the grace period, as after a dropped connection (a restarted encoder
        republishes with the same key and the show, its links and its replay go on).
        Returns their ids."""
        waiting = []
        for show in await self._catalog.list_shows():
            if show.state is ShowState.LIVE and not await self._published_elsewhere(show.id):
                (await self._live_show(show.id)).await_host()
                waiting.append(show.id)
        return waiting

    async def _published_elsewhere(self, show_id: str) -> bool:
        """In a cluster: the show's host publishes to another node now."""
        if self._edges is None:
            return False
        origin = await self._edges.origins.lookup(show_id)
        return origin is not None and origin.node != self._edges.origins.me.node

    def show_changed(self, show_id: str | None) -> None:
        """Another node changed a show (None: any may have): read it again, and let go here of
        what ended or went (the show, a mirror room) there."""
        self._catalog.forget(show_id)
        for changed in [show_id] if show_id is not None else list(self.running):
            if changed in self.running:
                asyncio.ensure_future(self._follow_change(changed))

    async def _follow_change(self, show_id: str) -> None:
        try:
            show = await self._catalog.find(show_id)
            if show is None or show.state is ShowState.ENDED:
                await self.close_show(show_id)
                self._replays.on_show_end(show_id)
                return
            rooms = {HQ_ROOM, EDGE_ROOM} | {m.distributor for m in await self._catalog.mirrors(show_id)}
            live = self.running.get(show_id)
            for room in {v.room for v in live.viewers.values()} - rooms if live else ():
                await self.close_room(show_id, room)
            if self._restreams is not None:  # its restream targets may have changed there
                self._restreams.reload(show_id)
        except Exception:
            log.exception("show %s: following a change made on another node failed", show_id)

    def _host_here(self, show_id: str) -> bool:
        """The show's host publishes to this node (or did, and its grace period runs here)."""
        return self._edges is None or self._edges.origins.holds(show_id)

    async def shutdown(self) -> None:
        try:
            await self.save_figures()
        except Exception as exc:  # (a store that is away: the shows close all the same)
            log.warning("saving room figures at shutdown failed: %s", exc)
        await asyncio.gather(*(live.close() for live in self.running.values()), return_exceptions=True)
        self.running.clear()

    async def end_show(self, show_id: str, reason: str) -> Show:
        """The show ends for good: viewers hear it, the host and viewers are let go, the replay
        is finished."""
        # Its coupons end first: a claim that sees the show ended stops a coupon itself, and
        # readers would not hear coupon.ended from that.
        if self._on_ended is not None and (await self._catalog.show(show_id)).state is not ShowState.ENDED:
            try:
                await self._on_ended(show_id)
            except Exception:  # the show ends all the same; claims check it again
                log.exception("show %s: ending its coupons failed", show_id)
        if await self._catalog.mark_ended(show_id, reason):
            self._on_state(show_id, "show.ended", {"state": "ended", "reason": reason})
            self._on_webhook("show.ended", {"show": show_id, "reason": reason})
        await self.close_show(show_id)
        self._replays.on_show_end(show_id)
        return await self._catalog.show(show_id)

    async def close_show(self, show_id: str) -> None:
        """Close the show's sessions here (host and viewers), its figures saved."""
        if self._edges is not None:
            self._edges.stop(show_id)
            await self._edges.origins.release(show_id)
        if self._restreams is not None:
            self._restreams.stop(show_id)
        live = self.running.pop(show_id, None)
        if live is not None:
            try:
                await self._save_show_figures(show_id, live)
            except Exception:  # the sessions close all the same
                log.exception("show %s: saving its room figures failed", show_id)
            await live.close()
        self._saved_at.pop(show_id, None)

    async def close_room(self, show_id: str, room: str) -> None:
        """A mirror room goes: its viewers are disconnected and its figures forgotten."""
        live = self.running.get(show_id)
        if live is None:
            return
        for viewer in live.room_viewers(room):
            live.remove_viewer(viewer)
        for viewer in [v for v in live.joining.values() if v.room == room]:
            await viewer.close()  # its handshake watch lets go of it
        live.figures.rooms.pop(room, None)

    async def _live_show(self, show_id: str) -> LiveShow:
        live = self.running.get(show_id)
        if live is None:
            # Alone, a show's counts go on from where they were; in a cluster each node counts
            # its own viewers from zero and the store sums the nodes'.
            figures = ShowFigures({} if self._edges else await self._figures.load_room_figures(show_id))
            live = self.running.get(show_id)  # another join may have made it meanwhile
            if live is None:
                live = LiveShow(show_id, self.settings.media, figures, self._host_gone_for_good,
                                lambda until: self._host_lost(show_id, until))
                self.running[show_id] = live
        return live

    def _host_lost(self, show_id: str, until: float) -> None:
        """The show's stream stopped: its host's (say so) or, on an edge, the pull's (pull again)."""
        if self._host_here(show_id):
            self._on_state(show_id, "show.host_reconnecting", {"state": "live", "reconnecting_until": until})
            self._on_webhook("unpublish", {"show": show_id, "reason": "host_lost", "reconnecting_until": until})
        live = self.running.get(show_id)
        if self._edges is not None and live is not None:  # viewers here follow the host to another node
            self._edges.ensure(live, self._close_idle, self._pulling)

    async def _host_gone_for_good(self, show_id: str) -> None:
        live = self.running.get(show_id)
        if live is None or live.publisher is not None:
            return
        if not self._host_here(show_id) and await self._published_elsewhere(show_id):
            live.await_host()  # this edge's pull ended; the host is live on another node
            self._edges.ensure(live, self._close_idle, self._pulling)
            return
        await self.end_show(show_id, "host_left")

    def _pulling(self, show_id: str) -> None:
        """The show's stream comes from another node now: this node's part of the replay ends
        (the origin records the show, not its edges)."""
        live = self.running.get(show_id)
        queue = self._replays.hand_over(show_id)
        if queue is not None and live is not None:
            live.remove_reader(queue)
        feed = self._restreams.stop(show_id) if self._restreams is not None else None  # the origin pushes
        if feed is not None and live is not None:
            live.remove_reader(feed)

    async def _close_idle(self, show_id: str) -> None:
        """An edge whose viewers left: its copy of the show goes."""
        live = self.running.get(show_id)
        if live is not None and not live.audience and not self._host_here(show_id):
            await self.close_show(show_id)

    # -- publishing ------------------------------------------------------------------------
    async def admit_host(self, show_id: str, key: str | None) -> Show:
        """The show a host may publish to with `key` (404, 401 otherwise), before its offer is read."""
        show = await self._catalog.show(show_id)
        self._catalog.check_stream_key(show, key)
        return show

    async def publish(self, show: Show, key: str | None, offer: Offer,
                      client: str = "") -> tuple[PublisherSession, str]:
        """Answer an admitted host's offer. The session becomes the show's publisher (taking over
        from any other) once ICE and DTLS are done; a handshake that fails leaves the show as it was."""
        show_id = show.id
        if show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", f"show {show_id!r} has ended; create a new show")
        live = await self._live_show(show_id)
        self.pending.open(client)
        session = PublisherSession(show_id, live.on_frame, live.publisher_gone)
        try:
            answer = await session.answer(offer, self.settings.media.video_codecs)
            # The show may have ended, or its key been rotated, while the answer was being made.
            current = await self._catalog.find(show_id)
            if current is None or current.state is ShowState.ENDED or self.running.get(show_id) is not live:
                raise ApiError(409, "show_ended", f"show {show_id!r} has ended")
            self._catalog.check_stream_key(current, key)
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

    async def open_stream(self, show_id: str, key: str | None, make: Callable[[FrameHandler, GoneHandler], StreamSource],
                          client: str = "") -> StreamSource:
        """A host's stream that arrives connected (an RTMP push): checked like a WHIP host's (404,
        401, 409 for an ended show) before `make(on_frame, on_gone)` is called, then the show's
        publisher at once, taking over from any other."""
        show = await self.admit_host(show_id, key)
        if show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", f"show {show_id!r} has ended; create a new show")
        live = await self._live_show(show_id)
        self.pending.open(client)
        source = make(live.on_frame, live.publisher_gone)
        source.key_hash = show.stream_key_hash
        self._publisher_connected(live, source, client)
        if source.closed:
            raise ApiError(409, "show_ended", f"show {show_id!r} has ended")
        return source

    def _publisher_connected(self, live: LiveShow, session: StreamSource, client: str) -> None:
        # Synchronous, in the connection's state change: no frame of the new host is missed.
        ended = self._catalog.is_ended(live.show_id) or self.running.get(live.show_id) is not live
        if session.closed or ended:
            self._publisher_failed(live, session, client, "the show ended while the host connected")
            return
        self.pending.close(client)
        live.pending.pop(session.id, None)
        live.attach_publisher(session)
        if self._edges is not None:  # this node is the show's origin from now on
            asyncio.ensure_future(self._edges.origins.claim(live.show_id))
        recorder = self._replays.on_publish(live.show_id, session.codecs)
        if recorder is not None:
            live.add_reader(recorder)
        if self._restreams is not None:
            feed = self._restreams.on_publish(live.show_id, session.codecs, live.keyframes.request)
            if feed is not None:
                live.add_reader(feed)
        if self._catalog.mark_live(live.show_id):
            self._on_state(live.show_id, "show.live", {"state": "live"})
            self._on_webhook("show.live", {"show": live.show_id})
        log.info("show %s: publisher %s connected (%s)", live.show_id, session.id, session.codecs,
                 extra={"show": live.show_id, "session": session.id})
        self._on_webhook("publish", {"show": live.show_id, "session": session.id, "codecs": session.codecs})

    def _publisher_failed(self, live: LiveShow, session: StreamSource, client: str, reason: str) -> None:
        self.pending.close(client)
        live.pending.pop(session.id, None)
        if not session.closed:
            log.warning("show %s: publish attempt %s failed: %s; the show is unchanged", live.show_id,
                        session.id, reason, extra={"show": live.show_id, "session": session.id})
        asyncio.ensure_future(session.close())

    async def unpublish(self, show_id: str, session_id: str, key: str | None) -> None:
        show = await self._catalog.show(show_id)
        live = self.running.get(show_id)
        publisher = live.publisher if live is not None else None
        # The host may end its own session with the key it published with, even if the key
        # was rotated or has expired since.
        if not (publisher is not None and publisher.id == session_id
                and key_hash_matches(key, publisher.key_hash)):
            self._catalog.check_stream_key(show, key)
        pending = live.pending.pop(session_id, None) if live is not None else None
        if pending is not None:  # a host giving up before it connected: the show is unchanged
            await pending.close()
            return
        if publisher is None or publisher.id != session_id:
            raise ApiError(404, "session_not_found", "no such publishing session")
        # An explicit DELETE ends the show: the host said it is done.
        self._on_webhook("unpublish", {"show": show_id, "reason": "host_ended"})
        await self.end_show(show_id, "host_ended")

    # -- watching --------------------------------------------------------------------------
    async def admit_viewer(self, show_id: str, room: str) -> Show:
        """The show whose room `room` a viewer may ask to play (404 otherwise)."""
        show = await self._catalog.show(show_id)
        await self._catalog.check_room(show_id, room)
        return show

    async def watch(self, show: Show, room: str, offer: Offer, client: str = "",
                    reader: str | None = None) -> tuple[ViewerSession, str]:
        """Answer an admitted viewer's offer. The viewer counts (figures, caps) once ICE and DTLS
        are done; until then it holds a slot, for at most [ice] connect_timeout_s. On a node that
        is not the show's origin, the show is pulled from the origin first (once per node).
        `EDGE_ROOM` is another node's pull: no figures, no cap."""
        show_id = show.id
        if room != EDGE_ROOM:
            self._check_capacity(show_id)
            await self._check_node_capacity()
        if show.state is ShowState.ENDED:
            raise ApiError(409, "show_ended", f"show {show_id!r} has ended")
        live = await self._live_show(show_id)
        if self._edges is not None and room != EDGE_ROOM and not self._host_here(show_id):
            link = self._edges.ensure(live, self._close_idle, self._pulling)
            if live.publisher is None and await self._published_elsewhere(show_id):  # answer with its codec
                try:
                    await asyncio.wait_for(asyncio.shield(link.ready.wait()), EDGE_WAIT_S)
                except TimeoutError:
                    pass
        self.pending.open(client)
        viewer = ViewerSession(show_id, room, self.settings.media.udp_gso, live.remove_viewer,
                               self._on_viewer_channel)
        viewer.reader = reader
        live.joining[viewer.id] = viewer  # joins in progress hold their place: a burst cannot overshoot
        try:
            answer = await viewer.answer(offer, live.codec_choices(self.settings.media.video_codecs),
                                         live.keyframes.request)
            if self.running.get(show_id) is not live:  # ended meanwhile
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
        asyncio.ensure_future(self._viewer_sending(live, viewer))

    async def _viewer_sending(self, live: LiveShow, viewer: ViewerSession) -> None:
        """The viewer joins the show's readers once its tracks send (aiortc starts its senders
        right after DTLS)."""
        try:
            await asyncio.wait_for(viewer.sending.wait(), SENDING_WAIT_S)
        except TimeoutError:
            log.warning("show %s: viewer %s connected but its tracks did not start", live.show_id, viewer.id)
        if (live.joining.pop(viewer.id, None) is None or viewer.closed or not viewer.sending.is_set()
                or self.running.get(live.show_id) is not live):
            await viewer.close()
            return
        live.add_viewer(viewer)
        self._unsaved.add(live.show_id)

    def _viewer_failed(self, live: LiveShow, viewer: ViewerSession, client: str, reason: str) -> None:
        self.pending.close(client)
        live.joining.pop(viewer.id, None)
        if not viewer.closed:
            log.info("show %s: viewer %s in %s did not connect: %s", live.show_id, viewer.id, viewer.room, reason,
                     extra={"show": live.show_id, "room": viewer.room, "session": viewer.id})
        asyncio.ensure_future(viewer.close())

    def _check_capacity(self, show_id: str) -> None:
        limits = self.settings.limits
        live = self.running.get(show_id)
        if limits.max_viewers_per_show and (live.audience if live else 0) >= limits.max_viewers_per_show:
            raise ApiError(503, "show_full", f"show {show_id!r} has its maximum of {limits.max_viewers_per_show}"
                           " viewers; try again shortly", {"Retry-After": "10"})
        total = sum(s.audience for s in self.running.values())
        if limits.max_viewers_per_process and total >= limits.max_viewers_per_process:
            raise ApiError(503, "server_full", "this server is at its viewer capacity; try again shortly",
                           {"Retry-After": "10"})

    async def _check_node_capacity(self) -> None:
        """A full node of a cluster sends the viewer to the least loaded node with room."""
        nodes = self._nodes
        if nodes is None or not nodes.max_viewers:
            return
        audience = sum(live.audience for live in self.running.values())
        if audience < nodes.max_viewers:
            return
        elsewhere = await nodes.least_loaded()
        if elsewhere is None:
            raise ApiError(503, "server_full", "every node is at its viewer capacity; try again shortly",
                           {"Retry-After": "10"})
        raise NodeFull(elsewhere.url)

    async def stop_watching(self, show_id: str, room: str, session_id: str) -> None:
        live = self.running.get(show_id)
        viewer = (live.viewers.get(session_id) or live.joining.get(session_id)) if live else None
        if viewer is None or viewer.room != room:
            raise ApiError(404, "session_not_found", "no such viewing session")
        if live.joining.pop(session_id, None) is not None:
            await viewer.close()  # its handshake watch frees the address's slot
        else:
            live.remove_viewer(viewer)

    # -- what runs here --------------------------------------------------------------------
    def describe(self, show_id: str) -> dict:
        """The show's publisher, tracks and keyframe requests here (no publisher if not running)."""
        live = self.running.get(show_id)
        return live.describe() if live else {"publisher": None, "reconnecting_until": None}

    def host_on_air(self, show_id: str) -> bool:
        live = self.running.get(show_id)
        return live is not None and live.publisher is not None

    async def viewers_now(self, show_id: str) -> dict[str, int]:
        """Viewers connected now, per room (rooms with none may be missing); a cluster's as of
        the nodes' last saves."""
        if self._edges is not None:
            return await self._figures.load_live_viewers(show_id)
        live = self.running.get(show_id)
        return {room: f.viewers for room, f in live.figures.rooms.items()} if live else {}

    def totals(self) -> tuple[int, int]:
        """(shows whose host is on air here, viewers connected here; other nodes' pulls are not)."""
        shows = self.running.values()
        viewers = sum(1 for live in shows for v in live.viewers.values() if v.room != EDGE_ROOM)
        return sum(1 for live in shows if live.publisher is not None and not live.publisher.upstream), viewers

    # -- figures ---------------------------------------------------------------------------
    async def figures(self, show_id: str) -> ShowFigures:
        if self._edges is not None:  # the cluster's, as of the nodes' last saves
            figures = ShowFigures(await self._figures.load_room_figures(show_id))
            for room, viewers in (await self._figures.load_live_viewers(show_id)).items():
                figures.room(room).viewers = viewers
            return figures
        live = self.running.get(show_id)
        if live is not None:
            return live.figures
        return ShowFigures(await self._figures.load_room_figures(show_id))

    def figures_saved_at(self, show_id: str) -> float | None:
        """When this show's live figures were last saved (None: not while it ran here)."""
        return self._saved_at.get(show_id)

    async def save_figures(self) -> None:
        """Save the figures of every show whose figures changed since the last time; in a
        cluster, also every running show's viewers now (they expire unless saved again)."""
        if self._edges is not None:
            ttl = 3 * self.settings.media.figures_save_interval_s
            cluster = {}
            for show_id, live in list(self.running.items()):
                await self._figures.save_live_viewers(
                    show_id, {room: f.viewers for room, f in live.figures.rooms.items()}, ttl)
                cluster[show_id] = await self._figures.load_live_viewers(show_id)
            self.cluster_viewers = cluster  # (read by /metrics, which cannot wait on a store)
        for show_id in list(self._unsaved):
            live = self.running.get(show_id)
            if live is not None:
                await self._save_show_figures(show_id, live)
            else:
                self._unsaved.discard(show_id)

    async def run_figures_saver(self) -> None:
        """Every [media] figures_save_interval_s: a crash loses at most that much of them."""
        while True:
            await asyncio.sleep(self.settings.media.figures_save_interval_s)
            try:
                await self.save_figures()
            except Exception:
                log.exception("saving room figures failed")

    async def _save_show_figures(self, show_id: str, live: LiveShow) -> None:
        self._unsaved.discard(show_id)
        rooms = {room: RoomFigures(0, f.peak_viewers, f.total_sessions) for room, f in live.figures.rooms.items()}
        try:
            if rooms:
                await self._figures.save_room_figures(show_id, rooms)
        except BaseException:
            self._unsaved.add(show_id)  # tried again next time
            raise
        self._saved_at[show_id] = time.time()

    async def stats(self, show_id: str) -> dict:
        show = await self._catalog.show(show_id)
        figures = await self.figures(show_id)
        rooms = {HQ_ROOM: figures.room(HQ_ROOM).as_dict()}
        for mirror in await self._catalog.mirrors(show_id):
            rooms[mirror.distributor] = figures.rooms.get(mirror.distributor, RoomFigures()).as_dict()
        live = self.running.get(show_id)
        dropped = sum(v.dropped for v in live.viewers.values()) if live else 0
        return {"show": show.id, "state": show.state.value, "rooms": rooms, "dropped_frames": dropped,
                "figures_saved_at": self.figures_saved_at(show_id)}
