"""Replays: start recording when a host publishes, finish when the show ends, recover after a
crash, delete old ones. Every replay state change goes through `ReplayService`.

In a cluster each node records its own part of a show (while the host publishes there); when
the show ends one node puts the parts together (fetching those on other nodes' disks), and any
node serves the replay, reading a file it does not have from the node that wrote it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from ..config import ReplaySettings
from ..fanout.frame_queue import FrameQueue
from ..models import Replay, ReplayPart, ReplayState
from .mp4 import remux_to_mp4
from .parts import ReplayCluster, combine, node_prefix, part_tag
from .playlist import Playlist
from .recorder import PLAYLIST, Recorder, part_playlist

log = logging.getLogger(__name__)

MP4_NAME = "show.mp4"
PARTS_WAIT_S = 20.0  # how long the node putting a replay together waits for other nodes' parts to end
PARTS_POLL_S = 0.5


@dataclass(frozen=True)
class ReplayFile:
    """A replay file to serve: on this node's disk, read from another node, or (the MP4, too
    big to pass through) at another node's base URL."""

    path: Path | None = None
    body: bytes | None = None
    elsewhere: str | None = None


class ReplayStore(Protocol):
    """Where replay records are kept."""

    async def save_replay(self, replay: Replay) -> None: ...
    async def get_replay(self, show_id: str) -> Replay | None: ...
    async def list_replays(self) -> list[Replay]: ...
    async def delete_replay(self, show_id: str) -> None: ...


