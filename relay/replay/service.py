"""Replays: start recording when a host publishes, finish when the show ends, recover after a
crash, delete old ones. Every replay state change goes through `ReplayService`."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from ..config import ReplaySettings
from ..fanout.frame_queue import FrameQueue
from ..models import Replay, ReplayState
from .mp4 import remux_to_mp4
from .playlist import Playlist
from .recorder import PLAYLIST, Recorder

log = logging.getLogger(__name__)

MP4_NAME = "show.mp4"


class ReplayStore(Protocol):
    """Where replay records are kept."""

    async def save_replay(self, replay: Replay) -> None: ...
    async def get_replay(self, show_id: str) -> Replay | None: ...
    async def list_replays(self) -> list[Replay]: ...
    async def delete_replay(self, show_id: str) -> None: ...


class ReplayService:
    """Every replay state change: recording while live, processing, ready, failed, expired."""

    def __init__(self, settings: ReplaySettings, store: ReplayStore, root: Path,
                 on_ready: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.root = root
        self.recorders: dict[str, Recorder] = {}
        self._paused: dict[str, Playlist] = {}  # replays of shows that go on after a restart
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
            recorder = Recorder(show_id, self.folder(show_id), self.settings.segment_target_s,
                                self.settings.max_queued_frames, resume=self._paused.pop(show_id, None))
            self.recorders[show_id] = recorder
            self._begins[show_id] = self._spawn(self._begin(show_id))
        recorder.new_run(codecs)
        return recorder.queue if made else None

    async def _begin(self, show_id: str) -> None:
        try:
            if await self.store.get_replay(show_id) is None:
                await self.store.save_replay(Replay(show_id, ReplayState.RECORDING, time.time()))
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
        return paused.duration if paused is not None else None

    def on_show_end(self, show_id: str) -> asyncio.Task | None:
        """The show ended: finish the playlist now and make the MP4 in the background."""
        recorder = self.recorders.pop(show_id, None)
        if recorder is None:
            paused = self._paused.pop(show_id, None)
            if paused is None:
                return None
            return self._spawn(self._finish_from_disk(show_id, paused, None))  # no host came back
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

    # -- after a restart -------------------------------------------------------------------
    async def recover(self, continuing: set[str] = frozenset()) -> None:
        """Replays left recording or processing by the last stop: those of `continuing` shows
        (waiting for their host again) go on when it publishes; the others are finished from
        what is on disk."""
        for replay in await self.store.list_replays():
            if replay.state not in (ReplayState.RECORDING, ReplayState.PROCESSING):
                continue
            path = self.folder(replay.show_id) / PLAYLIST
            playlist = Playlist.read(path) if path.exists() else Playlist()
            if replay.state is ReplayState.RECORDING and replay.show_id in continuing:
                log.info("show %s: replay continues when the host is back (%d segments so far)",
                         replay.show_id, len(playlist.segments))
                self._paused[replay.show_id] = playlist
                continue
            log.warning("show %s: finishing the replay interrupted by the last stop (%d segments)",
                        replay.show_id, len(playlist.segments))
            self._spawn(self._finish_from_disk(replay.show_id, playlist, "interrupted"))

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
        if recorder is not None:
            duration = round(recorder.playlist.duration, 3)
            discontinuities = recorder.playlist.discontinuities
            error = recorder.error
        elif paused is not None:  # waiting for its host after a restart
            duration = round(paused.duration, 3)
            discontinuities = paused.discontinuities
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
