"""Edges: a node with viewers of a show whose host publishes to another node pulls the show
from that origin, once for all its rooms and viewers, and feeds its own copy of the live show."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import logging
import time
from typing import Awaitable, Callable

import aiohttp

from ..ingest.publisher import PublisherSession
from ..live import LiveShow
from ..webrtc import watch_handshake
from .origins import Origin, OriginRegistry

log = logging.getLogger(__name__)

PULL_PATH = "/cluster/pull/{show}"
POLL_S = 0.25  # how often a link looks at its show and the origin registry
RETRY_S = 1.0


@dataclass(frozen=True)
class PullOptions:
    """How this node pulls shows: the cluster's admin key, the video codecs it offers, how long
    a pull may take to connect, and how long it lasts after the last viewer left."""

    admin_key: str
    video_codecs: list[str]
    connect_timeout_s: float
    linger_s: float


class EdgeLink:
    """This node's pull of one show. It runs while the show has viewers here (and `linger_s`
    after the last one left) and its host is elsewhere: it finds the origin, pulls the show
    over a WHEP-like exchange authenticated with the admin key, attaches the incoming stream
    as the live show's publisher (as a host's would be), and pulls again from the new origin
    if the stream ends. Media stays as the host encoded it."""

    def __init__(self, live: LiveShow, origins: OriginRegistry, http: aiohttp.ClientSession, options: PullOptions,
                 on_idle: Callable[[str], Awaitable[None]], on_pulling: Callable[[str], None]) -> None:
        self.live = live
        self.ready = asyncio.Event()  # a stream from the origin is attached
        self._origins = origins
        self._http = http
        self._options = options
        self._on_idle = on_idle
        self._on_pulling = on_pulling  # (before the origin's stream is attached)
        self._task = asyncio.ensure_future(self._run())

    @property
    def done(self) -> bool:
        return self._task.done()

    def cancel(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        show_id = self.live.show_id
        idle_since: float | None = None
        try:
            while True:
                publisher = self.live.publisher
                if publisher is not None and not publisher.upstream:
                    return  # the show's host publishes here now: this node is its origin
                if self.live.audience or self._origins.holds(show_id):  # (held: the host's grace runs here)
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= self._options.linger_s:
                    log.info("show %s: no viewers here for %.0fs; no longer pulling it", show_id, self._options.linger_s)
                    await self._on_idle(show_id)
                    return
                if publisher is None:
                    origin = await self._origins.lookup(show_id)
                    if origin is not None and origin.node != self._origins.me.node:
                        try:
                            await self._pull(origin)
                            continue
                        except Exception as exc:
                            log.warning("show %s: pulling it from %s failed: %s", show_id, origin.node, exc)
                            await asyncio.sleep(RETRY_S)
                            continue
                await asyncio.sleep(POLL_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("show %s: the edge link failed", show_id)

    async def _pull(self, origin: Origin) -> None:
        live, options = self.live, self._options
        session = PublisherSession(live.show_id, live.on_frame, live.publisher_gone, upstream=True)
        try:
            offer = await session.offer(options.video_codecs)
            url = origin.url + PULL_PATH.format(show=live.show_id)
            headers = {"Authorization": f"Bearer {options.admin_key}", "Content-Type": "application/sdp"}
            timeout = aiohttp.ClientTimeout(total=options.connect_timeout_s)
            async with self._http.post(url, data=offer, headers=headers, timeout=timeout) as res:
                if res.status != 201:
                    raise RuntimeError(f"{res.status} {(await res.text())[:200]}")
                await session.accept(await res.text())
            connected = asyncio.get_running_loop().create_future()
            watch_handshake(session.pc, options.connect_timeout_s, lambda: connected.set_result(None),
                            lambda reason: connected.set_exception(RuntimeError(reason)))
            await connected
        except BaseException:
            await session.close()
            raise
        if live.publisher is not None and not live.publisher.upstream:  # the host came here meanwhile
            await session.close()
            return
        self._on_pulling(live.show_id)
        live.attach_publisher(session)
        self.ready.set()
        log.info("show %s: pulling it from %s (%s)", live.show_id, origin.node, session.codecs,
                 extra={"show": live.show_id})


class EdgeLinks:
    """The edge links of this node, one per show at most."""

    def __init__(self, origins: OriginRegistry, options: PullOptions) -> None:
        self.origins = origins
        self._options = options
        self._links: dict[str, EdgeLink] = {}
        self._http: aiohttp.ClientSession | None = None

    def ensure(self, live: LiveShow, on_idle: Callable[[str], Awaitable[None]],
               on_pulling: Callable[[str], None]) -> EdgeLink:
        """The show's link, started if it is not running. `on_idle` is called when its viewers
        have been gone for a while; `on_pulling` when a stream from the origin is about to feed
        the show."""
        link = self._links.get(live.show_id)
        if link is None or link.done or link.live is not live:
            if link is not None:
                link.cancel()
            if self._http is None:
                self._http = aiohttp.ClientSession()
            link = EdgeLink(live, self.origins, self._http, self._options, on_idle, on_pulling)
            self._links[live.show_id] = link
        return link

    def stop(self, show_id: str) -> None:
        link = self._links.pop(show_id, None)
        if link is not None and link._task is not asyncio.current_task():  # (a link may stop itself)
            link.cancel()

    async def close(self) -> None:
        for show_id in list(self._links):
            self.stop(show_id)
        if self._http is not None:
            await self._http.close()
        await self.origins.close()