class ReplayService:
    """Every replay state change: recording while live, processing, ready, failed, expired."""

    def __init__(self, settings: ReplaySettings, store: ReplayStore, root: Path,
                 on_ready: Callable[[str], Awaitable[None]] | None = None,
                 cluster: ReplayCluster | None = None) -> None:
        self.settings = settings
        self.store = store
        self.root = root
        self.recorders: dict[str, Recorder] = {}
        # Replays of shows that go on after a restart (with, in a cluster, the part's tag).
        self._paused: dict[str, tuple[Playlist, str | None]] = {}
        self._cluster = cluster
        self._part_numbers: dict[str, int] = {}  # in a cluster: the last part this node began, per show
        self._on_ready = on_ready
        self._tasks: set[asyncio.Task] = set()
        self._begins: dict[str, asyncio.Task] = {}  # the replay's record being made
        self._deleting: set[str] = set()

    def folder(self, show_id: str) -> Path:
        return self.root / show_id

    # -- live ------------------------------------------------------------------------------
    def on_publish(self, show_id: str, codecs: dict[str, str]) -> FrameQueue | None:
        """A host session started: the first one creates the replay and returns the queue the
        recorder reads (to attach to the show), later ones continue it."""
        if not self.settings.enabled:
            return None
        recorder = self.recorders.get(show_id)
        made = recorder is None
        if recorder is None:
            resume, tag = self._paused.pop(show_id, (None, None))
            new_part = self._cluster is not None and tag is None
            if new_part:
                tag = self._new_tag(show_id)
            recorder = Recorder(show_id, self.folder(show_id), self.settings.segment_target_s,
                                self.settings.max_queued_frames, resume=resume, tag=tag)
            self.recorders[show_id] = recorder
            self._begins[show_id] = self._spawn(self._begin(show_id, tag if new_part else None))
        recorder.new_run(codecs)
        return recorder.queue if made else None

    def _new_tag(self, show_id: str) -> str:
        """A tag for this node's next part of the show, unused on its disk."""
        prefix = node_prefix(self._cluster.node)
        used = [int(tag.rsplit("-p", 1)[1]) for path in self.folder(show_id).glob(f"part-{prefix}-p*.m3u8")
                if (tag := part_tag(path.name)) is not None and tag.rsplit("-p", 1)[0] == prefix]
        number = max(used + [self._part_numbers.get(show_id, -1)]) + 1
        self._part_numbers[show_id] = number
        return f"{prefix}-p{number}"

    async def _begin(self, show_id: str, new_part: str | None = None) -> None:
        try:
            if await self.store.get_replay(show_id) is None:
                await self.store.save_replay(Replay(show_id, ReplayState.RECORDING, time.time()))
            if new_part is not None:
                cluster = self._cluster
                await cluster.add_part(show_id, ReplayPart(new_part, cluster.node, cluster.url, time.time()))
        finally:
            self._begins.pop(show_id, None)

    async def _begun(self, show_id: str) -> None:
        """Wait until the replay's record exists, if it is being made."""
        begin = self._begins.get(show_id)
        if begin is not None:
            await asyncio.wait([begin])

    def stream_time(self, show_id: str, wall: float) -> float | None:
        """Replay stream time of a wall-clock instant, for placing events on the replay timeline."""
        recorder = self.recorders.get(show_id)
        if recorder is not None:
            return recorder.stream_time(wall)
        paused = self._paused.get(show_id)
        return paused[0].duration if paused is not None else None

    def hand_over(self, show_id: str) -> FrameQueue | None:
        """In a cluster: the show's stream comes from another node now (its host publishes
        there). This node's part of the replay ends; returns the queue the recorder read, to
        detach from the show."""
        recorder = self.recorders.pop(show_id, None)
        if recorder is None:
            return None
        self._spawn(self._end_part(show_id, recorder))
        return recorder.queue

    def on_show_end(self, show_id: str) -> asyncio.Task | None:
        """The show ended: finish the playlist now and make the MP4 in the background."""
        recorder = self.recorders.pop(show_id, None)
        paused = self._paused.pop(show_id, None)
        if self._cluster is not None:
            return self._spawn(self._end_in_cluster(show_id, recorder, paused))
        if recorder is None:
            if paused is None:
                return None
            return self._spawn(self._finish_from_disk(show_id, paused[0], None))  # no host came back
        return self._spawn(self._finish(show_id, recorder))

    def _spawn(self, job) -> asyncio.Task:
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _finish(self, show_id: str, recorder: Recorder) -> None:
        try:
            playlist = await recorder.finish()
        except Exception as exc:
            await self._update(show_id, state=ReplayState.FAILED, error=f"recording failed: {exc}")
            return
        await self._process(show_id, playlist, recorder.error)

    async def _process(self, show_id: str, playlist: Playlist, error: str | None = None) -> None:
        if not playlist.segments:
            await self._update(show_id, state=ReplayState.FAILED, ended_at=time.time(),
                         error=error or "no media was recorded")
            return
        await self._update(show_id, state=ReplayState.PROCESSING, ended_at=time.time(), error=error,
                     duration_s=round(playlist.duration, 3), discontinuities=playlist.discontinuities)
        folder = self.folder(show_id)
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, remux_to_mp4, folder, playlist, folder / MP4_NAME)
        except Exception as exc:
            log.exception("show %s: making the MP4 failed", show_id)
            await self._update(show_id, state=ReplayState.FAILED, error=f"making the MP4 failed: {exc}")
            return
        await self._update(show_id, state=ReplayState.READY, mp4_ready=True)
        if self._on_ready is not None:
            await self._on_ready(show_id)
        log.info("show %s: replay ready (%.1fs, %d discontinuities)", show_id, playlist.duration,
                 playlist.discontinuities)

    async def _update(self, show_id: str, **changes) -> None:
        await self._begun(show_id)
        replay = await self.store.get_replay(show_id)
        if replay is None or show_id in self._deleting:  # the show is being deleted
            return
        for key, value in changes.items():
            setattr(replay, key, value)
        await self.store.save_replay(replay)

    # -- a cluster's parts -----------------------------------------------------------------
    async def _end_part(self, show_id: str, recorder: Recorder) -> None:
        """This node's part ends (the stream went to another node, or the show ended)."""
        try:
            await recorder.finish()
        except Exception:
            log.exception("show %s: closing this node's part of the recording failed", show_id)
        await self._begun(show_id)
        await self._cluster.end_part(show_id, recorder.tag)

    async def _end_in_cluster(self, show_id: str, recorder: Recorder | None,
                              paused: tuple[Playlist, str | None] | None) -> None:
        """The show ended: this node's part ends, and the node that claims it first puts the
        replay together."""
        if recorder is not None:
            await self._end_part(show_id, recorder)
        elif paused is not None:  # its host did not come back here after a restart
            playlist, tag = paused
            playlist.ended = True
            if playlist.segments:
                playlist.write(self.folder(show_id) / part_playlist(tag))
            await self._cluster.end_part(show_id, tag)
        await self._begun(show_id)
        if await self.store.get_replay(show_id) is None or not await self._cluster.claim_assembly(show_id):
            return
        try:
            await self._assemble(show_id)
        except Exception as exc:
            log.exception("show %s: putting the replay's parts together failed", show_id)
            await self._update(show_id, state=ReplayState.FAILED, ended_at=time.time(),
                               error=f"putting the parts together failed: {exc}")

    async def _assemble(self, show_id: str) -> None:
        """Wait for the parts still recording on live nodes, bring the others' files here, and
        make the whole replay (playlist and MP4) from them."""
        cluster = self._cluster
        deadline = time.monotonic() + PARTS_WAIT_S
        while True:
            parts = await cluster.parts(show_id)
            recording = [p for p in parts if not p.ended and await cluster.alive(p.node)]
            if not recording or time.monotonic() > deadline:
                break
            await asyncio.sleep(PARTS_POLL_S)
        playlists, missing = [], []
        for part in parts:
            playlist = await self._bring_part(show_id, part)
            if playlist is None:
                missing.append(f"{part.tag} (node {part.node})")
            else:
                playlists.append(playlist)
        playlist = combine(playlists, ended=True)
        folder = self.folder(show_id)
        if playlist.segments:
            playlist.write(folder / PLAYLIST)
        await cluster.set_home(show_id, cluster.url)
        log.info("show %s: replay put together from %d parts here", show_id, len(playlists))
        await self._process(show_id, playlist, f"parts not reachable: {', '.join(missing)}" if missing else None)

    async def _bring_part(self, show_id: str, part: ReplayPart) -> Playlist | None:
        """A part's playlist, its files on this node's disk (already, on a shared disk)."""
        folder = self.folder(show_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / part_playlist(part.tag)
        playlist = await self._part_playlist(show_id, part, None)
        if playlist is None:
            return None
        for file in dict.fromkeys([s.init for s in playlist.segments] + [s.uri for s in playlist.segments]):
            if (folder / file).exists():
                continue
            data = await self._cluster.fetch(part.url, show_id, file)
            if data is None:
                return None
            _write_atomically(folder / file, data)
        if not path.exists():
            playlist.write(path)
        return playlist

    async def _part_playlist(self, show_id: str, part: ReplayPart, home: str | None) -> Playlist | None:
        path = self.folder(show_id) / part_playlist(part.tag)
        if path.exists():
            return Playlist.read(path)
        for url in dict.fromkeys(u for u in (part.url, home) if u and u != self._cluster.url):
            text = await self._cluster.fetch(url, show_id, path.name)
            if text is not None:
                return Playlist.parse(text.decode())
        return None

    async def _combined(self, show_id: str, ended: bool) -> Playlist:
        """The replay as the parts recorded so far make it (the parts' playlists read here or
        from their nodes)."""
        home = await self._cluster.home(show_id)
        playlists = [p for part in await self._cluster.parts(show_id)
                     if (p := await self._part_playlist(show_id, part, home)) is not None]
        return combine(playlists, ended)

    async def open_file(self, show_id: str, name: str, replay: Replay, local_only: bool = False) -> ReplayFile | None:
        """A file of the show's replay to serve (`name` is known to be a replay file's name);
        None if there is none. In a cluster the playlist is the parts' put together, and a
        file written by another node is read from it (or from the node that put the replay
        together); `local_only` answers from this node's disk alone (another node asking)."""
        path = self.folder(show_id) / name
        cluster = self._cluster
        if cluster is None or local_only:
            return ReplayFile(path=path) if path.is_file() else None
        if name == PLAYLIST:
            ended = replay.state is not ReplayState.RECORDING
            if ended and path.is_file():
                return ReplayFile(path=path)
            playlist = await self._combined(show_id, ended)
            return ReplayFile(body=playlist.render().encode()) if playlist.segments else None
        if path.is_file():
            return ReplayFile(path=path)
        home = await cluster.home(show_id)
        tag = part_tag(name)
        owner = next((p.url for p in await cluster.parts(show_id) if p.tag == tag), None) if tag else None
        for url in dict.fromkeys(u for u in (owner, home) if u and u != cluster.url):
            if name == MP4_NAME:
                return ReplayFile(elsewhere=url)
            data = await cluster.fetch(url, show_id, name)
            if data is not None:
                return ReplayFile(body=data)
        return None

    # -- after a restart -------------------------------------------------------------------
    async def recover(self, continuing: set[str] = frozenset()) -> None:
        """Replays left recording or processing by the last stop: those of `continuing` shows
        (waiting for their host again) go on when it publishes; the others are finished from
        what is on disk. In a cluster this is done for this node's own parts of replays."""
        if self._cluster is not None:
            await self._recover_parts(continuing)
            return
        for replay in await self.store.list_replays():
            if replay.state not in (ReplayState.RECORDING, ReplayState.PROCESSING):
                continue
            path = self.folder(replay.show_id) / PLAYLIST
            playlist = Playlist.read(path) if path.exists() else Playlist()
            if replay.state is ReplayState.RECORDING and replay.show_id in continuing:
                log.info("show %s: replay continues when the host is back (%d segments so far)",
                         replay.show_id, len(playlist.segments))
                self._paused[replay.show_id] = (playlist, None)
                continue
            log.warning("show %s: finishing the replay interrupted by the last stop (%d segments)",
                        replay.show_id, len(playlist.segments))
            self._spawn(self._finish_from_disk(replay.show_id, playlist, "interrupted"))

    async def _recover_parts(self, continuing: set[str]) -> None:
        """This node's parts left recording by its last stop: the last one of a show waiting for
        its host here goes on when it publishes; the others end with what is on disk (the
        show's end puts the replay together)."""
        cluster = self._cluster
        for replay in await self.store.list_replays():
            if replay.state is not ReplayState.RECORDING:
                continue
            mine = [p for p in await cluster.parts(replay.show_id) if p.node == cluster.node and not p.ended]
            for part in mine:
                path = self.folder(replay.show_id) / part_playlist(part.tag)
                playlist = Playlist.read(path) if path.exists() else Playlist()
                if part is mine[-1] and replay.show_id in continuing:
                    log.info("show %s: this node's part of the replay continues when the host is back", replay.show_id)
                    self._paused[replay.show_id] = (playlist, part.tag)
                    continue
                playlist.ended = True
                if playlist.segments:
                    playlist.write(path)
                await cluster.end_part(replay.show_id, part.tag)

    async def _finish_from_disk(self, show_id: str, playlist: Playlist, error: str | None) -> None:
        playlist.ended = True
        if playlist.segments:
            playlist.write(self.folder(show_id) / PLAYLIST)
        await self._process(show_id, playlist, error)

    # -- retention -------------------------------------------------------------------------
    async def delete(self, show_id: str) -> None:
        recorder = self.recorders.pop(show_id, None)
        self._paused.pop(show_id, None)
        self._deleting.add(show_id)
        try:
            await self._begun(show_id)
            if recorder is not None:  # its thread stops writing before the files go
                try:
                    await asyncio.wait_for(recorder.finish(), 10)
                except Exception as exc:
                    log.warning("show %s: the recording ended badly while being deleted: %s", show_id, exc)
            await self.store.delete_replay(show_id)
            if self._cluster is not None:
                await self._cluster.forget(show_id)
            shutil.rmtree(self.folder(show_id), ignore_errors=True)
        finally:
            self._deleting.discard(show_id)

    async def expire(self, now: float | None = None) -> list[str]:
        """Forget replays that ended longer ago than the retention period (never a live one)
        and delete their files; returns their show ids."""
        cutoff = (now or time.time()) - self.settings.retention_days * 86400
        expired = []
        for replay in await self.store.list_replays():
            if replay.show_id in self.recorders or replay.state is ReplayState.RECORDING:
                continue
            if replay.ended_at is not None and replay.ended_at < cutoff:
                await self.store.delete_replay(replay.show_id)
                if self._cluster is not None:
                    await self._cluster.forget(replay.show_id)
                expired.append(replay.show_id)
        for show_id in expired:
            shutil.rmtree(self.folder(show_id), ignore_errors=True)
        if expired:
            log.info("deleted replays older than %g days: %s", self.settings.retention_days, ", ".join(expired))
        return expired

    async def run_retention(self) -> None:
        while True:
            try:
                await self.expire()
            except Exception:
                log.exception("replay retention failed")
            await asyncio.sleep(self.settings.retention_check_interval_s)

    async def shutdown(self) -> None:
        for show_id in list(self.recorders):
            recorder = self.recorders.pop(show_id)
            try:
                await asyncio.wait_for(recorder.finish(), 10)
            except Exception:
                log.exception("show %s: closing the recording failed", show_id)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)

    async def record(self, show_id: str) -> Replay | None:
        """The show's replay record (None if it was never recorded)."""
        await self._begun(show_id)
        return await self.store.get_replay(show_id)

    async def describe(self, show_id: str, base_url: str) -> dict | None:
        replay = await self.record(show_id)
        if replay is None:
            return None
        duration = replay.duration_s
        discontinuities = replay.discontinuities
        error = replay.error
        recorder = self.recorders.get(show_id)
        paused = self._paused.get(show_id)
        if self._cluster is not None and replay.state is ReplayState.RECORDING:  # every node's part
            playlist = await self._combined(show_id, ended=False)
            duration, discontinuities = round(playlist.duration, 3), playlist.discontinuities
            error = recorder.error if recorder is not None else error
        elif recorder is not None:
            duration = round(recorder.playlist.duration, 3)
            discontinuities = recorder.playlist.discontinuities
            error = recorder.error
        elif paused is not None:  # waiting for its host after a restart
            duration = round(paused[0].duration, 3)
            discontinuities = paused[0].discontinuities
        return {
            "state": replay.state.value,
            "duration_s": duration,
            "hls_url": f"{base_url}/replay/{show_id}/{PLAYLIST}",
            "mp4_url": f"{base_url}/replay/{show_id}/{MP4_NAME}" if replay.mp4_ready else None,
            "started_at": replay.started_at,
            "ended_at": replay.ended_at,
            "discontinuities": discontinuities,
            "error": error,
        }


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
