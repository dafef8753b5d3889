"""Comments load test: comments accepted per second and the delay from POST to every reader.

What it measures
    The moderation check alone: microseconds per comment with a 5,000-word list (2,500 block,
    2,500 mask words, mixed Latin and CJK; links held), in this process (target <= 50 us).

    Then a `relay serve` subprocess (pinned to CPU 0, embedded store, no per-viewer comment
    limit) with one show and N SSE readers of its HQ room (`--readers`, default 1,000) in a worker
    process on the other CPUs. For each word list (none, then 5,000 words):

      throughput   viewers post as fast as `--concurrency` connections allow for `--seconds`:
                   comments accepted (201) per second
      latency      `--rate` comments a second for `--seconds`, each stamped just before its POST;
                   per (comment, reader): arrival - POST, p50/p99/max over every pair; every
                   reader must get every published comment (target p99 <= 150 ms)

Run (from the repository root):

    python -m bench.comments --readers 1000 --json comments.json

Loopback only; the run stops by itself (`--max-seconds`, default 170). Exit status 0 when
every target is met, 1 otherwise, 3 the run stopped early.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
import timeit
from pathlib import Path
import tempfile
from typing import Any

import aiohttp

from bench.harness import (BenchError, Worker, begin_run, percentile, raise_fd_limit, RelayUnderTest,
                           serve_commands, stopped_early)
from relay.commerce.moderation import ModerationLists, Moderator

SHOW_ID = "chat"
TARGET_P99_MS = 150.0
TARGET_CHECK_US = 50.0
RTTS: list[float] = []  # POST round trips of the latency run
SAMPLES = ["這個商品真的很好看 I love it so much", "how much is shipping to 台北?", "ＷＯＷ that color!",
           "is it on sale today?", "好便宜 要買兩個", "this is word{w} honestly", "請問有其他顏色嗎"]


def word_list(n: int) -> dict[str, Any]:
    """`n` words: half block, half mask; Latin and CJK, none of them in SAMPLES by chance."""
    rng = random.Random(7)
    cjk = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    words = [f"word{i}" if i % 2 else "".join(rng.choice(cjk) for _ in range(3)) + "字" for i in range(n)]
    return {"block": words[: n // 2], "mask": words[n // 2:], "hold_links": True}


def check_time_us(lists: dict[str, Any], runs: int = 20000) -> float:
    moderator = Moderator(ModerationLists(tuple(lists["block"]), tuple(lists["mask"]), lists["hold_links"]))
    texts = [s.format(w=i) for i, s in enumerate(SAMPLES * 3)]
    per_round = timeit.timeit(lambda: [moderator.check(t) for t in texts], number=runs // len(texts))
    return per_round / (runs // len(texts)) / len(texts) * 1e6


# -- the readers' process ---------------------------------------------------------------------

def reader_worker(cpus: set[int], conn) -> None:
    """Commands: ("connect", base, path, n) -> ("connected", n); ("report",) -> ("report",
    [{comment id: arrival time} per reader]); ("exit",)."""
    os.sched_setaffinity(0, cpus)
    import re

    readers: list[Reader] = []
    comment_id = re.compile(rb'"type": "comment", [^\n]*?"comment": \{"id": (\d+)')

    class Reader(asyncio.Protocol):
        """A bare HTTP/1.1 reader: stamps each chunk of bytes as it arrives, parses afterwards
        (the load generator adds as little delay as it can)."""

        def __init__(self, request: bytes) -> None:
            self.request = request
            self.chunks: list[tuple[float, bytes]] = []
            self.transport = None

        def connection_made(self, transport) -> None:
            self.transport = transport
            transport.write(self.request)

        def data_received(self, data: bytes) -> None:
            self.chunks.append((time.time(), data))

        def arrivals(self) -> dict[int, float]:
            """comment id -> when the bytes completing its event came (a split line counts at its end)."""
            out: dict[int, float] = {}
            pending = b""
            for stamp, data in self.chunks:
                pending += data
                cut = pending.rfind(b"\n\n")
                if cut < 0:
                    continue
                for match in comment_id.finditer(pending, 0, cut):
                    out.setdefault(int(match.group(1)), stamp)
                pending = pending[cut:]
            return out

    async def handle(command: str, args: tuple) -> Any:
        loop = asyncio.get_running_loop()
        if command == "connect":
            host, port, path, n = args
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
            for _ in range(n):
                _, reader = await loop.create_connection(lambda: Reader(request), host, port)
                readers.append(reader)
            return ("connected", n)
        if command == "report":
            reply = ("report", [r.arrivals() for r in readers])
            for r in readers:
                r.chunks.clear()
            return reply
        if command == "exit":
            for r in readers:
                r.transport.close()
            return None
        raise BenchError(f"unknown command {command}")

    serve_commands(conn, handle)


# -- the posters (this process) -----------------------------------------------------------------

async def register(http: aiohttp.ClientSession, base: str, n: int) -> list[str]:
    tokens = []
    for i in range(n):
        async with http.post(f"{base}/api/shows/{SHOW_ID}/viewers", json={"name": f"fan {i}"}) as res:
            tokens.append((await res.json())["token"])
    return tokens


async def post(http: aiohttp.ClientSession, base: str, token: str, text: str) -> tuple[int, dict]:
    async with http.post(f"{base}/api/shows/{SHOW_ID}/comments", json={"text": text},
                         headers={"Authorization": f"Bearer {token}"}) as res:
        return res.status, await res.json()


async def throughput(base: str, tokens: list[str], concurrency: int, seconds: float) -> float:
    accepted = 0
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async def poster(k: int) -> None:
            nonlocal accepted
            i = k
            while time.monotonic() < end:
                status, _ = await post(http, base, tokens[i % len(tokens)], SAMPLES[i % len(SAMPLES)].format(w=i))
                accepted += status == 201
                i += concurrency

        started = time.monotonic()
        await asyncio.gather(*(poster(k) for k in range(concurrency)))
        return accepted / (time.monotonic() - started)


async def latency_run(base: str, tokens: list[str], rate: float, seconds: float) -> dict[int, tuple[float, str]]:
    """Post `rate` comments a second; {comment id: (send time, text)}."""
    sent: dict[int, tuple[float, str]] = {}
    async with aiohttp.ClientSession() as http:
        async def one(i: int) -> None:
            stamp = time.time()
            text = SAMPLES[i % len(SAMPLES)].format(w=i)
            status, body = await post(http, base, tokens[i % len(tokens)], text)
            RTTS.append((time.time() - stamp) * 1000)
            if status == 201:
                sent[body["id"]] = (stamp, text)

        tasks = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--words", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=50.0, help="comments a second in the latency run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=170.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    run = begin_run(args.max_seconds, "bench.comments", argv, "the SSE readers and posters")
    raise_fd_limit()
    results: dict[str, Any] = {"command": run.command, "machine": run.machine, "steps": []}
    lists = word_list(args.words)
    results["check_us"] = {"none": check_time_us({"block": [], "mask": [], "hold_links": True}),
                           f"{args.words} words": check_time_us(lists)}
    print(f"moderation check: {results['check_us']['none']:.1f} us/comment without a list, "
          f"{results['check_us'][f'{args.words} words']:.1f} us with {args.words} words "
          f"(target <= {TARGET_CHECK_US:.0f})", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-comments-"))
    relay = RelayUnderTest(workdir, run.server_cpus, run.deadline,
                           env={"RELAY_COMMENTS_PER_VIEWER_PER_S": "0",
                                "RELAY_LIMITS_REGISTRATIONS_PER_ADDRESS_PER_SHOW": "0",
                                "RELAY_LIMITS_VIEWER_REGISTRATIONS_PER_S": "0"})
    worker = None
    ok = True
    try:
        relay.start()
        relay.create_show("Comments", SHOW_ID)
        ctx = multiprocessing.get_context("spawn")
        worker = Worker(ctx, "readers", reader_worker, (run.client_cpus,))
        worker.conn.send(("connect", "127.0.0.1", relay.port, f"/events/{SHOW_ID}", args.readers))
        if not worker.conn.poll(run.deadline.cap(60)):
            raise BenchError("the readers did not connect in time")
        reply = worker.conn.recv()
        if reply[0] != "connected":
            raise BenchError(str(reply))
        tokens = asyncio.run(_register(relay.base, 200))
        asyncio.run(latency_run(relay.base, tokens, 20, 2))  # warm-up: the readers' first events, caches
        time.sleep(1.0)
        worker.conn.send(("report",))
        if not worker.conn.poll(run.deadline.cap(60)):
            raise BenchError("the readers did not report in time")
        worker.conn.recv()
        for label, body in (("no list", {"block": [], "mask": [], "hold_links": True}),
                            (f"{args.words} words", lists)):
            relay.api("PUT", "/api/moderation", body)
            time.sleep(0.5)
            RTTS.clear()
            sent = asyncio.run(latency_run(relay.base, tokens, args.rate, args.seconds))
            time.sleep(1.0)
            worker.conn.send(("report",))
            if not worker.conn.poll(run.deadline.cap(60)):
                raise BenchError("the readers did not report in time")
            arrivals = worker.conn.recv()[1]
            per_s = asyncio.run(throughput(relay.base, tokens, args.concurrency, args.seconds))
            time.sleep(4.0)  # the readers catch up before the next run
            worker.conn.send(("report",))  # (and forget what they got meanwhile)
            if not worker.conn.poll(run.deadline.cap(60)):
                raise BenchError("the readers did not report in time")
            worker.conn.recv()
            moderator = Moderator(ModerationLists(tuple(body["block"]), tuple(body["mask"]), body["hold_links"]))
            # held ones reach no reader (their author is not among them)
            visible = {cid: stamp for cid, (stamp, text) in sent.items() if moderator.check(text).status != "held"}
            delays = [(a[cid] - stamp) * 1000 for a in arrivals for cid, stamp in visible.items() if cid in a]
            missing = sum(1 for a in arrivals for cid in visible if cid not in a)
            step = {"lists": label, "readers": args.readers, "accepted_per_s": round(per_s, 1),
                    "rate": args.rate, "comments": len(visible), "pairs": len(delays), "missing": missing,
                    "p50_ms": round(statistics.median(delays), 1) if delays else None,
                    "p99_ms": round(percentile(delays, 99), 1) if delays else None,
                    "max_ms": round(max(delays), 1) if delays else None,
                    "post_p50_ms": round(statistics.median(RTTS), 1), "post_p99_ms": round(percentile(RTTS, 99), 1)}
            results["steps"].append(step)
            met = missing == 0 and bool(delays) and step["p99_ms"] <= TARGET_P99_MS
            ok = ok and met
            print(f"{label:>12}: {per_s:7.1f} comments/s accepted; at {args.rate:.0f}/s to {args.readers} readers: "
                  f"p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms, max {step['max_ms']} ms, "
                  f"missing {missing} {'ok' if met else 'MISSED'} (POST p50 {step['post_p50_ms']} ms, "
                  f"p99 {step['post_p99_ms']} ms)", flush=True)
        ok = ok and results["check_us"][f"{args.words} words"] <= TARGET_CHECK_US
    except BenchError as exc:
        return stopped_early(results, exc)
    finally:
        if worker is not None:
            try:
                worker.conn.send(("exit",))
            except OSError:
                pass
            worker.proc.join(5)
            if worker.proc.is_alive():
                worker.proc.kill()
        relay.stop()
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


async def _register(base: str, n: int) -> list[str]:
    async with aiohttp.ClientSession() as http:
        return await register(http, base, n)


if __name__ == "__main__":
    sys.exit(main())
