"""RTMP bench: what a show pushed over RTMP costs the relay, and how soon its viewers see it.

Setup: `relay serve` pinned to CPU 0 (recording off: the ingest alone is measured), Debian's
ffmpeg as the host's encoder on the other CPU, pushing a clip encoded once here (720p30 H.264
~2.5 Mbps, keyframe every 2 s, no B-frames, + AAC 128 kb/s stereo at 44.1 kHz) with `-re`,
copied as it is (`-c copy -f flv`), looped. Everything stays on 127.0.0.1.

Phases (`--phases`, run in the order given; each is a function in PHASES that takes the
`Bench` and returns its figures, so another kind of push or pull adds one):

    ingest       The relay's CPU (% of one core) over `--window` s with one RTMP show in and no
                 viewer, after `--warmup` s, less the idle relay's over the same length just before;
                 and, in this process, the AAC -> Opus conversion alone (relay.ingest.aac_to_opus
                 on the clip's audio): its CPU per second of audio, i.e. its share of that.
    first-frame  A WHEP viewer (RTP counted at its socket: a frame is there when its last packet
                 is) waits on a scheduled show; ffmpeg pushes through a TCP proxy in this process
                 that notes the time of the first RTMP byte. Reported per round, on a new show each:
                 first byte -> NetStream.Publish.Start (handshake, commands, the key check) and
                 first byte -> the viewer's first video frame and first audio packet.
    restream     What each restream target costs: bench.restream (its own relay and a WHIP host,
                 0, 1 and 3 targets, each an ffmpeg RTMP receiver), run from here and reported in
                 this run's results.

Run (from the repository root, `pip install -e '.[bench]'`; needs ffmpeg with libx264):

    python -m bench.rtmp --json rtmp.json

The run stops by itself (`--max-seconds`, default 420) and kills what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.harness import (BenchError, Deadline, RelayUnderTest, args_record, begin_run, cpu_seconds, end_run,
                           report_log_problems, stopped_early)

WIDTH, HEIGHT, FPS = 1280, 720, 30


@dataclass
class Bench:
    """What the phases share: the options, the deadline, the relay, the clip, ffmpeg pushes."""

    args: argparse.Namespace
    deadline: Deadline
    relay: RelayUnderTest
    clip: Path
    shows: int = 0
    pushes: list[subprocess.Popen] = field(default_factory=list)

    def new_show(self, prefix: str) -> tuple[str, str]:
        """A new show: (its id, its RTMP push URL)."""
        self.shows += 1
        show_id = f"{prefix}-{self.shows}"
        show = self.relay.create_show(f"RTMP bench {show_id}", show_id)
        return show_id, f"{show['rtmp_url']}/{show['rtmp_stream_key']}"

    def push(self, url: str, seconds: float) -> subprocess.Popen:
        """ffmpeg pushing the clip in real time, looped, for `seconds`."""
        proc = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                                 "-stream_loop", "-1", "-i", str(self.clip), "-t", f"{seconds:.1f}",
                                 "-c", "copy", "-f", "flv", url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pushes.append(proc)
        return proc

    def stop_pushes(self) -> None:
        for proc in self.pushes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
        self.pushes.clear()

    def on_air(self, show_id: str) -> bool:
        return self.relay.api("GET", f"/api/shows/{show_id}")["publisher"] is not None


def make_clip(path: Path, seconds: float) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", f"{seconds:.0f}",
                    "-c:v", "libx264", "-preset", "veryfast", "-b:v", "2500k", "-maxrate", "2500k",
                    "-bufsize", "5000k", "-g", str(2 * FPS), "-bf", "0", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "128k", "-ac", "2", str(path)], check=True, timeout=120)


# -- phases -----------------------------------------------------------------------------------

def phase_ingest(bench: Bench) -> dict[str, Any]:
    args, relay = bench.args, bench.relay
    pid = relay.pid
    idle_start, idle_cpu = time.monotonic(), cpu_seconds(pid)
    bench.deadline.sleep(args.window)  # a measurement window, idle
    idle_pct = 100 * (cpu_seconds(pid) - idle_cpu) / (time.monotonic() - idle_start)

    show_id, url = bench.new_show("ingest")
    push = bench.push(url, args.warmup + args.window + 10)
    relay.wait_for(lambda: bench.on_air(show_id), 15, "the RTMP push to go on air")
    bench.deadline.sleep(args.warmup)
    frames_before = relay.api("GET", f"/api/shows/{show_id}")["publisher"]["frames"]
    start, cpu = time.monotonic(), cpu_seconds(pid)
    bench.deadline.sleep(args.window)  # the measurement window, one show in
    wall = time.monotonic() - start
    show_pct = 100 * (cpu_seconds(pid) - cpu) / wall
    frames = relay.api("GET", f"/api/shows/{show_id}")["publisher"]["frames"] - frames_before
    push.kill()
    audio = aac_conversion_cost(bench.clip)
    figures = {"idle_cpu_pct": round(idle_pct, 2), "show_cpu_pct": round(show_pct, 2),
               "rtmp_show_cpu_pct": round(show_pct - idle_pct, 2), "frames_per_s": round(frames / wall, 1),
               **audio}
    print(f"  idle relay {idle_pct:.2f} % of a core; with one RTMP show in {show_pct:.2f} % "
          f"(the show: {show_pct - idle_pct:.2f} %), {frames / wall:.0f} frames/s forwarded", flush=True)
    print(f"  of which AAC -> Opus (measured alone): {audio['aac_to_opus_cpu_pct']:.2f} % of a core "
          f"({audio['aac_to_opus_ms_per_packet']:.3f} ms per 20 ms packet)", flush=True)
    return figures


def aac_conversion_cost(clip: Path) -> dict[str, Any]:
    """relay.ingest.aac_to_opus on the clip's audio, as fast as it goes: CPU per audio second."""
    import av

    from relay.ingest.aac_to_opus import AacToOpus

    with av.open(str(clip)) as container:
        stream = container.streams.audio[0]
        config = bytes(stream.codec_context.extradata)
        frames = [(bytes(p), int(p.pts * p.time_base * 1000)) for p in container.demux(stream) if p.size]
    media_s = len(frames) * 1024 / 44100
    converter = AacToOpus(config)
    start = time.process_time()
    packets = sum(len(converter.convert(data, ms)) for data, ms in frames)
    cpu = time.process_time() - start
    return {"aac_to_opus_cpu_pct": round(100 * cpu / media_s, 3),
            "aac_to_opus_ms_per_packet": round(1000 * cpu / max(1, packets), 4)}


