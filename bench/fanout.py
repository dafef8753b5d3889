"""Fan-out load test: how many viewers one relay core serves in real time.

What it measures
    One synthetic host publishes 720p30 H.264 (~2 Mbps, pre-encoded, looped) + Opus over WHIP
    to a `relay serve` subprocess pinned to CPU 0. For each step of a ladder of viewer counts N,
    N WHEP viewers (aiortc peers that count complete encoded frames without decoding, many per
    process, pinned to the other CPUs) join the show, spread over the HQ room and two mirror
    rooms. After a warm-up, a measurement window gives:

      relay CPU %          the server process's CPU time / wall time (100 % = one core)
      ms/viewer-s          relay CPU milliseconds per viewer-second (CPU ms / (viewers x window))
      fps min / median     video frames each viewer received in the window / window
      TTFF p50 / p95       time from a viewer's WHEP POST to its first complete video frame
      drops                frames the relay dropped for slow viewers (stats API) in the window
      ingest fps           video frames the server received from the host in the window
      viewer CPU %         CPU of the viewer processes (+ host), to show they were not the limit

    A step is "real time" when every viewer connected, the slowest viewer got >= 29 fps and the
    relay used < 100 % of its core. The summary gives the largest real-time N and the
    extrapolated viewers per core, 1000 / (ms per viewer-second), from the largest step.

    `--baseline mediarelay` also runs bench/mediarelay_server.py (aiortc's MediaRelay: decode
    once, encode per viewer) through a short ladder on the same core, for the CPU ratio.

Run (from the repository root, relay installed with `pip install -e '.[test]'`):

    python bench/fanout.py --ladder 1,10,25,50,75,100 --baseline mediarelay --json fanout.json

Everything listens on 127.0.0.1 only. Every wait is bounded and the run stops by itself
(`--max-seconds`); subprocesses are killed on the way out. Linux only (CPU affinity, /proc).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import multiprocessing as mp
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
SHOW_ID = "bench"
MIRRORS = ("d1", "d2")
FPS = 30
REALTIME_FPS = 29.0
TARGET_VIEWERS_PER_CORE = 60
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The bench cannot go on (a server did not start, a worker did not answer...)."""


class BenchTimeout(BenchError):
    """--max-seconds ran out."""


