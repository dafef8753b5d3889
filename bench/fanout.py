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

A cluster (issue 14)
    `--nodes K` (a list: `--nodes 1,2` runs each in turn) starts a redis-server and K
    `relay serve --redis URL` processes, nodes n0..n{K-1} (RELAY_CLUSTER_NODE_ID), node i pinned
    to CPU i % cpus; Redis runs on the server's CPU (its CPU is reported apart). The host
    publishes to n0, the origin. Viewer k posts its offer to node k % K (and room k // K % 3),
    so every other node is an edge pulling the show from n0 once. `--workers K` runs one
    `relay serve --workers K --redis URL` instead: its workers (found from the supervisor's
    `[wN] ready (pid P)` lines) are the nodes, each pinned by the bench to CPU N % cpus; the
    host and the viewers post to the one port, and the kernel spreads them.
    The load (host, viewers) stays on the CPUs after the first, as above: with 2 nodes on a
    2-core machine it shares CPU 1 with n1, so read CPU per viewer-second, not capacity.

    Each step adds per node: CPU % of a core, the viewers it counted (/healthz) and the fps
    of the viewers sent to it; the row's CPU is the sum over the nodes. A step is real time when
    every node stayed under 100 % of its core. An edge, once pulling, keeps pulling for the rest
    of the run ([cluster] edge_linger_s set long), so the steps measure the steady state.

    With 2 nodes or more, before the ladder: the host alone (no edge yet), `--cascade-viewers`
    N viewers all on n0, the host alone again, then N all on n1 (n0 then serves one upstream:
    its CPU above the second host-alone window is what one edge costs the origin, set against
    what each viewer costs it), then the edge pulling with nobody watching. (The origin's
    host-alone CPU drifts by a few ms per second over a run: the upstream is read against the
    window just before the edge, not the one at the start.) The summary compares CPU per viewer-second with 2 nodes
    against 1 node (both with Redis) at each N of the ladder, round by round and in real-time
    steps only (target: the cascade adds <= 10 %), puts the origin's cost per edge against one
    viewer's, and estimates from which N the target holds: an edge's fixed cost (its ingest and
    the origin's upstream) against one node's host-alone cost and per-viewer slope.
    `--rounds R` runs the configurations R times, each round in the other order; the summary
    gives the mean of the rounds and their range.

    Each window also records what the rest of the machine did (other processes' CPU, each CPU's
    busy %, the hypervisor's steal) and flags it when it may have disturbed the figures.

Run (from the repository root, relay installed with `pip install -e '.[bench]'`):

    python -m bench.fanout --ladder 1,10,25,50,75,100 --baseline mediarelay --json fanout.json
    python -m bench.fanout --nodes 1,2 --rounds 2 --ladder 10,25,50 --json cluster.json
    python -m bench.fanout --workers 2 --ladder 25,50 --json workers.json

Everything listens on 127.0.0.1 only. Every wait is bounded and the run stops by itself
(`--max-seconds`); subprocesses are killed on the way out. Linux only (CPU affinity, /proc).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import secrets
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    FPS,
    HEADER,
    SHOW_ID,
    BenchError,
    FanoutBench,
    RelayTarget,
    RelayUnderTest,
    args_record,
    begin_run,
    cpu_seconds,
    end_run,
    http_json,
    report_log_problems,
    room_urls,
    stopped_early,
)
from bench.janus import ENV_NETNS, rerun_in_namespace
from relay_testkit.process import RedisProcess, ServerError, pin

TARGET_VIEWERS_PER_CORE = 60
TARGET_CASCADE_EXTRA = 0.10  # the cascade adds at most 10 % CPU per viewer-second
EDGE_LINGER_S = 3600  # an edge keeps pulling for the rest of the run: steps measure the steady state
READY = re.compile(r"^\[w(\d+)\] ready \(pid (\d+)\): node (\S+) at (\S+)$", re.M)  # relay/workers.py


def run_ladder(bench: FanoutBench, target_name: str, ladder: list[int], outcome: dict[str, Any]) -> None:
    """Start the server and the host, measure idle, then each step; fills `outcome` as it goes
    (so a run stopped early still has the steps done)."""
    target = (bench.start_relay() if target_name == "relay" else bench.start_janus() if target_name == "janus"
              else bench.start_mediarelay())
    outcome.update({"idle": None, "steps": []})
    try:
        stream_key = target.setup() if isinstance(target, RelayTarget) else "none"
        bench.start_publisher(target, stream_key)
        outcome["idle"] = asdict(bench.measure_idle(target))
        print(HEADER, flush=True)
        for n in ladder:
            outcome["steps"].append(asdict(bench.run_step(target, n)))
    finally:
        bench.stop_publisher()
        target.stop()
        outcome["log_problems"] = report_log_problems(target.process, target.name)


# -- a cluster: K nodes, or K workers on one port --------------------------------------------

@dataclass
class Node:
    name: str
    pid: int
    url: str  # its own HTTP port
    cpu: int


class ClusterTarget(RelayTarget):
    """Relay nodes on this machine sharing one Redis: K `relay serve --redis` processes
    (`--nodes K`, the host on n0, the viewers round-robin over the nodes), or the K workers of
    one `relay serve --workers K --redis` (`--workers K`, everyone through the one port). The
    admin API goes to n0, or to the one port; the figures are read from each node's own port."""

    def __init__(self, bench: FanoutBench, kind: str, k: int) -> None:
        self.kind, self.k = kind, k
        self.name = f"{k} {kind}" if k > 1 else f"1 {kind[:-1]}"
        self.cpus = sorted(bench.server_cpus | bench.client_cpus)
        self.deadline = bench.deadline
        tag = f"{kind}{k}-{len(bench.targets)}"  # each cluster its own Redis and data dirs (rounds)
        self.redis = RedisProcess(bench.workdir / f"redis-{tag}", bench.server_cpus)
        key = secrets.token_urlsafe(24)  # the nodes share it: an edge pulls with it
        env = {"RELAY_CLUSTER_EDGE_LINGER_S": str(EDGE_LINGER_S)}
        redis = ("--redis", self.redis.url)
        if kind == "nodes":
            self.relays = [RelayUnderTest(bench.workdir, {self.cpus[i % len(self.cpus)]}, bench.deadline,
                                          name=f"{tag}-n{i}", admin_key=key, args=redis,
                                          env={**env, "RELAY_CLUSTER_NODE_ID": f"n{i}"}) for i in range(k)]
        else:  # the supervisor anywhere; the bench pins each worker
            self.relays = [RelayUnderTest(bench.workdir, set(self.cpus), bench.deadline, name=tag,
                                          admin_key=key, args=("--workers", str(k), *redis),
                                          env={**env, "RELAY_CLUSTER_NODE_ID": "n"})]
        super().__init__(self.relays[0])
        self.nodes: list[Node] = []

    def start(self) -> None:
        try:
            self.redis.start(self.deadline.cap(30))
        except ServerError as exc:
            raise BenchError(str(exc)) from None
        for relay in self.relays:
            relay.start()
        self.base = self.relay.base
        cpu = lambda i: self.cpus[i % len(self.cpus)]  # noqa: E731
        if self.kind == "nodes":
            self.nodes = [Node(f"n{i}", r.pid, r.base, cpu(i)) for i, r in enumerate(self.relays)]
            return
        found = {int(i): (int(pid), node, url) for i, pid, node, url in READY.findall(self.relay.server.log_text())}
        if sorted(found) != list(range(self.k)):
            raise BenchError(f"{self.k} workers expected, ready lines for {sorted(found)}:\n"
                             f"{self.relay.server.log_tail()}")
        self.nodes = [Node(node, pid, url, cpu(i)) for i, (pid, node, url) in sorted(found.items())]
        for node in self.nodes:
            pin(node.pid, {node.cpu})

    def cpu_pids(self) -> dict[str, int]:
        return {node.name: node.pid for node in self.nodes}

    def urls_on(self, nodes: list[Node]) -> list[str]:
        """Round-robin over `nodes` first, then over the rooms."""
        return [url for urls in zip(*(room_urls(node.url) for node in nodes)) for url in urls]

    def whep_urls(self) -> list[str]:
        return self.urls_on(self.nodes) if self.kind == "nodes" else super().whep_urls()

    def node_of(self, url: str) -> str | None:
        return next((node.name for node in self.nodes if url.startswith(node.url + "/")), None)

    def viewers(self) -> int:
        return sum(int(http_json("GET", f"{node.url}/healthz")[1]["viewers"]) for node in self.nodes)

    def figures(self) -> dict[str, Any]:
        """Frames in at the origin (the node whose host is on air), drops summed over the nodes."""
        nodes: dict[str, dict[str, Any]] = {}
        frames_in = dropped = 0
        for node in self.nodes:
            health = http_json("GET", f"{node.url}/healthz")[1]
            detail = self.relay.api("GET", f"/api/shows/{SHOW_ID}", base=node.url)
            video = (detail.get("tracks") or {}).get("video") or {}
            frames = int(video.get("frames", 0))
            origin = int(health["live_shows"]) > 0
            nodes[node.name] = {"viewers": int(health["viewers"]), "origin": origin, "frames": frames}
            dropped += int(self.relay.api("GET", f"/api/shows/{SHOW_ID}/stats", base=node.url)["dropped_frames"])
            frames_in += frames if origin else 0
        return {"frames_in": frames_in, "dropped": dropped, "nodes": nodes}

    def log_problems(self) -> list[str]:
        return [line for relay in self.relays for line in report_log_problems(relay.server, relay.server.name)]

    def stop(self) -> None:
        for relay in self.relays:
            relay.stop()
        self.redis.stop(timeout=10)


def run_cluster(bench: FanoutBench, kind: str, k: int, ladder: list[int], outcome: dict[str, Any]) -> None:
    """A cluster of `k` nodes or workers: the host alone, with 2 nodes or more the cascade's steps
    (viewers all on n0, then all on n1, then the edge with nobody watching), then the ladder."""
    target = ClusterTarget(bench, kind, k)
    bench.targets.append(target)
    outcome.update({"kind": kind, "k": k, "idle": None, "cascade": {}, "steps": []})
    try:
        target.start()
        outcome["nodes"] = {node.name: {"pid": node.pid, "url": node.url, "cpu": node.cpu} for node in target.nodes}
        print(f"{target.name}: " + ", ".join(f"{node.name} on CPU {node.cpu} ({node.url})" for node in target.nodes)
              + f"; redis-server on CPU {sorted(bench.server_cpus)}", flush=True)
        aside = {"redis-server": target.redis.pid}
        if kind == "workers":
            aside["supervisor"] = target.relay.pid
        aside_cpu, t0 = {name: cpu_seconds(pid) for name, pid in aside.items()}, time.monotonic()
        bench.start_publisher(target, target.setup())
        bench.deadline.sleep(bench.args.warmup)  # the host alone is the cascade's baseline: past its start
        outcome["idle"] = asdict(bench.measure_idle(target))
        n = bench.args.cascade_viewers
        if kind == "nodes" and k >= 2 and n > 0:
            first, second = target.nodes[:2]
            cascade = outcome["cascade"]
            print(HEADER, flush=True)
            cascade["all_on_n0"] = asdict(bench.run_step(target, n, target.urls_on([first]), placement="all on n0"))
            # The host alone again, back to back with the edge's windows: the upstream's cost is
            # read against this one (after viewers came and went, as the edge's are).
            cascade["host_alone_after"] = asdict(bench.measure_idle(target, "host only again, no edge yet"))
            print(HEADER, flush=True)
            cascade["all_on_n1"] = asdict(bench.run_step(target, n, target.urls_on([second]), placement="all on n1"))
            cascade["edge_idle"] = asdict(bench.measure_idle(
                target, f"{second.name} pulling the show from {first.name}, nobody watching"))
        print(HEADER, flush=True)
        for n in ladder:
            outcome["steps"].append(asdict(bench.run_step(target, n)))
        wall = time.monotonic() - t0
        outcome["aside_cpu_pct"] = {name: 100 * (cpu_seconds(pid) - aside_cpu[name]) / wall
                                    for name, pid in aside.items()}
        print(f"{target.name}: over the run, " + ", ".join(f"{name} {pct:.1f}%" for name, pct in
                                                           outcome["aside_cpu_pct"].items())
              + " of a core (not counted above)", flush=True)
    finally:
        bench.stop_publisher()
        target.stop()
        outcome["log_problems"] = target.log_problems()


# -- output -----------------------------------------------------------------------------------

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


def compare_janus(relay: dict[str, Any] | None, janus: dict[str, Any] | None) -> dict[str, Any]:
    """Relay against Janus at each N both ran: CPU per viewer-second and their ratio (target
    <= 0.8), and whether each kept up in real time."""
    if not (relay and relay.get("steps") and janus and janus.get("steps")):
        return {"lines": []}
    theirs = {s["viewers"]: s for s in janus["steps"]}
    rows, lines = [], []
    for ours in relay["steps"]:
        other = theirs.get(ours["viewers"])
        if other is None:
            continue
        ratio = ours["cpu_ms_per_viewer_s"] / other["cpu_ms_per_viewer_s"] if other["cpu_ms_per_viewer_s"] else math.inf
        rows.append({"viewers": ours["viewers"], "relay_ms": ours["cpu_ms_per_viewer_s"],
                     "janus_ms": other["cpu_ms_per_viewer_s"], "ratio": ratio,
                     "relay_real_time": ours["real_time"], "janus_real_time": other["real_time"]})
        lines.append(f"N={ours['viewers']}: relay {ours['cpu_ms_per_viewer_s']:.2f} ms/viewer-s "
                     f"({'real time' if ours['real_time'] else 'NOT real time'}), Janus "
                     f"{other['cpu_ms_per_viewer_s']:.2f} ({'real time' if other['real_time'] else 'NOT real time'}):"
                     f" relay/Janus {ratio:.2f} (target <= 0.8: {'MET' if ratio <= 0.8 else 'NOT MET'})")
    return {"steps": rows, "lines": lines}


def spread(values: list[float], fmt: str = ".2f") -> str:
    """The mean of the rounds' values, and their range when there are several."""
    mean = statistics.fmean(values)
    return f"{mean:{fmt}}" + (f" ({min(values):{fmt}} to {max(values):{fmt}})" if len(values) > 1 else "")


def origin_per_edge(c: dict[str, Any]) -> dict[str, Any] | None:
    """One round of K >= 2 nodes: what n0 (the origin) spends on its upstream to n1 against what
    each of its own viewers costs it, and what n1 (the edge) spends, in CPU ms per second."""
    cascade = c.get("cascade") or {}
    if not {"all_on_n0", "host_alone_after", "all_on_n1", "edge_idle"} <= set(cascade) or not c.get("idle"):
        return None
    idle = c["idle"]["node_cpu_pct"]  # the host alone at the start, n0's baseline for its viewers
    again = cascade["host_alone_after"]["node_cpu_pct"]  # and just before the edge: its baseline for the upstream
    on0, on1, edge_idle = cascade["all_on_n0"], cascade["all_on_n1"], cascade["edge_idle"]["node_cpu_pct"]
    viewer_ms = (on0["node_cpu_pct"]["n0"] - (idle["n0"] + again["n0"]) / 2) * 10 / max(1, on0["connected"])
    upstream_ms = (on1["node_cpu_pct"]["n0"] - again["n0"]) * 10  # % of a core x 10: ms per second
    windows = (c["idle"], on0, cascade["host_alone_after"], on1, cascade["edge_idle"])
    return {
        "round": c.get("round"), "disturbed": any(w.get("disturbed") for w in windows),
        "viewers": on0["connected"], "viewer_ms_at_origin": viewer_ms,
        "origin_baseline_drift_ms": (again["n0"] - idle["n0"]) * 10,
        "upstream_ms_with_viewers_on_edge": upstream_ms,
        "upstream_ms_nobody_watching": (edge_idle["n0"] - again["n0"]) * 10,
        "upstream_in_viewers": upstream_ms / viewer_ms if viewer_ms > 0 else math.inf,
        "edge_viewer_ms": (on1["node_cpu_pct"]["n1"] - edge_idle["n1"]) * 10 / max(1, on1["connected"]),
        "edge_ingest_ms": (edge_idle["n1"] - again["n1"]) * 10,
        "origin_ingest_ms": (again["n0"] - again["n1"]) * 10,
    }


def summarize_cluster(configs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per configuration (nodes1, nodes2, workers2...), over its rounds: CPU per viewer-second at
    each N; the cascade (K nodes against 1, both with Redis, round by round); the origin's cost
    per edge against a viewer's."""
    summary: dict[str, Any] = {}
    lines: list[str] = []
    per_n: dict[str, list[dict[int, float]]] = {}  # configuration -> per round: N -> ms per viewer-second
    clean: dict[str, list[dict[int, float]]] = {}  # the same, steps in real time and not disturbed only
    for name, rounds in configs.items():
        per_n[name] = [{s["viewers"]: s["cpu_ms_per_viewer_s"] for s in c.get("steps") or []} for c in rounds]
        clean[name] = [{s["viewers"]: s["cpu_ms_per_viewer_s"] for s in c.get("steps") or []
                        if s["real_time"] and not s.get("disturbed")} for c in rounds]
        ns = sorted({n for r in per_n[name] for n in r})
        if not ns:
            continue
        done = [c for c in rounds if c.get("steps")]
        real_time = [max((s["viewers"] for s in c["steps"] if s["real_time"]), default=0) for c in done]
        summary[name] = {"ms_per_viewer_s": {n: [r[n] for r in per_n[name] if n in r] for n in ns},
                         "largest_real_time_viewers": real_time}
        over = f" over {len(done)} rounds" if len(done) > 1 else ""
        lines.append(f"{name}: CPU ms per viewer-second (all nodes){over}: "
                     + ", ".join(f"N={n}: {spread(summary[name]['ms_per_viewer_s'][n])}" for n in ns)
                     + f"; real time up to N={'/'.join(map(str, real_time))}")

    ones = clean.get("nodes1", [])
    for name in summary:
        if name == "nodes1" or not ones:
            continue
        # Round by round, steps in real time and undisturbed on both sides: a step whose viewers
        # fell behind (the load's CPU full) costs more per viewer-second for reasons of its own.
        pairs = list(zip(clean[name], ones))
        extra = {n: [r[n] / one[n] - 1 for r, one in pairs if one.get(n) and n in r]
                 for n in sorted({n for r in per_n[name] for n in r})}
        measured = {n: sum(1 for r in per_n[name] if n in r) for n in extra}
        left_out = {n: measured[n] - len(e) for n, e in extra.items() if len(e) < measured[n]}
        extra = {n: e for n, e in extra.items() if e}
        if not extra:
            continue
        summary[name]["extra_vs_nodes1"] = extra
        summary[name]["rounds_left_out"] = left_out
        lines.append(f"{name} against nodes1 (both with Redis), CPU per viewer-second: "
                     + ", ".join(f"N={n}: {spread([100 * x for x in e], '+.0f')} %" for n, e in extra.items())
                     + "".join(f"; N={n}: {k} round(s) left out (not in real time, disturbed, or no pair)"
                               for n, k in left_out.items()))
        if name.startswith("nodes"):
            met = {n: statistics.fmean(e) <= TARGET_CASCADE_EXTRA for n, e in extra.items()}
            summary[name]["cascade_target_met"] = met
            lines.append(f"cascade target (adds <= {TARGET_CASCADE_EXTRA:.0%} CPU per viewer-second, mean of the "
                         "rounds): " + ", ".join(f"N={n} {'MET' if ok else 'NOT MET'}" for n, ok in met.items()))

    for name, rounds in configs.items():
        every = [o for o in map(origin_per_edge, rounds) if o is not None]
        found = [o for o in every if not o["disturbed"]] or every  # undisturbed rounds, if any
        if not found:
            continue
        summary.setdefault(name, {})["origin_per_edge"] = every
        if len(found) < len(every):
            lines.append(f"{name}: the cascade's figures below leave out round(s) "
                         + ", ".join(str(o["round"]) for o in every if o["disturbed"])
                         + " (a window disturbed by other processes or the hypervisor's steal)")
        elif found[0]["disturbed"]:
            lines.append(f"{name}: every round's cascade windows were disturbed (other processes or steal): "
                         "read the figures below with care")
        figure = lambda key: spread([o[key] for o in found])  # noqa: E731
        lines.append(f"{name}: n0 (the origin) with the host alone: {figure('origin_baseline_drift_ms')} ms per "
                     "second more after its viewers left than at the start (the baseline's drift)")
        lines.append(f"{name}: at n0 (the origin) each of {found[0]['viewers']} viewers costs "
                     f"{figure('viewer_ms_at_origin')} ms per second; its one upstream to n1 costs it "
                     f"{figure('upstream_ms_with_viewers_on_edge')} with {found[0]['viewers']} viewers on n1, "
                     f"{figure('upstream_ms_nobody_watching')} with nobody watching there")
        lines.append(f"{name}: n1 (the edge) pulling with nobody watching: {figure('edge_ingest_ms')} ms per second "
                     f"above an empty node (the origin's ingest of the host: {figure('origin_ingest_ms')}); each "
                     f"viewer on n1 costs it {figure('edge_viewer_ms')}")
        ratio = statistics.fmean([o["upstream_in_viewers"] for o in found])
        lines.append("origin's cost per edge ~ one viewer (within 1.5 viewers, with viewers on the edge): "
                     + ("MET" if ratio <= 1.5 else "NOT MET")
                     + f" ({spread([o['upstream_in_viewers'] for o in found], '.1f')} viewers)")
        # The edge's fixed cost E (its ingest + the origin's upstream) against one node's I + N v:
        # E / (I + N v) <= 10 % from N = (E / 10 % - I) / v on.
        fixed = statistics.fmean([o["edge_ingest_ms"] + o["upstream_ms_with_viewers_on_edge"] for o in found])
        one = [c for c in configs.get("nodes1", []) if c.get("idle") and len(c.get("steps") or []) >= 2]
        if one:
            ingest = statistics.fmean([c["idle"]["server_cpu_pct"] * 10 for c in one])
            viewer = statistics.fmean([statistics.linear_regression(
                [s["connected"] for s in c["steps"]], [s["server_cpu_pct"] * 10 for s in c["steps"]])[0] for c in one])
            from_n = (fixed / TARGET_CASCADE_EXTRA - ingest) / viewer if viewer > 0 else math.inf
            summary[name]["cascade_fixed_ms"] = fixed
            summary[name]["cascade_target_from_viewers"] = from_n
            lines.append(f"{name}: an edge costs the cluster a fixed {fixed:.1f} ms per second (its ingest + the "
                         f"origin's upstream); one node: host {ingest:.1f} + {viewer:.2f} per viewer (fit) -> "
                         + (f"the cascade adds <= {TARGET_CASCADE_EXTRA:.0%} from about N = {from_n:.0f} viewers "
                            "(estimate)" if viewer > 0 else "no estimate (the per-viewer slope is not positive)"))
    summary["lines"] = lines
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fan-out load test of the relay (see the module docstring).")
    ints = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
    parser.add_argument("--ladder", type=ints, default=[1, 10, 25, 50, 75, 100],
                        help="viewer counts, comma-separated (default 1,10,25,50,75,100)")
    parser.add_argument("--step-seconds", type=float, default=20.0,
                        help="per step, after all viewers joined: warm-up + measurement window (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up part of each step (default 5)")
    parser.add_argument("--baseline", choices=("none", "mediarelay", "janus"), default="none",
                        help="also measure aiortc's MediaRelay (decode once, encode per viewer)")
    parser.add_argument("--baseline-ladder", type=ints, default=[1, 2, 4],
                        help="viewer counts for the baseline (default 1,2,4)")
    parser.add_argument("--nodes", type=ints, default=[],
                        help="a cluster: K `relay serve --redis` nodes with a redis-server, node i on CPU i %% cpus;"
                             " a list runs each in turn (1,2: the cascade against one node). Default: one relay, "
                             "no Redis")
    parser.add_argument("--workers", type=ints, default=[],
                        help="a cluster of K workers: `relay serve --workers K --redis`, one port "
                             "(a list: each in turn)")
    parser.add_argument("--cascade-viewers", type=int, default=25,
                        help="with --nodes 2 or more: viewers of the steps all on n0, then all on n1 "
                             "(default 25; 0: none)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --nodes/--workers: run the configurations this many times, each round in the "
                             "other order; the summary gives the mean and the range (default 1)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard cap for the whole run (default 600)")
    parser.add_argument("--viewers-per-process", type=int, default=None,
                        help="viewers per worker process (default 100 counting RTP, 25 with the jitter buffer)")
    parser.add_argument("--viewer-kind", choices=("rtp", "jitter"), default="rtp",
                        help="rtp: viewers count RTP at the socket after ICE+DTLS (hundreds per core); "
                             "jitter: aiortc's jitter buffer assembles frames (default rtp)")
    parser.add_argument("--decode-viewers", type=int, default=2,
                        help="with --viewer-kind rtp, this many viewers per step decode with PyAV (default 2)")
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
    if min(args.nodes + args.workers + [args.rounds], default=1) < 1:
        parser.error("--nodes and --workers need counts of 1 or more")
    if args.viewers_per_process is None:
        args.viewers_per_process = 100 if args.viewer_kind == "rtp" else 25
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline == "janus" and not os.environ.get(ENV_NETNS):  # Janus offers no loopback candidates
        return rerun_in_namespace(__spec__.name, sys.argv[1:] if argv is None else argv, args.max_seconds + 60)
    run = begin_run(args.max_seconds, __spec__.name, argv, "the viewers")
    deadline, server_cpus, client_cpus, machine, command = (
        run.deadline, run.server_cpus, run.client_cpus, run.machine, run.command)
    print(f"machine: {machine['nproc']} CPU(s), {machine['cpu_model']}; Python {machine['python']}, "
          f"aiortc {machine['aiortc']}, av {machine['av']}", flush=True)
    print(f"server on CPU {sorted(server_cpus)}, host and viewers on CPU {sorted(client_cpus)}", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": command,
                               "machine": machine, "args": args_record(args)}
    bench = FanoutBench(args, deadline, server_cpus, client_cpus, workdir)
    status = 0
    started = time.monotonic()
    try:
        bench.encode()
        ladders = args.ladder + (args.baseline_ladder if args.baseline == "mediarelay" else [])
        clusters = [("nodes", k) for k in args.nodes] + [("workers", k) for k in args.workers]
        if any(kind == "nodes" and k >= 2 for kind, k in clusters):
            ladders.append(args.cascade_viewers)
        bench.spawn_viewer_workers(math.ceil(max(ladders) / args.viewers_per_process))
        window = f"{args.warmup:.0f}s warm-up + {args.step_seconds - args.warmup:.0f}s window per step"
        if not clusters:
            print(f"\n== relay (python -m relay serve), {len(bench.workers)} viewer process(es), {window}",
                  flush=True)
            run_ladder(bench, "relay", args.ladder, results.setdefault("relay", {}))
        for round_no in range(1, args.rounds + 1 if clusters else 1):
            for kind, k in clusters if round_no % 2 else clusters[::-1]:  # (each round the other order)
                command = f"relay serve --redis URL, {k} process(es)" if kind == "nodes" else \
                    f"relay serve --workers {k} --redis URL"
                print(f"\n== {kind}={k} ({command}), round {round_no} of {args.rounds}, "
                      f"{len(bench.workers)} viewer process(es), {window}", flush=True)
                outcome: dict[str, Any] = {"round": round_no}
                results.setdefault("clusters", {}).setdefault(f"{kind}{k}", []).append(outcome)
                run_cluster(bench, kind, k, args.ladder, outcome)
        if args.baseline == "mediarelay":
            print("\n== baseline: aiortc MediaRelay (bench/mediarelay_server.py)", flush=True)
            run_ladder(bench, "mediarelay", args.baseline_ladder, results.setdefault("mediarelay", {}))
        if args.baseline == "janus":
            print(f"\n== baseline: Janus VideoRoom (event_loops = 1), {len(bench.workers)} viewer process(es), "
                  f"{window}", flush=True)
            run_ladder(bench, "janus", args.ladder, results.setdefault("janus", {}))
    except (BenchError, KeyboardInterrupt) as exc:
        status = stopped_early(results, exc)
    finally:
        signal.alarm(0)
        bench.close()
        results["seconds"] = round(time.monotonic() - started, 1)
        summary = summarize(results.get("relay"), results.get("mediarelay"))
        if results.get("janus"):
            summary["janus"] = compare_janus(results.get("relay"), results["janus"])
            summary["lines"] += summary["janus"].pop("lines")
        if results.get("clusters"):
            summary["clusters"] = summarize_cluster(results["clusters"])
            summary["lines"] += summary["clusters"].pop("lines")
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
