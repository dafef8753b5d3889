"""Restreaming: the targets of each show, kept with the show, pushed while its host is on air here.

Every change to a show's targets goes through `RestreamService`. Targets are stored by the show
store (so they survive a restart, and in a cluster every node reads them); the node a show's
host publishes to pushes them: it reads them when the host attaches (`on_publish`) and again
when another node changed them (`reload`), and stops when the show ends here (`stop`). That node
saves their state every STATE_SAVE_S for a while, so that any node answers with it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
import logging
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..errors import restream_not_found
from ..models import Restream
from .feed import ShowFeed
from .target import RestreamTarget, TargetOptions, TargetState
from .url import parse

log = logging.getLogger(__name__)

STOPPED_SHOWS = 1024  # shows whose stopped targets are remembered (their state since, bytes sent)
STATE_SAVE_S = 2.0  # the pushing node saves its targets' state this often, valid 3 times as long
STATE_FIELDS = ("state", "since", "bytes_sent", "last_error")


class RestreamStore(Protocol):
    """Where a show's restream targets are kept (deleted with the show)."""

    async def add_restream(self, restream: Restream, limit: int) -> None: ...  # 404 no show, 409 at limit
    async def list_restreams(self, show_id: str) -> list[Restream]: ...  # oldest first
    async def delete_restream(self, show_id: str, restream_id: str) -> bool: ...  # False: there was none
    # The pushing node's view of its targets (id -> state, since, bytes_sent, last_error), for `ttl_s`;
    # saving {} forgets it.
    async def save_restream_states(self, show_id: str, states: dict[str, dict], ttl_s: float) -> None: ...
    async def load_restream_states(self, show_id: str) -> dict[str, dict]: ...


@dataclass
class _Pushing:
    """A show whose host is on air here: its feed and its running targets."""

    feed: ShowFeed
    codecs: dict[str, str]
    request_keyframe: Callable[[], None]
    targets: dict[str, RestreamTarget] = field(default_factory=dict)
    syncing: asyncio.Task | None = None
    changed: bool = False  # its targets changed while a reload read them: that read is stale


