"""Fault and bad-input suite, long part: load held, faults survived, bad inputs tried, nothing lost.

What it runs (each phase against its own `relay serve` subprocess pinned to CPU 0; the host,
viewers and this script on the other CPUs):

    join     A host at 320x240 30 fps (~250 kbps) and `--join-viewers` (500) WHEP viewers
             joining within `--join-window` (10 s) from `--processes` worker processes, with the
             relay's viewer cap at `--cap` (500). Every viewer must connect or get 503, none hang
             (30 s timeout each); connected viewers must then play (fps over 5 s). Reports TTFF
             p50/p95, outcome counts, and that peers and viewers go back to zero afterwards.
    fuzz     `--fuzz-examples` (3000) random fuzzed SDP offers each against WHIP and WHEP
             (Hypothesis, not derandomized). No 500, the process stays up, no peer connection
             left open, loop tasks back to where they were, RSS sampled as it goes (flat).
    loss     5 % and 20 % of RTP/RTCP datagrams dropped between host and relay, then between
             relay and viewer, `--loss-seconds` (30) each: per-second decoded fps at the viewer
             (min, mean, seconds under 10 fps) and the keyframe requests the relay sent.
    halfopen Half-open WHEP sessions (ICE credentials, no candidate: answered, never connected)
             posted for `--halfopen-seconds` (60) at `--halfopen-rate` (20/s), from one address
             and then spread over many (X-Forwarded-For, as behind a proxy), with the relay's
             defaults for pending sessions per address (10) and the connect deadline (15 s).
             Every 2 s: sessions held, open fds, RSS; real viewers must still join; afterwards
             every slot, socket and fd is back.
    restart  A show with three mirror rooms, a recorded stream and a claim storm (1,000 claims
             for 300 coupons); the relay is SIGKILLed and started again: shows, mirrors, every
             acknowledged claim, room figures and the replay must be intact; the host
             republishes and the replay continues.

Run (from the repository root, relay installed with `pip install -e '.[bench]'`):

    python -m bench.faults --json faults.json
    python -m bench.faults --phases fuzz --fuzz-examples 10000

Everything listens on 127.0.0.1; the run stops by itself (`--max-seconds`, default 600).
Exit status: 0 every check passed, 1 a check failed, 3 the run stopped early.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    BenchError,
    RelayUnderTest,
    Worker,
    args_record,
    begin_run,
    end_run,
    http_json,
    percentile,
    publisher_worker,
    report_log_problems,
    stopped_early,
    viewer_worker,
)

SHOW = "faults"


def check(checks: dict[str, bool], name: str, ok: bool) -> None:
    checks[name] = bool(ok)
    print(f"  [{'ok' if ok else 'FAIL'}] {name}", flush=True)


# -- join storm ---------------------------------------------------------------------------------

def phase_join(args: argparse.Namespace, run, workdir: Path) -> dict[str, Any]:
    from relay_testkit.synthetic import encode_pattern, encode_tone

    print(f"\n== join: {args.join_viewers} viewers within {args.join_window:.0f} s, cap {args.cap}", flush=True)
    relay = RelayUnderTest(workdir, run.server_cpus, run.deadline, name="join",
                           env={"RELAY_LIMITS_MAX_VIEWERS_PER_PROCESS": str(args.cap)}).start()
    ctx = mp.get_context("spawn")
    workers: list[Worker] = []
    checks: dict[str, bool] = {}
    try:
        show = relay.create_show("Join storm", SHOW)
        video = encode_pattern(320, 240, 30, seconds=2, gop=30, bitrate=args.join_bitrate)
        publisher = Worker(ctx, "host", publisher_worker,
                           (run.client_cpus, f"{relay.base}/whip/{SHOW}", show["stream_key"], video, encode_tone()))
        workers.append(publisher)
        publisher.call("start", "started", run.deadline.cap(30))
        viewers = [Worker(ctx, f"viewers-{i}", viewer_worker, (run.client_cpus,)) for i in range(args.processes)]
        workers += viewers
        stagger = args.join_window / args.join_viewers
        t0 = time.monotonic() + 1.0
        url = f"{relay.base}/whep/{SHOW}"
        for w, worker in enumerate(viewers):
            assigned = [(i, url) for i in range(w, args.join_viewers, len(viewers))]
            worker.send("connect", assigned, t0, stagger, 30.0, ("video",))
        rows = [row for worker in viewers for row in worker.expect("connected", run.deadline.cap(120))]
        joined_in = time.monotonic() - t0
        connected = [r for r in rows if r["ok"]]
        refused = [r for r in rows if not r["ok"] and r["error"] and "503" in r["error"]]
        hung = [r for r in rows if not r["ok"] and r["error"] and "Timeout" in r["error"]]
        other = [r for r in rows if not r["ok"] and r not in refused and r not in hung]
        ttff = [r["ttff"] for r in connected]
        for worker in viewers:
            worker.call("mark", "marked", 30)
        time.sleep(5.0)  # the measuring window for playback
        report = [row for worker in viewers for row in worker.call("report", "report", 60)]
        fps = sorted(r["fps"] for r in report if r["ok"])
        relay_viewers = relay.api("GET", f"/api/shows/{SHOW}/stats")["rooms"]["hq"]["viewers"]
        for worker in viewers:
            worker.call("stop", "stopped", 60)
        relay.wait_for(lambda: relay.metric("relay_peer_connections") <= 1, 30, "viewer peers to close")
        result = {
            "viewers": args.join_viewers, "cap": args.cap, "window_s": args.join_window,
            "all_answered_in_s": round(joined_in, 1), "connected": len(connected), "refused_503": len(refused),
            "hung": len(hung), "other_errors": len(other), "other_examples": [r["error"] for r in other[:3]],
            "ttff_p50_s": round(percentile(ttff, 50), 3) if ttff else None,
            "ttff_p95_s": round(percentile(ttff, 95), 3) if ttff else None,
            "fps_min": round(fps[0], 1) if fps else None, "fps_median": round(percentile(fps, 50), 1) if fps else None,
            "relay_viewers_while_playing": relay_viewers,
            "peers_after": relay.metric("relay_peer_connections"),
        }
        print(f"  connected {len(connected)}, refused with 503 {len(refused)}, hung {len(hung)}, "
              f"other {len(other)}; all answered {joined_in:.1f} s after the first", flush=True)
        print(f"  TTFF p50 {result['ttff_p50_s']} s, p95 {result['ttff_p95_s']} s; playing fps min "
              f"{result['fps_min']}, median {result['fps_median']}", flush=True)
        check(checks, "every viewer connected or got 503", len(connected) + len(refused) == args.join_viewers)
        check(checks, "none hung", not hung)
        check(checks, "no more than the cap connected", len(connected) <= args.cap)
        check(checks, "the relay counted them all", relay_viewers == len(connected))
        check(checks, "connected viewers play (>= 25 fps median)", bool(fps) and percentile(fps, 50) >= 25)
        check(checks, "peers back to the host's alone after they left", result["peers_after"] <= 1)
        result["problems"] = report_log_problems(relay.server, "relay", "  ")
        return result | {"checks": checks}
    finally:
        for worker in workers:
            worker.close()
        relay.stop()


# -- SDP fuzzing ----------------------------------------------------------------------------------

def phase_fuzz(args: argparse.Namespace, run, workdir: Path) -> dict[str, Any]:
    import http.client

    from hypothesis import HealthCheck, given, settings

    from relay_testkit.fuzz import base_offers, mutated_offers

    print(f"\n== fuzz: {args.fuzz_examples} random offers each against WHIP and WHEP", flush=True)
    relay = RelayUnderTest(workdir, run.server_cpus, run.deadline, name="fuzz",
                           env={"RELAY_MEDIA_PUBLISHER_TIMEOUT_S": "2", "RELAY_MEDIA_GRACE_PERIOD_S": "3600"}).start()
    checks: dict[str, bool] = {}
    try:
        key = relay.create_show("Fuzz", SHOW)["stream_key"]
        offers = asyncio.run(base_offers())
        statuses: dict[str, int] = {}
        bad: list[str] = []
        rss: list[tuple[int, float]] = []
        sent = 0

        def send(kind: str, sdp: str) -> None:
            nonlocal sent
            conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
            headers = {"Content-Type": "application/sdp"}
            if kind == "whip":
                headers["Authorization"] = f"Bearer {key}"
            try:
                conn.request("POST", f"/{kind}/{SHOW}", sdp.encode("utf-8", "surrogatepass"), headers)
                res = conn.getresponse()
                raw = res.read()
                location = res.getheader("Location")
            finally:
                conn.close()
            statuses[str(res.status)] = statuses.get(str(res.status), 0) + 1
            if res.status >= 500 and res.status != 503:
                bad.append(f"{res.status} {raw[:200]!r} for {sdp[:200]!r}")
            if res.status == 201 and kind == "whep":
                http_json("DELETE", f"{relay.base}{location}")
            sent += 1
            if sent % 250 == 0:
                rss.append((sent, round(relay.rss_mib(), 1)))
            if run.deadline.remaining() < 30:
                raise BenchError("out of time while fuzzing")

        for kind in ("whep", "whip"):
            for _ in range(10):
                send(kind, offers[kind])
        tasks_before = relay.metric("relay_asyncio_tasks")
        rss.append((sent, round(relay.rss_mib(), 1)))
        started = time.monotonic()
        for kind in ("whip", "whep"):
            @settings(max_examples=args.fuzz_examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(sdp=mutated_offers(offers[kind]))
            def fuzz(sdp: str) -> None:
                send(kind, sdp)

            fuzz()
        seconds = time.monotonic() - started
        if rss[-1][0] != sent:
            rss.append((sent, round(relay.rss_mib(), 1)))  # the end, also for runs under 250 offers
        relay.api("POST", f"/api/shows/{SHOW}/end")
        relay.wait_for(lambda: relay.metric("relay_peer_connections") == 0, 30, "every peer to close")
        tasks_after = relay.metric("relay_asyncio_tasks")
        alive = relay.server.running
        first, last = rss[min(1, len(rss) - 2)][1], rss[-1][1]  # from the first sample under fuzzing if any
        result = {"offers": sent, "seconds": round(seconds, 1), "statuses": statuses, "server_errors": bad[:5],
                  "rss_mib": rss, "rss_growth_mib": round(last - first, 1), "tasks_before": tasks_before,
                  "tasks_after": tasks_after, "peers_after": 0, "alive": alive}
        print(f"  {sent} offers in {seconds:.0f} s; answers {statuses}", flush=True)
        print(f"  RSS {first} MiB -> {last} MiB (samples every 250 and at the end: {[m for _, m in rss]})", flush=True)
        check(checks, "no 5xx other than 503", not bad)
        check(checks, "the server stayed up", alive)
        check(checks, "no peer connection left open", True)
        check(checks, "loop tasks back to where they were (+5)", tasks_after <= tasks_before + 5)
        check(checks, "memory flat (< 40 MiB growth)", last - first < 40)
        result["problems"] = report_log_problems(relay.server, "relay", "  ")
        return result | {"checks": checks}
    finally:
        relay.stop()


# -- packet loss ------------------------------------------------------------------------------

def phase_loss(args: argparse.Namespace, run, workdir: Path) -> dict[str, Any]:
    print(f"\n== loss: 5 % and 20 % of RTP/RTCP lost, host side then viewer side, {args.loss_seconds:.0f} s each",
          flush=True)
    relay = RelayUnderTest(workdir, run.server_cpus, run.deadline, name="loss").start()
    checks: dict[str, bool] = {}
    runs: list[dict[str, Any]] = []
    try:
        show = relay.create_show("Loss", SHOW)
        for side in ("host", "viewer"):
            for loss in (0.05, 0.2):
                row = asyncio.run(_lossy_run(relay, show, side, loss, args.loss_seconds))
                runs.append(row)
                print(f"  {side:6} {loss:4.0%}: fps min {row['fps_min']}, mean {row['fps_mean']}, "
                      f"seconds under 10 fps {row['seconds_under_10fps']}, dropped {row['dropped']} datagrams, "
                      f"keyframe requests to host +{row['keyframe_requests']}", flush=True)
        for row in runs:
            floor = 20 if row["loss"] < 0.1 else 8
            check(checks, f"{row['side']} {row['loss']:.0%}: every second >= {floor} fps", row["fps_min"] >= floor)
        return {"runs": runs, "checks": checks, "problems": report_log_problems(relay.server, "relay", "  ")}
    finally:
        relay.stop()


async def _lossy_run(relay: RelayUnderTest, show: dict, side: str, loss: float, seconds: float) -> dict[str, Any]:
    from relay import aiortc_hooks
    from relay_testkit.lossy import make_lossy
    from relay_testkit.synthetic import encode_pattern, video_track
    from relay_testkit.whep import WhepClient
    from relay_testkit.whip import WhipClient

    aiortc_hooks.set_host_addresses(["127.0.0.1"])
    video = encode_pattern(640, 360, 30, seconds=2, gop=30, bitrate=800_000)
    host = WhipClient(f"{relay.base}/whip/{SHOW}", show["stream_key"], [video_track(video)])
    await host.start()
    viewer = WhepClient(f"{relay.base}/whep/{SHOW}", kinds=("video",))
    try:
        await viewer.start()
        await viewer.first_frame("video", timeout=15)
        requests_before = (relay.metric("relay_keyframe_requests_total", 'direction="to_hosts"') or 0.0)
        counts = make_lossy(host.pc if side == "host" else viewer.pc, loss, seed=11)
        per_second = []
        for _ in range(int(seconds)):
            before = viewer.tracks["video"].frames
            await asyncio.sleep(1.0)  # the measuring window
            per_second.append(viewer.tracks["video"].frames - before)
        return {"side": side, "loss": loss, "seconds": int(seconds), "fps_min": min(per_second),
                "fps_mean": round(sum(per_second) / len(per_second), 1),
                "seconds_under_10fps": sum(1 for n in per_second if n < 10),
                "dropped": counts["dropped_in"] + counts["dropped_out"],
                "keyframe_requests": (relay.metric("relay_keyframe_requests_total", 'direction="to_hosts"') or 0.0)
                - requests_before}
    finally:
        await viewer.stop()
        await host.drop()


# -- SIGKILL and restart ------------------------------------------------------------------------

def phase_restart(args: argparse.Namespace, run, workdir: Path) -> dict[str, Any]:
    print("\n== restart: claims and a recording, then SIGKILL, then the same data dir again", flush=True)
    relay = RelayUnderTest(workdir, run.server_cpus, run.deadline, name="restart",
                           env={"RELAY_REPLAY_SEGMENT_TARGET_S": "1"}).start()
    checks: dict[str, bool] = {}
    try:
        show = relay.create_show("Restart", SHOW, ("d1", "d2", "d3"))
        relay.api("POST", f"/api/shows/{SHOW}/coupons", {"id": "flash", "title": "Flash", "quantity": 300,
                                                          "duration_s": 600}, expect=201)
        relay.api("POST", f"/api/shows/{SHOW}/coupons/flash/launch")
        told, recorded = asyncio.run(_claims_and_recording(relay, show))
        before = {"show": relay.api("GET", f"/api/shows/{SHOW}"), "coupon": relay.api("GET", f"/api/shows/{SHOW}/coupons/flash"),
                  "stats": relay.api("GET", f"/api/shows/{SHOW}/stats")}
        relay.kill()
        relay.start()  # same port, same data dir
        after = {"show": relay.api("GET", f"/api/shows/{SHOW}"), "coupon": relay.api("GET", f"/api/shows/{SHOW}/coupons/flash"),
                 "stats": relay.api("GET", f"/api/shows/{SHOW}/stats")}
        replay = relay.api("GET", f"/api/shows/{SHOW}/replay")
        mirrors_same = [m["distributor"] for m in before["show"]["mirrors"]] == [
            m["distributor"] for m in after["show"]["mirrors"]]
        claims_same = (after["coupon"]["claimed"] == sum(told.values()) == before["coupon"]["claimed"]
                       and after["coupon"]["rooms"] == {r: n for r, n in told.items() if n})
        figures_same = all(after["stats"]["rooms"][r]["claims"] == before["stats"]["rooms"][r]["claims"]
                           and after["stats"]["rooms"][r]["peak_viewers"] == before["stats"]["rooms"][r]["peak_viewers"]
                           for r in before["stats"]["rooms"])
        print(f"  before: {sum(told.values())} claims acknowledged, replay {recorded:.1f} s; after: coupon claimed "
              f"{after['coupon']['claimed']}, show {after['show']['state']}, replay {replay['state']} "
              f"{replay['duration_s']} s", flush=True)
        check(checks, "show and mirror rooms intact", after["show"]["title"] == "Restart" and mirrors_same)
        check(checks, "every acknowledged claim intact, per room", claims_same)
        check(checks, "room figures intact", figures_same)
        check(checks, "the show waits for its host", after["show"]["state"] == "live")
        check(checks, "the replay kept what was recorded", replay["duration_s"] >= recorded - 1.0)
        asyncio.run(_republish_and_end(relay, show))
        relay.wait_for(lambda: relay.api("GET", f"/api/shows/{SHOW}/replay")["state"] == "ready", 30,
                       "the replay to be ready")
        final = relay.api("GET", f"/api/shows/{SHOW}/replay")
        check(checks, "after the host came back the replay went on (1 discontinuity)",
              final["discontinuities"] == 1 and final["duration_s"] > recorded)
        return {"claims_acknowledged": sum(told.values()), "told_per_room": told, "recorded_before_kill_s": recorded,
                "replay_after": final, "checks": checks,
                "problems": report_log_problems(relay.server, "relay", "  ")}
    finally:
        relay.stop()


async def _claims_and_recording(relay: RelayUnderTest, show: dict) -> tuple[dict[str, int], float]:
    import aiohttp

    from relay import aiortc_hooks
    from relay_testkit.synthetic import encode_pattern, video_track
    from relay_testkit.whip import WhipClient

    aiortc_hooks.set_host_addresses(["127.0.0.1"])
    host = WhipClient(f"{relay.base}/whip/{SHOW}", show["stream_key"],
                      [video_track(encode_pattern(320, 240, 30, seconds=2, gop=30, bitrate=250_000))])
    await host.start()
    rooms = ("hq", "d1", "d2", "d3")
    told = {room: 0 for room in rooms}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:
        async def register(i: int) -> dict:
            async with http.post(f"{relay.base}/api/shows/{SHOW}/viewers", json={"room": rooms[i % 4]}) as res:
                return await res.json()

        viewers = await asyncio.gather(*(register(i) for i in range(1000)))

        async def claim(viewer: dict) -> None:
            async with http.post(f"{relay.base}/api/shows/{SHOW}/coupons/flash/claim", headers={
                    "Authorization": f"Bearer {viewer['token']}", "Idempotency-Key": "k"}) as res:
                if res.status == 200 and (await res.json())["result"] == "claimed":
                    told[viewer["room"]] += 1

        await asyncio.gather(*(claim(v) for v in viewers))
    recorded = 0.0
    end = time.monotonic() + 20
    while recorded < 4 and time.monotonic() < end:
        await asyncio.sleep(0.5)  # until a few segments are on disk, with a deadline
        recorded = relay.api("GET", f"/api/shows/{SHOW}/replay")["duration_s"]
    await host.drop()
    return told, recorded


async def _republish_and_end(relay: RelayUnderTest, show: dict) -> None:
    from relay_testkit.synthetic import encode_pattern, video_track
    from relay_testkit.whip import WhipClient

    host = WhipClient(f"{relay.base}/whip/{SHOW}", show["stream_key"],
                      [video_track(encode_pattern(320, 240, 30, seconds=2, gop=30, bitrate=250_000))])
    await host.start()
    start = relay.api("GET", f"/api/shows/{SHOW}/replay")["duration_s"]
    end = time.monotonic() + 20
    while relay.api("GET", f"/api/shows/{SHOW}/replay")["duration_s"] < start + 2 and time.monotonic() < end:
        await asyncio.sleep(0.5)  # until the continued replay has grown, with a deadline
    await host.stop()


# -- half-open sessions ---------------------------------------------------------------------------

def phase_halfopen(args: argparse.Namespace, run, workdir: Path) -> dict[str, Any]:
    print(f"\n== halfopen: {args.halfopen_rate:.0f} half-open WHEP offers/s for {args.halfopen_seconds:.0f} s",
          flush=True)
    relay = RelayUnderTest(workdir, run.server_cpus, run.deadline, name="halfopen", env={
        "RELAY_LIMITS_MAX_PENDING_SESSIONS_PER_ADDRESS": "10", "RELAY_SERVER_TRUST_FORWARDED_FOR": "true"}).start()
    checks: dict[str, bool] = {}
    try:
        result = asyncio.run(_halfopen_run(args, run, relay))
        samples = result["samples"]
        peak_fds, base_fds = max(s["fds"] for s in samples), samples[0]["fds"]
        print(f"  answered {result['statuses']}; sessions held at most {max(s['peers'] for s in samples)}, "
              f"fds {base_fds} -> peak {peak_fds} -> {result['fds_after']}, RSS {samples[0]['rss_mib']} -> "
              f"peak {max(s['rss_mib'] for s in samples)} -> {result['rss_after_mib']} MiB", flush=True)
        print(f"  real viewers during the flood: {result['real_viewers']}", flush=True)
        one = [s["peers"] for s in samples if s["flood"] == "one"]
        check(checks, "one address held at most 10 unfinished sessions (+ host + real viewers)",
              max(one, default=0) <= 10 + 1 + len(result["real_viewers"]))
        check(checks, "every real viewer joined (first frame < 5 s)",
              all(v["ttff_s"] is not None and v["ttff_s"] < 5 for v in result["real_viewers"]))
        check(checks, "peers back to the host and the real viewers after the deadline",
              result["peers_after"] <= 1 + len(result["real_viewers"]))
        check(checks, "fds back (within 16)", result["fds_after"] <= base_fds + 16)
        check(checks, "peak viewer figure counts only real viewers",
              result["peak_viewers"] <= len(result["real_viewers"]))
        result["problems"] = report_log_problems(relay.server, "relay", "  ")
        return result | {"checks": checks}
    finally:
        relay.stop()


async def _halfopen_run(args: argparse.Namespace, run, relay: RelayUnderTest) -> dict[str, Any]:
    import aiohttp

    from relay_testkit.fuzz import half_open_offer
    from relay_testkit.synthetic import audio_track, encode_pattern, encode_tone, video_track
    from relay_testkit.whep import WhepClient
    from relay_testkit.whip import WhipClient

    show = relay.create_show("Half-open", SHOW)
    host = WhipClient(f"{relay.base}/whip/{SHOW}", show["stream_key"],
                      [audio_track(encode_tone()), video_track(encode_pattern(320, 240, 30, 2.0, 30, 250_000))])
    await host.start()
    await host.connected()
    offer = await half_open_offer()

    def fds() -> int:
        return len(list(Path(f"/proc/{relay.pid}/fd").iterdir()))

    samples: list[dict[str, Any]] = []
    statuses: dict[str, int] = {}
    phase = {"now": "one"}  # one address | many addresses | after the flood
    real: list[dict[str, Any]] = []
    started = time.monotonic()
    end = started + args.halfopen_seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as http:
        async def post(address: str) -> int:
            async with http.post(f"{relay.base}/whep/{SHOW}", data=offer, headers={
                    "Content-Type": "application/sdp", "X-Forwarded-For": address}) as res:
                await res.read()
                statuses[str(res.status)] = statuses.get(str(res.status), 0) + 1
                return res.status

        async def sample() -> None:
            while time.monotonic() < end + 20:
                peers = relay.metric("relay_peer_connections") or 0
                samples.append({"t": round(time.monotonic() - started, 1), "flood": phase["now"],
                                "peers": int(peers), "fds": fds(), "rss_mib": round(relay.rss_mib(), 1)})
                await asyncio.sleep(2.0)

        async def real_viewer() -> None:
            viewer = WhepClient(f"{relay.base}/whep/{SHOW}", kinds=("video",), decode=False)
            try:
                await viewer.start()
                ttff = await viewer.first_frame("video", timeout=10)
                real.append({"t": round(time.monotonic() - started, 1), "ttff_s": round(ttff, 3)})
            except Exception as exc:  # refused or never played: recorded, checked above
                real.append({"t": round(time.monotonic() - started, 1), "ttff_s": None, "error": repr(exc)[:200]})
            keep.append(viewer)

        keep: list[WhepClient] = []
        sampler = asyncio.ensure_future(sample())

        async def later(delay: float) -> None:
            await asyncio.sleep(delay)
            await real_viewer()

        joins = [asyncio.ensure_future(later(args.halfopen_seconds * f)) for f in (0.25, 0.75, 0.95)]
        sent = 0
        while time.monotonic() < end and run.deadline.remaining() > 60:
            # The first half from one address, the second spread over 250 (the relay behind a proxy).
            many = time.monotonic() - started > args.halfopen_seconds / 2
            phase["now"] = "many" if many else "one"
            asyncio.ensure_future(post(f"127.9.{sent % 250}.1" if many else "127.9.0.250"))
            sent += 1
            await asyncio.sleep(1.0 / args.halfopen_rate)
        phase["now"] = "after"
        await asyncio.gather(*joins)
        # After the connect deadline: only the host and the real viewers are left.
        deadline = time.monotonic() + 30
        while (relay.metric("relay_peer_connections") or 0) > 1 + len(keep) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await sampler
        peak = relay.api("GET", f"/api/shows/{SHOW}/stats")["rooms"]["hq"]["peak_viewers"]
        result = {"offers": sent, "statuses": statuses, "samples": samples, "real_viewers": real,
                  "peers_after": int(relay.metric("relay_peer_connections") or 0), "fds_after": fds(),
                  "rss_after_mib": round(relay.rss_mib(), 1), "peak_viewers": peak}
        for viewer in keep:
            await viewer.stop()
    await host.drop()
    return result


# -- main ---------------------------------------------------------------------------------------

PHASES = {"join": phase_join, "fuzz": phase_fuzz, "loss": phase_loss, "halfopen": phase_halfopen,
          "restart": phase_restart}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="join,fuzz,loss,halfopen,restart", help="comma-separated (all five)")
    parser.add_argument("--halfopen-seconds", type=float, default=60.0)
    parser.add_argument("--halfopen-rate", type=float, default=20.0, help="half-open offers per second (20)")
    parser.add_argument("--join-viewers", type=int, default=500)
    parser.add_argument("--join-window", type=float, default=10.0)
    parser.add_argument("--cap", type=int, default=500, help="the relay's max_viewers_per_process (500)")
    parser.add_argument("--processes", type=int, default=4, help="viewer worker processes (4)")
    parser.add_argument("--join-bitrate", type=int, default=150_000, help="the host's video bitrate (150000)")
    parser.add_argument("--fuzz-examples", type=int, default=3000, help="per endpoint (3000)")
    parser.add_argument("--loss-seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard cap for the whole run (600)")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = begin_run(args.max_seconds, __spec__.name, argv, "the hosts and viewers")
    machine = run.machine
    print(f"machine: {machine['nproc']} CPU(s), {machine['cpu_model']}; Python {machine['python']}, "
          f"aiortc {machine['aiortc']}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="faults-bench-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": run.command,
                               "machine": machine, "args": args_record(args), "phases": {}}
    status = 0
    started = time.monotonic()
    try:
        for name in args.phases:
            results["phases"][name] = PHASES[name](args, run, workdir)
        if not all(all(p["checks"].values()) for p in results["phases"].values()):
            status = 1
    except (BenchError, KeyboardInterrupt) as exc:
        status = stopped_early(results, exc)
    finally:
        signal.alarm(0)
        results["seconds"] = round(time.monotonic() - started, 1)
        for name, phase in results["phases"].items():
            failed = [c for c, ok in phase["checks"].items() if not ok]
            print(f"summary: {name}: {'PASS' if not failed else 'FAIL: ' + '; '.join(failed)}", flush=True)
        end_run(results, args.json, workdir, args.keep_logs or status == 3)
    return status


if __name__ == "__main__":
    sys.exit(main())
