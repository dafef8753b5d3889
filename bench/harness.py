"""What the benches share: a run with a hard stop and the server's CPU apart from the load's;
CPU and memory readings; the relay under test (a `relay serve` subprocess, on the embedded
store or a Redis it starts) and its admin API; worker processes driven over a pipe, among
them the synthetic host and WHEP viewers; the fan-out step (viewers join, warm up, are
measured, leave); printing and writing the results.

Servers are started by relay_testkit.process, as the tests start theirs. Linux only (CPU
affinity, /proc).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing as mp
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Awaitable, Callable, Self, TypeVar

from relay_testkit.process import RedisProcess, RelayProcess, ServerError, ServerProcess

SHOW_ID = "bench"
MIRRORS = ("d1", "d2")
FPS = 30
REALTIME_FPS = 29.0
LATENCY_SAMPLE = 10  # every 10th viewer keeps its frames' arrival times, for the latency figures
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A window is flagged when processes outside the bench used more than this (% of a core), when a
# CPU was this busy, or when the hypervisor took this much from the machine's CPUs (steal).
OTHER_CPU_WARN_PCT = 15.0
BUSY_CPU_WARN_PCT = 90.0
STOLEN_WARN_PCT = 5.0


class BenchError(RuntimeError):
    """The bench cannot go on (a server did not start, a worker did not answer...)."""


class BenchTimeout(BenchError):
    """--max-seconds ran out."""


# -- the run ----------------------------------------------------------------------------------

class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def cap(self, seconds: float) -> float:
        """`seconds`, or what is left of the run if that is less; raises when nothing is left."""
        left = self.remaining()
        if left <= 0:
            raise BenchTimeout("--max-seconds reached")
        return min(seconds, left)

    def sleep(self, seconds: float) -> None:
        time.sleep(self.cap(seconds))


@dataclass
class RunSetup:
    """What every bench settles first."""

    deadline: Deadline
    server_cpus: set[int]
    client_cpus: set[int]
    machine: dict[str, Any]
    command: str


def begin_run(max_seconds: float, module: str, argv: list[str] | None, load_name: str) -> RunSetup:
    """A hard stop after `max_seconds` (+30 s), the server's CPU apart from the load generator's
    (`load_name` says what the load is), this process moved onto the load's CPUs, and the machine.
    `module` is the bench's (bench.fanout...), for the command line recorded with the results."""
    deadline = Deadline(max_seconds)

    def on_alarm(signum: int, frame: Any) -> None:
        raise BenchTimeout("--max-seconds reached (hard stop)")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(max_seconds) + 30)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        server_cpus, client_cpus = {cpus[0]}, set(cpus[1:])
    else:
        server_cpus = client_cpus = set(cpus)
        print(f"warning: one CPU only; the server and {load_name} share it, figures are not per core", flush=True)
    os.sched_setaffinity(0, client_cpus)
    command = " ".join(["python", "-m", module] + (sys.argv[1:] if argv is None else argv))
    return RunSetup(deadline, server_cpus, client_cpus, machine_info(), command)


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("aiortc", "aioice", "av", "aiohttp", "uvloop"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = "?"
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release(), **versions}


def raise_fd_limit() -> None:
    """Thousands of sockets on each side: lift the soft limit to the hard one (inherited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))


def stopped_early(results: dict[str, Any], exc: BaseException) -> int:
    """Record why a run stopped before its end; returns the exit status for it (3)."""
    reason = f"{type(exc).__name__}: {exc}"
    print(f"\nbench stopped early: {reason}", flush=True)
    results["stopped_early"] = reason
    return 3


def report_log_problems(server: ServerProcess, label: str, indent: str = "") -> list[str]:
    """The warnings and errors in a server's log, printed under `label`."""
    problems = server.problems()
    if problems:
        print(f"{indent}{label} log, warnings and errors:", flush=True)
        for line in problems:
            print(f"{indent}    {line}", flush=True)
    return problems