class RestreamService:
    """The restream targets of every show; runs those of the shows whose host is on air here."""

    def __init__(self, store: RestreamStore, options: TargetOptions, max_targets_per_show: int = 10,
                 aac_bitrate: int = 128000, ssl_context: ssl.SSLContext | None = None) -> None:
        self._store = store
        self._options = options
        self._limit = max_targets_per_show
        self._aac_bitrate = aac_bitrate
        self._ssl = ssl_context
        self._pushing: dict[str, _Pushing] = {}
        self._stopped: OrderedDict[str, dict[str, RestreamTarget]] = OrderedDict()  # waiting since they stopped

    # -- the API ---------------------------------------------------------------------------
    async def add(self, show_id: str, name: str, url: str) -> dict:
        """A new target (its URL checked by the caller with url.parse); pushed at once if the
        show is on air here. 409 beyond the limit, 404 if the show went meanwhile."""
        parse(url)
        restream = Restream(show_id, secrets.token_hex(4), name, url, time.time())
        await self._store.add_restream(restream, self._limit)
        log.info("show %s: restream %s added (%s)", show_id, restream.id, parse(url).masked)
        pushing = self._pushing.get(show_id)
        if pushing is not None:
            pushing.changed = True  # (a reload reading meanwhile may not have it: it reads again)
        target = pushing.targets.get(restream.id) if pushing is not None else None  # (a reload may have it)
        if target is None:
            target = RestreamTarget(restream, self._options, self._ssl)
            if pushing is not None:
                pushing.targets[restream.id] = target
                target.start(pushing.feed, pushing.codecs, pushing.request_keyframe)
        return target.view()

    async def list(self, show_id: str) -> list[dict]:
        """The show's targets, oldest first, with their state: here, or as the node pushing them
        last saved it, else waiting (since they stopped here, or were added)."""
        pushing = self._pushing.get(show_id)
        elsewhere = await self._store.load_restream_states(show_id) if pushing is None else {}
        known = pushing.targets if pushing is not None else self._stopped.get(show_id, {})
        views = []
        for restream in await self._store.list_restreams(show_id):
            target = known.get(restream.id)
            if target is None or restream.id in elsewhere:
                target = RestreamTarget(restream, self._options)
                target.since = restream.created_at
            view = target.view()
            view.update({k: v for k, v in elsewhere.get(restream.id, {}).items() if k in STATE_FIELDS})
            views.append(view)
        return views

    async def remove(self, show_id: str, restream_id: str) -> None:
        """The target goes (404 if there is none): if it is pushing, it unpublishes first."""
        if not await self._store.delete_restream(show_id, restream_id):
            raise restream_not_found(restream_id)
        log.info("show %s: restream %s removed", show_id, restream_id)
        pushing = self._pushing.get(show_id)
        if pushing is not None:
            pushing.changed = True  # (a reload reading meanwhile may still have it: it reads again)
        self._stopped.get(show_id, {}).pop(restream_id, None)
        target = pushing.targets.pop(restream_id, None) if pushing is not None else None
        if target is not None:
            await target.stop()

    # -- the live show ---------------------------------------------------------------------
    def on_publish(self, show_id: str, codecs: dict[str, str], request_keyframe: Callable[[], None]) -> ShowFeed | None:
        """The show's host is on air here (a new host session): its targets are read and pushed.
        Returns the feed to attach to the show as a reader the first time, None after."""
        pushing = self._pushing.get(show_id)
        made = pushing is None
        if pushing is None:
            pushing = self._pushing[show_id] = _Pushing(ShowFeed(show_id, self._aac_bitrate), dict(codecs),
                                                        request_keyframe, self._stopped.pop(show_id, {}))
        elif codecs != pushing.codecs:  # another host session with other tracks: targets start again
            pushing.codecs = dict(codecs)
            for target in pushing.targets.values():
                asyncio.ensure_future(self._restart(pushing, target))
        else:  # (a target that failed on the last session's media tries this one)
            for target in pushing.targets.values():
                if target.state is TargetState.FAILED:
                    asyncio.ensure_future(self._restart(pushing, target))
        self.reload(show_id)
        return pushing.feed if made else None

    def reload(self, show_id: str) -> None:
        """Read the show's targets again (another node changed them): new ones start, removed
        ones stop. Nothing if the show is not pushed here."""
        pushing = self._pushing.get(show_id)
        if pushing is None:
            return
        if pushing.syncing is None or pushing.syncing.done():
            pushing.syncing = asyncio.ensure_future(self._sync(show_id, pushing))
        else:
            pushing.changed = True

    def stop(self, show_id: str) -> ShowFeed | None:
        """The show ended here (or its host went to another node): its targets stop. Returns the
        feed to detach from the show, if it had one."""
        pushing = self._pushing.pop(show_id, None)
        if pushing is None:
            return None
        if pushing.syncing is not None:
            pushing.syncing.cancel()
        asyncio.ensure_future(self._stop(show_id, pushing))
        return pushing.feed

    async def close(self) -> None:
        """Stop every target (the server stops)."""
        shows = list(self._pushing.items())
        self._pushing.clear()
        await asyncio.gather(*(self._stop(show_id, p) for show_id, p in shows), return_exceptions=True)

    async def run_state_saver(self) -> None:
        """Every STATE_SAVE_S: the state of the targets pushed here, for every node to answer with."""
        while True:
            await asyncio.sleep(STATE_SAVE_S)
            for show_id, pushing in list(self._pushing.items()):
                states = {target_id: {k: v for k, v in target.view().items() if k in STATE_FIELDS}
                          for target_id, target in pushing.targets.items()}
                try:
                    await self._store.save_restream_states(show_id, states, 3 * STATE_SAVE_S)
                except Exception as exc:  # (tried again next time)
                    log.warning("show %s: saving its restream targets' state failed: %s", show_id, exc)

    def pushing(self, show_id: str) -> dict[str, RestreamTarget]:
        """The targets running for the show here (for tests and figures)."""
        pushing = self._pushing.get(show_id)
        return dict(pushing.targets) if pushing is not None else {}

    # -- helpers ---------------------------------------------------------------------------
    async def _sync(self, show_id: str, pushing: _Pushing) -> None:
        while True:
            pushing.changed = False
            try:
                stored = {r.id: r for r in await self._store.list_restreams(show_id)}
            except Exception as exc:  # (the store is away: the targets running go on)
                log.warning("show %s: reading its restream targets failed: %s", show_id, exc)
                return
            if self._pushing.get(show_id) is not pushing:
                return
            if not pushing.changed:  # (else: changed while being read, read again)
                self._apply(pushing, stored)
                return

    def _apply(self, pushing: _Pushing, stored: dict[str, Restream]) -> None:
        """Targets as stored: removed ones stop, new ones start."""
        for restream_id in set(pushing.targets) - set(stored):
            asyncio.ensure_future(pushing.targets.pop(restream_id).stop())
        for restream_id, restream in stored.items():
            target = pushing.targets.get(restream_id)
            if target is None:
                target = pushing.targets[restream_id] = RestreamTarget(restream, self._options, self._ssl)
            target.start(pushing.feed, pushing.codecs, pushing.request_keyframe)  # (one running goes on)

    async def _restart(self, pushing: _Pushing, target: RestreamTarget) -> None:
        await target.stop()
        if pushing.targets.get(target.id) is target:
            target.start(pushing.feed, pushing.codecs, pushing.request_keyframe)

    async def _stop(self, show_id: str, pushing: _Pushing) -> None:
        await asyncio.gather(*(t.stop() for t in pushing.targets.values()), return_exceptions=True)
        await pushing.feed.close()
        if show_id not in self._pushing:  # (what the API says of them until they push again)
            self._stopped[show_id] = pushing.targets
            while len(self._stopped) > STOPPED_SHOWS:
                self._stopped.popitem(last=False)
            try:
                await self._store.save_restream_states(show_id, {}, 3 * STATE_SAVE_S)
            except Exception as exc:  # (it expires by itself)
                log.warning("show %s: forgetting its restream targets' state failed: %s", show_id, exc)
