"""Order-intake load test: orders per second with attribution, and how fast the settlement is built.

What it measures
    For each store (`--store embedded`, `redis` or `both`), a `relay serve` subprocess (pinned to
    CPU 0; with Redis, a durable redis-server beside it on CPU 0) gets a show with HQ and two
    mirror rooms d1 and d2 (distributor commission 0.10 and 0.12), a sharer commission of 0.02
    and four products (p2 with its own rate, 0.15). V viewers (`--viewers`) are registered with
    the admin key, spread over hq, d1 and d2, two in three with a sharer (?ref); each gets an
    attribution token (POST /api/shows/{show}/attribution with its viewer token). All of that
    happens before the clock starts.

    intake      `--orders` N orders (POST /api/shows/{show}/orders with the shop key, as a shop's
                backend would send them; the admin key if the server has no shop key), each with
                one viewer's attribution and one of four baskets, from load-generator processes
                (pinned to the other CPUs) with at most `--concurrency` in flight over kept-alive
                connections opened before the clock. A short warm-up (`--warmup` orders) comes
                first, untimed. Reported: orders/s = orders accepted (201) / time from the first
                request to the last answer, p50/p95/p99 latency of the 201s, answers by status,
                the server's CPU (% of one core; with several workers, their sum; and per
                thread: the event loop apart from the SQLite threads), redis-server's CPU, and the
                load generator's, so that one sees which side was busy; orders per CPU-second of
                the server (+ redis-server), what a core to itself would take; and the rest of
                the machine over the phase (other processes' CPU, each CPU's busy %, steal),
                flagged "disturbed" when something outside the bench took CPU.
    settlement  More orders at full speed until the show holds `--settlement-orders` (100,000),
                within `--fill-seconds`; then GET /api/shows/{show}/settlement (JSON) and
                ?format=csv, `--repeats` times each (min / median / max seconds, request sent to
                last byte read).

    Checks: every order answered 201, and its answer (room, sharer, amount, commissions) is the
    one the bench computes from the show's rates (half-up to the cent, per line); the settlement's
    rooms add up to its totals (orders, gmv, commissions), its order count is the number of
    orders accepted, its totals and each room's figures are the sums of the 201 answers, the
    sharers' orders and commission add up, the CSV agrees with the JSON, and every repeat gave
    the same answer.

    With Redis, `--workers 1,2` (the default) also runs `relay serve --workers 2 --redis URL`
    (a fresh server and Redis, intake only; the processes are then left to the kernel on all
    CPUs, the load generator included, so that the two workers can use both cores). With one
    server process, `--redis-cpu load` puts redis-server on the load generator's CPU instead of
    the server's.

    Targets (2-core machine): >= 2,000 orders/s on the embedded store, >= 5,000/s on Redis; the
    settlement of 100,000 orders built in <= 2 s (median of the repeats, JSON and CSV).

Run (from the repository root, relay installed with `pip install -e '.[bench]'`):

    python -m bench.orders --json orders.json                      # both stores, 2 to 3 minutes
    python -m bench.orders --store embedded --settlement-orders 20000   # a quick run
    python -m bench.orders --store redis --workers 2 --profile /tmp/orders-prof

`--profile DIR` records the server during the intake phase with py-spy (100 Hz, collapsed
stacks in DIR) and prints where the time goes; it costs the server some CPU, so the figures of
a profiled run are a little lower.

Everything listens on 127.0.0.1 only; every wait is bounded and the run stops by itself
(`--max-seconds`, default 300); subprocesses are killed on the way out. Linux only.
Exit status: 0 all checks passed, 1 a check failed, 3 the run stopped early. Missing a target
is reported (MET / NOT MET) and does not change the status.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.harness import (
    BenchError,
    CpuSampler,
    Deadline,
    LoadBench,
    MachineWindow,
    RelayUnderTest,
    args_record,
    begin_run,
    cpu_seconds,
    end_run,
    machine_cpu_seconds,
    percentile,
    raise_fd_limit,
    report_log_problems,
    serve_commands,
    stopped_early,
)
from relay_testkit.process import pin

SHOW_ID = "orders"
MIRRORS = {"d1": "0.10", "d2": "0.12"}  # distributor -> its commission rate
ROOMS = ("hq", *MIRRORS)
SHARER_RATE = "0.02"
SHARERS = 25
PRODUCTS = {"p1": ("19.90", None), "p2": ("59.00", "0.15"), "p3": ("5.50", None), "p4": ("120.00", None)}
BASKETS = ((("p1", 2),), (("p2", 1),), (("p1", 1), ("p3", 3)), (("p4", 1), ("p2", 2)))
CURRENCY = "CNY"
TARGET_ORDERS_PER_S = {"embedded": 2000.0, "redis": 5000.0}
TARGET_SETTLEMENT_S = 2.0
TARGET_SETTLEMENT_ORDERS = 100_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOP_FRAME = "Runner.run (asyncio/runners.py)"  # the event loop, as py-spy names it (uvloop's C side)
READY = re.compile(r"^\[w(\d+)\] ready \(pid (\d+)\): node (\S+) at (\S+)$", re.M)  # relay/workers.py
CSV_COLUMNS = ["room", "sharer", "orders", "gmv", "refunds", "net", "commission", "sharer_commission"]


def cents(text: Any) -> int:
    """1230 for "12.30" (the API's money strings)."""
    return int(Decimal(str(text)) * 100)


def money(value: int) -> str:
    sign = "-" if value < 0 else ""
    whole, part = divmod(abs(value), 100)
    return f"{sign}{whole}.{part:02d}"


def expected_answer(room: str, sharer: str | None, basket: int) -> tuple[int, int, int]:
    """(amount, distributor commission, sharer commission) in cents that the show's rates give one
    order of `basket` brought by (room, sharer): per line, half-up to the cent."""
    amount = distributor = shared = 0
    for product, quantity in BASKETS[basket]:
        line = quantity * cents(PRODUCTS[product][0])
        own = PRODUCTS[product][1]
        rate = Decimal(0) if room == "hq" else Decimal(own if own is not None else MIRRORS[room])
        amount += line
        distributor += int((Decimal(line) * rate).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        if sharer:
            shared += int((Decimal(line) * Decimal(SHARER_RATE)).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return amount, distributor, shared


def order_plan(n: int, viewers: int) -> tuple[int, int]:
    """Order number n: (the viewer whose attribution it carries, its basket)."""
    return n % viewers, (n + n // viewers) % len(BASKETS)


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], float]:
    """User + system CPU seconds of each thread of `pids`, by (pid, tid), from /proc."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[(pid, int(tid))] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def limits_off() -> dict[str, str]:
    """RELAY_LIMITS_* = 0 for every per-address or per-second limit the server knows (0: off), so the
    bench's single address is not throttled; read from relay.config so a limit added later is
    covered too."""
    env = {}
    try:
        from relay.config import LimitSettings
    except ImportError:  # (relay being edited: relay_testkit's list still applies)
        return env
    for f in dataclasses.fields(LimitSettings):
        if f.name.endswith("_per_s") or "per_address" in f.name:
            env[f"RELAY_LIMITS_{f.name.upper()}"] = "0"
    return env


# -- worker processes -------------------------------------------------------------------------


def load_worker(cpus: set[int], conn: Connection) -> None:
    """A process of aiohttp clients in one uvloop loop.

    Commands:
      ("enroll", base, show, admin_key, [(index, room, ref)], concurrency)
          -> ("enrolled", [(index, viewer_id, room, token, attribution, expires_at) or (index, None, error)])
         Registers each viewer (admin key), then asks for its attribution (its viewer token).
      ("plan", viewers: [(attribution, room, sharer)], expected: {(room, has_sharer, basket): (a, d, s)})
          -> ("planned", n). The viewers' attributions and the answers to expect, once.
      ("prepare", base, key, orders: (first, count, offset, step), concurrency, warm)
          -> ("prepared", seconds). The next "orders": the request bodies built now (orders
         first + offset, + step, ... below first + count), a client session with `concurrency`
         connections opened now when `warm` (a GET /healthz on each, all in flight).
      ("orders", base, show, start_at, stop_at) -> ("ordered", {...})
         Waits until the wall-clock time `start_at`, then sends the prepared orders with at most
         `concurrency` in flight; no new request after `stop_at`.
      ("exit",)
    """
    os.sched_setaffinity(0, cpus)
    import asyncio

    import aiohttp

    def session(limit: int) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=120)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))

    state: dict[str, Any] = {}

    async def enroll(base: str, show: str, admin_key: str, viewers: list[tuple[int, str, str | None]],
                     concurrency: int) -> list[tuple]:
        out: list[tuple] = []
        todo = iter(viewers)
        admin = {"Authorization": f"Bearer {admin_key}"}
        async with session(concurrency) as http:
            async def run() -> None:
                for index, room, ref in todo:
                    body = {"room": room} | ({"ref": ref} if ref else {})
                    async with http.post(f"{base}/api/shows/{show}/viewers", json=body, headers=admin) as res:
                        raw = await res.read()
                    if res.status != 201:
                        out.append((index, None, f"register: {res.status}: {raw[:200].decode(errors='replace')}"))
                        continue
                    viewer = json.loads(raw)
                    async with http.post(f"{base}/api/shows/{show}/attribution",
                                         headers={"Authorization": f"Bearer {viewer['token']}"}) as res:
                        raw = await res.read()
                    if res.status != 201:
                        out.append((index, None, f"attribution: {res.status}: {raw[:200].decode(errors='replace')}"))
                        continue
                    given = json.loads(raw)
                    out.append((index, viewer["viewer_id"], viewer["room"], viewer["token"], given["attribution"],
                                given.get("expires_at")))
            await asyncio.gather(*(run() for _ in range(concurrency)))
        return out

    def plan(viewers: list[tuple[str, str, str | None]], expected: dict) -> int:
        state["viewers"] = viewers
        state["expected"] = expected
        return len(viewers)

    async def prepare(base: str, key: str, orders: tuple[int, int, int, int], concurrency: int,
                      warm: bool) -> float:
        t = time.perf_counter()
        if "http" in state:
            await state.pop("http").close()
        first, count, offset, step = orders
        viewers = state["viewers"]
        expected = state["expected"]
        todo = []
        for n in range(first + offset, first + count, step):
            v, basket = order_plan(n, len(viewers))
            attribution, room, sharer = viewers[v]
            body = {"order_id": f"o-{n}", "attribution": attribution,
                    "items": [{"product": p, "quantity": q, "unit_price": PRODUCTS[p][0]} for p, q in BASKETS[basket]],
                    "currency": CURRENCY}
            todo.append((n, json.dumps(body).encode(), (room, sharer, *expected[(room, bool(sharer), basket)])))
        state["todo"] = todo
        state["headers"] = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        state["concurrency"] = concurrency
        http = state["http"] = session(concurrency)
        if warm:
            async def touch() -> None:
                async with http.get(f"{base}/healthz") as res:
                    await res.read()
            await asyncio.gather(*(touch() for _ in range(concurrency)))
        return time.perf_counter() - t

    async def orders(base: str, show: str, start_at: float, stop_at: float) -> dict:
        url = f"{base}/api/shows/{show}/orders"
        http, headers, todo_list = state["http"], state["headers"], state.pop("todo")
        todo = iter(todo_list)
        clock = time.perf_counter
        wall = time.time
        statuses: Counter[int] = Counter()
        samples: dict[str, str] = {}  # an example of each kind of failure
        latencies: list[float] = []
        rooms: dict[str, list[int]] = {}  # room -> [orders, gmv, distributor, sharer] from the 201s
        sharers: dict[str, list[int]] = {}  # sharer -> [orders, gmv, commission]
        mismatches = [0]
        mismatch_samples: list[str] = []
        stopped = [False]
        sent = [0]
        await asyncio.sleep(max(0.0, start_at - wall()))

        async def run() -> None:
            for n, body, (room, sharer, amount, dist, share) in todo:
                if wall() > stop_at:
                    stopped[0] = True
                    return
                sent[0] += 1
                t = clock()
                try:
                    async with http.post(url, data=body, headers=headers) as res:
                        raw = await res.read()
                        status = res.status
                except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                    statuses[-1] += 1
                    samples.setdefault("-1", f"{type(exc).__name__}: {exc}"[:200])
                    continue
                latency = 1000 * (clock() - t)
                statuses[status] += 1
                if status != 201:
                    samples.setdefault(str(status), raw[:300].decode(errors="replace"))
                    continue
                latencies.append(latency)
                try:
                    reply = json.loads(raw)
                    got = (reply["room"], reply["sharer"], cents(reply["amount"]),
                           cents(reply["commission"]["distributor"]), cents(reply["commission"]["sharer"]))
                except (ValueError, KeyError, TypeError, ArithmeticError):
                    mismatches[0] += 1
                    if len(mismatch_samples) < 3:
                        mismatch_samples.append(f"o-{n}: unreadable answer {raw[:200]!r}")
                    continue
                if got != (room, sharer, amount, dist, share) or reply.get("order_id") != f"o-{n}":
                    mismatches[0] += 1
                    if len(mismatch_samples) < 3:
                        mismatch_samples.append(f"o-{n}: answered {reply}, expected room {room}, sharer {sharer}, "
                                                f"amount {money(amount)}, commission {money(dist)} / {money(share)}")
                r = rooms.get(got[0])
                if r is None:
                    r = rooms[got[0]] = [0, 0, 0, 0]
                r[0] += 1
                r[1] += got[2]
                r[2] += got[3]
                r[3] += got[4]
                if got[1]:
                    s = sharers.get(got[1])
                    if s is None:
                        s = sharers[got[1]] = [0, 0, 0]
                    s[0] += 1
                    s[1] += got[2]
                    s[2] += got[4]

        t0 = wall()
        await asyncio.gather(*(run() for _ in range(max(1, min(state["concurrency"], len(todo_list))))))
        t1 = wall()
        await state.pop("http").close()
        return {"t0": t0, "t1": t1, "sent": sent[0], "planned": len(todo_list), "statuses": dict(statuses),
                "samples": samples, "latencies": latencies, "rooms": rooms, "sharers": sharers,
                "mismatches": mismatches[0], "mismatch_samples": mismatch_samples, "stopped": stopped[0]}

    async def handle(command: str, args: tuple) -> Any:
        if command == "enroll":
            return ("enrolled", await enroll(*args))
        if command == "plan":
            return ("planned", plan(*args))
        if command == "prepare":
            return ("prepared", await prepare(*args))
        if command == "orders":
            return ("ordered", await orders(*args))
        if command == "exit":
            if "http" in state:
                await state.pop("http").close()
            return None
        return ("error", f"unknown command {command!r}")

    serve_commands(conn, handle)


# -- results ----------------------------------------------------------------------------------

@dataclass
class Tally:
    """What the 201 answers said, summed: the books the settlement must show."""

    orders: int = 0
    rooms: dict[str, list[int]] = field(default_factory=dict)  # room -> [orders, gmv, distributor, sharer]
    sharers: dict[str, list[int]] = field(default_factory=dict)  # sharer -> [orders, gmv, commission]

    def add(self, rooms: dict[str, list[int]], sharers: dict[str, list[int]]) -> None:
        for room, values in rooms.items():
            mine = self.rooms.setdefault(room, [0, 0, 0, 0])
            for i, v in enumerate(values):
                mine[i] += v
            self.orders += values[0]
        for sharer, values in sharers.items():
            mine = self.sharers.setdefault(sharer, [0, 0, 0])
            for i, v in enumerate(values):
                mine[i] += v

    def total(self, i: int) -> int:
        return sum(values[i] for values in self.rooms.values())


@dataclass
class PhaseResult:
    phase: str
    orders: int  # planned
    sent: int
    accepted: int  # 201
    concurrency: int
    processes: int
    seconds: float
    orders_per_s: float
    latency_ms: dict[str, float]
    http_status: dict[str, int]
    failures: dict[str, str]  # an example answer per failing status
    answer_mismatches: int
    mismatch_samples: list[str]
    server_cpu_pct: float
    server_cpu_ms_per_order: float
    server_threads_cpu_pct: dict[str, float]  # each server thread busier than 1 %: "pid/tid name"
    loadgen_cpu_pct: float
    loadgen_cores: int
    redis_cpu_pct: float | None = None
    # orders per CPU-second of the server (+ redis-server): what one core would take if the
    # server had it to itself; against a disturbed machine, the steadier figure
    orders_per_core_s: float = 0.0
    stopped_by_time: bool = False
    # the rest of the machine over the phase: other processes (% of a core), each CPU's busy %, steal
    other_cpu_pct: float = 0.0
    cpu_busy_pct: dict[str, float] = field(default_factory=dict)
    stolen_pct: float = 0.0
    disturbed: bool = False
    machine_notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None


@dataclass
class SettlementResult:
    orders_in_show: int
    json_s: list[float]
    csv_s: list[float]
    json_bytes: int
    csv_bytes: int
    csv_rows: int
    totals: dict[str, Any]
    rooms: dict[str, Any]
    sharers: int
    checks: dict[str, bool]
    problems: list[str] = field(default_factory=list)

    @property
    def json_median(self) -> float:
        return statistics.median(self.json_s) if self.json_s else math.nan

    @property
    def csv_median(self) -> float:
        return statistics.median(self.csv_s) if self.csv_s else math.nan


@dataclass
class RunResult:
    store: str
    server_processes: int
    placement: str
    key: str  # "shop" or "admin": which key sent the orders
    viewers: int
    enroll_per_s: float
    warmup: PhaseResult | None = None
    intake: PhaseResult | None = None
    fill: list[PhaseResult] = field(default_factory=list)
    settlement: SettlementResult | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.store}" + (f", {self.server_processes} workers" if self.server_processes > 1 else "")

    @property
    def passed(self) -> bool:
        return all(self.checks.values()) and (self.settlement is None or all(self.settlement.checks.values()))


# -- the bench --------------------------------------------------------------------------------

def timed_get(url: str, token: str, timeout: float) -> tuple[int, float, bytes, str]:
    """(status, seconds from sending the request to the last byte read, body, content type)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as res:
            body = res.read()
            status, kind = res.status, res.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        body, status, kind = exc.read(), exc.code, exc.headers.get("Content-Type", "")
    return status, time.perf_counter() - t, body, kind


def post_json(url: str, body: Any, token: str, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Profiler:
    """py-spy record of some pids (collapsed stacks, 100 Hz) over a phase, and where the time went."""

    def __init__(self, out_dir: Path, tag: str, pids: dict[str, int]) -> None:
        self.out_dir = out_dir
        self.tag = tag
        self.pids = pids
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def __enter__(self) -> Profiler:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            path = self.out_dir / f"orders-{self.tag}-{name}.collapsed"
            argv = [py_spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--nonblocking",
                    "--threads", "--output", str(path)]
            self.procs[name] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), path)
        time.sleep(0.5)  # (py-spy attaching)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _ in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def thread_names(self) -> dict[int, str]:
        """Thread id -> Python thread name, as py-spy saw them."""
        names = {}
        for _, path in self.procs.values():
            if path.exists():
                for match in re.finditer(r"^thread \((\d+)\): ([^;]+);", path.read_text(errors="replace"), re.M):
                    names[int(match.group(1))] = match.group(2)
        return names

    def summary(self, top: int = 15) -> dict[str, Any]:
        """Per process: each thread's share of the samples; for the event loop (MainThread) the
        functions with the most samples on top of the stack (self) and under them (inclusive),
        line numbers dropped, the frames every sample has (runpy, cli, Runner.run) left out; for
        the other threads their top functions. py-spy counts a thread waiting on the GIL or in C
        (uvloop: socket I/O, the selector) as busy: `Runner.run` self is the loop's C side."""
        out: dict[str, Any] = {}
        for name, (proc, path) in self.procs.items():
            if not path.exists():
                err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
                out[name] = {"error": f"py-spy wrote nothing (exit {proc.returncode}): {err.strip()}"}
                continue
            threads: Counter[str] = Counter()
            own: dict[str, Counter[str]] = {}
            inclusive: Counter[str] = Counter()
            for line in path.read_text(errors="replace").splitlines():
                stack, _, count = line.rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                n = int(count)
                thread, *frames = stack.split(";")
                thread = re.sub(r"^thread \(\d+\): ", "", thread)
                threads[thread] += n
                frames = [re.sub(r":\d+\)$", ")", f) for f in frames] or ["(no Python frame)"]
                own.setdefault(thread, Counter())[frames[-1]] += n
                if thread == "MainThread":
                    loop_at = frames.index(LOOP_FRAME) + 1 if LOOP_FRAME in frames else 0
                    for frame in set(frames[loop_at:]):  # (not the frames every sample has)
                        inclusive[frame] += n
            total = sum(threads.values())
            loop = threads.get("MainThread", 0)

            def pct(n: int, whole: int) -> float:
                return round(100 * n / max(1, whole), 1)

            out[name] = {
                "file": str(path), "samples": total,
                "threads": {t: pct(n, total) for t, n in threads.most_common(8)},
                "loop_self": [(f, pct(n, loop)) for f, n in own.get("MainThread", Counter()).most_common(top)],
                "loop_inclusive": [(f, pct(n, loop)) for f, n in inclusive.most_common(top)],
                "other_threads": {t: [(f, pct(n, threads[t])) for f, n in c.most_common(4)]
                                  for t, c in own.items() if t != "MainThread"}}
        return out


class OrderBench(LoadBench):
    def __init__(self, args: argparse.Namespace, deadline: Deadline, server_cpus: set[int], client_cpus: set[int],
                 workdir: Path) -> None:
        super().__init__(args, deadline, server_cpus, client_cpus, workdir)
        self.relay: RelayUnderTest | None = None
        self.shop_key = secrets.token_urlsafe(24)
        self.server_pids: list[int] = []
        self.viewers: list[tuple[str, str, str | None]] = []  # (attribution, room, sharer)
        self.next_order = 0
        self.tally = Tally()
        self.all_cpus = server_cpus | client_cpus

    def spawn_workers(self) -> None:
        for i in range(self.args.processes):
            self.spawn(f"loadgen-{i}", load_worker)

    def close(self) -> None:
        super().close()
        self.stop_relay()

    def stop_relay(self) -> None:
        if self.relay is not None:
            self.relay.stop()

    # -- one server --------------------------------------------------------------------------
    def start_relay(self, store: str, processes: int, tag: str) -> str:
        """A fresh server (and Redis); returns where its processes run."""
        env = {**limits_off(), "RELAY_AUTH_SHOP_KEY": self.shop_key}
        spread = processes > 1
        cpus = self.all_cpus if spread else self.server_cpus
        run_dir = self.workdir / tag  # (its own data dir and Redis: each run starts empty)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.relay = RelayUnderTest(run_dir, cpus, self.deadline, name="relay", store=store, env=env,
                                    args=("--workers", str(processes)) if processes > 1 else ())
        self.relay.start()
        self.server_pids = [self.relay.pid]
        if processes > 1:
            found = {int(i): int(pid) for i, pid, _, _ in READY.findall(self.relay.server.log_text())}
            if sorted(found) != list(range(processes)):
                raise BenchError(f"{processes} workers expected, ready lines for {sorted(found)}:\n"
                                 f"{self.relay.server.log_tail()}")
            self.server_pids += [found[i] for i in sorted(found)]
            for pid in self.server_pids:
                pin(pid, cpus)
            for worker in self.workers:  # the load generator may use every CPU too
                pin(worker.pid, cpus)
            return f"{processes} workers, redis-server and the load generator all on CPUs {sorted(cpus)}"
        for worker in self.workers:
            pin(worker.pid, self.client_cpus)
        where = f"server on CPU {sorted(self.server_cpus)}"
        if self.relay.redis is not None and self.args.redis_cpu == "load":
            pin(self.relay.redis.pid, self.client_cpus)
            return where + f", redis-server and the load generator on CPU {sorted(self.client_cpus)}"
        if self.relay.redis is not None:
            where += " with redis-server"
        return where + f", load generator on CPU {sorted(self.client_cpus)}"

    def api(self, method: str, path: str, body: dict | None = None, expect: int | None = 200) -> Any:
        assert self.relay is not None
        return self.relay.api(method, path, body, expect=expect)

    def setup_show(self) -> None:
        self.api("POST", "/api/shows", {"title": "Order bench", "id": SHOW_ID}, expect=201)
        for distributor, rate in MIRRORS.items():
            self.api("POST", f"/api/shows/{SHOW_ID}/mirrors", {"distributor": distributor, "name": distributor.upper(),
                                                               "commission_rate": rate}, expect=201)
        self.api("PATCH", f"/api/shows/{SHOW_ID}", {"sharer_commission_rate": SHARER_RATE})
        for product, (price, rate) in PRODUCTS.items():
            body = {"id": product, "title": product.upper(), "price": price}
            if rate is not None:
                body["commission_rate"] = rate
            self.api("POST", f"/api/shows/{SHOW_ID}/products", body, expect=201)

    def order_key(self) -> str:
        """The shop key if the server takes it for orders (an empty order is then refused for its
        body, 400/422, not for the key, 401/403), else the admin key."""
        assert self.relay is not None
        status, raw = post_json(f"{self.relay.base}/api/shows/{SHOW_ID}/orders", {}, self.shop_key,
                                self.deadline.cap(10))
        if status == 404 and b"show_not_found" not in raw:
            raise BenchError(f"POST /api/shows/{SHOW_ID}/orders answered 404 (no order API?): {raw[:200]!r}")
        if status in (401, 403):
            return "admin"
        if status not in (400, 422):
            raise BenchError(f"an empty order with the shop key answered {status}: {raw[:300]!r}")
        return "shop"

    def enroll(self) -> float:
        """Registers --viewers viewers (admin key) round-robin over the rooms, two in three with a
        sharer, and gets each an attribution; returns viewers per second."""
        assert self.relay is not None
        n = self.args.viewers
        chunks: list[list[tuple[int, str, str | None]]] = [[] for _ in self.workers]
        for i in range(n):
            ref = f"s{(i // 3) % SHARERS}" if i % 3 else None
            chunks[i % len(self.workers)].append((i, ROOMS[i % len(ROOMS)], ref))
        per_worker = max(1, min(50, self.args.concurrency // len(self.workers)))
        t = time.monotonic()
        for worker, chunk in zip(self.workers, chunks):
            worker.send("enroll", self.relay.base, SHOW_ID, self.relay.admin_key, chunk, per_worker)
        rows = [row for worker in self.workers for row in worker.expect("enrolled", self.deadline.cap(120))]
        elapsed = time.monotonic() - t
        failed = [row for row in rows if row[1] is None]
        if failed:
            raise BenchError(f"{len(failed)} viewer(s) could not be registered or attributed, e.g. {failed[0][2]}")
        rows.sort(key=lambda row: row[0])
        refs = {i: ref for chunk in chunks for i, _, ref in chunk}
        self.viewers = [(row[4], row[2], refs[row[0]]) for row in rows]
        expires = [row[5] for row in rows if isinstance(row[5], (int, float))]
        if expires and min(expires) < time.time() + self.deadline.remaining():
            print(f"  ! the first attribution expires in {min(expires) - time.time():.0f} s, before the run's "
                  f"end: orders after that may be refused", flush=True)
        expected = {(room, has, basket): expected_answer(room, "s" if has else None, basket)
                    for room in ROOMS for has in (False, True) for basket in range(len(BASKETS))}
        for worker in self.workers:
            worker.send("plan", self.viewers, expected)
        for worker in self.workers:
            worker.expect("planned", self.deadline.cap(30))
        return n / elapsed

    # -- orders ------------------------------------------------------------------------------
    def run_orders(self, phase: str, count: int, key: str, stop_at: float, tag: str,
                   profile: Path | None = None) -> PhaseResult:
        """`count` orders (the next numbers) with at most --concurrency in flight; none sent after
        the wall-clock `stop_at`."""
        assert self.relay is not None
        concurrency = self.args.concurrency
        workers = self.workers[:max(1, min(len(self.workers), concurrency, count))]
        slots = [concurrency // len(workers) + (1 if i < concurrency % len(workers) else 0)
                 for i in range(len(workers))]
        first = self.next_order
        self.next_order += count
        token = self.shop_key if key == "shop" else self.relay.admin_key
        for i, (worker, slot) in enumerate(zip(workers, slots)):
            worker.send("prepare", self.relay.base, token, (first, count, i, len(workers)), slot, True)
        for worker in workers:
            worker.expect("prepared", self.deadline.cap(120))
        groups = {"server": self.server_pids, "loadgen": [w.pid for w in workers],
                  "redis": [self.relay.redis.pid] if self.relay.redis is not None else []}
        targets = ({"server": self.server_pids[0]} if len(self.server_pids) == 1 else
                   {f"worker{i}": pid for i, pid in enumerate(self.server_pids[1:])})  # (not the supervisor)
        profiler = Profiler(profile, tag, targets) if profile is not None else None
        if profiler is not None:
            profiler.__enter__()
        ours = [pid for pids in groups.values() for pid in pids] + [os.getpid()]
        start_at = time.time() + 0.3
        try:
            for worker in workers:
                worker.send("orders", self.relay.base, SHOW_ID, start_at, stop_at)
            with CpuSampler(groups) as sampler:
                time.sleep(max(0.0, start_at - time.time()))
                m0, ours0, w0 = machine_cpu_seconds(), sum(cpu_seconds(pid) for pid in ours), time.monotonic()
                threads0 = thread_cpu(self.server_pids)
                replies = [worker.expect("ordered", self.deadline.cap(max(60.0, stop_at - time.time() + 60)))
                           for worker in workers]
                m1, ours1, w1 = machine_cpu_seconds(), sum(cpu_seconds(pid) for pid in ours), time.monotonic()
                threads1 = thread_cpu(self.server_pids)
        finally:
            if profiler is not None:
                profiler.__exit__(None, None, None)
        machine = MachineWindow.between(m0, m1, max(1e-6, w1 - w0), 100 * (ours1 - ours0) / max(1e-6, w1 - w0))
        names = profiler.thread_names() if profiler is not None else {}
        per_thread = {}
        for (pid, tid), after in sorted(threads1.items()):
            pct = 100 * (after - threads0.get((pid, tid), 0.0)) / max(1e-6, w1 - w0)
            if pct >= 1.0:
                role = ("" if len(self.server_pids) == 1 else
                        "supervisor " if pid == self.server_pids[0] else f"w{self.server_pids.index(pid) - 1} ")
                thread = names.get(tid, "event loop" if tid == pid else "thread")
                per_thread[f"{role}{pid}/{tid} {thread}"] = round(pct, 1)
        t0, t1 = min(r["t0"] for r in replies), max(r["t1"] for r in replies)
        seconds = max(1e-6, t1 - t0)
        server_cpu, server_share = sampler.share("server", t0, t1)
        _, loadgen_share = sampler.share("loadgen", t0, t1)
        _, redis_share = sampler.share("redis", t0, t1)
        statuses: Counter[int] = Counter()
        failures: dict[str, str] = {}
        latencies: list[float] = []
        mismatch_samples: list[str] = []
        for r in replies:
            statuses.update({int(k): v for k, v in r["statuses"].items()})
            for k, v in r["samples"].items():
                failures.setdefault(k, v)
            latencies.extend(r["latencies"])
            mismatch_samples.extend(r["mismatch_samples"])
            self.tally.add(r["rooms"], r["sharers"])
        accepted = statuses.get(201, 0)
        return PhaseResult(
            phase=phase, orders=count, sent=sum(r["sent"] for r in replies), accepted=accepted,
            concurrency=concurrency, processes=len(workers), seconds=round(seconds, 3),
            orders_per_s=accepted / seconds,
            latency_ms={"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                        "p99": percentile(latencies, 99), "max": max(latencies, default=math.nan),
                        "mean": sum(latencies) / len(latencies) if latencies else math.nan},
            http_status={str(k): v for k, v in sorted(statuses.items())}, failures=failures,
            answer_mismatches=sum(r["mismatches"] for r in replies), mismatch_samples=mismatch_samples[:3],
            server_cpu_pct=100 * server_share, server_cpu_ms_per_order=1000 * server_cpu / max(1, accepted),
            server_threads_cpu_pct=per_thread,
            loadgen_cpu_pct=100 * loadgen_share, loadgen_cores=len(self.client_cpus),
            redis_cpu_pct=100 * redis_share if self.relay.redis is not None else None,
            orders_per_core_s=accepted / max(1e-6, (server_share + redis_share) * seconds),
            stopped_by_time=any(r["stopped"] for r in replies),
            other_cpu_pct=machine.other_cpu_pct, cpu_busy_pct=machine.cpu_busy_pct, stolen_pct=machine.stolen_pct,
            disturbed=machine.disturbed, machine_notes=machine.notes(),
            profile=profiler.summary() if profiler is not None else None)

    # -- settlement --------------------------------------------------------------------------
    def settle(self, accepted: int) -> SettlementResult:
        assert self.relay is not None
        url = f"{self.relay.base}/api/shows/{SHOW_ID}/settlement"
        token = self.relay.admin_key
        json_s: list[float] = []
        csv_s: list[float] = []
        bodies: set[bytes] = set()
        csv_bodies: set[bytes] = set()
        problems: list[str] = []
        reply: Any = None
        csv_text = ""
        json_kind = csv_kind = ""
        for _ in range(self.args.repeats):
            status, seconds, body, json_kind = timed_get(url, token, self.deadline.cap(60))
            if status != 200:
                raise BenchError(f"GET {url} answered {status}: {body[:300]!r}")
            json_s.append(seconds)
            bodies.add(body)
            status, seconds, body, csv_kind = timed_get(f"{url}?format=csv", token, self.deadline.cap(60))
            if status != 200:
                raise BenchError(f"GET {url}?format=csv answered {status}: {body[:300]!r}")
            csv_s.append(seconds)
            csv_bodies.add(body)
            print(f"  settlement: JSON {json_s[-1]:.3f} s, CSV {csv_s[-1]:.3f} s", flush=True)
        reply = json.loads(next(iter(bodies)))
        csv_text = next(iter(csv_bodies)).decode()

        tally = self.tally
        totals = reply.get("totals", {})
        rooms = reply.get("rooms", {})
        sharers = reply.get("sharers", {})

        def field_sum(rows: dict, name: str) -> int:
            return sum(cents(row[name]) if name != "orders" else int(row[name]) for row in rows.values())

        checks: dict[str, bool] = {}
        checks["JSON answer is application/json, CSV is text/csv"] = (
            json_kind.startswith("application/json") and csv_kind.startswith("text/csv"))
        if not checks["JSON answer is application/json, CSV is text/csv"]:
            problems.append(f"content types: JSON {json_kind!r}, CSV {csv_kind!r}")
        checks["currency is the orders'"] = reply.get("currency") == CURRENCY
        try:
            room_sums = {name: field_sum(rooms, name) for name in
                         ("orders", "gmv", "refunds", "net", "commission", "sharer_commission")}
            total = {name: int(totals[name]) if name == "orders" else cents(totals[name]) for name in room_sums}
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise BenchError(f"settlement JSON not as expected ({type(exc).__name__}: {exc}): "
                             f"{json.dumps(reply)[:500]}") from None
        checks["rooms add up to the totals"] = room_sums == total
        if room_sums != total:
            problems.append(f"sum over rooms {room_sums} != totals {total}")
        checks["orders in the settlement == orders accepted"] = total["orders"] == accepted == tally.orders
        if not checks["orders in the settlement == orders accepted"]:
            problems.append(f"settlement {total['orders']} orders, {accepted} accepted (201), "
                            f"{tally.orders} summed from the answers")
        want = {"gmv": tally.total(1), "commission": tally.total(2), "sharer_commission": tally.total(3)}
        got = {name: total[name] for name in want}
        checks["totals == sums of the 201 answers (gmv, commissions)"] = got == want
        if got != want:
            problems.append(f"totals {({k: money(v) for k, v in got.items()})}, answers "
                            f"{({k: money(v) for k, v in want.items()})}")
        checks["no refunds, net == gmv"] = total["refunds"] == 0 and total["net"] == total["gmv"]
        per_room_ok = True
        for room in ROOMS:
            mine = tally.rooms.get(room, [0, 0, 0, 0])
            theirs = rooms.get(room)
            seen = None if theirs is None else [int(theirs["orders"]), cents(theirs["gmv"]),
                                                cents(theirs["commission"]), cents(theirs["sharer_commission"])]
            if seen != mine:
                per_room_ok = False
                problems.append(f"room {room}: settlement {seen}, answers {mine} (orders, gmv, commission, sharer)")
        checks["each room == its 201 answers"] = per_room_ok
        try:
            sharer_view = {s: [int(v["orders"]), cents(v["gmv"]), cents(v["commission"])] for s, v in sharers.items()}
        except (KeyError, TypeError, ValueError, ArithmeticError):
            sharer_view = {}
            problems.append(f"sharers not as expected: {json.dumps(sharers)[:300]}")
        checks["each sharer == its 201 answers"] = sharer_view == tally.sharers
        if sharer_view != tally.sharers:
            diff = sorted(set(sharer_view) ^ set(tally.sharers)) or [
                s for s in sharer_view if sharer_view[s] != tally.sharers.get(s)]
            problems.append(f"sharers differ, e.g. {diff[:3]}: settlement "
                            f"{[sharer_view.get(s) for s in diff[:3]]}, answers {[tally.sharers.get(s) for s in diff[:3]]}")
        checks["sharers' commission == totals sharer_commission"] = (
            sum(v[2] for v in sharer_view.values()) == total["sharer_commission"])

        rows = list(csv.reader(io.StringIO(csv_text)))
        header, data = (rows[0], rows[1:]) if rows else ([], [])
        checks["CSV header"] = header == CSV_COLUMNS
        if header != CSV_COLUMNS:
            problems.append(f"CSV header {header}, expected {CSV_COLUMNS}")
        try:
            index = {name: header.index(name) for name in CSV_COLUMNS}
            csv_orders = sum(int(row[index["orders"]]) for row in data)
            csv_gmv = sum(cents(row[index["gmv"]]) for row in data)
            csv_comm = sum(cents(row[index["commission"]]) for row in data)
            csv_share = sum(cents(row[index["sharer_commission"]]) for row in data)
        except (ValueError, IndexError, ArithmeticError):
            csv_orders = csv_gmv = csv_comm = csv_share = -1
        checks["CSV rows add up to the JSON totals"] = (
            (csv_orders, csv_gmv, csv_comm, csv_share)
            == (total["orders"], total["gmv"], total["commission"], total["sharer_commission"]))
        if not checks["CSV rows add up to the JSON totals"]:
            problems.append(f"CSV sums: {csv_orders} orders, gmv {money(csv_gmv)}, commission {money(csv_comm)}, "
                            f"sharer {money(csv_share)}; JSON totals {totals}")
        checks["every repeat answered the same"] = len(bodies) == 1 and len(csv_bodies) == 1
        return SettlementResult(
            orders_in_show=total["orders"], json_s=[round(s, 4) for s in json_s], csv_s=[round(s, 4) for s in csv_s],
            json_bytes=len(next(iter(bodies))), csv_bytes=len(csv_text), csv_rows=len(data), totals=totals,
            rooms=rooms, sharers=len(sharers), checks=checks, problems=problems)

    # -- one store, one server ---------------------------------------------------------------
    def run(self, store: str, processes: int, settlement: bool, runs_left: int) -> RunResult:
        """A fresh server: setup, warm-up, the intake phase, then (with `settlement`) the fill up to
        --settlement-orders and the settlement timings."""
        args = self.args
        self.tally = Tally()
        self.next_order = 0
        tag = f"{store}-w{processes}"
        placement = self.start_relay(store, processes, tag)
        assert self.relay is not None
        print(f"\n== {store} store, {processes} server process(es): relay at {self.relay.base} ({placement})",
              flush=True)
        self.setup_show()
        key = self.order_key()
        result = RunResult(store, processes, placement, key, args.viewers, 0.0)
        if key != "shop":
            result.notes.append("the server refused the shop key (RELAY_AUTH_SHOP_KEY): orders sent with the admin key")
            print(f"  ! {result.notes[-1]}", flush=True)
        result.enroll_per_s = self.enroll()
        print(f"  {args.viewers} viewers registered and attributed over {', '.join(ROOMS)} "
              f"({result.enroll_per_s:.0f} viewers/s); orders sent with the {key} key", flush=True)

        def stop_at(seconds: float) -> float:
            # what is left of the run, keeping time for the settlement and the runs after this one
            reserve = 15.0 + 45.0 * runs_left + (10.0 if settlement else 0.0)
            return time.time() + max(1.0, min(seconds, self.deadline.remaining() - reserve))

        if args.warmup:
            result.warmup = self.run_orders("warm-up", args.warmup, key, stop_at(30), tag)
            print(f"  warm-up: {result.warmup.accepted} orders at {result.warmup.orders_per_s:.0f}/s", flush=True)
        intake = result.intake = self.run_orders("intake", args.orders, key, stop_at(120), tag, args.profile)
        print_phase(result.label, intake, TARGET_ORDERS_PER_S[store])
        if intake.profile:
            print_profile(intake.profile)

        if settlement:
            loaded = self.tally.orders
            want = args.settlement_orders
            end = stop_at(args.fill_seconds)
            while self.next_order < want and time.time() < end - 1:
                chunk = min(want - self.next_order, max(5000, int(8 * max(intake.orders_per_s, 500))))
                t = time.monotonic()
                phase = self.run_orders("fill", chunk, key, end, tag)
                result.fill.append(phase)
                print(f"  loading the settlement: {self.tally.orders:,}/{want:,} orders in the show "
                      f"({phase.accepted / max(1e-6, time.monotonic() - t):.0f}/s, server CPU "
                      f"{phase.server_cpu_pct:.0f} %"
                      + (f", {sum(v for k, v in phase.http_status.items() if k != '201')} refused" if
                         phase.accepted != phase.sent else "")
                      + (f"; disturbed: other processes {phase.other_cpu_pct:.0f} % of a core" if phase.disturbed
                         else "") + ")", flush=True)
                if phase.stopped_by_time:
                    break
            if self.tally.orders < want:
                result.notes.append(f"only {self.tally.orders:,} of {want:,} orders loaded for the settlement "
                                    f"(--fill-seconds {args.fill_seconds:.0f} / --max-seconds)")
                print(f"  ! {result.notes[-1]}", flush=True)
            elif loaded != self.tally.orders:
                print(f"  {self.tally.orders:,} orders in the show", flush=True)
            accepted = sum(p.accepted for p in [result.warmup, intake, *result.fill] if p is not None)
            result.settlement = self.settle(accepted)
            print_settlement(result.settlement)

        phases = [p for p in [result.warmup, intake, *result.fill] if p is not None]
        result.checks = {
            "every order answered 201": all(p.accepted == p.sent and not p.failures for p in phases),
            "every answer as computed (room, sharer, amount, commissions)": all(p.answer_mismatches == 0 for p in phases),
        }
        for p in phases:
            if p.failures:
                result.problems.append(f"{p.phase}: answers by status {p.http_status}, e.g. "
                                       + "; ".join(f"{k}: {v}" for k, v in list(p.failures.items())[:3]))
            if p.answer_mismatches:
                result.problems.append(f"{p.phase}: {p.answer_mismatches} answer(s) not as computed, e.g. "
                                       f"{p.mismatch_samples[:2]}")
        for name, ok in result.checks.items():
            print(f"  [{'ok' if ok else 'FAIL'}] {name}", flush=True)
        for problem in result.problems:
            print(f"      ! {problem}", flush=True)
        return result


# -- output -----------------------------------------------------------------------------------

def print_phase(label: str, r: PhaseResult, target: float) -> None:
    lat = r.latency_ms
    met = "MET" if r.orders_per_s >= target else "NOT MET"
    print(f"  {r.phase}: {r.sent:,} orders sent ({r.orders:,} planned), at most {r.concurrency} in flight from "
          f"{r.processes} load-generator process(es)", flush=True)
    print(f"    orders/s            {r.orders_per_s:8.0f}   ({r.accepted:,} accepted in {r.seconds:.2f} s; "
          f"target >= {target:,.0f}/s {met})")
    print(f"    latency ms          p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  "
          f"max {lat['max']:.1f}  mean {lat['mean']:.1f}")
    print(f"    server CPU          {r.server_cpu_pct:6.1f} % of one core ({r.server_cpu_ms_per_order:.3f} ms per order)")
    print(f"    server threads      {', '.join(f'{t} {v:.0f} %' for t, v in r.server_threads_cpu_pct.items())}")
    if r.redis_cpu_pct is not None:
        print(f"    redis-server CPU    {r.redis_cpu_pct:6.1f} % of one core")
    print(f"    orders per CPU-s    {r.orders_per_core_s:8.0f}   (server{' + redis' if r.redis_cpu_pct is not None else ''}:"
          f" a core to themselves would take about this many orders/s)")
    print(f"    load generator CPU  {r.loadgen_cpu_pct:6.1f} % of one core ({r.loadgen_cores} core(s) for it)")
    print(f"    answers by status   {', '.join(f'{k}: {v}' for k, v in r.http_status.items())}"
          + ("  (stopped by the time cap)" if r.stopped_by_time else ""))
    print(f"    the machine         other processes {max(0.0, r.other_cpu_pct):.0f} % of a core, steal {r.stolen_pct:.0f} %, "
          + ", ".join(f"{cpu} {pct:.0f} % busy" for cpu, pct in r.cpu_busy_pct.items()))
    if r.disturbed:
        print(f"    ! disturbed: {'; '.join(r.machine_notes)}: the figures may be low")
    sys.stdout.flush()


def print_profile(profile: dict[str, Any]) -> None:
    for name, p in profile.items():
        if "error" in p:
            print(f"  profile {name}: {p['error']}", flush=True)
            continue
        print(f"  profile {name} (py-spy, {p['samples']} samples, {p['file']}):")
        print(f"    threads (share of the samples): {', '.join(f'{t} {v}%' for t, v in p['threads'].items())}")
        print("    event loop, self (% of its samples):")
        for frame, v in p["loop_self"]:
            print(f"      {v:5.1f}%  {frame}")
        print("    event loop, inclusive:")
        for frame, v in p["loop_inclusive"]:
            print(f"      {v:5.1f}%  {frame}")
        for thread, frames in p["other_threads"].items():
            print(f"    thread {thread}: " + "; ".join(f"{f} {v}%" for f, v in frames))
    sys.stdout.flush()


def print_settlement(s: SettlementResult) -> None:
    def spread(values: list[float]) -> str:
        return (f"min {min(values):.3f}  median {statistics.median(values):.3f}  max {max(values):.3f} s"
                if values else "-")

    met = "MET" if max(s.json_median, s.csv_median) <= TARGET_SETTLEMENT_S else "NOT MET"
    scale = "" if s.orders_in_show >= TARGET_SETTLEMENT_ORDERS else f" (target is for {TARGET_SETTLEMENT_ORDERS:,})"
    print(f"  settlement of {s.orders_in_show:,} orders, {len(s.json_s)} times each "
          f"(target <= {TARGET_SETTLEMENT_S:.0f} s{scale}: {met})")
    print(f"    JSON   {spread(s.json_s)}   ({s.json_bytes:,} bytes, {len(s.rooms)} rooms, {s.sharers} sharers)")
    print(f"    CSV    {spread(s.csv_s)}   ({s.csv_bytes:,} bytes, {s.csv_rows} rows)")
    print(f"    totals {s.totals}")
    for name, ok in s.checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    for problem in s.problems:
        print(f"      ! {problem}")
    sys.stdout.flush()


def print_summary(runs: list[RunResult]) -> None:
    print("\nsummary", flush=True)
    for r in runs:
        target = TARGET_ORDERS_PER_S[r.store]
        line = f"  {r.label:<20}"
        if r.intake is not None:
            i = r.intake
            line += (f" {i.orders_per_s:6.0f} orders/s (target {target:,.0f}: "
                     f"{'MET' if i.orders_per_s >= target else 'NOT MET'}), p50 {i.latency_ms['p50']:.1f} ms, "
                     f"p99 {i.latency_ms['p99']:.1f} ms, CPU server {i.server_cpu_pct:.0f} %"
                     + (f" redis {i.redis_cpu_pct:.0f} %" if i.redis_cpu_pct is not None else "")
                     + f" load {i.loadgen_cpu_pct:.0f} %, {i.orders_per_core_s:.0f} orders per server CPU-s"
                     + (f" [disturbed: other processes {i.other_cpu_pct:.0f} % of a core]" if i.disturbed else ""))
        s = r.settlement
        if s is not None:
            met = "MET" if max(s.json_median, s.csv_median) <= TARGET_SETTLEMENT_S else "NOT MET"
            line += (f"; settlement of {s.orders_in_show:,}: JSON {s.json_median:.3f} s, CSV {s.csv_median:.3f} s "
                     f"(target {TARGET_SETTLEMENT_S:.0f} s: {met})")
        line += f"; checks {'PASS' if r.passed else 'FAIL'}"
        print(line, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Order-intake load test of the relay (see the module docstring).")
    parser.add_argument("--store", choices=("embedded", "redis", "both"), default="both",
                        help="commerce store: 'embedded' (SQLite in the data dir), 'redis' (a redis-server started "
                             "here, appendfsync always) or 'both' (default)")
    parser.add_argument("--workers", default="1,2",
                        help="with Redis: server processes, a list run in turn (`relay serve --workers N`); the "
                             "settlement is measured on the first (default 1,2)")
    parser.add_argument("--redis-cpu", choices=("server", "load"), default="server",
                        help="with Redis and one server process: redis-server on the server's CPU (default, as "
                             "bench.coupons) or on the load generator's")
    parser.add_argument("--orders", type=int, default=20_000, help="orders in the timed intake phase (20000)")
    parser.add_argument("--warmup", type=int, default=1000, help="untimed orders before it (1000)")
    parser.add_argument("--concurrency", type=int, default=64, help="orders in flight, all processes (64)")
    parser.add_argument("--processes", type=int, default=0,
                        help="load-generator processes (default: 2, or one per load CPU if more)")
    parser.add_argument("--viewers", type=int, default=600, help="viewers with an attribution, over hq/d1/d2 (600)")
    parser.add_argument("--settlement-orders", type=int, default=TARGET_SETTLEMENT_ORDERS,
                        help="orders in the show when the settlement is timed (100000; 0 skips the settlement)")
    parser.add_argument("--fill-seconds", type=float, default=60.0,
                        help="at most this long loading the settlement's orders after the intake phase (60)")
    parser.add_argument("--repeats", type=int, default=5, help="settlement requests per format (5)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy the server during the intake phase; collapsed stacks in DIR")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="hard cap for the whole run (300)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with the server logs")
    args = parser.parse_args(argv)
    try:
        args.worker_counts = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError:
        parser.error("--workers: a comma-separated list of counts")
    if not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--workers: counts of 1 or more")
    if min(args.orders, args.concurrency, args.viewers, args.repeats) < 1 or args.warmup < 0 or args.processes < 0:
        parser.error("--orders, --concurrency, --viewers and --repeats must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = begin_run(args.max_seconds, __spec__.name, argv, "the load generator")
    deadline, server_cpus, client_cpus, machine, command = (
        run.deadline, run.server_cpus, run.client_cpus, run.machine, run.command)
    args.processes = args.processes or max(2, len(client_cpus))
    raise_fd_limit()
    print(f"machine: {machine['nproc']} CPU(s), {machine['cpu_model']}; Python {machine['python']}, "
          f"aiohttp {machine['aiohttp']}, uvloop {machine['uvloop']}", flush=True)
    plan = [("embedded", 1)] if args.store in ("embedded", "both") else []
    if args.store in ("redis", "both"):
        plan += [("redis", k) for k in args.worker_counts]
    settled: set[str] = set()
    todo = []
    for store, k in plan:
        todo.append((store, k, bool(args.settlement_orders) and store not in settled))
        settled.add(store)
    print(f"runs: {'; '.join(f'{s}, {k} process(es)' + (', with the settlement' if t else '') for s, k, t in todo)}",
          flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="order-bench-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": command, "machine": machine,
                               "args": args_record(args), "targets": {"orders_per_s": TARGET_ORDERS_PER_S,
                                                                      "settlement_s": TARGET_SETTLEMENT_S},
                               "runs": []}
    bench = OrderBench(args, deadline, server_cpus, client_cpus, workdir)
    runs: list[RunResult] = []
    status = 0
    started = time.monotonic()
    try:
        bench.spawn_workers()
        for i, (store, k, settle) in enumerate(todo):
            try:
                result = bench.run(store, k, settle, len(todo) - i - 1)
            finally:
                if bench.relay is not None:
                    problems = report_log_problems(bench.relay.server, f"relay ({store}, {k} process(es))", "  ")
                    results.setdefault("log_problems", {})[f"{store}-w{k}"] = problems
                bench.stop_relay()
                bench.relay = None
            runs.append(result)
            results["runs"].append(asdict(result) | {"passed": result.passed})
        if not all(r.passed for r in runs):
            status = 1
    except (BenchError, KeyboardInterrupt) as exc:
        status = stopped_early(results, exc)
    finally:
        signal.alarm(0)
        bench.close()
        results["seconds"] = round(time.monotonic() - started, 1)
        print_summary(runs)
        end_run(results, args.json, workdir, args.keep_logs or status == 3)
    return status


if __name__ == "__main__":
    sys.exit(main())