def end_run(results: dict[str, Any], json_path: Path | None, workdir: Path, keep: bool) -> None:
    """Write the results (with --json) and keep the work directory (logs) or remove it."""
    if json_path:
        json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {json_path}", flush=True)
    if keep:
        print(f"logs kept in {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def args_record(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options as JSON-friendly values."""
    return {k: sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()}


# -- CPU and memory ---------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all threads (psutil if installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def machine_cpu_seconds() -> dict[str, tuple[float, float]]:
    """(busy, stolen) CPU seconds from /proc/stat, for the machine ("cpu") and each CPU ("cpu0"...).
    Busy: user, nice, system, irq, softirq (a process's own time includes the interrupts it ran
    under); stolen: time the hypervisor gave the CPU to something else while it had work."""
    times = {}
    with open("/proc/stat") as fh:
        for line in fh:
            if not line.startswith("cpu"):
                break
            name, *fields = line.split()
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
            times[name] = ((user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK)
    return times


@dataclass
class MachineWindow:
    """What the whole machine did over a window, beside the bench's own processes."""

    other_cpu_pct: float  # processes other than the server's and the load's, % of a core
    cpu_busy_pct: dict[str, float]  # each CPU, % busy
    stolen_pct: float  # taken by the hypervisor, % of a core, all CPUs

    @classmethod
    def between(cls, before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], wall: float,
                ours_pct: float) -> MachineWindow:
        pct = {name: (100 * (after[name][0] - busy) / wall, 100 * (after[name][1] - stolen) / wall)
               for name, (busy, stolen) in before.items()}
        return cls(pct["cpu"][0] - ours_pct, {name: busy for name, (busy, _) in pct.items() if name != "cpu"},
                   pct["cpu"][1])

    @property
    def disturbed(self) -> bool:
        """Something outside the bench took CPU in the window (a busy CPU alone is the bench's own)."""
        return self.other_cpu_pct > OTHER_CPU_WARN_PCT or self.stolen_pct > STOLEN_WARN_PCT

    def notes(self) -> list[str]:
        """What may have disturbed the window."""
        notes = [f"{name} was {busy:.0f}% busy" for name, busy in self.cpu_busy_pct.items()
                 if busy >= BUSY_CPU_WARN_PCT]
        if self.other_cpu_pct > OTHER_CPU_WARN_PCT:
            notes.append(f"other processes used {self.other_cpu_pct:.0f}% of a core")
        if self.stolen_pct > STOLEN_WARN_PCT:
            notes.append(f"the hypervisor took {self.stolen_pct:.0f}% of a core (steal)")
        return notes


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+)", status)
    return int(match.group(1)) / 1024 if match else math.nan


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class CpuSampler:
    """Samples the CPU seconds of some processes every `interval` s in a thread, so that CPU can be
    read over a window known only afterwards (from the first request sent to the last answer)."""

    def __init__(self, groups: dict[str, list[int]], interval: float = 0.02) -> None:
        self.groups = groups
        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        self.samples.append((time.time(), {name: sum(cpu_seconds(pid) for pid in pids)
                                           for name, pids in self.groups.items()}))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def share(self, name: str, t0: float, t1: float) -> tuple[float, float]:
        """(CPU seconds, CPU seconds / wall seconds) of group `name` between the last sample at or
        before t0 and the first at or after t1."""
        before = [s for s in self.samples if s[0] <= t0] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= t1] or self.samples[-1:]
        (a_t, a), (b_t, b) = before[-1], after[0]
        cpu = b[name] - a[name]
        return cpu, cpu / max(1e-6, b_t - a_t)


