"""The runtime of one show: its publisher, its tracks and its viewers in every room."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from .config import MediaSettings
from .fanout.forwarder import Forwarder, FrameReader
from .fanout.keyframes import KeyframeRequester
from .fanout.viewer import ViewerSession
from .media import StreamSource
from .models import EDGE_ROOM, ShowFigures

log = logging.getLogger(__name__)


class LiveShow:
    """Holds one show's stream and its readers.

    The publisher feeds one `Forwarder` per track; every reader (each viewer, HQ or mirror
    room, and the recorder) reads from the same forwarders through its own `FrameQueue`. When the host drops, viewers stay connected for the grace
    period and `on_host_gone_for_good` is called when it runs out.
    """

    def __init__(
        self,
        show_id: str,
        media: MediaSettings,
        figures: ShowFigures,
        on_host_gone_for_good: Callable[[str], Awaitable[None]],
        on_host_lost: Callable[[float], None] = lambda until: None,
    ) -> None:
        self.show_id = show_id
        self.media = media
        self.figures = figures
        self.publisher: StreamSource | None = None
        self.pending: dict[str, StreamSource] = {}  # answered, ICE/DTLS not done yet
        self.viewers: dict[str, ViewerSession] = {}  # connected: they count and receive frames
        self.joining: dict[str, ViewerSession] = {}  # answered, ICE/DTLS not done yet
        self.readers: list[FrameReader] = []  # not viewers: the recorder, the restream feed
        self.reconnecting_until: float | None = None
        self.keyframes = KeyframeRequester(media.keyframe_request_interval_s, self._send_keyframe_request)
        self.forwarders = {
            kind: Forwarder(kind, media.gop_cache_max_frames, self.keyframes.request)
            for kind in ("audio", "video")
        }
        self._on_host_gone_for_good = on_host_gone_for_good
        self._on_host_lost = on_host_lost
        self._grace: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.Task | None = None

    # -- publisher -------------------------------------------------------------------------
    def on_frame(self, session: StreamSource, kind: str, data: bytes, timestamp: int) -> None:
        if session is self.publisher:
            self.forwarders[kind].push(data, timestamp)

    def attach_publisher(self, session: StreamSource) -> None:
        """Make `session` (connected) the show's publisher, taking over from any previous one."""
        previous, self.publisher = self.publisher, session
        self._cancel_grace()
        for kind, codec in session.codecs.items():
            self.forwarders[kind].start_source(codec)
        # Viewers who negotiated another codec while waiting cannot play this host: close
        # them so their players reconnect and negotiate the host's codec.
        for viewer in list(self.viewers.values()) + list(self.joining.values()):
            if any(viewer.codecs.get(k, c) != c for k, c in session.codecs.items()):
                log.info("show %s: viewer %s has %s, host sends %s; closing it", self.show_id,
                         viewer.id, viewer.codecs, session.codecs)
                if not self.remove_viewer(viewer):
                    asyncio.ensure_future(viewer.close())
        if self._watchdog is None:
            self._watchdog = asyncio.ensure_future(self._watch_publisher())
        if previous is not None:
            log.info("show %s: publisher %s takes over from %s", self.show_id, session.id, previous.id)
            asyncio.ensure_future(previous.close())

    def publisher_gone(self, session: StreamSource) -> None:
        """The host's connection ended or failed: keep the show for the grace period."""
        if session is not self.publisher:
            return
        self.publisher = None
        asyncio.ensure_future(session.close())
        self.await_host()

    def await_host(self) -> None:
        """Keep the show live without a host for the grace period, then end it."""
        grace = self.media.grace_period_s
        self.reconnecting_until = time.time() + grace
        log.info("show %s: host gone, waiting %.0fs for a reconnect", self.show_id, grace)
        self._grace = asyncio.get_running_loop().call_later(grace, self._grace_over)
        self._on_host_lost(self.reconnecting_until)

    def _grace_over(self) -> None:
        self._grace = None
        self.reconnecting_until = None
        asyncio.ensure_future(self._on_host_gone_for_good(self.show_id))

    def _cancel_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.reconnecting_until = None

    async def _watch_publisher(self) -> None:
        """A host that stops sending media without closing is treated as dropped."""
        timeout = self.media.publisher_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            session = self.publisher
            if session is not None and time.monotonic() - session.last_frame_at > timeout:
                log.info("show %s: no media from publisher %s for %.0fs", self.show_id, session.id, timeout)
                self.publisher_gone(session)

    def _send_keyframe_request(self) -> bool:
        return self.publisher is not None and self.publisher.request_keyframe()

    # -- viewers ---------------------------------------------------------------------------
    def codec_choices(self, video_codecs: list[str]) -> dict[str, list[str]]:
        """Codecs a new viewer may negotiate: the host's if it is sending, else the defaults."""
        video = self.forwarders["video"].codec
        return {"audio": ["opus"], "video": [video] if video else list(video_codecs)}

    def add_reader(self, queue: FrameReader) -> None:
        """A reader of every track (frames of both, in the order they arrive)."""
        self.readers.append(queue)
        for forwarder in self.forwarders.values():
            forwarder.add_reader(queue)

    def remove_reader(self, queue: FrameReader) -> None:
        if queue in self.readers:
            self.readers.remove(queue)
            for forwarder in self.forwarders.values():
                forwarder.remove_reader(queue)

    def add_viewer(self, viewer: ViewerSession) -> None:
        self.viewers[viewer.id] = viewer
        for kind, sender in viewer.senders.items():
            self.forwarders[kind].add_reader(sender)
        if viewer.room == EDGE_ROOM:  # another node's pull: its viewers count there
            return
        room = self.figures.room(viewer.room)
        room.viewers += 1
        room.total_sessions += 1
        room.peak_viewers = max(room.peak_viewers, room.viewers)

    def remove_viewer(self, viewer: ViewerSession) -> bool:
        if self.viewers.pop(viewer.id, None) is None:
            return False
        for kind, sender in viewer.senders.items():
            self.forwarders[kind].remove_reader(sender)
        if viewer.room != EDGE_ROOM:
            self.figures.room(viewer.room).viewers -= 1
        asyncio.ensure_future(viewer.close())
        return True

    @property
    def audience(self) -> int:
        """Viewers connected plus those still connecting: what capacity is measured in."""
        return len(self.viewers) + len(self.joining)

    def room_viewers(self, room: str) -> list[ViewerSession]:
        return [v for v in self.viewers.values() if v.room == room]

    # -- end -------------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the publisher and every viewer (the show ended or was deleted)."""
        self._cancel_grace()
        self.keyframes.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        sessions: list = list(self.viewers.values()) + list(self.joining.values())
        self.viewers.clear()
        self.joining.clear()
        if self.publisher is not None:
            sessions.append(self.publisher)
            self.publisher = None
        sessions += self.pending.values()
        self.pending.clear()
        for room in self.figures.rooms.values():
            room.viewers = 0
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    def describe(self) -> dict:
        return {
            "publisher": self.publisher.describe() if self.publisher else None,
            "reconnecting_until": self.reconnecting_until,
            "tracks": {
                kind: {
                    "codec": f.codec,
                    "frames": f.frames_in,
                    "keyframes": f.keyframes_in,
                    "gop_cache_frames": f.gop_frames,
                    "viewers": f.reader_count - len(self.readers),
                }
                for kind, f in self.forwarders.items()
                if f.codec
            },
            "keyframe_requests": {"received": self.keyframes.received, "sent": self.keyframes.sent},
        }