class FirstByteProxy:
    """A loopback TCP proxy in front of the relay's RTMP port: notes when the host's first byte
    comes and when the relay's answer holds NetStream.Publish.Start."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.first_byte_at: float | None = None
        self.publish_start_at: float | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, host_reader: asyncio.StreamReader, host_writer: asyncio.StreamWriter) -> None:
        relay_reader, relay_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [host_writer, relay_writer]

        host_socket = host_writer.get_extra_info("socket")

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if upstream:  # ACK at once, as the relay does (else ffmpeg's Nagle waits 40 ms a write)
                        host_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                    if upstream and self.first_byte_at is None:
                        self.first_byte_at = time.monotonic()
                    if not upstream and self.publish_start_at is None and b"NetStream.Publish.Start" in data:
                        self.publish_start_at = time.monotonic()
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(host_reader, relay_writer, True), pipe(relay_reader, host_writer, False))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:  # (the pipes end with their connections)
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in self._writers), return_exceptions=True)


def phase_first_frame(bench: Bench) -> dict[str, Any]:
    rounds = [asyncio.run(_first_frame_round(bench)) for _ in range(bench.args.rounds)]
    for i, r in enumerate(rounds, 1):
        print(f"  round {i}: publish start {r['publish_start_ms']:.0f} ms, first video frame "
              f"{r['first_video_ms']:.0f} ms, first audio packet {r['first_audio_ms']:.0f} ms after the first byte",
              flush=True)
    figures: dict[str, Any] = {"rounds": rounds}
    for name in ("publish_start_ms", "first_video_ms", "first_audio_ms"):
        values = [r[name] for r in rounds]
        figures[name] = {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}
    return figures


async def _first_frame_round(bench: Bench) -> dict[str, float]:
    from relay import aiortc_hooks
    from relay_testkit.rtp_counter import RtpCountingClient

    aiortc_hooks.set_host_addresses(["127.0.0.1"])
    show_id, url = bench.new_show("first")
    rtmp_port = int(url.split("/")[2].rsplit(":", 1)[1])
    proxy = FirstByteProxy(rtmp_port)
    await proxy.start()
    viewer = RtpCountingClient(f"{bench.relay.base}/whep/{show_id}")
    try:
        await viewer.start()
        await viewer.connected()
        await asyncio.to_thread(bench.relay.wait_for, lambda: bench.relay.api(
            "GET", f"/api/shows/{show_id}")["viewers"]["hq"] == 1, 10, "the viewer to join")
        proxied = url.replace(f":{rtmp_port}/", f":{proxy.port}/", 1)
        push = bench.push(proxied, 5)
        video, audio = viewer.tracks["video"], viewer.tracks["audio"]
        await asyncio.wait_for(asyncio.gather(video.got_frame.wait(), audio.got_frame.wait()), 15)
        push.kill()
        first = proxy.first_byte_at
        assert first is not None and proxy.publish_start_at is not None
        return {"publish_start_ms": 1000 * (proxy.publish_start_at - first),
                "first_video_ms": 1000 * (video.first_at - first), "first_audio_ms": 1000 * (audio.first_at - first)}
    except TimeoutError:
        raise BenchError("the viewer got no frame within 15 s of the push") from None
    finally:
        await viewer.stop()
        await proxy.close()


def phase_restream(bench: Bench) -> dict[str, Any]:
    """bench.restream's steps (it starts a relay of its own): CPU with 0, 1 and 3 targets."""
    from . import restream  # (its own run: relay, host and receivers)

    out = Path(tempfile.mkdtemp(prefix="rtmp-restream-")) / "restream.json"
    left = max(60.0, bench.deadline.remaining() - 10)
    status = restream.main(["--seconds", str(bench.args.window), "--max-seconds", str(int(left)),
                            "--json", str(out)])
    if status != 0 or not out.exists():
        raise BenchError(f"the restream bench stopped early (status {status})")
    return json.loads(out.read_text())


