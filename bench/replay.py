"""Replay bench: what recording costs while live, and how fast a replay is ready after the show.

What it measures
    A. Recording cost while live. The fan-out bench's setup (bench/harness.py's FanoutBench, as
       bench.fanout runs it): `relay serve` pinned to CPU 0, one synthetic host publishing 720p30 H.264
       (~2 Mbps, pre-encoded, looped) + Opus over WHIP, N WHEP viewers (default 25) in worker
       processes on the other CPU. The same measurement runs twice in one go, on a fresh server
       each time: with RELAY_REPLAY_ENABLED=false (baseline) and with recording on (the default).
       For each: the relay's CPU % of one core with the host only (no viewers) and with N viewers
       (after a warm-up, over a measurement window), split into the event-loop thread and the
       other threads (the recorder's writer thread is one of them), viewers' fps min / median,
       and GET /api/shows/{show}/replay before and after the window ("duration_s" must grow while
       recording; 404 when recording is off). The recorder's cost is the difference on - off.
       Then, on the recording server: POST /api/shows/{show}/end and poll GET .../replay, giving
       the time from the end request to the playlist being final (state leaves "recording") and
       to the MP4 being ready (state "ready"); the server's MP4 is checked with ffprobe.

    B. End of a long show without waiting for it (default 10 minutes of content). In this
       process, `relay.replay.recorder.Recorder` (the class the server uses, with the settings of
       config/relay.toml) is fed ~4 s of pre-encoded 720p30 2 Mbps H.264 + 20 ms Opus, looped, as
       `RelayFrame`s in timestamp order (video 90 kHz, step 3000; audio 48 kHz, step 960). The
       wall clock the recorder reads is simulated to advance with the media (as if live); frames
       go into its queue on an event loop, as the forwarders put them, as fast as the writer
       thread (pinned to CPU 0) takes them, the queue kept short so nothing is dropped. Reported: throughput
       (x real time) and the writer thread's CPU per second of content (= its share of a core
       while live); `finish()` -> playlist final (#EXT-X-ENDLIST); `remux_to_mp4()` -> MP4
       ready (on CPU 0); sizes; ffprobe of the playlist and the MP4 (duration, h264 + opus,
       packet counts).

    Targets: the recorder costs a few % of one core; the playlist is final within 2 s of the
    end; the MP4 is ready within 10 s per hour of content.

Run (from the repository root, relay installed with `pip install -e '.[bench]'`; needs ffprobe):

    python -m bench.replay --viewers 25 --minutes 10 --json replay.json

`--parts A` or `--parts B` runs one part only; `--rounds 2` repeats part A's off/on pair (in
alternating order) to see the spread. Everything listens on 127.0.0.1 only; every wait is
bounded, the run stops by itself (`--max-seconds`, default 600) and subprocesses are killed on
the way out. Linux only (CPU affinity, /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

from bench.harness import (
    CLK_TCK,
    FPS,
    HEADER,
    SHOW_ID,
    BenchError,
    BenchTimeout,
    Deadline,
    FanoutBench,
    RelayTarget,
    RelayUnderTest,
    Snapshot,
    Target,
    Worker,
    args_record,
    begin_run,
    end_run,
    http_json,
    report_log_problems,
    stopped_early,
)
from relay_testkit.process import REPO

FFPROBE = shutil.which("ffprobe") or "/usr/bin/ffprobe"
VIDEO_STEP = 3000  # 90 kHz / 30 fps
AUDIO_STEP = 960  # 48 kHz * 20 ms
AUDIO_RATE = 50  # Opus packets per second
PLAYLIST_FINAL_TARGET_S = 2.0
MP4_TARGET_S_PER_HOUR = 10.0
DURATION_TOLERANCE_S = 1.0


# -- small helpers ----------------------------------------------------------------------------

def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`, by thread id."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def split_cpu(pid: int, before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """(main thread, all other threads) CPU seconds between two `thread_cpu` readings.
    A thread started in between counts in full; one that ended in between is lost."""
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    others = sum(t - before.get(tid, 0.0) for tid, t in after.items() if tid != pid)
    return main, others


def ffprobe(path: Path, timeout: float) -> dict[str, Any]:
    """Container duration and, per stream, codec, duration and packet count (demuxed, not decoded)."""
    argv = [FFPROBE, "-v", "error", "-count_packets", "-show_entries",
            "format=format_name,duration:stream=index,codec_type,codec_name,start_time,duration,nb_read_packets",
            "-of", "json", str(path)]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if run.returncode != 0:
        return {"ok": False, "error": run.stderr.strip()[-500:]}
    info = json.loads(run.stdout or "{}")
    fmt = info.get("format", {})

    def number(value: Any) -> float | None:
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    streams = [{"type": s.get("codec_type"), "codec": s.get("codec_name"), "start_time": number(s.get("start_time")),
                "duration": number(s.get("duration")), "packets": int(s.get("nb_read_packets") or 0)}
               for s in info.get("streams", [])]
    return {"ok": True, "format": fmt.get("format_name"), "duration": number(fmt.get("duration")),
            "streams": streams, "warnings": run.stderr.strip().splitlines()[:10]}


def probe_verdict(probe: dict[str, Any], expected_s: float | None) -> tuple[bool, str]:
    """Whether a probe shows h264 + opus and (if given) a duration within tolerance; and a one-line text."""
    if not probe.get("ok"):
        return False, f"ffprobe failed: {probe.get('error')}"
    codecs = sorted(f"{s['codec']}" for s in probe["streams"])
    duration = probe.get("duration")
    parts = [f"{probe['format']}", f"{duration:.3f} s" if duration is not None else "duration n/a",
             " + ".join(f"{s['codec']} ({s['packets']} pkts"
                        + (f", {s['duration']:.3f} s" if s["duration"] is not None else "") + ")"
                        for s in probe["streams"])]
    ok = codecs == ["h264", "opus"]
    if expected_s is not None:
        ok = ok and duration is not None and abs(duration - expected_s) <= DURATION_TOLERANCE_S
    return ok, ", ".join(parts)


def playlist_facts(path: Path) -> dict[str, Any]:
    """What the playlist file says: ended (#EXT-X-ENDLIST), type, segment count and durations."""
    if not path.exists():
        return {"exists": False}
    text = path.read_text()
    durations = [float(m) for m in re.findall(r"^#EXTINF:([0-9.]+),", text, re.M)]
    kind = re.search(r"^#EXT-X-PLAYLIST-TYPE:(\w+)", text, re.M)
    return {"exists": True, "ended": "#EXT-X-ENDLIST" in text.splitlines(), "type": kind.group(1) if kind else None,
            "segments": len(durations), "duration_s": sum(durations),
            "segment_min_s": min(durations, default=math.nan), "segment_max_s": max(durations, default=math.nan),
            "discontinuities": text.count("#EXT-X-DISCONTINUITY"), "bytes": len(text.encode())}


def log_gap(log: str) -> float | None:
    """Seconds between the relay's "show <id> ended" and "replay ready" log lines."""
    stamps: dict[str, float] = {}
    for line in log.splitlines():
        for key, needle in (("ended", f"show {SHOW_ID} ended"), ("ready", f"show {SHOW_ID}: replay ready")):
            if needle in line and key not in stamps:
                try:
                    day, clock = line.split()[:2]
                    hms, ms = clock.split(",")
                    stamps[key] = time.mktime(time.strptime(f"{day} {hms}", "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
                except ValueError:
                    pass
    return stamps["ready"] - stamps["ended"] if "ended" in stamps and "ready" in stamps else None


def source_state() -> dict[str, Any]:
    """The relay code being measured: git commit, uncommitted changes under relay/ and config/,
    and a hash of those files (compared at the end: another edit during the run would mix versions)."""
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    digest = hashlib.sha256()
    for path in sorted([*(REPO / "relay").rglob("*.py"), *(REPO / "config").glob("*.toml")]):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    import relay

    return {"commit": git("rev-parse", "--short", "HEAD") or "n/a (not a git checkout)",
            "dirty": git("status", "--porcelain", "relay", "config"), "sha256": digest.hexdigest()[:16],
            "relay_package": str(Path(relay.__file__).parent)}


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


# -- part A: the live relay, recording off and on ---------------------------------------------

class ReplayTarget(RelayTarget):
    """The relay, with the show's replay info added to each `figures()` reading."""

    def __init__(self, relay: RelayUnderTest) -> None:
        super().__init__(relay)
        self.data_dir = relay.data

    def replay_info(self) -> tuple[int, Any]:
        return http_json("GET", f"{self.base}/api/shows/{SHOW_ID}/replay", token=self.relay.admin_key)

    def figures(self) -> dict[str, Any]:
        out = super().figures()
        status, body = self.replay_info()
        out["replay_status"] = status
        out["replay"] = body if status == 200 else None
        return out


@dataclass
class Mark:
    """Side readings taken with each of the fan-out bench's snapshots."""

    t: float
    threads: dict[int, float]
    replay_status: int
    replay: dict[str, Any] | None


@dataclass
class EndResult:
    """The server's end of the part-A show."""

    post_s: float  # POST /end round trip
    final_s: float | None  # POST sent -> state no longer "recording" (the playlist is final)
    ready_s: float | None  # POST sent -> state "ready" (the MP4 is made)
    log_ready_s: float | None  # from the server log: "show ... ended" -> "replay ready" (ms timestamps)
    state: str | None
    duration_s: float | None
    error: str | None
    playlist: dict[str, Any]
    mp4_bytes: int
    mp4_probe: dict[str, Any]
    mp4_ok: bool
    mp4_text: str


@dataclass
class PhaseResult:
    label: str
    round: int
    recording: bool
    idle_window_s: float
    idle_cpu_pct: float
    idle_main_pct: float
    idle_other_pct: float
    step: dict[str, Any]
    main_pct: float  # event-loop thread, with viewers
    other_pct: float  # every other thread, with viewers
    replay_status: int
    replay_before_s: float | None
    replay_after_s: float | None
    replay_growth_s: float | None
    end: EndResult | None = None
    log_problems: list[str] = field(default_factory=list)


class ReplayBench(FanoutBench):
    """The fan-out bench with a relay whose recording is switched on or off, and per-thread CPU."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marks: list[Mark] = []

    def start_recording_relay(self, label: str, recording: bool) -> ReplayTarget:
        """A fresh relay with recording on (the default) or off."""
        env = {"RELAY_REPLAY_ENABLED": "true" if recording else "false"}
        return self.start_relay(f"relay-{label}", env, ReplayTarget)

    def snapshot(self, target: Target, workers: list[Worker]) -> Snapshot:
        snap = super().snapshot(target, workers)
        figures = snap.figures
        self.marks.append(Mark(snap.t, thread_cpu(target.process.pid), int(figures.get("replay_status", 0)),
                               figures.get("replay")))
        return snap

    def last_window(self, pid: int) -> tuple[float, float, float, Mark, Mark]:
        """(wall, main thread %, other threads %) between the last two marks, and the marks."""
        before, after = self.marks[-2], self.marks[-1]
        wall = after.t - before.t
        main, others = split_cpu(pid, before.threads, after.threads)
        return wall, 100 * main / wall, 100 * others / wall, before, after

    def run_phase(self, label: str, round_no: int, recording: bool, viewers: int) -> PhaseResult:
        print(f"\n== round {round_no}: recording {'ON' if recording else 'OFF (RELAY_REPLAY_ENABLED=false)'}",
              flush=True)
        target = self.start_recording_relay(label, recording)
        try:
            self.start_publisher(target, target.setup())
            idle = self.measure_idle(target)
            _, idle_main, idle_other, _, _ = self.last_window(target.process.pid)
            print(f"    host only: event-loop thread {idle_main:.1f}%, other threads {idle_other:.1f}%", flush=True)
            print(HEADER, flush=True)
            step = asdict(self.run_step(target, viewers))
            _, main_pct, other_pct, before, after = self.last_window(target.process.pid)

            def duration(mark: Mark) -> float | None:
                return float(mark.replay["duration_s"]) if mark.replay and mark.replay.get("duration_s") is not None \
                    else None

            d0, d1 = duration(before), duration(after)
            growth = d1 - d0 if d0 is not None and d1 is not None else None
            if recording:
                state = after.replay.get("state") if after.replay else None
                print(f"    replay: GET .../replay {after.replay_status}, state {state}, duration_s {d0} -> {d1} "
                      f"over the {step['window_s']:.1f} s window"
                      + (f" (+{growth:.1f} s)" if growth is not None else ""), flush=True)
            else:
                print(f"    replay: GET .../replay answered {after.replay_status} (expected 404: not recorded)",
                      flush=True)
            print(f"    with viewers: event-loop thread {main_pct:.1f}%, other threads {other_pct:.1f}%", flush=True)
            result = PhaseResult(label, round_no, recording, idle.window_s, idle.server_cpu_pct, idle_main, idle_other,
                                 step, main_pct, other_pct, after.replay_status, d0, d1, growth)
            if recording and self.args.server_end:
                result.end = self.end_show(target)
        finally:
            self.stop_publisher()
            target.stop()
        result.log_problems = report_log_problems(target.process, target.process.name, "    ")
        return result

    def end_show(self, target: ReplayTarget) -> EndResult:
        """POST /end with the host still publishing; poll the replay until it is ready."""
        poll = self.args.poll_ms / 1000
        t0 = time.monotonic()
        status, body = http_json("POST", f"{target.base}/api/shows/{SHOW_ID}/end", token=target.relay.admin_key)
        post_s = time.monotonic() - t0
        if status != 200:
            raise BenchError(f"POST /api/shows/{SHOW_ID}/end answered {status}: {body}")
        final_s = ready_s = None
        info: dict[str, Any] = {}
        end = time.monotonic() + self.deadline.cap(self.args.ready_timeout)
        while time.monotonic() < end:
            status, reply = target.replay_info()
            now = time.monotonic() - t0
            if status == 200 and isinstance(reply, dict):
                info = reply
                if final_s is None and info.get("state") != "recording":
                    final_s = now
                if info.get("state") in ("ready", "failed"):
                    if info.get("state") == "ready":
                        ready_s = now
                    break
            time.sleep(poll)
        folder = target.data_dir / "replays" / SHOW_ID
        playlist = playlist_facts(folder / "index.m3u8")
        mp4 = folder / "show.mp4"
        probe = ffprobe(mp4, self.deadline.cap(60)) if mp4.exists() else {"ok": False, "error": "no show.mp4"}
        duration = info.get("duration_s")
        mp4_ok, mp4_text = probe_verdict(probe, float(duration) if duration is not None else None)
        result = EndResult(post_s, final_s, ready_s, log_gap(target.process.log_text()), info.get("state"), duration, info.get("error"), playlist,
                           mp4.stat().st_size if mp4.exists() else 0, probe, mp4_ok, mp4_text)

        log_ready = "n/a" if result.log_ready_s is None else f"{1000 * result.log_ready_s:.0f} ms"
        print(f"    end of show (POST /end answered in {1000 * post_s:.0f} ms; polling every {self.args.poll_ms:g} ms): "
              f"playlist final after {seconds(final_s)}, MP4 ready after {seconds(ready_s)} (server log: show ended "
              f"-> replay ready {log_ready}); state {result.state}, duration_s {duration}, "
              f"{playlist.get('segments')} segments, ENDLIST {playlist.get('ended')}", flush=True)
        print(f"    server MP4 ({result.mp4_bytes / 1e6:.1f} MB): {'OK' if mp4_ok else 'CHECK'}: {mp4_text}", flush=True)
        return result


# -- part B: the recorder alone, a long show fed faster than real time --------------------------

PACE = 600  # frames the bench lets wait in the recorder's queue (2/3 of its bound, max_queued_frames)


class SimulatedClock:
    """Stands in for the `time` module inside relay.replay.recorder: the recorder reads the wall
    clock with time.time(), and here that clock follows the media, as if the show were live.
    Anything else (time.monotonic() for retries...) is the real `time` module."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def live_frames(video: list[bytes], audio: list[bytes], seconds: float) -> Iterator[tuple[float, Any]]:
    """(media time, RelayFrame) of `seconds` of the looped host, video and audio in timestamp
    order, as the forwarders hand them to the recorder (timestamps from 0, RTP clocks)."""
    from relay.h264 import is_keyframe
    from relay.media import RelayFrame

    keyframes = [is_keyframe(unit) for unit in video]
    n_video, n_audio = round(seconds * FPS), round(seconds * AUDIO_RATE)
    i = j = 0
    no_payloads: list[bytes] = []
    while i < n_video or j < n_audio:
        # video frame i is at i/30 s, audio packet j at j/50 s: compare in 1/1500 s
        if j >= n_audio or (i < n_video and i * AUDIO_RATE <= j * FPS):
            k = i % len(video)
            yield i / FPS, RelayFrame("video", "H264", video[k], no_payloads, (i * VIDEO_STEP) & 0xFFFFFFFF,
                                      keyframes[k])
            i += 1
        else:
            yield j / AUDIO_RATE, RelayFrame("audio", "opus", audio[j % len(audio)], no_payloads,
                                             (j * AUDIO_STEP) & 0xFFFFFFFF, True)
            j += 1


class LogCollector(logging.Handler):
    """Keeps the relay's WARNING-or-worse log records of part B."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@dataclass
class OfflineResult:
    minutes: float
    media_s: float
    video_frames: int
    audio_frames: int
    segment_target_s: float
    max_queued_frames: int
    feed_wall_s: float
    throughput_x: float
    writer_cpu_s: float
    writer_cpu_pct_live: float  # writer CPU per second of content = its share of one core while live
    feeder_us_per_frame: float  # the event loop per frame: the queue and the hand-off to the writer thread
    dropped: int
    recorder_error: str | None
    finish_s: float
    playlist_ended: bool
    playlist: dict[str, Any]
    remux_s: float
    remux_cpu_s: float
    remux_s_per_hour: float
    hls_bytes: int
    mp4_bytes: int
    hls_probe: dict[str, Any]
    mp4_probe: dict[str, Any]
    hls_ok: bool
    mp4_ok: bool
    hls_text: str
    mp4_text: str
    expected_video_packets: int
    expected_audio_packets: int
    log_problems: list[str]


@dataclass
class Fed:
    recorder: Any
    playlist: Any
    writer: threading.Thread
    count: int
    feed_wall: float
    writer_cpu: float
    loop_cpu: float
    finish_s: float


async def feed_recorder(recorder_class: Any, settings: Any, video: list[bytes], audio: list[bytes], media_s: float,
                        folder: Path, clock: SimulatedClock, writer_cpus: set[int], feeder_cpus: set[int],
                        deadline: Deadline) -> Fed:
    """Feed the recorder's queue on an event loop, as the forwarders do, and end the show."""
    recorder = recorder_class(SHOW_ID, folder, settings.segment_target_s, settings.max_queued_frames)
    recorder.new_run({"video": "H264", "audio": "opus"})  # (starts the writer thread)
    writer = next(iter(recorder._thread._threads))  # private, read-only here: to pin it and read its CPU
    os.sched_setaffinity(writer.native_id, writer_cpus)
    os.sched_setaffinity(0, feeder_cpus)

    def writer_cpu() -> float:
        return thread_cpu(os.getpid()).get(writer.native_id, 0.0)

    # (The recorder stamps frames with the wall clock of their hand-off to its writer thread, so
    # here segments' wall clocks run up to PACE frames ahead of their media: not measured here.)
    queue, wall0 = recorder.queue, clock.now
    cpu0, loop0, t0 = writer_cpu(), time.thread_time(), time.monotonic()
    count = 0
    for media_t, frame in live_frames(video, audio, media_s):
        clock.now = wall0 + media_t
        queue.put(frame)
        count += 1
        while len(queue) >= PACE:
            await asyncio.sleep(0.0005)
            if deadline.remaining() <= 0:
                raise BenchTimeout("--max-seconds reached while feeding the recorder")
    while len(queue):
        await asyncio.sleep(0.0005)
        if deadline.remaining() <= 0:
            raise BenchTimeout("--max-seconds reached while the recorder drained")
    loop_cpu = time.thread_time() - loop0
    feed_wall = time.monotonic() - t0
    cpu_fed = writer_cpu() - cpu0
    print(f"fed {count} frames in {feed_wall:.2f} s: {media_s / feed_wall:.1f}x real time; writer thread "
          f"{cpu_fed:.2f} CPU s = {100 * cpu_fed / media_s:.2f}% of one core at real time; event loop "
          f"{1e6 * loop_cpu / max(1, count):.0f} us per frame (queue + hand-off); dropped {recorder.dropped}; "
          f"recorder error {recorder.error}", flush=True)
    # the show ends: the recorder closes the last segment and marks the playlist ended
    os.sched_setaffinity(0, writer_cpus)  # the server's remux runs on its core
    t_end = time.monotonic()
    playlist = await asyncio.wait_for(recorder.finish(), deadline.cap(60))
    return Fed(recorder, playlist, writer, count, feed_wall, cpu_fed, loop_cpu, time.monotonic() - t_end)


def run_offline(video: list[bytes], audio: list[bytes], minutes: float, folder: Path, writer_cpus: set[int],
                feeder_cpus: set[int], deadline: Deadline) -> OfflineResult:
    from relay.config import load_settings
    from relay.replay import recorder as recorder_module
    from relay.replay.mp4 import remux_to_mp4

    config = REPO / "config" / "relay.toml"
    settings = load_settings(config if config.exists() else None, env={}).replay
    media_s = minutes * 60
    n_video, n_audio = round(media_s * FPS), round(media_s * AUDIO_RATE)
    print(f"\n== part B: Recorder fed {minutes:g} min of 720p30 H.264 + Opus ({n_video} + {n_audio} frames), "
          f"segment target {settings.segment_target_s:g} s, max_queued_frames {settings.max_queued_frames}; "
          f"files in {folder}", flush=True)

    collector = LogCollector()
    relay_log = logging.getLogger("relay")
    relay_log.addHandler(collector)
    clock = SimulatedClock(time.time())
    try:
        with mock.patch.object(recorder_module, "time", clock):
            fed = asyncio.run(feed_recorder(recorder_module.Recorder, settings, video, audio, media_s, folder, clock,
                                            writer_cpus, feeder_cpus, deadline))
        recorder, playlist, writer = fed.recorder, fed.playlist, fed.writer
        count, feed_wall, cpu_fed, feeder_cpu, finish_s = (fed.count, fed.feed_wall, fed.writer_cpu, fed.loop_cpu,
                                                           fed.finish_s)
        writer.join(5)
        facts = playlist_facts(folder / recorder_module.PLAYLIST)
        print(f"finish() -> playlist final in {finish_s * 1000:.0f} ms: {facts['segments']} segments "
              f"({facts['segment_min_s']:.2f}-{facts['segment_max_s']:.2f} s), {facts['duration_s']:.3f} s, "
              f"type {facts['type']}, ENDLIST {facts['ended']}", flush=True)

        mp4 = folder / "show.mp4"
        t_remux, cpu_remux = time.monotonic(), time.thread_time()
        remux_to_mp4(folder, playlist, mp4)
        remux_s, remux_cpu = time.monotonic() - t_remux, time.thread_time() - cpu_remux
        os.sched_setaffinity(0, feeder_cpus)
        per_hour = remux_s * 3600 / playlist.duration if playlist.duration else math.inf
        print(f"remux_to_mp4 -> MP4 ready in {remux_s:.2f} s (CPU {remux_cpu:.2f} s) = {per_hour:.1f} s per hour of "
              f"content", flush=True)
    finally:
        relay_log.removeHandler(collector)
        os.sched_setaffinity(0, feeder_cpus)

    hls_bytes = folder_bytes(folder, "init-*.mp4") + folder_bytes(folder, "seg-*.m4s")
    hls_probe = ffprobe(folder / recorder_module.PLAYLIST, deadline.cap(120))
    mp4_probe = ffprobe(mp4, deadline.cap(120))
    hls_ok, hls_text = probe_verdict(hls_probe, media_s)
    mp4_ok, mp4_text = probe_verdict(mp4_probe, media_s)
    for name, probe, ok, text in (("playlist", hls_probe, hls_ok, hls_text), ("MP4", mp4_probe, mp4_ok, mp4_text)):
        counts = {s["type"]: s["packets"] for s in probe.get("streams", [])}
        packets_ok = counts.get("video") == n_video and counts.get("audio") == n_audio
        print(f"ffprobe {name}: {'OK' if ok else 'CHECK'}: {text}"
              + ("" if packets_ok else f"  [expected {n_video} video + {n_audio} audio packets]"), flush=True)
    print(f"sizes: HLS (init + segments) {hls_bytes / 1e6:.1f} MB, playlist {facts.get('bytes', 0)} B, "
          f"MP4 {mp4.stat().st_size / 1e6:.1f} MB", flush=True)
    for line in collector.lines[:12]:
        print(f"    log: {line}", flush=True)
    return OfflineResult(
        minutes=minutes, media_s=media_s, video_frames=n_video, audio_frames=n_audio,
        segment_target_s=settings.segment_target_s, max_queued_frames=settings.max_queued_frames,
        feed_wall_s=feed_wall, throughput_x=media_s / feed_wall, writer_cpu_s=cpu_fed,
        writer_cpu_pct_live=100 * cpu_fed / media_s, feeder_us_per_frame=1e6 * feeder_cpu / max(1, count),
        dropped=recorder.dropped, recorder_error=recorder.error, finish_s=finish_s, playlist_ended=playlist.ended,
        playlist=facts, remux_s=remux_s, remux_cpu_s=remux_cpu, remux_s_per_hour=per_hour, hls_bytes=hls_bytes,
        mp4_bytes=mp4.stat().st_size, hls_probe=hls_probe, mp4_probe=mp4_probe, hls_ok=hls_ok, mp4_ok=mp4_ok,
        hls_text=hls_text, mp4_text=mp4_text, expected_video_packets=n_video, expected_audio_packets=n_audio,
        log_problems=collector.lines,
    )


# -- summary ----------------------------------------------------------------------------------

def seconds(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "never (within the cap)"


def summarize(phases: list[PhaseResult], offline: OfflineResult | None) -> list[str]:
    lines: list[str] = []
    on = [p for p in phases if p.recording]
    off = [p for p in phases if not p.recording]
    if on and off:
        def mean(values: list[float]) -> float:
            return statistics.fmean(values)

        idle_cost = mean([p.idle_cpu_pct for p in on]) - mean([p.idle_cpu_pct for p in off])
        live_cost = mean([p.step["server_cpu_pct"] for p in on]) - mean([p.step["server_cpu_pct"] for p in off])
        other_cost = mean([p.other_pct for p in on]) - mean([p.other_pct for p in off])
        n = on[0].step["viewers"]
        lines.append(f"A: relay CPU, host + {n} viewers: off {mean([p.step['server_cpu_pct'] for p in off]):.1f}%, "
                     f"on {mean([p.step['server_cpu_pct'] for p in on]):.1f}% of one core -> recording costs "
                     f"{live_cost:+.1f} points ({len(on)} pair(s))")
        if len(on) > 1:
            pairs = sorted({p.round for p in phases})
            diffs = [next(p for p in on if p.round == r).step["server_cpu_pct"]
                     - next(p for p in off if p.round == r).step["server_cpu_pct"]
                     for r in pairs if any(p.round == r for p in on) and any(p.round == r for p in off)]
            lines.append("A: on - off per round: " + ", ".join(f"{d:+.1f}" for d in diffs)
                         + f" points (median {statistics.median(diffs):+.1f})" if diffs else "A: no complete round")
        lines.append(f"A: host only: off {mean([p.idle_cpu_pct for p in off]):.1f}%, on "
                     f"{mean([p.idle_cpu_pct for p in on]):.1f}% -> {idle_cost:+.1f} points; threads other than the "
                     f"event loop (the recorder's writer is one): {other_cost:+.1f} points with viewers")
        fps = [p.step["fps_min"] for p in phases]
        lines.append(f"A: viewers' fps min over all phases {min(fps):.1f}; drops "
                     f"{sum(p.step['dropped_frames'] or 0 for p in phases)}; connected "
                     f"{min(p.step['connected'] for p in phases)}/{n} at least")
        grew = [p.replay_growth_s for p in on]
        lines.append("A: replay duration_s grew by " + ", ".join(f"{g:.1f}" if g is not None else "n/a" for g in grew)
                     + f" s over {on[0].step['window_s']:.0f} s windows while recording; GET .../replay with "
                     f"recording off: {', '.join(str(p.replay_status) for p in off)}")
        for p in on:
            if p.end is not None:
                e = p.end
                lines.append(f"A: server end (round {p.round}): playlist final {seconds(e.final_s)}, MP4 ready "
                             f"{seconds(e.ready_s)} after POST /end, for {e.duration_s} s of replay "
                             f"(playlist target < {PLAYLIST_FINAL_TARGET_S:g} s)")
    if offline is not None:
        o = offline
        lines.append(f"B: {o.minutes:g} min show: recorder {o.throughput_x:.0f}x real time, writer thread "
                     f"{o.writer_cpu_pct_live:.2f}% of one core at real time, dropped {o.dropped}")
        lines.append(f"B: playlist final {o.finish_s * 1000:.0f} ms after finish() (target < "
                     f"{PLAYLIST_FINAL_TARGET_S:g} s: {'MET' if o.finish_s < PLAYLIST_FINAL_TARGET_S else 'NOT MET'})")
        target = MP4_TARGET_S_PER_HOUR * o.media_s / 3600
        lines.append(f"B: MP4 ready {o.remux_s:.2f} s after that = {o.remux_s_per_hour:.1f} s per hour of content "
                     f"(target < {target:.2f} s for {o.minutes:g} min: {'MET' if o.remux_s < target else 'NOT MET'})")
        lines.append(f"B: ffprobe playlist {'OK' if o.hls_ok else 'CHECK'}, MP4 {'OK' if o.mp4_ok else 'CHECK'} "
                     f"(~{o.media_s:.0f} s, h264 + opus)")
    return lines


# -- main -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Replay bench (see the module docstring).")
    parser.add_argument("--parts", default="A,B", help="which parts to run: A, B or A,B (default A,B)")
    parser.add_argument("--viewers", type=int, default=25, help="part A: viewers (default 25)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="part A: off/on pairs, in alternating order (default 1)")
    parser.add_argument("--warmup", type=float, default=10.0, help="part A: warm-up after the viewers joined (default 10)")
    parser.add_argument("--window", type=float, default=20.0, help="part A: measurement window (default 20)")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="part A: host-only measurement before the viewers join (default 10)")
    parser.add_argument("--no-server-end", dest="server_end", action="store_false",
                        help="part A: do not end the show through the server and time its replay")
    parser.add_argument("--poll-ms", type=float, default=25.0, help="part A: replay polling after the end (default 25)")
    parser.add_argument("--ready-timeout", type=float, default=60.0,
                        help="part A: longest wait for the replay to be ready (default 60)")
    parser.add_argument("--minutes", type=float, default=10.0, help="part B: length of the show (default 10)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard cap for the whole run (default 600)")
    parser.add_argument("--viewers-per-process", type=int, default=25, help="viewers per worker process (default 25)")
    parser.add_argument("--stagger-ms", type=float, default=20.0, help="between two viewers joining (default 20)")
    parser.add_argument("--connect-timeout", type=float, default=20.0,
                        help="for a viewer to get its first video frame (default 20)")
    parser.add_argument("--settle", type=float, default=1.0, help="pause after the viewers left (default 1)")
    parser.add_argument("--keep-files", action="store_true", help="keep the work directory (logs, replays)")
    args = parser.parse_args(argv)
    args.parts = {p.strip().upper() for p in args.parts.split(",") if p.strip()}
    if not args.parts or not args.parts <= {"A", "B"}:
        parser.error("--parts takes A, B or A,B")
    if args.window < 1 or args.warmup < 0:
        parser.error("--window must be at least 1 s and --warmup not negative")
    if args.viewers < 1 or args.rounds < 1 or args.minutes <= 0:
        parser.error("--viewers, --rounds and --minutes must be positive")
    args.step_seconds = args.warmup + args.window  # what FanoutBench reads
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = begin_run(args.max_seconds, __spec__.name, argv, "the viewers")
    deadline, server_cpus, client_cpus, machine, command = (
        run.deadline, run.server_cpus, run.client_cpus, run.machine, run.command)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(f"machine: {machine['nproc']} CPU(s), {machine['cpu_model']}; Python {machine['python']}, "
          f"aiortc {machine['aiortc']}, av {machine['av']}", flush=True)
    print(f"server and recorder on CPU {sorted(server_cpus)}, host and viewers on CPU {sorted(client_cpus)}",
          flush=True)

    source = source_state()
    print(f"relay code: {source['relay_package']}, commit {source['commit']}"
          + (" with uncommitted changes under relay/ or config/" if source["dirty"] else "")
          + f", sha256 {source['sha256']}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="replay-bench-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": command,
                               "machine": machine, "source": source, "args": args_record(args)}
    bench = ReplayBench(args, deadline, server_cpus, client_cpus, workdir)
    phases: list[PhaseResult] = []
    offline: OfflineResult | None = None
    status = 0
    started = time.monotonic()
    try:
        bench.encode()
        if "A" in args.parts:
            bench.spawn_viewer_workers(math.ceil(args.viewers / args.viewers_per_process))
            print(f"\n== part A: {args.viewers} viewers, {len(bench.workers)} viewer process(es); per phase "
                  f"{args.idle_seconds:.0f} s host only, then {args.warmup:.0f} s warm-up + {args.window:.0f} s window",
                  flush=True)
            for round_no in range(1, args.rounds + 1):
                order = (False, True) if round_no % 2 else (True, False)
                for recording in order:
                    label = f"{'on' if recording else 'off'}-{round_no}"
                    phases.append(bench.run_phase(label, round_no, recording, args.viewers))
            for worker in bench.workers:
                worker.close()
            bench.workers.clear()
        if "B" in args.parts:
            folder = workdir / "offline" / SHOW_ID
            offline = run_offline(bench.video, bench.audio, args.minutes, folder, server_cpus, client_cpus, deadline)
    except (BenchError, KeyboardInterrupt) as exc:
        status = stopped_early(results, exc)
    finally:
        signal.alarm(0)
        bench.close()
        results["seconds"] = round(time.monotonic() - started, 1)
        results["part_a"] = [asdict(p) for p in phases]
        results["part_b"] = asdict(offline) if offline is not None else None
        lines = summarize(phases, offline)
        source_after = source_state()
        results["source_after"] = source_after
        if source_after["sha256"] != source["sha256"] or source_after["commit"] != source["commit"]:
            lines.insert(0, f"WARNING: the relay code changed during the run (commit {source['commit']} -> "
                            f"{source_after['commit']}, sha256 {source['sha256']} -> {source_after['sha256']}): "
                            "the phases may have run different versions")
        if status:
            lines.insert(0, "the run stopped early: these figures cover only what was done")
        results["summary"] = lines
        if lines:
            print("\n== summary", flush=True)
            for line in lines:
                print(line, flush=True)
        end_run(results, args.json, workdir, args.keep_files or status)
    return status


if __name__ == "__main__":
    sys.exit(main())
