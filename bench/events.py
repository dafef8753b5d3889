"""Event-delivery load test: operator call -> event received by every SSE subscriber.

What it measures
    A `relay serve` subprocess (pinned to CPU 0) gets a show with HQ and three mirror rooms and
    a few products (one with a mirror-room price). N SSE subscribers (`--subscribers`, default
    1,000) connect, round-robin over /events/{show}, /events/{show}/d1, /d2 and /d3, from worker
    processes (`--per-process`, default 250) pinned to the other CPUs. Each subscriber is a bare
    asyncio protocol that stamps time.time() when the bytes completing an event arrive and parses
    them after the run, so the load generator adds as little delay as it can.

    The operator then makes K calls (`--events`, default 50), `--interval-ms` apart (200):
    pin a product, unpin, pin the next, ... each of which publishes exactly one event
    (product.pinned / product.unpinned). For each call the bench stamps time.time() just before
    sending it. Per (event, subscriber) pair:

      latency          subscriber receive time - operator send time, p50/p95/p99/max
      server part      event wall_time (stamped by the server when it publishes) - send time
      fan-out part     receive time - event wall_time
      call RTT         the operator's HTTP round trip
      complete         subscribers that got every event exactly once, in order (must be all N)
      server CPU       % of one core over the operator phase, and CPU ms per event

    All processes run on one machine, so time.time() stamps compare across them. The target is
    p99 <= 100 ms at 1,000 subscribers. `--subscribers 1000,2000` runs several steps on one server.

Run (from the repository root, relay installed with `pip install -e '.[bench]'`):

    python -m bench.events --subscribers 1000 --json events.json

Everything listens on 127.0.0.1 only; every wait is bounded and the run stops by itself
(`--max-seconds`, default 300); subprocesses are killed on the way out. Linux only.
Exit status: 0 every step delivered every event to every subscriber and met the target,
1 otherwise, 3 the run stopped early.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

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

SHOW_ID = "events"
MIRRORS = ("d1", "d2", "d3")
PRODUCTS = ("p1", "p2", "p3")
TARGET_P99_MS = 100.0


# -- subscribers (worker processes) -----------------------------------------------------------

def subscriber_worker(cpus: set[int], conn: Connection) -> None:
    """A process of raw SSE readers in one uvloop loop.

    Commands:
      ("connect", host, port, [(index, path)], parallel, timeout)
          -> ("connected", {"ok": n, "failed": [(index, error)], "max_seq": [max seq seen per reader]})
      ("report", after_seq)
          -> ("report", [{"index", "path", "events": [(seq, type, product, wall_time, received)],
                          "closed": reason or None, "bad": [malformed blocks]}])
      ("close",) -> ("closed", n); ("exit",)
    """
    os.sched_setaffinity(0, cpus)
    import asyncio
    import gc

    gc.disable()  # short-lived process, few objects: no collector pauses in the middle of an event
    readers: list[SseReader] = []

    class SseReader(asyncio.Protocol):
        """GET an event stream over HTTP/1.1 (chunked) and keep (arrival time, raw event block)."""

        def __init__(self, index: int, host: str, path: str) -> None:
            self.index = index
            self.path = path
            self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
                            f"Cache-Control: no-cache\r\n\r\n").encode()
            self.head = b""
            self.status = 0
            self.chunked = False
            self.raw = b""       # body bytes not yet de-chunked
            self.body = b""      # de-chunked bytes not yet split into events
            self.blocks: list[tuple[float, bytes]] = []
            self.closed: str | None = None
            self.ready = asyncio.get_running_loop().create_future()
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
            self.transport.write(self.request)

        def data_received(self, data: bytes) -> None:
            now = time.time()
            if not self.status:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, data = self.head[:end].decode("latin-1"), self.head[end + 4:]
                self.status = int(head.split(" ", 2)[1])
                self.chunked = bool(re.search(r"(?im)^transfer-encoding:\s*chunked", head))
                if self.status != 200:
                    self._fail(f"HTTP {self.status}")
                    return
            if self.chunked:
                self.raw += data
                while True:
                    line_end = self.raw.find(b"\r\n")
                    if line_end < 0:
                        break
                    size = int(self.raw[:line_end].split(b";")[0], 16)
                    if size == 0:
                        self._fail("stream ended by the server")
                        return
                    if len(self.raw) < line_end + 2 + size + 2:
                        break
                    self.body += self.raw[line_end + 2:line_end + 2 + size]
                    self.raw = self.raw[line_end + 2 + size + 2:]
            else:
                self.body += data
            while True:
                end = self.body.find(b"\n\n")
                if end < 0:
                    break
                self.blocks.append((now, self.body[:end]))
                self.body = self.body[end + 2:]
                if not self.ready.done():
                    self.ready.set_result(None)  # the "retry:" block: the stream is open

        def _fail(self, reason: str) -> None:
            self.closed = self.closed or reason
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(reason))
            if self.transport is not None:
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self.closed = self.closed or (f"connection lost: {exc}" if exc else "closed by the server")
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(self.closed))

        def events(self, after: int) -> tuple[list[tuple], list[str]]:
            out: list[tuple] = []
            bad: list[str] = []
            for received, block in self.blocks:
                fields: dict[str, str] = {}
                for line in block.decode().split("\n"):
                    if line.startswith(":") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key] = value.removeprefix(" ")
                if "data" not in fields:
                    continue
                try:
                    data = json.loads(fields["data"])
                    seq = int(fields["id"])
                    if data["seq"] != seq or data["type"] != fields.get("event"):
                        raise ValueError("id/event fields disagree with the data")
                except (ValueError, KeyError, TypeError) as exc:
                    bad.append(f"{exc}: {block[:120]!r}")
                    continue
                if seq > after:
                    product = (data.get("product") or {}).get("id")
                    out.append((seq, data["type"], product, data.get("wall_time"), received))
            return out, bad

        def max_seq(self) -> int:
            seqs = [int(m.group(1)) for _, b in self.blocks for m in [re.search(rb"(?m)^id: ?(\d+)", b)] if m]
            return max(seqs, default=0)

    async def connect(host: str, port: int, assigned: list[tuple[int, str]], parallel: int,
                      timeout: float) -> dict:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(parallel)
        failed: list[tuple[int, str]] = []
        batch: list[SseReader] = []

        async def one(index: int, path: str) -> None:
            async with gate:
                reader = SseReader(index, host, path)
                try:
                    await asyncio.wait_for(loop.create_connection(lambda: reader, host, port), timeout)
                    await asyncio.wait_for(asyncio.shield(reader.ready), timeout)
                except (TimeoutError, OSError, ConnectionError) as exc:
                    failed.append((index, f"{type(exc).__name__}: {exc}"))
                    if reader.transport is not None:
                        reader.transport.close()
                    return
                batch.append(reader)

        await asyncio.gather(*(one(i, p) for i, p in assigned))
        readers.extend(batch)
        return {"ok": len(batch), "failed": failed, "max_seq": [r.max_seq() for r in batch]}

    async def handle(command: str, args: tuple) -> Any:
        if command == "connect":
            return ("connected", await connect(*args))
        if command == "report":
            (after,) = args
            report = []
            for r in readers:
                events, bad = r.events(after)
                report.append({"index": r.index, "path": r.path, "events": events, "closed": r.closed, "bad": bad})
            return ("report", report)
        if command in ("close", "exit"):
            for r in readers:
                if r.transport is not None:
                    r.transport.close()
            count = len(readers)
            readers.clear()
            await asyncio.sleep(0.1)
            return ("closed", count) if command == "close" else None
        return ("error", f"unknown command {command!r}")

    serve_commands(conn, handle)


# -- the bench ------------------------------------------------------------------------------

@dataclass
class Call:
    index: int
    action: str  # "pin" | "unpin"
    product: str
    sent: float
    done: float
    status: int


@dataclass
class StepResult:
    subscribers: int
    connected: int
    worker_processes: int
    connect_seconds: float
    events: int
    interval_ms: float
    pairs: int
    latency_ms: dict[str, float]
    server_part_ms: dict[str, float]
    fanout_part_ms: dict[str, float]
    call_rtt_ms: dict[str, float]
    per_event_last_ms: dict[str, float]
    complete_subscribers: int
    missing_pairs: int
    duplicate_pairs: int
    out_of_order_subscribers: int
    disconnected: int
    by_room_p99_ms: dict[str, float]
    server_cpu_pct: float
    server_cpu_ms_per_event: float
    loadgen_cpu_pct: float
    loadgen_cores: int
    meets_target: bool
    problems: list[str] = field(default_factory=list)
    per_event: list[dict[str, Any]] = field(default_factory=list)  # per call: seq, server part, first/p50/last ms


def stats_ms(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "p99": percentile(values, 99),
            "max": max(values, default=math.nan), "mean": statistics.fmean(values) if values else math.nan}


class Operator:
    """The operator's admin client: one kept-alive HTTP connection."""

    def __init__(self, base: str, admin_key: str) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        self.headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"}

    def post(self, path: str) -> int:
        self.conn.request("POST", path, body=b"{}", headers=self.headers)
        res = self.conn.getresponse()
        res.read()
        return res.status

    def close(self) -> None:
        self.conn.close()