PHASES: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "ingest": phase_ingest,
    "first-frame": phase_first_frame,
    "restream": phase_restream,
}


# -- the run ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.rtmp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"phases to run, in order (default: all: {', '.join(PHASES)})")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of push before the CPU window")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of each CPU measurement")
    parser.add_argument("--rounds", type=int, default=5, help="first-frame rounds, each on a new show")
    parser.add_argument("--max-seconds", type=float, default=420.0)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep-files", action="store_true", help="keep the work directory (server log, clip)")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in args.phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = begin_run(args.max_seconds, __spec__.name, argv, "ffmpeg and the viewer")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    machine = run.machine
    print(f"machine: {machine['nproc']} CPU(s), {machine['cpu_model']}; Python {machine['python']}, "
          f"av {machine['av']}; relay on CPU {sorted(run.server_cpus)}, ffmpeg and the viewer on CPU "
          f"{sorted(run.client_cpus)}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="rtmp-bench-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": run.command,
                               "machine": machine, "args": args_record(args), "phases": {}}
    relay = RelayUnderTest(workdir, run.server_cpus, run.deadline, env={"RELAY_REPLAY_ENABLED": "false"})
    clip = workdir / "clip.mp4"
    bench = Bench(args, run.deadline, relay, clip)
    status = 0
    try:
        make_clip(clip, 10)
        relay.start()
        for name in args.phases:
            print(f"\n== {name}", flush=True)
            results["phases"][name] = PHASES[name](bench)
            bench.stop_pushes()
    except (BenchError, AssertionError, subprocess.SubprocessError, KeyboardInterrupt) as exc:
        status = stopped_early(results, exc)
    finally:
        signal.alarm(0)
        bench.stop_pushes()
        relay.stop()
        report_log_problems(relay.server, "relay")
        end_run(results, args.json, workdir, args.keep_files or bool(status))
    return status


if __name__ == "__main__":
    sys.exit(main())
