"""Restream bench: what each restream target of a show costs the relay.

What it measures
    `relay serve` pinned to CPU 0 (bench/harness.py's RelayUnderTest); the synthetic host
    publishing 720p30 H.264 (~2 Mbps, pre-encoded, looped) + Opus over WHIP from a worker process
    on the other CPUs; Debian's ffmpeg as each platform (`ffmpeg -listen 1 -i
    rtmp://127.0.0.1:P/app/KEY -c copy -f null -`, also on the other CPUs). The relay's CPU (% of
    one core, all its threads: the event loop and the show's AAC encoder thread) over a window of
    --seconds, after a warm-up: with the host alone, then with 1 target, then with 3 targets
    (the targets of a step are removed before the next). Reported per step: the relay's CPU,
    the CPU per target above the host alone, each target's state and send rate. The first
    target of a show also starts the show's Opus -> AAC conversion (once per show, shared by
    every target); "each further target" is (3 targets - 1 target) / 2.

Run (from the repository root, relay installed with `pip install -e '.[bench]'`; needs ffmpeg):

    python -m bench.restream --seconds 20 --json restream.json

Everything listens on 127.0.0.1 only; every wait is bounded, the run stops by itself
(`--max-seconds`, default 300) and subprocesses are killed on the way out. Linux only (CPU
affinity, /proc).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    CLK_TCK,
    FPS,
    SHOW_ID,
    BenchError,
    MachineWindow,
    RelayUnderTest,
    Worker,
    args_record,
    begin_run,
    cpu_seconds,
    end_run,
    machine_cpu_seconds,
    publisher_worker,
    report_log_problems,
    stopped_early,
)
from relay_testkit.process import free_port

KEY = secrets.token_urlsafe(12)  # the platforms' stream key (the relay must never show it)


def listening(port: int) -> bool:
    """Something listens on 127.0.0.1:`port` (read from the kernel: a probe connection would be
    the receiver's one connection)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(row.split()[1] == wanted and row.split()[3] == "0A" for row in list(table)[1:])


class Receiver:
    """ffmpeg as an RTMP platform: listens once, takes the stream, throws it away."""

    def __init__(self, cpus: set[int], workdir: Path, index: int) -> None:
        self.port = free_port()
        self.url = f"rtmp://127.0.0.1:{self.port}/app/{KEY}"
        log = open(workdir / f"receiver-{index}.log", "wb")
        self.proc = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", "-listen", "1", "-i", self.url,
             "-c", "copy", "-f", "null", "-"], stdout=log, stderr=log,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        end = time.monotonic() + 10
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise BenchError(f"ffmpeg did not listen on port {self.port} (see {workdir}/receiver-{index}.log)")
            time.sleep(0.05)  # polling the kernel's socket table, with a deadline

    def close(self) -> None:
        try:
            self.proc.wait(5)  # (unpublished: it ends by itself)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def loop_thread_seconds(pid: int) -> float:
    """CPU seconds of the process's main thread: the relay's event loop."""
    with open(f"/proc/{pid}/task/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def relay_cpu(relay: RelayUnderTest, load: list[int], seconds: float, deadline: Any) -> dict[str, Any]:
    """The relay's CPU (% of one core: all of it, and its event loop's) over `seconds`, and what
    else the machine did meanwhile (beside the relay and the `load`: the host and the receivers)."""
    machine, t0 = machine_cpu_seconds(), time.monotonic()
    cpu, loop, load_cpu = cpu_seconds(relay.pid), loop_thread_seconds(relay.pid), sum(map(cpu_seconds, load))
    deadline.sleep(seconds)  # the measurement window
    wall = time.monotonic() - t0
    pct = 100 * (cpu_seconds(relay.pid) - cpu) / wall
    loop_pct = 100 * (loop_thread_seconds(relay.pid) - loop) / wall
    load_pct = 100 * (sum(map(cpu_seconds, load)) - load_cpu) / wall
    window = MachineWindow.between(machine, machine_cpu_seconds(), wall, pct + load_pct)
    return {"relay_cpu_pct": round(pct, 2), "loop_cpu_pct": round(loop_pct, 2), "load_cpu_pct": round(load_pct, 1),
            "notes": window.notes()}


def step(relay: RelayUnderTest, host: int, targets: int, args: argparse.Namespace, run: Any,
         workdir: Path) -> dict[str, Any]:
    """Host alone (0), or with `targets` restream targets, each to its own ffmpeg."""
    receivers = [Receiver(run.client_cpus, workdir, i) for i in range(targets)]
    try:
        ids = [relay.api("POST", f"/api/shows/{SHOW_ID}/restreams", {"name": f"platform {i}", "url": r.url},
                         expect=201)["id"] for i, r in enumerate(receivers)]

        def listed() -> list[dict[str, Any]]:
            return relay.api("GET", f"/api/shows/{SHOW_ID}/restreams")["restreams"]

        relay.wait_for(lambda: all(t["state"] == "live" and t["bytes_sent"] > 0 for t in listed()), 30,
                       f"{targets} targets live")
        run.deadline.sleep(args.warmup)  # the warm-up: targets past their first keyframe
        before = {t["id"]: t["bytes_sent"] for t in listed()}
        t0 = time.monotonic()
        result = relay_cpu(relay, [host] + [r.proc.pid for r in receivers], args.seconds, run.deadline)
        wall = time.monotonic() - t0
        after = listed()
        result["targets"] = [{"state": t["state"], "kbit_s": round(8 * (t["bytes_sent"] - before[t["id"]])
                                                                    / wall / 1000), "last_error": t["last_error"]}
                             for t in after]
        if any(t["state"] != "live" for t in after):
            raise BenchError(f"a target left live during the window: {after}")
        for target_id in ids:
            relay.api("DELETE", f"/api/shows/{SHOW_ID}/restreams/{target_id}", expect=204)
        return result
    finally:
        for receiver in receivers:
            receiver.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.restream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="each measurement window (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="after the targets are live (default 3)")
    parser.add_argument("--rounds", type=int, default=1, help="the 0, 1, 3 targets steps this many times; "
                                                              "the figures are the medians (default 1)")
    parser.add_argument("--bitrate", type=int, default=2_000_000, help="the host's H.264 (default 2000000)")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args(argv)
    if shutil.which("ffmpeg") is None:
        print("needs ffmpeg (apt-get install ffmpeg)", file=sys.stderr)
        return 2
    run = begin_run(args.max_seconds, "bench.restream", argv, "the host and the receivers")
    workdir = Path(tempfile.mkdtemp(prefix="bench-restream-"))
    results: dict[str, Any] = {"bench": "restream", "command": run.command, "machine": run.machine,
                               "args": args_record(args), "rounds": []}
    relay = RelayUnderTest(workdir, run.server_cpus, run.deadline, name="restream")
    publisher = None
    status = 0
    try:
        from relay_testkit.synthetic import encode_pattern, encode_tone

        relay.start()
        show = relay.create_show("Restream bench", SHOW_ID)
        video = encode_pattern(1280, 720, FPS, seconds=4, gop=60, bitrate=args.bitrate)
        publisher = Worker(mp.get_context("spawn"), "host", publisher_worker,
                           (run.client_cpus, f"{relay.base}/whip/{SHOW_ID}", show["stream_key"], video, encode_tone()))
        publisher.call("start", "started", run.deadline.cap(30))
        relay.wait_for(lambda: relay.api("GET", f"/api/shows/{SHOW_ID}")["state"] == "live", 30, "the show live")
        print(f"relay on CPU {sorted(run.server_cpus)}, host and receivers on {sorted(run.client_cpus)}; "
              f"720p30 H.264 {args.bitrate // 1000} kbit/s + Opus; windows of {args.seconds:.0f} s", flush=True)
        for round_number in range(args.rounds):
            print(f"round {round_number + 1} of {args.rounds}", flush=True)
            steps: dict[str, Any] = {}
            for targets in (0, 1, 3):
                if targets == 0:
                    run.deadline.sleep(args.warmup)
                    result = relay_cpu(relay, [publisher.pid], args.seconds, run.deadline)
                else:
                    result = step(relay, publisher.pid, targets, args, run, workdir)
                steps[str(targets)] = result
                per = (result["relay_cpu_pct"] - steps["0"]["relay_cpu_pct"]) / targets if targets else 0.0
                rates = ", ".join(f"{t['kbit_s']} kbit/s" for t in result.get("targets", []))
                print(f"  {targets} target(s): relay {result['relay_cpu_pct']:5.1f} % of a core "
                      f"(event loop {result['loop_cpu_pct']:.1f} %)"
                      + (f", {per:.2f} % per target above the host alone ({rates})" if targets else " (host alone)")
                      + (f"  [{'; '.join(result['notes'])}]" if result["notes"] else ""), flush=True)
            results["rounds"].append(steps)
        pct = {n: statistics.median(r[n]["relay_cpu_pct"] for r in results["rounds"]) for n in ("0", "1", "3")}
        loop = {n: statistics.median(r[n]["loop_cpu_pct"] for r in results["rounds"]) for n in ("0", "1", "3")}
        results["median_loop_cpu_pct"] = loop
        first, further = pct["1"] - pct["0"], (pct["3"] - pct["1"]) / 2
        results["median_relay_cpu_pct"] = pct
        results["per_target"] = {"first_pct": round(first, 2), "each_further_pct": round(further, 2),
                                 "of_3_pct": round((pct["3"] - pct["0"]) / 3, 2)}
        print(f"medians: host alone {pct['0']:.1f} %, 1 target {pct['1']:.1f} %, 3 targets {pct['3']:.1f} % of a "
              f"core; per target: 1 target {first:.2f} % (with the show's AAC encoder), 3 targets "
              f"{(pct['3'] - pct['0']) / 3:.2f} % each, each further target {further:.2f} %", flush=True)
        print(f"event loop: host alone {loop['0']:.1f} %, 1 target {loop['1']:.1f} %, 3 targets {loop['3']:.1f} % "
              f"(the rest is other threads, the show's AAC encoder among them)", flush=True)
        results["problems"] = report_log_problems(relay.server, "relay")
        if KEY in (workdir / "restream.log").read_text(errors="replace"):
            raise BenchError("a stream key is in the relay's log")
    except BaseException as exc:  # (KeyboardInterrupt and the hard stop too)
        status = stopped_early(results, exc)
    finally:
        if publisher is not None:
            publisher.close()
        relay.stop()
        end_run(results, args.json, workdir, args.keep)
    return status


if __name__ == "__main__":
    sys.exit(main())
