"""`relay serve --workers N`: a supervisor that runs N worker processes on one HTTP port.

Each worker is a `relay serve` of its own (its own event loop, UDP ports and private HTTP
port) that binds the shared port with SO_REUSEPORT, so the kernel spreads new connections
over the workers. The supervisor serves nothing: it starts the workers, forwards what they
print, restarts one that dies, and stops them all on SIGTERM or SIGINT. A worker learns its
index from RELAY_WORKER_INDEX and stops by itself once the supervisor is gone (its stdin, a
pipe from the supervisor, reaches its end).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
import logging
import os
import re
import signal
import socket
import time
from typing import Callable

from .config import ConfigError, Settings

log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "RELAY_WORKER_INDEX"
# A worker that dies this many times within the window is not started again: it would only
# die once more (a broken install, a full disk), and a loop of restarts hides that.
MAX_DEATHS = 5
DEATH_WINDOW_S = 30.0
# A worker's own shutdown is bounded by shutdown_timeout_s; this is for the process to exit after it.
EXIT_GRACE_S = 2.0
READY_LINE = re.compile(r"listening on \S+ \(worker \d+, node (\S+), advertised as (\S+)\)")


def worker_count(text: str) -> int:
    """The number given to --workers: a count of 1 or more, or "auto" (one per usable core)."""
    if text == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"not a number of workers: {text!r} (1 or more, or auto)")
    return count


def worker_index() -> int | None:
    """This process's worker index, or None when it is not a supervisor's worker."""
    value = os.environ.get(WORKER_INDEX_ENV)
    return int(value) if value else None


def ready_line(where: str, worker: int, settings: Settings) -> str:
    """What a worker prints once it serves: the supervisor reads it (READY_LINE)."""
    return (f"relay: listening on {where} (worker {worker}, node {settings.cluster.node_id}, "
            f"advertised as {settings.cluster.advertise_url})")


def name_node(settings: Settings, worker: int | None, private_port: int | None) -> None:
    """Fills [cluster] once the ports are bound: how this node is named, and the URL other
    nodes reach it at (a worker's: its private port, as the shared one may reach any worker)."""
    cluster = settings.cluster
    if worker is None:
        cluster.node_id = cluster.node_id or f"{socket.gethostname()}-{settings.server.port}"
        cluster.advertise_url = cluster.advertise_url or settings.base_url
        return
    # Every worker reads the same settings: a configured id is made one per worker.
    cluster.node_id = f"{cluster.node_id or f'{socket.gethostname()}-{settings.server.port}'}-w{worker}"
    host = settings.server.host
    if host in ("", "0.0.0.0", "::"):  # bound on every interface: loopback reaches it
        host = "::1" if host == "::" else "127.0.0.1"
    cluster.advertise_url = f"http://{f'[{host}]' if ':' in host else host}:{private_port}"


def check_workers(settings: Settings, count: int) -> None:
    """The settings a supervisor needs, or a ConfigError."""
    if not settings.store.redis_url:
        raise ConfigError(f"--workers {count} needs --redis URL (or [store] redis_url): "
                          "the workers share shows and state through Redis")
    if settings.cluster.advertise_url:
        raise ConfigError("[cluster] advertise_url cannot be set with --workers: "
                          "each worker advertises its own private port")


def prepare_data_dir(settings: Settings) -> None:
    """Makes once what every worker would otherwise race to make: the admin key, and the
    database's schema and WAL mode (the token secret is kept in Redis, as the workers use it)."""
    from .app import resolve_admin_key  # the supervisor needs the app's files, not the app
    from .replay.replay_store import SqliteReplayStore
    from .show_store import SqliteShowStore

    admin_key, created = resolve_admin_key(settings)
    if created:
        print(f"relay: generated an admin key (stored in {settings.data_path / 'admin_key'}):\n"
              f"  {admin_key}", flush=True)
    db_path = settings.data_path / "relay.db"

    async def make_schema() -> None:  # (a store makes its schema when built; closing stops its thread)
        for store in (SqliteShowStore(db_path), SqliteReplayStore(db_path)):
            await store.close()

    asyncio.run(make_schema())


async def watch_supervisor(on_gone: Callable[[], None]) -> None:
    """Calls `on_gone` once stdin, the supervisor's pipe, ends: the supervisor died without
    stopping this worker (SIGKILL), and no worker outlives it."""
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()

    def readable() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            gone.set()

    try:
        loop.add_reader(0, readable)
    except OSError as exc:  # not a pipe (a worker started by hand): nothing to watch
        log.warning("not watching the supervisor: stdin: %s", exc)
        return
    await gone.wait()
    log.warning("the supervisor is gone; stopping")
    on_gone()


def _why(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Supervisor:
    """Keeps `count` workers running; `argv(i)` is worker i's command. `run()` returns the exit
    status: 0 once stopped by a signal, else the status of the failure that stopped it."""

    base_url: str
    count: int
    argv: Callable[[int], list[str]]
    shutdown_timeout_s: float
    backoff_s: float = 0.5  # before the first restart; doubled for each death in the window
    max_backoff_s: float = 10.0
    exit_status: int = field(default=0, init=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _ready: list[asyncio.Event] = field(default_factory=list, init=False)  # each worker served once

    def __post_init__(self) -> None:
        self._ready = [asyncio.Event() for _ in range(self.count)]

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        announce = asyncio.ensure_future(self._announce())
        try:
            await asyncio.gather(*(self._keep(i) for i in range(self.count)))
        finally:
            announce.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return self.exit_status

    def _fail(self, message: str, status: int) -> None:
        if not self._stopping.is_set():
            log.error("%s; stopping", message)
            self.exit_status = status
            self._stopping.set()

    async def _announce(self) -> None:
        for ready in self._ready:
            await ready.wait()
        print(f"relay: listening on {self.base_url} ({self.count} workers)", flush=True)

    async def _keep(self, index: int) -> None:
        """Runs worker `index` until the supervisor stops, starting it again when it dies."""
        deaths: deque[float] = deque()
        while not self._stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                *self.argv(index), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env={**os.environ, WORKER_INDEX_ENV: str(index)})
            forward = asyncio.ensure_future(self._forward(index, proc))
            exited = asyncio.ensure_future(proc.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait((exited, stopping), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not exited.done():
                await self._stop(index, proc)
            code = await exited
            await forward
            assert proc.stdin is not None
            proc.stdin.close()  # the pipe that told the worker the supervisor is there
            if self._stopping.is_set():
                return
            now = time.monotonic()
            deaths.append(now)
            while deaths[0] < now - DEATH_WINDOW_S:
                deaths.popleft()
            if code == 2 and not self._ready[index].is_set():  # a setting it rejected: said on stderr
                return self._fail(f"worker {index} exited with status 2 at start", 2)
            if len(deaths) >= MAX_DEATHS:
                return self._fail(f"worker {index} died {len(deaths)} times in {DEATH_WINDOW_S:.0f}s "
                                  f"(last: it {_why(code)})", 1)
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (len(deaths) - 1))
            log.warning("worker %d (pid %d) %s; starting it again in %.1fs", index, proc.pid, _why(code), delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                pass

    async def _forward(self, index: int, proc: asyncio.subprocess.Process) -> None:
        """Prints the worker's output lines after its index; its ready line marks it ready."""
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            ready = READY_LINE.search(line)
            if ready is not None:
                # Said in other words: "listening on" is the supervisor's, once all are ready.
                line = f"ready (pid {proc.pid}): node {ready.group(1)} at {ready.group(2)}"
                self._ready[index].set()
            print(f"[w{index}] {line}", flush=True)

    async def _stop(self, index: int, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM, then SIGKILL if the worker is still there after its shutdown time."""
        try:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), self.shutdown_timeout_s + EXIT_GRACE_S)
        except ProcessLookupError:
            pass
        except TimeoutError:
            log.error("worker %d (pid %d) did not stop in %.0fs; killing it", index, proc.pid,
                      self.shutdown_timeout_s + EXIT_GRACE_S)
            proc.kill()
