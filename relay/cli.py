"""The `relay` command: `relay serve` runs the server."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import time
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from .config import ConfigError, load_settings
from .logs import AccessLogger, setup_logging

DEFAULT_CONFIG = "config/relay.toml"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="relay", description="livecast relay: live-commerce stream relay")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080; 0 picks a free one)")
    serve.add_argument("--data-dir", help="where shows and recordings are kept (default ./data)")
    serve.add_argument("--config", help="a TOML settings file (default: ./config/relay.toml if present)")
    serve.add_argument("--redis", metavar="URL",
                       help="keep commerce state in Redis (redis://host:6379/0) instead of the embedded store")
    serve.add_argument("--demo", action="store_true", help="create show 'demo' fed by a synthetic host")
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="json: one JSON object per line, with show/room/session fields")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    from .app import build_app

    config = args.config
    if config is None and Path(DEFAULT_CONFIG).is_file():
        config = DEFAULT_CONFIG
    settings = load_settings(config)
    if args.host is not None:
        settings.server.host = args.host
    if args.port is not None:
        settings.server.port = args.port
    if args.data_dir is not None:
        settings.server.data_dir = args.data_dir
    if args.redis is not None:
        settings.store.redis_url = args.redis
    app = build_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log_class=AccessLogger,
                           shutdown_timeout=settings.server.shutdown_timeout_s / 2)
    await runner.setup()
    # A deep accept queue: a show's start brings thousands of connections at once.
    site = web.TCPSite(runner, settings.server.host, settings.server.port, backlog=4096)
    await site.start()
    if settings.server.port == 0:
        settings.server.port = runner.addresses[0][1]
    # Long-lived state (sessions, readers) would otherwise be rescanned by full collections
    # that stall the loop for tens of ms; start-up objects are frozen, and young objects get
    # more room to die before they are promoted.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    print(f"relay: listening on http://{settings.server.host}:{settings.server.port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    demo = None
    if args.demo:
        from .demo import start_demo

        demo = await start_demo(app)
    await stop.wait()
    if demo is not None:
        await demo.drop()
    # SIGTERM: stop accepting, tell readers, close peers, finish segments, flush the stores,
    # all within shutdown_timeout_s.
    started = time.monotonic()
    try:
        await asyncio.wait_for(runner.cleanup(), settings.server.shutdown_timeout_s)
    except TimeoutError:
        logging.getLogger(__name__).error("shutdown took over %.0fs; stopping anyway",
                                          settings.server.shutdown_timeout_s)
    logging.getLogger(__name__).info("stopped in %.1fs", time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        if args.command == "serve":
            uvloop.run(_serve(args))
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
