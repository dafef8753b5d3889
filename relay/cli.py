"""The `relay` command: `relay serve` runs the server."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
from importlib.metadata import PackageNotFoundError, version
import logging
import os
from pathlib import Path
import signal
import socket
import sys
import time

from aiohttp import web
import uvloop

from .config import ConfigError, load_settings
from .http.guard import ConnectionGuard, guarded, raise_fd_limit
from .http.access_log import AccessLogger
from .logs import setup_logging

DEFAULT_CONFIG = "config/relay.toml"


def _version() -> str:
    try:
        return version("livecast-relay")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535; 0 picks a free one)")
    return port


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="relay", description="livecast relay: live-commerce stream relay")
    parser.add_argument("--version", action="version", version=f"relay {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to bind (default 8080; 0 picks a free one)")
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
    from .app import SERVICES, build_app

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
    # The port and the data dir are checked before anything is created (keys, database).
    listener = _listen(settings.server.host, settings.server.port)
    settings.server.port = listener.getsockname()[1]
    _check_data_dir(settings.data_path)
    soft, hard = raise_fd_limit()
    app = build_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log_class=AccessLogger,
                           shutdown_timeout=settings.server.shutdown_timeout_s / 2,
                           keepalive_timeout=settings.server.idle_timeout_s)
    await runner.setup()
    guard = ConnectionGuard(settings.server.read_timeout_s, settings.limits.max_connections_per_address)
    # A deep accept queue: a show's start brings thousands of connections at once.
    http_server = await asyncio.get_running_loop().create_server(guarded(runner.server, guard), sock=listener,
                                                                 backlog=4096)
    logging.getLogger(__name__).info("open-file limit %s (hard %s)", soft, hard)
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

        demo = await start_demo(app[SERVICES])
    await stop.wait()
    if demo is not None:
        await demo.drop()
    # SIGTERM: stop accepting, tell readers, close peers, finish segments, flush the stores,
    # all within shutdown_timeout_s.
    started = time.monotonic()
    http_server.close()  # no new connections; the open ones finish below
    try:
        await asyncio.wait_for(runner.cleanup(), settings.server.shutdown_timeout_s)
    except TimeoutError:
        logging.getLogger(__name__).error("shutdown took over %.0fs; stopping anyway",
                                          settings.server.shutdown_timeout_s)
    logging.getLogger(__name__).info("stopped in %.1fs", time.monotonic() - started)


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port, or a ConfigError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = " (another server is using it; pick another with --port)" if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    return sock


def _check_data_dir(path: Path) -> None:
    """The data dir exists (created if missing) and is a writable folder, or a ConfigError."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"data dir {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"data dir {path}: {exc.strerror or exc}") from None


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
