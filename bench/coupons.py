"""Flash-coupon load test: claims per second, claim latency, and exactness under load.

What it measures
    A `relay serve` subprocess (pinned to CPU 0, embedded SQLite store or Redis) gets a show with HQ and
    three mirror rooms. V viewers register, spread evenly over the four rooms. Two phases follow.

    throughput  A coupon with a large quantity, a per-viewer limit and room caps is launched, then
                C claims are fired from load-generator processes (pinned to the other CPUs) with at
                most `--concurrency` requests in flight in total, over kept-alive connections. The
                mix is fresh Idempotency-Keys plus retries of keys already used (`--retry-fraction`).
    storm       A second coupon, quantity `--storm-quantity` (100), no caps, limit 1: one claim from
                each of `--storm-claims` viewers (2,000), all in flight at once.

    For each phase it reports claims/s (answers / time from the first request to the last answer),
    p50/p95/p99/max latency of one claim (request sent -> answer read), the server's CPU as % of
    one core, the load generator's CPU (to show whether it, not the server, was the limit) and the
    answers by result. It then reads the coupon back (GET /api/shows/{show}/coupons/{c}) and the
    show's /stats and checks:

      oversell       claimed <= quantity; each room <= its cap
      lost claims    "claimed" answers (first answer per viewer and key) == the server's claimed
                     count, in total and per room (coupon and /stats)
      idempotency    every answer to one (viewer, key) is the same
      viewer limit   no viewer was told "claimed" more than per_viewer_limit times
      exact count    claimed == min(quantity, sum over rooms of min(cap, demand)), the only correct
                     outcome (demand: each viewer's fresh keys, up to the limit); storm: == quantity
      HTTP           every answer is 200

    The targets are >= 2,000 claims/s on the embedded store and >= 5,000/s with Redis.

Run (from the repository root, relay installed with `pip install -e '.[bench]'`):

    python -m bench.coupons --json coupons.json

    python -m bench.coupons --store redis --json coupons-redis.json

`--store redis` starts a redis-server (appendonly, appendfsync always) on the server's CPU and
points the relay at it; its CPU is reported beside the relay's.
Everything listens on 127.0.0.1 only; every wait is bounded and the run stops by itself
(`--max-seconds`, default 300); subprocesses are killed on the way out. Linux only.
Exit status: 0 all checks passed, 1 a check failed, 3 the run stopped early.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.harness import (
    BenchError,
    CpuSampler,
    Deadline,
    LoadBench,
    RelayUnderTest,
    args_record,
    begin_run,
    end_run,
    percentile,
    raise_fd_limit,
    report_log_problems,
    serve_commands,
    stopped_early,
)

SHOW_ID = "coupons"
MIRRORS = ("d1", "d2", "d3")
ROOMS = ("hq", *MIRRORS)
TARGET_CLAIMS_PER_S = {"embedded": 2000.0, "redis": 5000.0}


# -- worker processes -------------------------------------------------------------------------


def load_worker(cpus: set[int], conn: Connection) -> None:
    """A process of aiohttp clients in one uvloop loop.

    Commands:
      ("register", base, show, [(index, room, ref)], concurrency)
          -> ("registered", [(index, viewer_id, room, token) or (index, None, room, error)])
      ("prepare", concurrency, warm, base) -> ("prepared", seconds)
         A client session for the next "claim"; with `warm`, `concurrency` connections opened now.
      ("claim", base, show, coupon, [(request, token, key)], concurrency, start_at)
          -> ("claimed", {"t0", "t1", "rows": [(request, status, result, remaining, latency_ms)]})
         Waits until the wall-clock time `start_at`, then sends with at most `concurrency`
         requests in flight.
      ("exit",)
    """
    os.sched_setaffinity(0, cpus)
    import asyncio

    import aiohttp

    def session(limit: int) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=120)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))

    async def register(base: str, show: str, viewers: list[tuple[int, str, str | None]],
                       concurrency: int) -> list[tuple]:
        out: list[tuple] = []
        todo = iter(viewers)
        async with session(concurrency) as http:
            async def run() -> None:
                for index, room, ref in todo:
                    body = {"room": room} | ({"ref": ref} if ref else {})
                    async with http.post(f"{base}/api/shows/{show}/viewers", json=body) as res:
                        reply = await res.json(content_type=None)
                    if res.status == 201:
                        out.append((index, reply["viewer_id"], reply["room"], reply["token"]))
                    else:
                        out.append((index, None, room, f"{res.status}: {reply}"))
            await asyncio.gather(*(run() for _ in range(concurrency)))
        return out

    state: dict[str, Any] = {}

    async def prepare(concurrency: int, warm: bool, base: str) -> float:
        """A session for the next "claim"; with `warm`, `concurrency` connections opened now (a GET
        /healthz on each, all in flight at once) so connection setup is not in the figures.
        Returns the seconds that took."""
        t = time.perf_counter()
        if "http" in state:
            await state.pop("http").close()
        http = state["http"] = session(concurrency)
        if warm:
            async def touch() -> None:
                async with http.get(f"{base}/healthz") as res:
                    await res.read()
            await asyncio.gather(*(touch() for _ in range(concurrency)))
        return time.perf_counter() - t

    async def claim(base: str, show: str, coupon: str, requests: list[tuple[int, str, str]], concurrency: int,
                    start_at: float) -> dict:
        rows: list[tuple] = []
        url = f"{base}/api/shows/{show}/coupons/{coupon}/claim"
        todo = iter(requests)
        clock = time.perf_counter
        http = state["http"]
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def run() -> None:
            for index, token, key in todo:
                headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
                sent = clock()
                try:
                    async with http.post(url, headers=headers) as res:
                        raw = await res.read()
                        status = res.status
                except (TimeoutError, aiohttp.ClientError) as exc:
                    rows.append((index, -1, f"{type(exc).__name__}: {exc}"[:200], None, 1000 * (clock() - sent)))
                    continue
                latency = 1000 * (clock() - sent)
                try:
                    reply = json.loads(raw)
                    result, remaining = (reply["result"], reply["remaining"]) if status == 200 else (
                        str(reply.get("error", reply))[:200], None)
                except (ValueError, KeyError, TypeError, AttributeError):
                    result, remaining = raw[:200].decode(errors="replace"), None
                rows.append((index, status, result, remaining, latency))

        t0 = time.time()
        await asyncio.gather(*(run() for _ in range(min(concurrency, len(requests)))))
        t1 = time.time()
        await state.pop("http").close()
        return {"t0": t0, "t1": t1, "rows": rows}

    async def handle(command: str, args: tuple) -> Any:
        if command == "register":
            return ("registered", await register(*args))
        if command == "prepare":
            return ("prepared", await prepare(*args))
        if command == "claim":
            return ("claimed", await claim(*args))
        if command == "exit":
            if "http" in state:
                await state.pop("http").close()
            return None
        return ("error", f"unknown command {command!r}")

    serve_commands(conn, handle)


# -- the bench ------------------------------------------------------------------------------

@dataclass
class Viewer:
    index: int
    viewer_id: str
    room: str
    token: str


@dataclass
class PhaseResult:
    phase: str
    coupon: str
    quantity: int
    per_viewer_limit: int
    room_caps: dict[str, int]
    requests: int
    fresh_keys: int
    retries: int
    concurrency: int
    processes: int
    seconds: float
    claims_per_s: float
    latency_ms: dict[str, float]
    server_cpu_pct: float
    server_cpu_ms_per_claim: float
    loadgen_cpu_pct: float
    loadgen_cores: int
    results: dict[str, int]
    first_results: dict[str, int]
    http_status: dict[str, int]
    server: dict[str, Any]
    expected_claimed: int
    checks: dict[str, bool]
    problems: list[str] = field(default_factory=list)
    redis_cpu_pct: float | None = None  # the redis-server process, with --store redis

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


class CouponBench(LoadBench):
    def __init__(self, args: argparse.Namespace, deadline: Deadline, server_cpus: set[int], client_cpus: set[int],
                 workdir: Path) -> None:
        super().__init__(args, deadline, server_cpus, client_cpus, workdir)
        self.relay = RelayUnderTest(workdir, server_cpus, deadline, store=args.store)
        self.viewers: list[Viewer] = []

    # -- setup / teardown --------------------------------------------------------------------
    def spawn_workers(self) -> None:
        for i in range(self.args.processes):
            self.spawn(f"loadgen-{i}", load_worker)

    def close(self) -> None:
        super().close()
        self.relay.stop()

    def setup_show(self) -> None:
        self.relay.create_show("Coupon bench", SHOW_ID, MIRRORS)

    def register_viewers(self) -> float:
        """Registers --viewers viewers round-robin over the rooms; returns registrations per second."""
        n = self.args.viewers
        chunks: list[list[tuple[int, str, str | None]]] = [[] for _ in self.workers]
        for i in range(n):
            chunks[i % len(self.workers)].append((i, ROOMS[i % len(ROOMS)], f"s{i % 7}"))
        per_worker = max(1, min(50, self.args.concurrency // len(self.workers)))
        t = time.monotonic()
        for worker, chunk in zip(self.workers, chunks):
            worker.send("register", self.relay.base, SHOW_ID, chunk, per_worker)
        rows = [row for worker in self.workers for row in worker.expect("registered", self.deadline.cap(120))]
        elapsed = time.monotonic() - t
        failed = [row for row in rows if row[1] is None]
        if failed:
            raise BenchError(f"{len(failed)} viewer registration(s) failed, e.g. {failed[0][3]}")
        self.viewers = sorted((Viewer(*row) for row in rows), key=lambda v: v.index)
        return n / elapsed

    # -- one phase ---------------------------------------------------------------------------
    def run_phase(self, phase: str, coupon_id: str, quantity: int, limit: int, caps: dict[str, int],
                  requests: list[tuple[Viewer, str]], concurrency: int) -> PhaseResult:
        self.relay.api("POST", f"/api/shows/{SHOW_ID}/coupons", {
            "id": coupon_id, "title": f"{phase} bench", "quantity": quantity, "per_viewer_limit": limit,
            "duration_s": 3600, "room_caps": caps}, expect=201)
        self.relay.api("POST", f"/api/shows/{SHOW_ID}/coupons/{coupon_id}/launch")

        workers = self.workers[:max(1, min(len(self.workers), concurrency))]
        chunks: list[list[tuple[int, str, str]]] = [[] for _ in workers]
        for k, (viewer, key) in enumerate(requests):
            chunks[k % len(workers)].append((k, viewer.token, key))
        slots = [concurrency // len(workers) + (1 if i < concurrency % len(workers) else 0)
                 for i in range(len(workers))]
        for worker, slot in zip(workers, slots):
            worker.send("prepare", slot, not self.args.cold, self.relay.base)
        warm = max(worker.expect("prepared", self.deadline.cap(120)) for worker in workers)
        if not self.args.cold:
            print(f"{phase}: opened {concurrency} connections in {warm:.2f} s", flush=True)
        start_at = time.time() + 0.3
        for worker, chunk, slot in zip(workers, chunks, slots):
            worker.send("claim", self.relay.base, SHOW_ID, coupon_id, chunk, slot, start_at)
        sampler = CpuSampler({"server": [self.relay.pid], "loadgen": [w.pid for w in workers],
                              "redis": [self.relay.redis.pid] if self.relay.redis is not None else []})
        with sampler:
            replies = [worker.expect("claimed", self.deadline.cap(600)) for worker in workers]
        t0, t1 = min(r["t0"] for r in replies), max(r["t1"] for r in replies)
        seconds = max(1e-6, t1 - t0)
        server_cpu, server_share = sampler.share("server", t0, t1)
        _, loadgen_share = sampler.share("loadgen", t0, t1)
        _, redis_share = sampler.share("redis", t0, t1)
        rows = sorted((row for r in replies for row in r["rows"]), key=lambda row: row[0])
        server = self.relay.api("GET", f"/api/shows/{SHOW_ID}/coupons/{coupon_id}")
        stats = self.relay.api("GET", f"/api/shows/{SHOW_ID}/stats")
        server["stats_claims"] = {room: view.get("claims_by_coupon", {}).get(coupon_id, 0)
                                  for room, view in stats.get("rooms", {}).items()}
        result = self.judge(phase, coupon_id, quantity, limit, caps, requests, rows, server, concurrency,
                            len(workers), seconds, server_share, loadgen_share, server_cpu)
        if self.relay.redis is not None:
            result.redis_cpu_pct = 100 * redis_share
        return result

    def judge(self, phase: str, coupon_id: str, quantity: int, limit: int, caps: dict[str, int],
              requests: list[tuple[Viewer, str]], rows: list[tuple], server: dict, concurrency: int,
              processes: int, seconds: float, server_share: float, loadgen_share: float,
              server_cpu: float) -> PhaseResult:
        problems: list[str] = []
        statuses = Counter(str(row[1]) for row in rows)
        results = Counter(row[2] if row[1] == 200 else f"HTTP {row[1]}: {row[2]}" for row in rows)
        latencies = [row[4] for row in rows if row[1] == 200]
        answers: dict[tuple[str, str], set[str]] = {}
        first: dict[tuple[str, str], str] = {}
        for (viewer, key), row in zip(requests, rows):
            if row[1] != 200:
                continue
            answers.setdefault((viewer.viewer_id, key), set()).add(row[2])
            first.setdefault((viewer.viewer_id, key), row[2])
        rooms_of = {v.viewer_id: v.room for v in self.viewers}
        told_rooms = Counter(rooms_of[vid] for (vid, _), result in first.items() if result == "claimed")
        told_viewers = Counter(vid for (vid, _), result in first.items() if result == "claimed")
        inconsistent = [k for k, seen in answers.items() if len(seen) > 1]

        # The only correct outcome: each room gets min(cap, its viewers' demand), demand being
        # each viewer's fresh keys up to the limit; the total is then capped by the quantity.
        keys_by_viewer: dict[str, set[str]] = {}
        for viewer, key in requests:
            keys_by_viewer.setdefault(viewer.viewer_id, set()).add(key)
        demand: Counter[str] = Counter()
        for vid, keys in keys_by_viewer.items():
            demand[rooms_of[vid]] += min(limit, len(keys))
        expected = min(quantity, sum(min(caps.get(room, n), n) for room, n in demand.items()))

        claimed = int(server["claimed"])
        rooms = {room: int(n) for room, n in server.get("rooms", {}).items()}
        checks = {
            "all answers HTTP 200": statuses.get("200", 0) == len(rows) == len(requests),
            "no oversell (claimed <= quantity)": claimed <= quantity and server["remaining"] == quantity - claimed,
            "no room over its cap": all(rooms.get(room, 0) <= cap for room, cap in caps.items()),
            "no lost claims (answers == server count)": sum(told_rooms.values()) == claimed,
            "per room: answers == server == /stats": all(
                told_rooms.get(room, 0) == rooms.get(room, 0) == server["stats_claims"].get(room, 0)
                for room in ROOMS),
            "retries got the first answer": not inconsistent,
            "per-viewer limit held": max(told_viewers.values(), default=0) <= limit,
            "exact claimed count": claimed == expected,
        }
        if not checks["all answers HTTP 200"]:
            problems.append(f"answers by HTTP status: {dict(statuses)}; {len(rows)} answers to {len(requests)} "
                            f"requests; e.g. {[r for r in rows if r[1] != 200][:3]}")
        if not checks["no lost claims (answers == server count)"]:
            problems.append(f"{sum(told_rooms.values())} 'claimed' answers but the server counts {claimed}")
        if not checks["per room: answers == server == /stats"]:
            problems.append(f"per room: answers {dict(told_rooms)}, coupon {rooms}, /stats {server['stats_claims']}")
        if inconsistent:
            problems.append(f"{len(inconsistent)} key(s) got different answers, e.g. "
                            f"{inconsistent[0]}: {sorted(answers[inconsistent[0]])}")
        if not checks["per-viewer limit held"]:
            over = [vid for vid, n in told_viewers.items() if n > limit]
            problems.append(f"{len(over)} viewer(s) over the limit {limit}, e.g. {over[0]}: {told_viewers[over[0]]}")
        if not checks["exact claimed count"]:
            problems.append(f"claimed {claimed}, expected exactly {expected} (demand per room {dict(demand)})")
        fresh = len({(v.viewer_id, k) for v, k in requests})
        return PhaseResult(
            phase=phase, coupon=coupon_id, quantity=quantity, per_viewer_limit=limit, room_caps=caps,
            requests=len(requests), fresh_keys=fresh, retries=len(requests) - fresh, concurrency=concurrency,
            processes=processes, seconds=round(seconds, 3), claims_per_s=len(rows) / seconds,
            latency_ms={"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                        "p99": percentile(latencies, 99), "max": max(latencies, default=math.nan),
                        "mean": sum(latencies) / len(latencies) if latencies else math.nan},
            server_cpu_pct=100 * server_share, server_cpu_ms_per_claim=1000 * server_cpu / max(1, len(rows)),
            loadgen_cpu_pct=100 * loadgen_share, loadgen_cores=len(self.client_cpus),
            results=dict(results.most_common()), first_results=dict(Counter(first.values()).most_common()),
            http_status=dict(statuses),
            server={"claimed": claimed, "remaining": server["remaining"], "rooms": rooms,
                    "stats_claims": server["stats_claims"]},
            expected_claimed=expected, checks=checks, problems=problems)

    def throughput_requests(self) -> list[tuple[Viewer, str]]:
        """--claims requests: fresh keys dealt round-robin over the viewers, plus retries of
        keys already dealt, shuffled (a retry may overtake its first send, as on a real network)."""
        rng = random.Random(self.args.seed)
        total = self.args.claims
        retries = round(total * self.args.retry_fraction)
        fresh = [(self.viewers[i % len(self.viewers)], f"t{i // len(self.viewers)}") for i in range(total - retries)]
        requests = fresh + [rng.choice(fresh) for _ in range(retries)]
        rng.shuffle(requests)
        return requests

    def storm_requests(self) -> list[tuple[Viewer, str]]:
        n = self.args.storm_claims
        if n > len(self.viewers):
            raise BenchError(f"--storm-claims {n} needs as many viewers (--viewers is {len(self.viewers)})")
        viewers = random.Random(self.args.seed + 1).sample(self.viewers, n)
        return [(viewer, "storm") for viewer in viewers]


# -- output -----------------------------------------------------------------------------------

def print_phase(r: PhaseResult) -> None:
    lat = r.latency_ms
    caps = ", ".join(f"{room} {cap}" for room, cap in r.room_caps.items()) or "none"
    print(f"\n== {r.phase}: coupon {r.coupon!r}, quantity {r.quantity}, per-viewer limit {r.per_viewer_limit}, "
          f"room caps {caps}", flush=True)
    print(f"{r.requests} claims ({r.fresh_keys} fresh keys, {r.retries} retries), at most {r.concurrency} in flight, "
          f"from {r.processes} load-generator process(es)", flush=True)
    print(f"  claims/s            {r.claims_per_s:8.0f}   ({r.requests} answers in {r.seconds:.2f} s)")
    print(f"  latency ms          p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  "
          f"max {lat['max']:.1f}  mean {lat['mean']:.1f}")
    print(f"  server CPU          {r.server_cpu_pct:6.1f} % of one core ({r.server_cpu_ms_per_claim:.3f} ms per claim)")
    if r.redis_cpu_pct is not None:
        print(f"  redis-server CPU    {r.redis_cpu_pct:6.1f} % of one core (same CPU as the server)")
    print(f"  load generator CPU  {r.loadgen_cpu_pct:6.1f} % of {r.loadgen_cores} core(s)")
    print(f"  answers             {', '.join(f'{k} {v}' for k, v in r.results.items())}")
    print(f"  first answer by key {', '.join(f'{k} {v}' for k, v in r.first_results.items())}")
    print(f"  server              claimed {r.server['claimed']} (expected {r.expected_claimed}), "
          f"remaining {r.server['remaining']}, rooms {r.server['rooms']}")
    for name, ok in r.checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    for problem in r.problems:
        print(f"      ! {problem}")
    sys.stdout.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Flash-coupon load test of the relay (see the module docstring).")
    parser.add_argument("--store", choices=("embedded", "redis"), default="embedded",
                        help="commerce store: 'embedded' (SQLite in the relay's data dir) or 'redis' (a "
                             "redis-server started here on the server's CPU, appendfsync always)")
    parser.add_argument("--viewers", type=int, default=2000, help="viewers registered, over HQ + 3 mirrors (2000)")
    parser.add_argument("--claims", type=int, default=10_000, help="claims in the throughput phase (10000)")
    parser.add_argument("--retry-fraction", type=float, default=0.2,
                        help="share of the claims that retry a key already used (0.2)")
    parser.add_argument("--quantity", type=int, default=5000, help="throughput coupon quantity (5000)")
    parser.add_argument("--per-viewer-limit", type=int, default=3, help="throughput coupon per-viewer limit (3)")
    parser.add_argument("--room-caps", default="d1=1000,d2=1000,d3=1000",
                        help="throughput coupon room caps, room=count,... (d1=1000,d2=1000,d3=1000)")
    parser.add_argument("--concurrency", type=int, default=200, help="claims in flight, all processes (200)")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes (2)")
    parser.add_argument("--storm-quantity", type=int, default=100, help="sold-out storm coupon quantity (100)")
    parser.add_argument("--storm-claims", type=int, default=2000,
                        help="sold-out storm: claims, one per viewer, all in flight at once (2000; 0 skips)")
    parser.add_argument("--cold", action="store_true",
                        help="do not open the connections before the clock starts (connection setup then "
                             "counts in the latency; a burst beyond the listen backlog shows up as SYN retries)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="hard cap for the whole run (300)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with the server log")
    args = parser.parse_args(argv)
    try:
        args.caps = {room: int(n) for room, _, n in (p.partition("=") for p in args.room_caps.split(",") if p)}
    except ValueError:
        parser.error("--room-caps: room=count,...")
    if set(args.caps) - set(MIRRORS) - {"hq"}:
        parser.error(f"--room-caps: rooms are {', '.join(ROOMS)}")
    if min(args.viewers, args.claims, args.concurrency, args.processes) < 1:
        parser.error("--viewers, --claims, --concurrency and --processes must be positive")
    if not 0 <= args.retry_fraction < 1:
        parser.error("--retry-fraction must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = begin_run(args.max_seconds, __spec__.name, argv, "the load generator")
    deadline, server_cpus, client_cpus, machine, command = (
        run.deadline, run.server_cpus, run.client_cpus, run.machine, run.command)
    raise_fd_limit()
    print(f"machine: {machine['nproc']} CPU(s), {machine['cpu_model']}; Python {machine['python']}, "
          f"aiohttp {machine['aiohttp']}, uvloop {machine['uvloop']}", flush=True)
    print(f"server on CPU {sorted(server_cpus)} (store: {args.store}), load generator on CPU {sorted(client_cpus)}",
          flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="coupon-bench-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": command, "machine": machine,
                               "args": args_record(args),
                               "phases": []}
    bench = CouponBench(args, deadline, server_cpus, client_cpus, workdir)
    status = 0
    started = time.monotonic()
    try:
        bench.spawn_workers()
        bench.relay.start()
        bench.setup_show()
        print(f"relay pid {bench.relay.pid} at {bench.relay.base}", flush=True)
        rate = bench.register_viewers()
        results["registrations_per_s"] = rate
        print(f"registered {len(bench.viewers)} viewers over {', '.join(ROOMS)} ({rate:.0f}/s)", flush=True)

        phase = bench.run_phase("throughput", "flash", args.quantity, args.per_viewer_limit, args.caps,
                                bench.throughput_requests(), args.concurrency)
        results["phases"].append(asdict(phase) | {"passed": phase.passed})
        print_phase(phase)
        if args.storm_claims:
            storm = bench.run_phase("sold-out storm", "storm", args.storm_quantity, 1, {},
                                    bench.storm_requests(), args.storm_claims)
            storm.checks["exactly the quantity claimed"] = (
                storm.server["claimed"] == args.storm_quantity == storm.results.get("claimed", 0))
            results["phases"].append(asdict(storm) | {"passed": storm.passed})
            print_phase(storm)
        if not all(p["passed"] for p in results["phases"]):
            status = 1
    except (BenchError, KeyboardInterrupt) as exc:
        status = stopped_early(results, exc)
    finally:
        signal.alarm(0)
        bench.close()
        results["seconds"] = round(time.monotonic() - started, 1)
        if bench.relay.server is not None:
            results["log_problems"] = report_log_problems(bench.relay.server, "relay")
        for p in results["phases"]:
            verdict = "PASS" if p["passed"] else "FAIL"
            target = TARGET_CLAIMS_PER_S[args.store]
            extra = (f"; target >= {target:.0f}/s "
                     f"{'MET' if p['claims_per_s'] >= target else 'NOT MET'}"
                     if p["phase"] == "throughput" else "")
            print(f"summary: {p['phase']}: {p['claims_per_s']:.0f} claims/s, p99 {p['latency_ms']['p99']:.1f} ms, "
                  f"server CPU {p['server_cpu_pct']:.0f} %, checks {verdict}{extra}", flush=True)
        end_run(results, args.json, workdir, args.keep_logs or status == 3)
    return status


if __name__ == "__main__":
    sys.exit(main())