# -- time and CPU accounting ------------------------------------------------------------------

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


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` to `cpus` (threads started later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


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


# -- server subprocesses ----------------------------------------------------------------------

def _child_setup(cpus: set[int]) -> None:
    """In a server child before exec: pin it (every thread it starts inherits this) and make it
    die with the bench even if the bench is killed."""
    os.sched_setaffinity(0, cpus)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ServerProcess:
    """A server subprocess whose output goes to a log file; ready once it prints its URL."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cpus: set[int], log_path: Path,
                 ready: re.Pattern[str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cpus = cpus
        self.log_path = log_path
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float) -> str:
        """Start it; returns the base URL it printed."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=HERE.parent, preexec_fn=lambda: _child_setup(self.cpus))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            match = self.ready.search(self.log_text())
            if match:
                pin(self.proc.pid, self.cpus)
                return match.group(1)
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not print its URL within {timeout:.0f}s:\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def problems(self, limit: int = 12) -> list[str]:
        """Log lines at WARNING or worse, and traceback lines."""
        found = [line for line in self.log_text().splitlines()
                 if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Error:", line)]
        return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def relay_env(admin_key: str) -> dict[str, str]:
    """Environment of a benched `relay serve`: our admin key, loopback ICE, the per-address rate
    limits off (every simulated client comes from 127.0.0.1) and no cap on viewers (the bench
    finds where the process stops keeping up)."""
    limits = ("VIEWER_REGISTRATIONS_PER_S", "CLAIMS_PER_S", "WHEP_PER_S", "WHIP_PER_S", "MAX_VIEWERS_PER_PROCESS",
              "MAX_PENDING_SESSIONS_PER_ADDRESS", "MAX_CONNECTIONS_PER_ADDRESS", "REGISTRATIONS_PER_ADDRESS_PER_SHOW")
    return {**os.environ, "RELAY_ADMIN_KEY": admin_key, "RELAY_ICE_ADDRESSES": "127.0.0.1",
            **{f"RELAY_LIMITS_{name}": "0" for name in limits}}


def start_redis(workdir: Path, cpus: set[int], deadline: "Deadline") -> tuple[ServerProcess, str]:
    """A redis-server on `cpus`, as durable as production wants it (AOF, fsync always).
    Returns the process and the URL to give the relay."""
    if shutil.which("redis-server") is None:
        raise BenchError("--store redis needs redis-server (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (workdir / "redis").mkdir(exist_ok=True)
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir / "redis"),
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    redis = ServerProcess("redis", argv, dict(os.environ), cpus, workdir / "redis.log",
                          re.compile(r"(Ready to accept connections)"))
    redis.start(deadline.cap(30))
    return redis, f"redis://127.0.0.1:{port}/0"


class RelayUnderTest:
    """A `relay serve` subprocess a bench drives (on the embedded store or a Redis it starts),
    with its admin API and its metrics. Started again, it keeps its port and data dir."""

    def __init__(self, workdir: Path, cpus: set[int], deadline: "Deadline", *, name: str = "relay",
                 store: str = "embedded", env: dict[str, str] | None = None) -> None:
        self.admin_key = secrets.token_urlsafe(24)
        self.workdir = workdir
        self.data = workdir / f"{name}-data"
        self.log = workdir / f"{name}.log"
        self.env = {**relay_env(self.admin_key), **(env or {})}
        self.cpus = cpus
        self.deadline = deadline
        self.store = store
        self.server: ServerProcess | None = None
        self.redis: ServerProcess | None = None
        self.base = ""
        self.port = 0

    @property
    def pid(self) -> int:
        if self.server is None:
            raise BenchError("the server is not running")
        return self.server.pid

    def start(self) -> "RelayUnderTest":
        if self.store == "redis" and self.redis is None:
            self.redis, self.env["RELAY_STORE_REDIS_URL"] = start_redis(self.workdir, self.cpus, self.deadline)
        argv = [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data)]
        self.server = ServerProcess("relay", argv, self.env, self.cpus, self.log,
                                    re.compile(r"listening on (http://\S+)"))
        self.base = self.server.start(self.deadline.cap(30))
        self.port = int(self.base.rsplit(":", 1)[1])
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.server is not None and self.server.proc is not None
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait(10)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.redis is not None:
            self.redis.stop()

    def api(self, method: str, path: str, body: dict | None = None, expect: int | None = 200) -> Any:
        status, reply = http_json(method, f"{self.base}{path}", body, self.admin_key, timeout=self.deadline.cap(30))
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
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + self.deadline.cap(timeout)
        while not predicate():
            if time.monotonic() > end:
                raise BenchError(f"timed out waiting for {what}")
            time.sleep(0.2)  # polling the relay's HTTP API, with a deadline


# -- worker processes (viewers, host) ---------------------------------------------------------

def serve_commands(conn: Connection, handle: Callable[[str, tuple], Any]) -> None:
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


@dataclass
class _Viewer:
    index: int
    url: str
    client: Any
    ok: bool = False
    error: str | None = None
    ttff: float | None = None
    mark: tuple[float, int, int, int] | None = None  # (time, video frames, audio frames, bytes)


def viewer_worker(cpus: set[int], conn: Connection) -> None:
    """A process running many WHEP viewers (decode=False) in one event loop.

    Commands: ("connect", [(index, url)], t0, stagger, timeout[, kinds]) -> ("connected", [per viewer]);
    ("mark",) -> ("marked", n); ("report",) -> ("report", [per viewer]); ("stop",) -> ("stopped", n);
    ("exit",).
    """
    os.sched_setaffinity(0, cpus)
    import asyncio

    from relay import aiortc_hooks
    from relay_testkit.whep import WhepClient

    aiortc_hooks.set_host_addresses(["127.0.0.1"])
    viewers: list[_Viewer] = []

    def counts(viewer: _Viewer) -> tuple[float, int, int, int]:
        video, audio = viewer.client.tracks["video"], viewer.client.tracks.get("audio")
        audio_frames, audio_bytes = (audio.frames, audio.bytes) if audio else (0, 0)
        return time.monotonic(), video.frames, audio_frames, video.bytes + audio_bytes

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
            batch = [_Viewer(index, url, WhepClient(url, kinds=kinds, decode=False)) for index, url in assigned]
            viewers.extend(batch)
            await asyncio.gather(*(connect(v, t0 + v.index * stagger, timeout) for v in batch))
            return ("connected", [{"index": v.index, "url": v.url, "ok": v.ok, "error": v.error, "ttff": v.ttff}
                                  for v in batch])
        if command == "mark":
            for viewer in viewers:
                viewer.mark = counts(viewer)
            return ("marked", len(viewers))
        if command == "report":
            report = []
            for viewer in viewers:
                now, video, audio, size = counts(viewer)
                t0, video0, audio0, size0 = viewer.mark or (now, video, audio, size)
                elapsed = max(1e-6, now - t0)
                pc = viewer.client.pc
                report.append({
                    "index": viewer.index, "ok": viewer.ok, "error": viewer.error,
                    "fps": (video - video0) / elapsed, "audio_fps": (audio - audio0) / elapsed,
                    "kbps": (size - size0) * 8 / elapsed / 1000,
                    "state": pc.connectionState if pc is not None else "none",
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

    from relay import aiortc_hooks
    from relay_testkit.synthetic import audio_track, video_track
    from relay_testkit.whip import WhipClient

    aiortc_hooks.set_host_addresses(["127.0.0.1"])
    tracks = {"audio": audio_track(audio), "video": video_track(video, FPS)}
    client = WhipClient(whip_url, stream_key, [tracks["audio"], tracks["video"]])

    async def handle(command: str, args: tuple) -> Any:
        sent = {kind: track.sent for kind, track in tracks.items()}
        if command == "start":
            await asyncio.wait_for(client.start(), 20)
            return ("started", None)
        if command == "stats":
            return ("stats", {"t": time.monotonic(), "sent": sent})
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
        if not self.conn.poll(timeout):
            raise BenchError(f"{self.name} did not answer {kind!r} within {timeout:.0f}s")
        try:
            reply = self.conn.recv()
        except EOFError:
            raise BenchError(f"{self.name} died (exit code {self.proc.exitcode})") from None
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


# -- what is being measured -------------------------------------------------------------------

class Target:
    """A server under test: the relay, or the MediaRelay baseline."""

    name = ""

    def __init__(self, server: ServerProcess, base: str) -> None:
        self.server = server
        self.base = base

    def whep_urls(self) -> list[str]:
        raise NotImplementedError

    def viewers(self) -> int:
        raise NotImplementedError

    def figures(self) -> dict[str, Any]:
        """{"frames_in": video frames received from the host so far, "dropped": frames dropped or None}"""
        raise NotImplementedError


class RelayTarget(Target):
    name = "relay"

    def __init__(self, server: ServerProcess, base: str, admin_key: str) -> None:
        super().__init__(server, base)
        self.admin_key = admin_key

    def setup(self) -> str:
        """Create the show and its mirror rooms; returns the stream key."""
        status, body = http_json("POST", f"{self.base}/api/shows", {"title": "Fan-out bench", "id": SHOW_ID},
                                 self.admin_key)
        if status != 201:
            raise BenchError(f"POST /api/shows answered {status}: {body}")
        for distributor in MIRRORS:
            status, reply = http_json("POST", f"{self.base}/api/shows/{SHOW_ID}/mirrors",
                                      {"distributor": distributor, "name": distributor.upper()}, self.admin_key)
            if status != 201:
                raise BenchError(f"POST /api/shows/{SHOW_ID}/mirrors answered {status}: {reply}")
        return body["stream_key"]

    def whep_urls(self) -> list[str]:
        return [f"{self.base}/whep/{SHOW_ID}"] + [f"{self.base}/whep/{SHOW_ID}/{d}" for d in MIRRORS]

    def viewers(self) -> int:
        return int(http_json("GET", f"{self.base}/healthz")[1]["viewers"])

    def figures(self) -> dict[str, Any]:
        _, stats = http_json("GET", f"{self.base}/api/shows/{SHOW_ID}/stats", token=self.admin_key)
        _, show = http_json("GET", f"{self.base}/api/shows/{SHOW_ID}", token=self.admin_key)
        video = (show.get("tracks") or {}).get("video") or {}
        return {"frames_in": int(video.get("frames", 0)), "dropped": int(stats["dropped_frames"])}


class MediaRelayTarget(Target):
    name = "mediarelay"

    def whep_urls(self) -> list[str]:
        return [f"{self.base}/whep/{SHOW_ID}"]

    def viewers(self) -> int:
        return int(http_json("GET", f"{self.base}/healthz")[1]["viewers"])

    def figures(self) -> dict[str, Any]:
        _, health = http_json("GET", f"{self.base}/healthz")
        return {"frames_in": int(health["frames_in"]["video"]), "dropped": None}


@dataclass
class Snapshot:
    t: float
    server_cpu: float
    viewer_cpu: float
    host_cpu: float
    figures: dict[str, Any]


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


@dataclass
class IdleResult:
    server: str
    window_s: float
    server_cpu_pct: float
    ingest_fps: float


class Bench:
    def __init__(self, args: argparse.Namespace, deadline: Deadline, server_cpus: set[int],
                 client_cpus: set[int], workdir: Path) -> None:
        self.args = args
        self.deadline = deadline
        self.server_cpus = server_cpus
        self.client_cpus = client_cpus
        self.workdir = workdir
        self.ctx = mp.get_context("spawn")
        self.workers: list[Worker] = []
        self.publisher: Worker | None = None
        self.servers: list[ServerProcess] = []
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
            self.workers.append(Worker(self.ctx, f"viewers-{i}", viewer_worker, (self.client_cpus,)))
        # a no-op round trip: returns once each worker has imported aiortc and runs its loop
        for worker in self.workers:
            worker.call("mark", "marked", self.deadline.cap(60))

    def start_server(self, target_name: str) -> Target:
        log_path = self.workdir / f"{target_name}.log"
        ready = re.compile(r"listening on (http://\S+)")
        if target_name == "relay":
            admin_key = secrets.token_urlsafe(24)
            env = relay_env(admin_key)
            argv = [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", "0",
                    "--data-dir", str(self.workdir / "data")]
            server = ServerProcess("relay", argv, env, self.server_cpus, log_path, ready)
            self.servers.append(server)
            return RelayTarget(server, server.start(self.deadline.cap(30)), admin_key)
        argv = [sys.executable, str(HERE / "mediarelay_server.py"), "--host", "127.0.0.1", "--port", "0"]
        server = ServerProcess("mediarelay", argv, dict(os.environ), self.server_cpus, log_path, ready)
        self.servers.append(server)
        return MediaRelayTarget(server, server.start(self.deadline.cap(30)))

    def start_publisher(self, target: Target, stream_key: str) -> None:
        url = f"{target.base}/whip/{SHOW_ID}"
        self.publisher = Worker(self.ctx, "host", publisher_worker,
                                (self.client_cpus, url, stream_key, self.video, self.audio))
        self.publisher.call("start", "started", self.deadline.cap(60))
        # wait until video flows through the server
        end = time.monotonic() + self.deadline.cap(20)
        first = target.figures()["frames_in"]
        while time.monotonic() < end:
            time.sleep(0.5)
            if target.figures()["frames_in"] > first + FPS:
                return
        raise BenchError(f"no video reached {target.name} from the host:\n{target.server.log_tail()}")

    def stop_publisher(self) -> None:
        if self.publisher is not None:
            try:
                self.publisher.call("stop", "stopped", 15)
            except BenchError:
                pass
            self.publisher.close()
            self.publisher = None

    def close(self) -> None:
        self.stop_publisher()
        for worker in self.workers:
            worker.close()
        self.workers.clear()
        for server in self.servers:
            server.stop()

    # -- measuring ---------------------------------------------------------------------------
    def snapshot(self, target: Target, workers: list[Worker]) -> Snapshot:
        figures = target.figures()
        host = cpu_seconds(self.publisher.pid) if self.publisher else 0.0
        return Snapshot(time.monotonic(), cpu_seconds(target.server.pid),
                        sum(cpu_seconds(w.pid) for w in workers), host, figures)

    def measure_idle(self, target: Target) -> IdleResult:
        """The server with the host publishing and nobody watching (ingest cost)."""
        a = self.snapshot(target, [])
        self.deadline.sleep(self.args.idle_seconds)
        b = self.snapshot(target, [])
        wall = b.t - a.t
        result = IdleResult(target.name, wall, 100 * (b.server_cpu - a.server_cpu) / wall,
                            (b.figures["frames_in"] - a.figures["frames_in"]) / wall)
        print(f"{target.name}: host only, nobody watching: server CPU {result.server_cpu_pct:.1f}% of a core, "
              f"ingest {result.ingest_fps:.1f} fps", flush=True)
        return result

    def run_step(self, target: Target, n: int) -> StepResult:
        args = self.args
        window = args.step_seconds - args.warmup
        used = self.workers[:max(1, min(len(self.workers), math.ceil(n / args.viewers_per_process)))]
        urls = target.whep_urls()
        assigned: list[list[tuple[int, str]]] = [[] for _ in used]
        for k in range(n):
            assigned[k % len(used)].append((k, urls[k % len(urls)]))
        stagger = args.stagger_ms / 1000
        t0 = time.monotonic() + 0.2
        for worker, batch in zip(used, assigned):
            worker.send("connect", batch, t0, stagger, args.connect_timeout)
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

        for worker in used:
            worker.send("stop")
        for worker in used:
            worker.expect("stopped", self.deadline.cap(45))
        self.wait_no_viewers(target)

        wall = after.t - before.t
        cpu = after.server_cpu - before.server_cpu
        viewer_seconds = max(1, len(connected)) * wall
        fps = [v["fps"] if v["ok"] else 0.0 for v in report]
        delivered = sum(v["fps"] for v in report if v["ok"]) * wall / FPS
        lost = [v for v in report if v["ok"] and v["state"] != "connected"]
        if lost:
            errors.append(f"{len(lost)} viewer(s) not connected at the end of the window: "
                          + ", ".join(sorted({v['state'] for v in lost})))
        ttff = [v["ttff"] for v in connected]
        dropped = (after.figures["dropped"] - before.figures["dropped"]
                   if after.figures["dropped"] is not None else None)
        server_pct = 100 * cpu / wall
        viewer_pct = 100 * (after.viewer_cpu - before.viewer_cpu) / wall
        host_pct = 100 * (after.host_cpu - before.host_cpu) / wall
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
            and server_pct < 100.0,
            viewer_bound=viewer_pct + host_pct > 90 * len(self.client_cpus),
            errors=errors,
        )
        print(format_row(result), flush=True)
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

    def run_ladder(self, target_name: str, ladder: list[int], outcome: dict[str, Any]) -> None:
        """Start the server and the host, measure idle, then each step; fills `outcome` as it goes
        (so a run stopped early still has the steps done)."""
        target = self.start_server(target_name)
        outcome.update({"idle": None, "steps": []})
        try:
            stream_key = target.setup() if isinstance(target, RelayTarget) else "none"
            self.start_publisher(target, stream_key)
            outcome["idle"] = asdict(self.measure_idle(target))
            print(HEADER, flush=True)
            for n in ladder:
                outcome["steps"].append(asdict(self.run_step(target, n)))
        finally:
            self.stop_publisher()
            target.server.stop()
            outcome["log_problems"] = report_log_problems(target.server, target.name)


# -- output -----------------------------------------------------------------------------------

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


def summarize(relay: dict[str, Any] | None, baseline: dict[str, Any] | None) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    lines: list[str] = []
    if relay and relay.get("steps") and relay.get("idle"):
        steps = relay["steps"]
        ok = [s for s in steps if s["real_time"]]
        largest = max(steps, key=lambda s: s["viewers"])
        idle_pct = relay["idle"]["server_cpu_pct"]
        per_core = 1000 / largest["cpu_ms_per_viewer_s"] if largest["cpu_ms_per_viewer_s"] > 0 else math.inf
        marginal = (largest["server_cpu_pct"] - idle_pct) * 10 / max(1, largest["connected"])
        marginal_core = (1000 - idle_pct * 10) / marginal if marginal > 0 else math.inf
        summary["relay"] = {
            "largest_real_time_viewers": max((s["viewers"] for s in ok), default=0),
            "largest_step_viewers": largest["viewers"],
            "largest_step_ms_per_viewer_s": largest["cpu_ms_per_viewer_s"],
            "viewers_per_core": per_core,
            "idle_cpu_pct": idle_pct,
            "marginal_ms_per_viewer_s": marginal,
            "viewers_per_core_marginal": marginal_core,
            "meets_target": max((s["viewers"] for s in ok), default=0) >= TARGET_VIEWERS_PER_CORE
            or (per_core >= TARGET_VIEWERS_PER_CORE and largest["real_time"]),
        }
        r = summary["relay"]
        lines.append(f"relay: largest N in real time: {r['largest_real_time_viewers']} "
                     f"(of {', '.join(str(s['viewers']) for s in steps)})")
        lines.append(f"relay: at N={largest['viewers']}: {largest['cpu_ms_per_viewer_s']:.2f} CPU ms per viewer-second"
                     f" -> ~{per_core:.0f} viewers per core (1000 / ms per viewer-second)")
        lines.append(f"relay: host only {idle_pct:.1f}% of a core; each viewer adds {marginal:.2f} ms per second"
                     f" -> ~{marginal_core:.0f} viewers per core after the ingest cost")
        lines.append(f"relay: target >= {TARGET_VIEWERS_PER_CORE} viewers in real time on one core: "
                     + ("MET" if r["meets_target"] else "NOT MET"))
        bound = [s for s in steps if s["viewer_bound"]]
        r["viewer_bound_steps"] = [s["viewers"] for s in bound]
        if bound:
            first = bound[0]
            lines.append(f"load generator: at N={first['viewers']} the viewer processes and host used "
                         f"{first['viewer_cpu_pct'] + first['host_cpu_pct']:.0f}% of their {first['viewer_cores']} "
                         f"core(s); larger steps are limited by the viewer side, not by the relay")
    if baseline and baseline.get("steps"):
        steps = baseline["steps"]
        largest = max(steps, key=lambda s: s["viewers"])
        summary["mediarelay"] = {
            "largest_real_time_viewers": max((s["viewers"] for s in steps if s["real_time"]), default=0),
            "largest_step_viewers": largest["viewers"],
            "largest_step_ms_per_viewer_s": largest["cpu_ms_per_viewer_s"],
            "largest_step_ms_per_delivered_viewer_s": largest["cpu_ms_per_delivered_viewer_s"],
        }
        m = summary["mediarelay"]
        lines.append(f"mediarelay: largest N in real time: {m['largest_real_time_viewers']}; at N={largest['viewers']}:"
                     f" {largest['cpu_ms_per_viewer_s']:.1f} CPU ms per viewer-second, "
                     f"{largest['cpu_ms_per_delivered_viewer_s']:.1f} per viewer-second delivered at {FPS} fps"
                     f" (fps min/med {largest['fps_min']:.1f}/{largest['fps_median']:.1f})")
        if "relay" in summary:
            relay_ms = summary["relay"]["largest_step_ms_per_viewer_s"]
            ratio = m["largest_step_ms_per_delivered_viewer_s"] / relay_ms if relay_ms > 0 else math.inf
            m["ratio_vs_relay"] = ratio
            lines.append(f"ratio: MediaRelay costs {ratio:.0f}x the relay's CPU per viewer-second "
                         f"({m['largest_step_ms_per_delivered_viewer_s']:.1f} ms per delivered viewer-second at "
                         f"N={largest['viewers']} vs {relay_ms:.2f} ms at N={summary['relay']['largest_step_viewers']})")
    summary["lines"] = lines
    return summary


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fan-out load test of the relay (see the module docstring).")
    ints = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
    parser.add_argument("--ladder", type=ints, default=[1, 10, 25, 50, 75, 100],
                        help="viewer counts, comma-separated (default 1,10,25,50,75,100)")
    parser.add_argument("--step-seconds", type=float, default=20.0,
                        help="per step, after all viewers joined: warm-up + measurement window (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up part of each step (default 5)")
    parser.add_argument("--baseline", choices=("none", "mediarelay"), default="none",
                        help="also measure aiortc's MediaRelay (decode once, encode per viewer)")
    parser.add_argument("--baseline-ladder", type=ints, default=[1, 2, 4],
                        help="viewer counts for the baseline (default 1,2,4)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard cap for the whole run (default 600)")
    parser.add_argument("--viewers-per-process", type=int, default=25, help="viewers per worker process (default 25)")
    parser.add_argument("--stagger-ms", type=float, default=20.0, help="between two viewers joining (default 20)")
    parser.add_argument("--connect-timeout", type=float, default=20.0,
                        help="for a viewer to get its first video frame (default 20)")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="host-only measurement (default 5)")
    parser.add_argument("--settle", type=float, default=1.0, help="pause between steps (default 1)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with the server logs")
    args = parser.parse_args(argv)
    if args.step_seconds - args.warmup < 1:
        parser.error("--step-seconds must exceed --warmup by at least 1 s (the measurement window)")
    if not args.ladder or min(args.ladder) < 1:
        parser.error("--ladder needs positive viewer counts")
    return args


@dataclass
class RunSetup:
    """What every bench settles first."""

    deadline: Deadline
    server_cpus: set[int]
    client_cpus: set[int]
    machine: dict[str, Any]
    command: str


def begin_run(max_seconds: float, script: str, argv: list[str] | None, load_name: str) -> RunSetup:
    """A hard stop after `max_seconds` (+30 s), the server's CPU apart from the load generator's
    (`load_name` says what the load is), this process moved onto the load's CPUs, and the machine."""
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
    command = "python " + " ".join([os.path.relpath(script)] + (sys.argv[1:] if argv is None else argv))
    return RunSetup(deadline, server_cpus, client_cpus, machine_info(), command)


def stopped_early(results: dict[str, Any], exc: BaseException) -> int:
    """Record why a run stopped before its end; returns the exit status for it (3)."""
    reason = f"{type(exc).__name__}: {exc}"
    print(f"\nbench stopped early: {reason}", flush=True)
    results["stopped_early"] = reason
    return 3


def report_log_problems(server: "ServerProcess", label: str, indent: str = "") -> list[str]:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = begin_run(args.max_seconds, __file__, argv, "the viewers")
    deadline, server_cpus, client_cpus, machine, command = (
        run.deadline, run.server_cpus, run.client_cpus, run.machine, run.command)
    print(f"machine: {machine['nproc']} CPU(s), {machine['cpu_model']}; Python {machine['python']}, "
          f"aiortc {machine['aiortc']}, av {machine['av']}", flush=True)
    print(f"server on CPU {sorted(server_cpus)}, host and viewers on CPU {sorted(client_cpus)}", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": command,
                               "machine": machine, "args": args_record(args)}
    bench = Bench(args, deadline, server_cpus, client_cpus, workdir)
    status = 0
    started = time.monotonic()
    try:
        bench.encode()
        ladders = args.ladder + (args.baseline_ladder if args.baseline == "mediarelay" else [])
        bench.spawn_viewer_workers(math.ceil(max(ladders) / args.viewers_per_process))
        print(f"\n== relay (python -m relay serve), {len(bench.workers)} viewer process(es), "
              f"{args.warmup:.0f}s warm-up + {args.step_seconds - args.warmup:.0f}s window per step", flush=True)
        bench.run_ladder("relay", args.ladder, results.setdefault("relay", {}))
        if args.baseline == "mediarelay":
            print("\n== baseline: aiortc MediaRelay (bench/mediarelay_server.py)", flush=True)
            bench.run_ladder("mediarelay", args.baseline_ladder, results.setdefault("mediarelay", {}))
    except (BenchError, KeyboardInterrupt) as exc:
        status = stopped_early(results, exc)
    finally:
        signal.alarm(0)
        bench.close()
        results["seconds"] = round(time.monotonic() - started, 1)
        summary = summarize(results.get("relay"), results.get("mediarelay"))
        if status:
            summary["lines"].insert(0, "the run stopped early: these figures cover only the steps done")
        results["summary"] = summary
        if summary["lines"]:
            print("\n== summary", flush=True)
            for line in summary["lines"]:
                print(line, flush=True)
        end_run(results, args.json, workdir, args.keep_logs or status)
    return status


if __name__ == "__main__":
    sys.exit(main())