def node_cpu_pct(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Each server process's CPU between two snapshots, % of one core."""
    wall = after.t - before.t
    return {name: 100 * (after.node_cpu[name] - cpu) / wall for name, cpu in before.node_cpu.items()}


# -- HTTP -------------------------------------------------------------------------------------

def http_json(method: str, url: str, body: dict | None = None, token: str | None = None,
              timeout: float = 10.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as res:
            raw = res.read()
            status = res.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


# -- the relay under test ---------------------------------------------------------------------

class RelayUnderTest:
    """A `relay serve` subprocess a bench drives (on the embedded store or a Redis it starts),
    with its admin API and its metrics; no cap on viewers (the bench finds where the process
    stops keeping up). Started again, it keeps its port and data dir."""

    def __init__(self, workdir: Path, cpus: set[int], deadline: Deadline, *, name: str = "relay",
                 store: str = "embedded", env: dict[str, str] | None = None, admin_key: str | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.admin_key = admin_key or secrets.token_urlsafe(24)
        self.workdir = workdir
        self.data = workdir / f"{name}-data"
        self.deadline = deadline
        self.store = store
        self.redis: RedisProcess | None = None
        self.server = RelayProcess(self.data, self.admin_key, name=name, cpus=cpus, log_path=workdir / f"{name}.log",
                                   env={"RELAY_LIMITS_MAX_VIEWERS_PER_PROCESS": "0", **(env or {})}, args=args)

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def base(self) -> str:
        return self.server.base

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> Self:
        try:
            if self.store == "redis" and self.redis is None:
                if shutil.which("redis-server") is None:
                    raise BenchError("--store redis needs redis-server (apt-get install redis-server)")
                self.redis = RedisProcess(self.workdir / "redis", self.server.cpus)
                self.redis.start(self.deadline.cap(30))
                self.server.env["RELAY_STORE_REDIS_URL"] = self.redis.url
            self.server.start(self.deadline.cap(30))
        except ServerError as exc:
            raise BenchError(str(exc)) from None
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.server.kill()

    def stop(self) -> None:
        self.server.stop(timeout=10)
        if self.redis is not None:
            self.redis.stop(timeout=10)

    def api(self, method: str, path: str, body: dict | None = None, expect: int | None = 200,
            base: str | None = None) -> Any:
        """The admin API at this server, or at `base` (another node of its cluster, same admin key)."""
        status, reply = http_json(method, f"{base or self.base}{path}", body, self.admin_key,
                                  timeout=self.deadline.cap(30))
        if expect is not None and status != expect:
            raise BenchError(f"{method} {path} answered {status}: {reply}")
        return reply

    def metric(self, name: str, labels: str = "") -> float | None:
        """One sample of /metrics (`labels` as written there, e.g. 'kind="video"'); None if absent."""
        text = http_json("GET", f"{self.base}/metrics", None, self.admin_key)[1]
        selector = f"{{{re.escape(labels)}}}" if labels else ""
        match = re.search(rf"^{name}{selector} (\S+)$", text, re.M)
        return float(match.group(1)) if match else None

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + self.deadline.cap(timeout)
        while not predicate():
            if time.monotonic() > end:
                raise BenchError(f"timed out waiting for {what}")
            time.sleep(0.2)  # polling the relay's HTTP API, with a deadline

    def create_show(self, title: str, show_id: str, mirrors: tuple[str, ...] = ()) -> dict[str, Any]:
        """A show with mirror rooms for `mirrors` (distributor ids); returns it with its stream key."""
        show = self.api("POST", "/api/shows", {"title": title, "id": show_id}, expect=201)
        for distributor in mirrors:
            self.api("POST", f"/api/shows/{show_id}/mirrors", {"distributor": distributor,
                                                               "name": distributor.upper()}, expect=201)
        return show


# -- worker processes -------------------------------------------------------------------------

def serve_commands(conn: Connection, handle: Callable[[str, tuple], Awaitable[Any]]) -> None:
    """Child side: run `handle(command, args)` for each command from `conn` in a uvloop loop,
    replying with whatever it returns, until "exit" or the parent goes away.

    uvloop's add_reader makes the pipe non-blocking, and a message bigger than the socket
    buffer would then fail half-read; the pipe is switched back to blocking around each
    recv and send.
    """
    import asyncio

    import uvloop

    fd = conn.fileno()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple] = asyncio.Queue()

        def readable() -> None:
            os.set_blocking(fd, True)
            try:
                inbox.put_nowait(conn.recv())
            except (EOFError, OSError):
                loop.remove_reader(fd)
                inbox.put_nowait(("exit",))

        loop.add_reader(fd, readable)
        while True:
            command, *args = await inbox.get()
            try:
                reply = await handle(command, tuple(args))
            except Exception as exc:  # report it to the parent rather than dying silently
                reply = ("error", f"{command}: {type(exc).__name__}: {exc}")
            if reply is not None:
                os.set_blocking(fd, True)
                try:
                    conn.send(reply)
                except OSError:
                    return
            if command == "exit":
                return

    uvloop.run(main())


class Worker:
    """Parent side of a worker process."""

    def __init__(self, ctx: Any, name: str, target: Callable[..., None], args: tuple) -> None:
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(*args, child), name=name, daemon=True)
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def send(self, *message: Any) -> None:
        self.conn.send(message)

    def expect(self, kind: str, timeout: float) -> Any:
        """The next reply, which must be `kind`; BenchError if it is not, or none comes in time,
        or the worker died."""
        try:
            if not self.conn.poll(timeout):
                raise BenchError(f"{self.name} did not answer {kind!r} within {timeout:.0f}s")
            reply = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.proc.join(1)
            raise BenchError(f"{self.name} died ({type(exc).__name__}; exit code {self.proc.exitcode})") from None
        if reply[0] == "error":
            raise BenchError(f"{self.name}: {reply[1]}")
        if reply[0] != kind:
            raise BenchError(f"{self.name} answered {reply[0]!r}, expected {kind!r}")
        return reply[1]

    def call(self, command: str, reply: str, timeout: float) -> Any:
        self.send(command)
        return self.expect(reply, timeout)

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.send("exit")
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(3)
        self.conn.close()


class LoadBench:
    """A bench's state: its options, the run's deadline and CPUs, its work dir, and its worker
    processes (on the load's CPUs; closed with the bench)."""

    def __init__(self, args: argparse.Namespace, deadline: Deadline, server_cpus: set[int],
                 client_cpus: set[int], workdir: Path) -> None:
        self.args = args
        self.deadline = deadline
        self.server_cpus = server_cpus
        self.client_cpus = client_cpus
        self.workdir = workdir
        self.ctx = mp.get_context("spawn")
        self.workers: list[Worker] = []

    def spawn(self, name: str, target: Callable[..., None]) -> Worker:
        """A worker process running `target(client_cpus, conn)`."""
        worker = Worker(self.ctx, name, target, (self.client_cpus,))
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers.clear()


@dataclass
class _Viewer:
    index: int
    url: str
    client: Any
    ok: bool = False
    error: str | None = None
    ttff: float | None = None
    mark: tuple[float, int, int, int] | None = None  # (time, video frames, audio frames, bytes)
    lost_mark: int | None = None  # RTP packets lost before the window


def viewer_worker(cpus: set[int], conn: Connection) -> None:
    """A process running many WHEP viewers (decode=False) in one event loop.

    Commands: ("connect", [(index, url)], t0, stagger, timeout[, kinds[, decoding]]) -> ("connected",
    [per viewer]); ("mark",) -> ("marked", n); ("report",) -> ("report", [per viewer]); ("stop",) ->
    ("stopped", n); ("exit",). Viewers count RTP at the socket (RtpCountingClient), or with
    `decoding` = "jitter" complete frames from aiortc's jitter buffer; viewers whose index is
    in `decoding` (a list) decode with PyAV instead, to show the stream is intact.
    """
    os.sched_setaffinity(0, cpus)
    import asyncio

    from bench.janus import JanusViewer, ice_address
    from relay import aiortc_hooks
    from relay_testkit.rtp_counter import RtpCountingClient, RtpTrackCounter
    from relay_testkit.whep import WhepClient

    aiortc_hooks.set_host_addresses([ice_address()])
    viewers: list[_Viewer] = []

    def counts(viewer: _Viewer) -> tuple[float, int, int, int]:
        video, audio = viewer.client.tracks["video"], viewer.client.tracks.get("audio")
        audio_frames, audio_bytes = (audio.frames, audio.bytes) if audio else (0, 0)
        return time.monotonic(), video.frames, audio_frames, video.bytes + audio_bytes

    def lost(viewer: _Viewer) -> int | None:
        tracks = [t for t in viewer.client.tracks.values() if isinstance(t, RtpTrackCounter)]
        return sum(t.lost for t in tracks) if tracks else None

    def delay_growth_ms(viewer: _Viewer) -> float | None:
        """How much later (ms) the window's last 2 s of video frames came than its first 2 s,
        against their RTP times (0: in step with the host; growing: falling behind)."""
        video = viewer.client.tracks["video"]
        delays = getattr(video, "delays", None)
        if not delays or len(delays) < 4 * FPS:
            return None
        return 1000 * (statistics.median(delays[-2 * FPS:]) - statistics.median(delays[:2 * FPS]))

    def client_for(index: int, url: str, kinds: tuple[str, ...], decoding: Any) -> Any:
        if url.startswith("janus:"):
            return JanusViewer(url, kinds, decode=decoding != "jitter" and index in decoding)
        if decoding == "jitter":
            return WhepClient(url, kinds=kinds, decode=False)
        if index in decoding:
            return WhepClient(url, kinds=kinds, decode=True)
        return RtpCountingClient(url, kinds=kinds)

    async def connect(viewer: _Viewer, start_at: float, timeout: float) -> None:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        try:
            await asyncio.wait_for(viewer.client.start(), timeout)
            left = timeout - (time.monotonic() - viewer.client.started_at)
            viewer.ttff = await viewer.client.first_frame("video", timeout=max(0.1, left))
            viewer.ok = True
        except Exception as exc:
            viewer.error = f"{type(exc).__name__}: {exc}"[:200]

    async def handle(command: str, args: tuple) -> Any:
        if command == "connect":
            assigned, t0, stagger, timeout, *rest = args
            kinds = tuple(rest[0]) if rest else ("audio", "video")
            decoding = rest[1] if len(rest) > 1 else "jitter"
            batch = [_Viewer(index, url, client_for(index, url, kinds, decoding)) for index, url in assigned]
            viewers.extend(batch)
            await asyncio.gather(*(connect(v, t0 + v.index * stagger, timeout) for v in batch))
            return ("connected", [{"index": v.index, "url": v.url, "ok": v.ok, "error": v.error, "ttff": v.ttff}
                                  for v in batch])
        if command == "mark":
            for viewer in viewers:
                viewer.mark = counts(viewer)
                viewer.lost_mark = lost(viewer)
                video = viewer.client.tracks["video"]
                if isinstance(video, RtpTrackCounter):
                    video.delays = []
                    video.arrivals = [] if viewer.index % LATENCY_SAMPLE == 0 else None
            return ("marked", len(viewers))
        if command == "report":
            report = []
            for viewer in viewers:
                now, video, audio, size = counts(viewer)
                t0, video0, audio0, size0 = viewer.mark or (now, video, audio, size)
                elapsed = max(1e-6, now - t0)
                pc = viewer.client.pc
                lost_now = lost(viewer)
                report.append({
                    "index": viewer.index, "ok": viewer.ok, "error": viewer.error,
                    "fps": (video - video0) / elapsed, "audio_fps": (audio - audio0) / elapsed,
                    "kbps": (size - size0) * 8 / elapsed / 1000,
                    "state": pc.connectionState if pc is not None else "none",
                    "lost": None if lost_now is None else lost_now - (viewer.lost_mark or 0),
                    "delay_growth_ms": delay_growth_ms(viewer),
                    "decoded": bool(getattr(viewer.client, "decode", False)),
                    "arrivals": getattr(viewer.client.tracks["video"], "arrivals", None),
                })
            return ("report", report)
        if command == "stop":
            results = await asyncio.wait_for(
                asyncio.gather(*(v.client.stop() for v in viewers), return_exceptions=True), 30)
            failed = sum(1 for r in results if isinstance(r, BaseException))
            viewers.clear()
            return ("stopped", failed)
        if command == "exit":
            return None
        return ("error", f"unknown command {command!r}")

    serve_commands(conn, handle)


def publisher_worker(cpus: set[int], whip_url: str, stream_key: str, video: list[bytes], audio: list[bytes],
                     conn: Connection) -> None:
    """A process publishing the pre-encoded host over WHIP.

    Commands: ("start",) -> ("started", None); ("stats",) -> ("stats", {...}); ("stop",) -> ("stopped", {...}).
    """
    os.sched_setaffinity(0, cpus)
    import asyncio

    from bench.janus import JanusPublisher, ice_address
    from relay import aiortc_hooks
    from relay_testkit.synthetic import host_tracks
    from relay_testkit.whip import WhipClient

    aiortc_hooks.set_host_addresses([ice_address()])
    tracks = host_tracks(video, audio, FPS)
    janus = whip_url.startswith("janus:")
    client = JanusPublisher(whip_url.removeprefix("janus:"), tracks) if janus else WhipClient(whip_url, stream_key, tracks)
    sent_at: collections.deque[tuple[int, float]] = collections.deque(maxlen=FPS * 600)  # (pts, when handed to aiortc)
    for track in tracks:
        if track.kind == "video":
            next_frame = track.recv

            async def recv(next_frame: Any = next_frame) -> Any:
                packet = await next_frame()
                sent_at.append((packet.pts, time.monotonic()))
                return packet

            track.recv = recv

    async def handle(command: str, args: tuple) -> Any:
        sent = {track.kind: track.sent for track in tracks}
        if command == "start":
            feed = await asyncio.wait_for(client.start(), 20)
            return ("started", feed if janus else None)
        if command == "stats":
            return ("stats", {"t": time.monotonic(), "sent": sent})
        if command == "sent_log":  # the video frames handed to aiortc since args[0] (monotonic)
            return ("sent_log", [entry for entry in sent_at if entry[1] >= args[0]])
        if command == "stop":
            try:
                await asyncio.wait_for(client.stop(), 10)
            except Exception:
                await client.drop()
            return ("stopped", {"sent": sent})
        if command == "exit":
            return None
        return ("error", f"unknown command {command!r}")

    serve_commands(conn, handle)


# -- the fan-out step: viewers join, warm up, are measured, leave ----------------------------

class Target:
    """A server under test: the relay, or the MediaRelay baseline."""

    name = ""

    def __init__(self, process: ServerProcess, base: str) -> None:
        self.process = process
        self.base = base

    def whep_urls(self) -> list[str]:
        raise NotImplementedError

    def cpu_pids(self) -> dict[str, int]:
        """The processes whose CPU is the server's, by name (one, or a cluster's nodes)."""
        return {self.name: self.process.pid}

    def node_of(self, url: str) -> str | None:
        """The node a viewer posting its offer to `url` lands on, when the URL says so."""
        return None

    def viewers(self) -> int:
        return int(http_json("GET", f"{self.base}/healthz")[1]["viewers"])

    def figures(self) -> dict[str, Any]:
        """{"frames_in": video frames received from the host so far, "dropped": frames dropped or None,
        and for a cluster "nodes": {node: {"viewers": n, ...}}}"""
        raise NotImplementedError

    def stop(self) -> None:
        self.process.stop(timeout=10)


class RelayTarget(Target):
    name = "relay"

    def __init__(self, relay: RelayUnderTest) -> None:
        super().__init__(relay.server, relay.base)
        self.relay = relay

    def setup(self) -> str:
        """Create the show and its mirror rooms; returns the stream key."""
        return self.relay.create_show("Fan-out bench", SHOW_ID, MIRRORS)["stream_key"]

    def whep_urls(self) -> list[str]:
        return room_urls(self.base)

    def figures(self) -> dict[str, Any]:
        stats = self.relay.api("GET", f"/api/shows/{SHOW_ID}/stats")
        video = (self.relay.api("GET", f"/api/shows/{SHOW_ID}").get("tracks") or {}).get("video") or {}
        return {"frames_in": int(video.get("frames", 0)), "dropped": int(stats["dropped_frames"])}

    def stop(self) -> None:
        self.relay.stop()


def room_urls(base: str) -> list[str]:
    """The bench show's WHEP URLs at `base`: HQ and the mirror rooms."""
    return [f"{base}/whep/{SHOW_ID}"] + [f"{base}/whep/{SHOW_ID}/{d}" for d in MIRRORS]


def origin_of(figures: dict[str, Any]) -> str | None:
    """The node of a cluster the host publishes to, from Target.figures()."""
    return next((node for node, f in figures.get("nodes", {}).items() if f.get("origin")), None)


AnyRelayTarget = TypeVar("AnyRelayTarget", bound=RelayTarget)


class MediaRelayTarget(Target):
    name = "mediarelay"

    def whep_urls(self) -> list[str]:
        return [f"{self.base}/whep/{SHOW_ID}"]

    def figures(self) -> dict[str, Any]:
        _, health = http_json("GET", f"{self.base}/healthz")
        return {"frames_in": int(health["frames_in"]["video"]), "dropped": None}


def frame_latencies_ms(host: list[tuple[int, float]], arrivals: list[tuple[int, float]]) -> list[float]:
    """Per frame a viewer got: its arrival less the time the host handed it to its sender, in ms.
    The viewer's RTP timestamps are the host's plus a constant (the server's and each sender's
    offsets), found as the one that pairs most of the first frames with a host frame sent
    0-500 ms before, the smallest delay among equals (a later frame's pairing is a larger one)."""
    if not host or not arrivals:
        return []
    sent = {pts & 0xFFFFFFFF: t for pts, t in host}
    offsets: collections.Counter[int] = collections.Counter()
    delays: dict[int, float] = {}
    for ts, arrived in arrivals[:FPS]:
        for pts, t in host:
            if 0 <= arrived - t < 0.5:
                key = (ts - pts) & 0xFFFFFFFF
                offsets[key] += 1
                delays[key] = delays.get(key, 0.0) + arrived - t
    if not offsets:
        return []
    most = max(offsets.values())
    offset = min((key for key, n in offsets.items() if n == most), key=lambda key: delays[key])
    return [1000 * (arrived - sent[key]) for ts, arrived in arrivals
            if (key := (ts - offset) & 0xFFFFFFFF) in sent]


class JanusTarget(Target):
    """Janus' VideoRoom (bench/janus.py): the host publishes to its room; viewers subscribe to
    the host's feed. Janus reports no frame counts here: ingest is seen at the viewers."""

    name = "janus"
    feed: int | None = None

    def whep_urls(self) -> list[str]:
        return [f"janus:{self.base}#{self.feed}"]

    def publish_url(self) -> str:
        return f"janus:{self.base}"

    def viewers(self) -> int:
        return 0  # (subscribers are gone once their sessions are destroyed)

    def figures(self) -> dict[str, Any]:
        return {"frames_in": 0, "dropped": None}


@dataclass
class Snapshot:
    t: float
    server_cpu: float  # all of the server's processes
    viewer_cpu: float
    host_cpu: float
    figures: dict[str, Any]
    node_cpu: dict[str, float]  # per server process (Target.cpu_pids)
    machine_cpu: dict[str, tuple[float, float]]  # machine_cpu_seconds()


@dataclass
class StepResult:
    server: str
    viewers: int
    connected: int
    window_s: float
    server_cpu_pct: float
    cpu_ms_per_viewer_s: float
    cpu_ms_per_delivered_viewer_s: float  # per viewer-second of video actually received at 30 fps
    fps_min: float
    fps_median: float
    audio_fps_median: float
    kbps_median: float
    ttff_p50: float
    ttff_p95: float
    ttff_max: float
    dropped_frames: int | None
    ingest_fps: float
    viewer_cpu_pct: float
    host_cpu_pct: float
    viewer_cores: int
    worker_processes: int
    real_time: bool
    viewer_bound: bool
    errors: list[str] = field(default_factory=list)
    # Viewers counting RTP at the socket: packets lost in the window (all of them), the largest
    # delay growth (ms) over the window, and the fps (min) of the few that decoded with PyAV.
    packets_lost: int | None = None
    delay_growth_ms_max: float | None = None
    decoded_fps_min: float | None = None
    # Host frame handed to its sender -> the frame's last packet at a viewer's socket (sampled
    # viewers), in ms: what the server (and the loopback) add.
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    # A server of several processes (a cluster's nodes): each one's CPU, % of a core; the viewers
    # each counted at the window's end (/healthz); the fps (min, median) of the viewers whose URL
    # led to it; and where the step put its viewers when not spread as usual.
    node_cpu_pct: dict[str, float] = field(default_factory=dict)
    node_viewers: dict[str, int] = field(default_factory=dict)
    node_fps: dict[str, tuple[float, float]] = field(default_factory=dict)
    placement: str = ""
    # The machine in the window: CPU of everything else (% of a core: the bench itself, Redis, and
    # whatever another user runs meanwhile), each CPU's busy %, and what the hypervisor took.
    other_cpu_pct: float = 0.0
    cpu_busy_pct: dict[str, float] = field(default_factory=dict)
    stolen_pct: float = 0.0
    disturbed: bool = False  # other processes or the hypervisor took more than the thresholds


@dataclass
class IdleResult:
    server: str
    window_s: float
    server_cpu_pct: float
    ingest_fps: float
    node_cpu_pct: dict[str, float] = field(default_factory=dict)
    other_cpu_pct: float = 0.0  # the machine in the window, as in StepResult
    cpu_busy_pct: dict[str, float] = field(default_factory=dict)
    stolen_pct: float = 0.0
    disturbed: bool = False


HEADER = ("    N  conn  srvCPU%  ms/viewer-s  fps min/med  aud fps   kbps  TTFF p50/p95 s  drops  ingest"
          "  viewerCPU%  verdict\n" + "-" * 118)


def format_row(s: StepResult) -> str:
    drops = "-" if s.dropped_frames is None else str(s.dropped_frames)
    verdict = "real time" if s.real_time else "NOT real time"
    if s.viewer_bound:
        verdict += " (viewer side >90% busy)"
    return (f"{s.viewers:5d} {s.connected:5d} {s.server_cpu_pct:8.1f} {s.cpu_ms_per_viewer_s:12.2f} "
            f"{s.fps_min:6.1f}/{s.fps_median:<5.1f} {s.audio_fps_median:7.1f} {s.kbps_median:6.0f} "
            f"{s.ttff_p50:7.2f}/{s.ttff_p95:<6.2f} {drops:>6} {s.ingest_fps:6.1f} "
            f"{s.viewer_cpu_pct + s.host_cpu_pct:8.1f}/{100 * s.viewer_cores:<3d} {verdict}")


def format_nodes(cpu_pct: dict[str, float], viewers: dict[str, int] | None = None,
                 fps: dict[str, tuple[float, float]] | None = None, origin: str | None = None,
                 placement: str = "") -> str:
    """A cluster's nodes on one line: each one's CPU, viewers and their fps (min/median)."""
    parts = []
    for node, pct in cpu_pct.items():
        part = f"{node}{' (origin)' if node == origin else ''} {pct:.1f}%"
        if viewers is not None:
            part += f" {viewers.get(node, 0)} viewers"
        if fps and node in fps:
            part += f" fps {fps[node][0]:.1f}/{fps[node][1]:.1f}"
        parts.append(part)
    return f"      nodes{f' ({placement})' if placement else ''}: " + "; ".join(parts)


class FanoutBench(LoadBench):
    """The synthetic host publishing 720p30 to a server and viewer worker processes joining it
    in steps (bench.fanout's ladder, bench.replay's part A). Reads from `args`: step_seconds,
    warmup, idle_seconds, settle, viewers_per_process, stagger_ms, connect_timeout."""

    def __init__(self, args: argparse.Namespace, deadline: Deadline, server_cpus: set[int],
                 client_cpus: set[int], workdir: Path) -> None:
        super().__init__(args, deadline, server_cpus, client_cpus, workdir)
        self.publisher: Worker | None = None
        self.targets: list[Target] = []
        self.video: list[bytes] = []
        self.audio: list[bytes] = []

    # -- setup / teardown --------------------------------------------------------------------
    def encode(self) -> None:
        from relay_testkit.synthetic import encode_pattern, encode_tone

        t = time.monotonic()
        self.video = encode_pattern(1280, 720, FPS, seconds=4, gop=60, bitrate=2_000_000)
        self.audio = encode_tone()
        kbps = sum(map(len, self.video)) * 8 / 4 / 1000
        print(f"encoded the host: {len(self.video)} video frames 1280x720@{FPS} ({kbps:.0f} kbps), "
              f"{len(self.audio)} Opus packets, in {time.monotonic() - t:.1f}s", flush=True)

    def spawn_viewer_workers(self, count: int) -> None:
        for i in range(count):
            self.spawn(f"viewers-{i}", viewer_worker)
        # a no-op round trip: returns once each worker has imported aiortc and runs its loop
        for worker in self.workers:
            worker.call("mark", "marked", self.deadline.cap(60))

    def start_relay(self, name: str = "relay", env: dict[str, str] | None = None,
                    kind: type[AnyRelayTarget] = RelayTarget) -> AnyRelayTarget:  # type: ignore[assignment]
        from bench.janus import ice_address

        env = {"RELAY_ICE_ADDRESSES": ice_address(), **(env or {})}
        relay = RelayUnderTest(self.workdir, self.server_cpus, self.deadline, name=name, env=env)
        target = kind(relay.start())
        self.targets.append(target)
        return target

    def start_janus(self) -> JanusTarget:
        from bench.janus import janus_process

        if shutil.which("janus") is None:
            raise BenchError("--baseline janus needs Debian's janus (apt-get install janus)")
        server, base = janus_process(self.workdir, self.server_cpus)
        try:
            server.start(self.deadline.cap(30))
        except ServerError as exc:
            raise BenchError(str(exc)) from None
        target = JanusTarget(server, base)
        self.targets.append(target)
        return target

    def start_mediarelay(self) -> MediaRelayTarget:
        argv = [sys.executable, "-m", "bench.mediarelay_server", "--host", "127.0.0.1", "--port", "0"]
        server = ServerProcess("mediarelay", argv, self.workdir / "mediarelay.log",
                               re.compile(r"listening on (http://\S+)"), cpus=self.server_cpus)
        try:
            base = server.start(self.deadline.cap(30)).group(1)
        except ServerError as exc:
            raise BenchError(str(exc)) from None
        target = MediaRelayTarget(server, base)
        self.targets.append(target)
        return target

    def start_publisher(self, target: Target, stream_key: str) -> None:
        janus = isinstance(target, JanusTarget)
        url = target.publish_url() if janus else f"{target.base}/whip/{SHOW_ID}"
        self.publisher = Worker(self.ctx, "host", publisher_worker,
                                (self.client_cpus, url, stream_key, self.video, self.audio))
        feed = self.publisher.call("start", "started", self.deadline.cap(60))
        if janus:  # (Janus counts no frames for us: the first step's viewers show the stream)
            target.feed = feed
            return
        # wait until video flows through the server
        end = time.monotonic() + self.deadline.cap(20)
        first = target.figures()["frames_in"]
        while time.monotonic() < end:
            time.sleep(0.5)
            if target.figures()["frames_in"] > first + FPS:
                return
        raise BenchError(f"no video reached {target.name} from the host:\n{target.process.log_tail()}")

    def stop_publisher(self) -> None:
        if self.publisher is not None:
            try:
                self.publisher.call("stop", "stopped", 15)
            except (BenchError, OSError):  # (a host that died already)
                pass
            self.publisher.close()
            self.publisher = None

    def close(self) -> None:
        self.stop_publisher()
        super().close()
        for target in self.targets:
            target.stop()

    # -- measuring ---------------------------------------------------------------------------
    def snapshot(self, target: Target, workers: list[Worker]) -> Snapshot:
        figures = target.figures()
        host = cpu_seconds(self.publisher.pid) if self.publisher else 0.0
        nodes = {name: cpu_seconds(pid) for name, pid in target.cpu_pids().items()}
        return Snapshot(time.monotonic(), sum(nodes.values()),
                        sum(cpu_seconds(w.pid) for w in workers), host, figures, nodes, machine_cpu_seconds())

    def measure_idle(self, target: Target, what: str = "host only, nobody watching") -> IdleResult:
        """The server with the host publishing and nobody watching (ingest cost)."""
        a = self.snapshot(target, [])
        self.deadline.sleep(self.args.idle_seconds)
        b = self.snapshot(target, [])
        wall = b.t - a.t
        server_pct = 100 * (b.server_cpu - a.server_cpu) / wall
        machine = MachineWindow.between(a.machine_cpu, b.machine_cpu, wall,
                                        server_pct + 100 * (b.host_cpu - a.host_cpu) / wall)
        result = IdleResult(target.name, wall, server_pct, (b.figures["frames_in"] - a.figures["frames_in"]) / wall,
                            node_cpu_pct(a, b), machine.other_cpu_pct, machine.cpu_busy_pct, machine.stolen_pct,
                            machine.disturbed)
        print(f"{target.name}: {what}: server CPU {result.server_cpu_pct:.1f}% of a core, "
              f"ingest {result.ingest_fps:.1f} fps", flush=True)
        for note in machine.notes():
            print(f"      ! {note}", flush=True)
        if len(result.node_cpu_pct) > 1:
            print(format_nodes(result.node_cpu_pct, origin=origin_of(b.figures)), flush=True)
        return result

    def run_step(self, target: Target, n: int, urls: list[str] | None = None, placement: str = "") -> StepResult:
        """N viewers join (round-robin over `urls`, the target's rooms by default), warm up, are
        measured over the window and leave."""
        args = self.args
        window = args.step_seconds - args.warmup
        used = self.workers[:max(1, min(len(self.workers), math.ceil(n / args.viewers_per_process)))]
        urls = urls or target.whep_urls()
        assigned: list[list[tuple[int, str]]] = [[] for _ in used]
        for k in range(n):
            assigned[k % len(used)].append((k, urls[k % len(urls)]))
        stagger = args.stagger_ms / 1000
        t0 = time.monotonic() + 0.2
        for worker, batch in zip(used, assigned):
            kind = getattr(args, "viewer_kind", "jitter")
            decoding = "jitter" if kind == "jitter" else list(range(getattr(args, "decode_viewers", 0)))
            worker.send("connect", batch, t0, stagger, args.connect_timeout, ("audio", "video"), decoding)
        connect_wait = self.deadline.cap(0.2 + n * stagger + args.connect_timeout + 15)
        joined = [v for worker in used for v in worker.expect("connected", connect_wait)]
        connected = [v for v in joined if v["ok"]]
        errors = sorted({v["error"] for v in joined if not v["ok"] and v["error"]})

        self.deadline.sleep(args.warmup)
        before = self.snapshot(target, used)
        for worker in used:
            worker.call("mark", "marked", self.deadline.cap(10))
        self.deadline.sleep(window)
        after = self.snapshot(target, used)
        report = [v for worker in used for v in worker.call("report", "report", self.deadline.cap(10))]
        host_log: list = []
        if self.publisher is not None:
            self.publisher.send("sent_log", before.t - 5)
            host_log = self.publisher.expect("sent_log", self.deadline.cap(10))
        latency = [ms for v in report if v.get("arrivals") for ms in frame_latencies_ms(host_log, v["arrivals"])]

        for worker in used:
            worker.send("stop")
        for worker in used:
            worker.expect("stopped", self.deadline.cap(45))
        self.wait_no_viewers(target)

        wall = after.t - before.t
        cpu = after.server_cpu - before.server_cpu
        viewer_seconds = max(1, len(connected)) * wall
        fps = [v["fps"] if v["ok"] else 0.0 for v in report]
        counted_lost = [v["lost"] for v in report if v.get("lost") is not None]
        growth = [v["delay_growth_ms"] for v in report if v.get("delay_growth_ms") is not None]
        decoded = [v["fps"] if v["ok"] else 0.0 for v in report if v.get("decoded")]
        delivered = sum(v["fps"] for v in report if v["ok"]) * wall / FPS
        lost = [v for v in report if v["ok"] and v["state"] != "connected"]
        if lost:
            errors.append(f"{len(lost)} viewer(s) not connected at the end of the window: "
                          + ", ".join(sorted({v['state'] for v in lost})))
        ttff = [v["ttff"] for v in connected]
        dropped = (after.figures["dropped"] - before.figures["dropped"]
                   if after.figures["dropped"] is not None else None)
        server_pct = 100 * cpu / wall
        nodes_pct = node_cpu_pct(before, after)
        nodes = after.figures.get("nodes", {})
        node_fps: dict[str, list[float]] = {}
        reports = {r["index"]: r for r in report}
        for v in joined:  # (the URL a viewer posted to may tell its node)
            node, r = target.node_of(v["url"]), reports.get(v["index"])
            if node is not None and r is not None:
                node_fps.setdefault(node, []).append(r["fps"] if r["ok"] else 0.0)
        viewer_pct = 100 * (after.viewer_cpu - before.viewer_cpu) / wall
        host_pct = 100 * (after.host_cpu - before.host_cpu) / wall
        machine = MachineWindow.between(before.machine_cpu, after.machine_cpu, wall, server_pct + viewer_pct + host_pct)
        result = StepResult(
            server=target.name, viewers=n, connected=len(connected), window_s=round(wall, 2),
            server_cpu_pct=server_pct,
            cpu_ms_per_viewer_s=1000 * cpu / viewer_seconds,
            cpu_ms_per_delivered_viewer_s=1000 * cpu / delivered if delivered > 0 else math.inf,
            fps_min=min(fps, default=0.0), fps_median=statistics.median(fps) if fps else 0.0,
            audio_fps_median=statistics.median([v["audio_fps"] for v in report]) if report else 0.0,
            kbps_median=statistics.median([v["kbps"] for v in report]) if report else 0.0,
            ttff_p50=percentile(ttff, 50), ttff_p95=percentile(ttff, 95), ttff_max=max(ttff, default=math.nan),
            dropped_frames=dropped,
            ingest_fps=(after.figures["frames_in"] - before.figures["frames_in"]) / wall,
            viewer_cpu_pct=viewer_pct, host_cpu_pct=host_pct, viewer_cores=len(self.client_cpus),
            worker_processes=len(used),
            real_time=len(connected) == n and not lost and min(fps, default=0.0) >= REALTIME_FPS
            and max(nodes_pct.values()) < 100.0,  # (each process on its own core)
            viewer_bound=viewer_pct + host_pct > 90 * len(self.client_cpus),
            errors=errors,
            packets_lost=sum(counted_lost) if counted_lost else None,
            delay_growth_ms_max=max(growth) if growth else None,
            decoded_fps_min=min(decoded) if decoded else None,
            latency_ms_p50=percentile(latency, 50) if latency else None,
            latency_ms_p99=percentile(latency, 99) if latency else None,
            node_cpu_pct=nodes_pct,
            node_viewers={node: f["viewers"] for node, f in nodes.items()},
            node_fps={node: (min(values), statistics.median(values)) for node, values in node_fps.items()},
            placement=placement,
            other_cpu_pct=machine.other_cpu_pct, cpu_busy_pct=machine.cpu_busy_pct, stolen_pct=machine.stolen_pct,
            disturbed=machine.disturbed,
        )
        notes = machine.notes()
        if notes:
            errors.append("in the window: " + "; ".join(notes))
        print(format_row(result), flush=True)
        if result.latency_ms_p50 is not None:
            print(f"      latency host -> viewer (last packet of each frame, {len(latency)} frames of sampled viewers): "
                  f"p50 {result.latency_ms_p50:.2f} ms, p99 {result.latency_ms_p99:.2f} ms", flush=True)
        if result.packets_lost is not None:
            print(f"      RTP at the viewers' sockets: {result.packets_lost} packets lost, delay grew by at most "
                  f"{result.delay_growth_ms_max if result.delay_growth_ms_max is not None else float('nan'):.1f} ms"
                  + (f"; {len(decoded)} decoding viewer(s) min {result.decoded_fps_min:.1f} fps" if decoded else ""),
                  flush=True)
        if len(nodes_pct) > 1:
            print(format_nodes(nodes_pct, result.node_viewers, result.node_fps, origin_of(after.figures), placement),
                  flush=True)
        for error in errors:
            print(f"      ! {error}", flush=True)
        return result

    def wait_no_viewers(self, target: Target) -> None:
        end = time.monotonic() + self.deadline.cap(20)
        while time.monotonic() < end:
            if target.viewers() == 0:
                break
            time.sleep(0.25)
        else:
            print(f"      ! {target.name} still counts {target.viewers()} viewer(s) after teardown", flush=True)
        self.deadline.sleep(self.args.settle)
