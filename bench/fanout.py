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

Run (from the repository root, relay installed with `pip install -e '.[bench]'`):

    python -m bench.fanout --ladder 1,10,25,50,75,100 --baseline mediarelay --json fanout.json

Everything listens on 127.0.0.1 only. Every wait is bounded and the run stops by itself
(`--max-seconds`); subprocesses are killed on the way out. Linux only (CPU affinity, /proc).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.harness import (
    FPS,
    HEADER,
    BenchError,
    FanoutBench,
    RelayTarget,
    args_record,
    begin_run,
    end_run,
    report_log_problems,
    stopped_early,
)

TARGET_VIEWERS_PER_CORE = 60


def run_ladder(bench: FanoutBench, target_name: str, ladder: list[int], outcome: dict[str, Any]) -> None:
    """Start the server and the host, measure idle, then each step; fills `outcome` as it goes
    (so a run stopped early still has the steps done)."""
    target = bench.start_relay() if target_name == "relay" else bench.start_mediarelay()
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
        bench.spawn_viewer_workers(math.ceil(max(ladders) / args.viewers_per_process))
        print(f"\n== relay (python -m relay serve), {len(bench.workers)} viewer process(es), "
              f"{args.warmup:.0f}s warm-up + {args.step_seconds - args.warmup:.0f}s window per step", flush=True)
        run_ladder(bench, "relay", args.ladder, results.setdefault("relay", {}))
        if args.baseline == "mediarelay":
            print("\n== baseline: aiortc MediaRelay (bench/mediarelay_server.py)", flush=True)
            run_ladder(bench, "mediarelay", args.baseline_ladder, results.setdefault("mediarelay", {}))
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
