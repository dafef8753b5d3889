"""Draw a fan-out run's curves as PNG: CPU per viewer-second and the slowest viewer's fps against
the number of viewers, the relay beside its baseline (Janus) when the run had one.

    python -m bench.plot fanout.json bench/fanout-vs-janus.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

SERVERS = (("relay", "relay (this repository)", "tab:blue"), ("janus", "Janus 1.1 VideoRoom, event_loops = 1", "tab:red"),
           ("mediarelay", "aiortc MediaRelay", "tab:gray"))


def plot(results: dict, out: Path) -> None:
    fig, (cpu, fps) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, color in SERVERS:
        steps = (results.get(key) or {}).get("steps") or []
        if not steps:
            continue
        n = [s["viewers"] for s in steps]
        cpu.plot(n, [s["cpu_ms_per_viewer_s"] for s in steps], "o-", color=color, label=label)
        fps.plot(n, [s["fps_min"] for s in steps], "o-", color=color, label=label)
        for s in steps:
            if not s["real_time"]:
                cpu.plot(s["viewers"], s["cpu_ms_per_viewer_s"], "x", color="black", markersize=9)
    cpu.set(xlabel="viewers (N)", ylabel="server CPU ms per viewer-second", title="CPU per viewer-second (x: not real time)")
    cpu.set_ylim(bottom=0)
    fps.axhline(29.0, color="black", linewidth=0.8, linestyle="--", label="real time (29 fps)")
    fps.set(xlabel="viewers (N)", ylabel="slowest viewer's video fps", title="Real time: the slowest viewer")
    fps.set_ylim(0, 32)
    for axis in (cpu, fps):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    machine = results.get("machine", {})
    fig.suptitle(f"Fan-out, 720p30 ~2 Mbps + Opus, server pinned to one core; {machine.get('nproc', '?')} CPUs "
                 f"{machine.get('cpu_model', '')}, {results.get('date', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="the JSON a bench.fanout run wrote (--json)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    plot(json.loads(args.results.read_text()), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