class EventBench(LoadBench):
    def __init__(self, args: argparse.Namespace, deadline: Deadline, server_cpus: set[int], client_cpus: set[int],
                 workdir: Path) -> None:
        super().__init__(args, deadline, server_cpus, client_cpus, workdir)
        self.relay = RelayUnderTest(workdir, server_cpus, deadline, store=args.store)
        self.pinned: str | None = None  # the product on the card now
        self.pins = 0

    def setup_show(self) -> None:
        self.relay.create_show("Event bench", SHOW_ID, MIRRORS)
        for i, product in enumerate(PRODUCTS):
            body: dict[str, Any] = {"id": product, "title": f"Product {i + 1}", "price": 10 + i,
                                    "image_url": f"https://img.example/{product}.png",
                                    "link": f"https://shop.example/{product}"}
            if i == 0:
                body["rooms"] = {"d1": {"price": 8.5, "hidden": False}}
            self.relay.api("POST", f"/api/shows/{SHOW_ID}/products", body, 201)

    def ensure_workers(self, count: int) -> None:
        while len(self.workers) < count:
            self.spawn(f"subscribers-{len(self.workers)}", subscriber_worker)

    def close(self) -> None:
        super().close()
        self.relay.stop()

    def run_step(self, n: int) -> StepResult:
        args = self.args
        per = args.per_process
        self.ensure_workers(math.ceil(n / per))
        used = self.workers[:math.ceil(n / per)]
        paths = [f"/events/{SHOW_ID}"] + [f"/events/{SHOW_ID}/{d}" for d in MIRRORS]
        parts = urlsplit(self.relay.base)
        t = time.monotonic()
        for w, worker in enumerate(used):
            assigned = [(k, paths[k % len(paths)]) for k in range(w * per, min(n, (w + 1) * per))]
            # at most ~100 connects in flight in all: the server's listen backlog is 128
            worker.send("connect", parts.hostname, parts.port, assigned, max(1, 100 // len(used)), 20.0)
        replies = [worker.expect("connected", self.deadline.cap(120)) for worker in used]
        connect_seconds = time.monotonic() - t
        connected = sum(r["ok"] for r in replies)
        failed = [f for r in replies for f in r["failed"]]
        problems: list[str] = []
        if failed:
            problems.append(f"{len(failed)} subscriber(s) could not connect, e.g. {failed[0][1]}")
        baseline = max((s for r in replies for s in r["max_seq"]), default=0)
        print(f"  {connected}/{n} subscribers connected in {connect_seconds:.1f} s "
              f"({len(used)} process(es)); events so far: seq {baseline}", flush=True)
        self.deadline.sleep(args.settle)

        operator = Operator(self.relay.base, self.relay.admin_key)
        calls: list[Call] = []
        sampler = CpuSampler({"server": [self.relay.pid], "loadgen": [w.pid for w in used]})
        try:
            with sampler:
                start = time.monotonic()
                for k in range(args.events):
                    self.deadline.sleep(max(0.0, start + k * args.interval_ms / 1000 - time.monotonic()))
                    if self.pinned is None:
                        product = PRODUCTS[self.pins % len(PRODUCTS)]
                        action, path = "pin", f"/api/shows/{SHOW_ID}/products/{product}/pin"
                        self.pinned, self.pins = product, self.pins + 1
                    else:
                        product, action, path = self.pinned, "unpin", f"/api/shows/{SHOW_ID}/unpin"
                        self.pinned = None
                    sent = time.time()
                    status = operator.post(path)
                    calls.append(Call(k, action, product, sent, time.time(), status))
                self.deadline.sleep(args.drain)
        finally:
            operator.close()
        # CPU over exactly K operator cycles (one call, its fan-out, the rest of the interval)
        t_first = calls[0].sent
        t_last = t_first + len(calls) * args.interval_ms / 1000
        reports: list[dict] = []
        for worker in used:
            worker.send("report", baseline)
        for worker in used:
            reports.extend(worker.expect("report", self.deadline.cap(60)))
        for worker in used:
            worker.send("close")
        for worker in used:
            worker.expect("closed", self.deadline.cap(30))

        bad_calls = [c for c in calls if c.status != 200]
        if bad_calls:
            problems.append(f"{len(bad_calls)} operator call(s) failed, e.g. {bad_calls[0].action} -> "
                            f"HTTP {bad_calls[0].status}")
        # The calls' events, in order: the seqs every subscriber should have (from all readers'
        # views, matched to the calls by order; type and product must agree).
        seen: dict[int, tuple[str, str | None, float | None]] = {}
        for report in reports:
            for seq, type_, product, wall, _ in report["events"]:
                seen.setdefault(seq, (type_, product, wall))
        ordered = sorted(seen)
        expected_types = {"pin": "product.pinned", "unpin": "product.unpinned"}
        seq_of_call: dict[int, int] = {}
        if len(ordered) != len(calls):
            problems.append(f"{len(calls)} operator calls but {len(ordered)} distinct events after seq {baseline}")
        for call, seq in zip(calls, ordered):
            type_, event_product, _ = seen[seq]
            if type_ != expected_types[call.action] or event_product != call.product:
                problems.append(f"call {call.index} ({call.action} {call.product}) matched event {seq} "
                                f"({type_} {event_product})")
            seq_of_call[call.index] = seq
        sent_of_seq = {seq_of_call[c.index]: c.sent for c in calls if c.index in seq_of_call}
        wanted = set(sent_of_seq)

        latencies: list[float] = []
        server_part: list[float] = []
        fanout_part: list[float] = []
        last_by_seq: dict[int, float] = {}
        all_by_seq: dict[int, list[float]] = {}
        wall_of_seq: dict[int, float] = {}
        by_room: dict[str, list[float]] = {}
        complete = missing = duplicates = out_of_order = disconnected = 0
        for report in reports:
            mine: list[tuple[int, str, str | None, float | None, float]] = [
                e for e in report["events"] if e[0] in wanted]
            seqs = [e[0] for e in mine]
            duplicates += len(seqs) - len(set(seqs))
            missing += len(wanted - set(seqs))
            if seqs != sorted(seqs):
                out_of_order += 1
            if set(seqs) == wanted and len(seqs) == len(wanted) and seqs == sorted(seqs):
                complete += 1
            if report["closed"]:
                disconnected += 1
            if report["bad"]:
                problems.append(f"subscriber {report['index']}: malformed event(s), e.g. {report['bad'][0]}")
            room = report["path"].rsplit("/", 1)[-1] if report["path"].count("/") == 3 else "hq"
            for seq, _, _, wall, received in mine:
                ms = 1000 * (received - sent_of_seq[seq])
                latencies.append(ms)
                by_room.setdefault(room, []).append(ms)
                last_by_seq[seq] = max(last_by_seq.get(seq, 0.0), ms)
                all_by_seq.setdefault(seq, []).append(ms)
                if wall is not None:
                    wall_of_seq[seq] = wall
                    server_part.append(1000 * (wall - sent_of_seq[seq]))
                    fanout_part.append(1000 * (received - wall))
        if disconnected:
            closed = sorted({r["closed"] for r in reports if r["closed"]})
            problems.append(f"{disconnected} subscriber(s) disconnected: {', '.join(closed)[:300]}")
        server_cpu, server_share = sampler.share("server", t_first, t_last)
        _, loadgen_share = sampler.share("loadgen", t_first, t_last)
        lat = stats_ms(latencies)
        result = StepResult(
            subscribers=n, connected=connected, worker_processes=len(used), connect_seconds=round(connect_seconds, 2),
            events=len(calls), interval_ms=args.interval_ms, pairs=len(latencies), latency_ms=lat,
            server_part_ms=stats_ms(server_part), fanout_part_ms=stats_ms(fanout_part),
            call_rtt_ms=stats_ms([1000 * (c.done - c.sent) for c in calls]),
            per_event_last_ms=stats_ms(list(last_by_seq.values())),
            complete_subscribers=complete, missing_pairs=missing, duplicate_pairs=duplicates,
            out_of_order_subscribers=out_of_order, disconnected=disconnected,
            by_room_p99_ms={room: percentile(v, 99) for room, v in sorted(by_room.items())},
            server_cpu_pct=100 * server_share, server_cpu_ms_per_event=1000 * server_cpu / max(1, len(calls)),
            loadgen_cpu_pct=100 * loadgen_share, loadgen_cores=len(self.client_cpus),
            meets_target=(complete == n and not problems and lat["p99"] <= TARGET_P99_MS), problems=problems,
            per_event=[{"call": c.index, "action": c.action, "seq": seq_of_call.get(c.index),
                        "server_ms": round(1000 * (wall_of_seq[seq_of_call[c.index]] - c.sent), 2)
                        if seq_of_call.get(c.index) in wall_of_seq else None,
                        "first_ms": round(min(all_by_seq.get(seq_of_call.get(c.index, -1), [math.nan])), 2),
                        "p50_ms": round(percentile(all_by_seq.get(seq_of_call.get(c.index, -1), []), 50), 2),
                        "last_ms": round(max(all_by_seq.get(seq_of_call.get(c.index, -1), [math.nan])), 2)}
                       for c in calls])
        print_step(result)
        self.deadline.sleep(args.settle)
        return result


def fmt(d: dict[str, float]) -> str:
    return f"p50 {d['p50']:.1f}  p95 {d['p95']:.1f}  p99 {d['p99']:.1f}  max {d['max']:.1f}"


def print_step(r: StepResult) -> None:
    print(f"  delivery latency ms     {fmt(r.latency_ms)}   ({r.pairs} event x subscriber pairs)")
    print(f"    server part (-> publish) {fmt(r.server_part_ms)}")
    print(f"    fan-out part (publish ->) {fmt(r.fanout_part_ms)}")
    print(f"    last subscriber per event {fmt(r.per_event_last_ms)}")
    print(f"    p99 by room: {', '.join(f'{k} {v:.1f}' for k, v in r.by_room_p99_ms.items())}")
    print(f"  operator call RTT ms    {fmt(r.call_rtt_ms)}")
    print(f"  subscribers with every event, once, in order: {r.complete_subscribers}/{r.subscribers} "
          f"(missing pairs {r.missing_pairs}, duplicates {r.duplicate_pairs}, out of order "
          f"{r.out_of_order_subscribers}, disconnected {r.disconnected})")
    print(f"  server CPU {r.server_cpu_pct:.1f} % of one core ({r.server_cpu_ms_per_event:.1f} ms per event); "
          f"subscriber processes {r.loadgen_cpu_pct:.1f} % of {r.loadgen_cores} core(s)")
    print(f"  target p99 <= {TARGET_P99_MS:.0f} ms with every event delivered: "
          f"{'MET' if r.meets_target else 'NOT MET'}")
    for problem in r.problems:
        print(f"      ! {problem}")
    sys.stdout.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Event-delivery load test of the relay (see the module docstring).")
    parser.add_argument("--subscribers", default="1000",
                        help="SSE subscribers; a comma-separated list runs one step each (default 1000)")
    parser.add_argument("--per-process", type=int, default=250, help="subscribers per worker process (250)")
    parser.add_argument("--events", type=int, default=50, help="operator calls (pin / unpin) per step (50)")
    parser.add_argument("--interval-ms", type=float, default=200.0, help="between two operator calls (200)")
    parser.add_argument("--drain", type=float, default=2.0, help="wait after the last call before reading (2 s)")
    parser.add_argument("--settle", type=float, default=1.0, help="pause after connecting and between steps (1 s)")
    parser.add_argument("--store", choices=("embedded", "redis"), default="embedded",
                        help="commerce store: 'embedded' (SQLite) or 'redis' (a redis-server started here on the "
                             "server's CPU; events go through Redis pub/sub)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="hard cap for the whole run (300)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with the server log")
    args = parser.parse_args(argv)
    try:
        args.ladder = [int(x) for x in args.subscribers.split(",") if x.strip()]
    except ValueError:
        parser.error("--subscribers: a number or a comma-separated list")
    if not args.ladder or min(args.ladder) < 1 or args.per_process < 1 or args.events < 1:
        parser.error("--subscribers, --per-process and --events must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = begin_run(args.max_seconds, __spec__.name, argv, "the subscribers")
    deadline, server_cpus, client_cpus, machine, command = (
        run.deadline, run.server_cpus, run.client_cpus, run.machine, run.command)
    raise_fd_limit()
    print(f"machine: {machine['nproc']} CPU(s), {machine['cpu_model']}; Python {machine['python']}, "
          f"aiohttp {machine['aiohttp']}, uvloop {machine['uvloop']}", flush=True)
    print(f"server on CPU {sorted(server_cpus)} (store: {args.store}), subscribers and operator on CPU {sorted(client_cpus)}", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="events-bench-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": command, "machine": machine,
                               "args": args_record(args),
                               "steps": []}
    bench = EventBench(args, deadline, server_cpus, client_cpus, workdir)
    status = 0
    started = time.monotonic()
    try:
        bench.relay.start()
        print(f"relay pid {bench.relay.pid} at {bench.relay.base}", flush=True)
        bench.setup_show()
        for n in args.ladder:
            print(f"\n== {n} subscribers, {args.events} operator calls {args.interval_ms:.0f} ms apart", flush=True)
            results["steps"].append(asdict(bench.run_step(n)))
        if not all(s["meets_target"] for s in results["steps"]):
            status = 1
    except (BenchError, KeyboardInterrupt) as exc:
        status = stopped_early(results, exc)
    finally:
        signal.alarm(0)
        bench.close()
        results["seconds"] = round(time.monotonic() - started, 1)
        if bench.relay.server is not None:
            results["log_problems"] = report_log_problems(bench.relay.server, "relay")
        for s in results["steps"]:
            print(f"summary: {s['subscribers']} subscribers: p50 {s['latency_ms']['p50']:.1f} ms, "
                  f"p99 {s['latency_ms']['p99']:.1f} ms, max {s['latency_ms']['max']:.1f} ms; "
                  f"{s['complete_subscribers']}/{s['subscribers']} got every event; server CPU "
                  f"{s['server_cpu_pct']:.0f} %; target p99 <= {TARGET_P99_MS:.0f} ms "
                  f"{'MET' if s['meets_target'] else 'NOT MET'}", flush=True)
        end_run(results, args.json, workdir, args.keep_logs or status == 3)
    return status


if __name__ == "__main__":
    sys.exit(main())
