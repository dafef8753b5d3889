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

from .config import ConfigError, Settings, load_settings
from .http.guard import ConnectionGuard, guarded, raise_fd_limit
from .http.access_log import AccessLogger
from .logs import setup_logging
from .workers import (Supervisor, check_workers, name_node, prepare_data_dir, ready_line, watch_supervisor,
                      worker_count, worker_index)

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


def _workers(text: str) -> int:
    try:
        return worker_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command's parser and its `serve` subcommand's."""
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
    serve.add_argument("--workers", type=_workers, default=1, metavar="N",
                       help="worker processes sharing the port (auto: one per core; more than 1 needs --redis)")
    serve.add_argument("--demo", action="store_true", help="create show 'demo' fed by a synthetic host")
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="json: one JSON object per line, with show/room/session fields")
    return parser, serve


def _parse(argv: list[str] | None) -> argparse.Namespace:
    return _parsers()[0].parse_args(argv)


def _settings(args: argparse.Namespace) -> Settings:
    """The settings file and environment, then the command line over them."""
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
    return settings


async def _serve(args: argparse.Namespace) -> None:
    from .app import SERVICES, build_app

    settings = _settings(args)
    worker = worker_index()
    # The port and the data dir are checked before anything is created (keys, database).
    # A worker shares the port with the others and has a private one for other nodes.
    listener = _listen(settings.server.host, settings.server.port, reuse_port=worker is not None)
    settings.server.port = listener.getsockname()[1]
    rtmp = _rtmp_listener(settings, reuse_port=worker is not None)
    private = _listen(settings.server.host, 0) if worker is not None else None
    name_node(settings, worker, private.getsockname()[1] if private is not None else None)
    _check_data_dir(settings.data_path)
    soft, hard = raise_fd_limit()
    app = build_app(settings, rtmp)
    runner = web.AppRunner(app, handle_signals=False, access_log_class=AccessLogger,
                           shutdown_timeout=settings.server.shutdown_timeout_s / 2,
                           keepalive_timeout=settings.server.idle_timeout_s)
    await runner.setup()
    guard = ConnectionGuard(settings.server.read_timeout_s, settings.limits.max_connections_per_address)
    # A deep accept queue: a show's start brings thousands of connections at once.
    loop = asyncio.get_running_loop()
    http_servers = [await loop.create_server(guarded(runner.server, guard), sock=sock, backlog=4096)
                    for sock in (listener, private) if sock is not None]
    logging.getLogger(__name__).info("open-file limit %s (hard %s)", soft, hard)
    # Long-lived state (sessions, readers) would otherwise be rescanned by full collections
    # that stall the loop for tens of ms; start-up objects are frozen, and young objects get
    # more room to die before they are promoted.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    where = f"http://{settings.server.host}:{settings.server.port}"
    if rtmp is not None and worker is None:
        print(f"relay: RTMP ingest on rtmp://{settings.rtmp_host}:{settings.rtmp.port}/live", flush=True)
    if worker is None:
        print(f"relay: listening on {where}", flush=True)
    else:
        print(ready_line(where, worker, settings), flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watch = asyncio.ensure_future(watch_supervisor(stop.set)) if worker is not None else None
    demo = None
    if args.demo:
        from .demo import start_demo

        demo = await start_demo(app[SERVICES])
    await stop.wait()
    if watch is not None:
        watch.cancel()
    if demo is not None:
        await demo.drop()
    # SIGTERM: stop accepting, tell readers, close peers, finish segments, flush the stores,
    # all within shutdown_timeout_s.
    started = time.monotonic()
    for http_server in http_servers:
        http_server.close()  # no new connections; the open ones finish below
    try:
        await asyncio.wait_for(runner.cleanup(), settings.server.shutdown_timeout_s)
    except TimeoutError:
        logging.getLogger(__name__).error("shutdown took over %.0fs; stopping anyway",
                                          settings.server.shutdown_timeout_s)
    logging.getLogger(__name__).info("stopped in %.1fs", time.monotonic() - started)


def _supervise(args: argparse.Namespace) -> int:
    """`relay serve --workers N`: checks and makes once what the workers share, then runs them."""
    settings = _settings(args)
    check_workers(settings, args.workers)
    host = settings.server.host
    # Bound with SO_REUSEPORT but never listening (the kernel gives connections only to the
    # workers' listening sockets): a busy port is one line here, port 0 is chosen once, and the
    # port stays this server's while a worker restarts.
    probe = _listen(host, settings.server.port, reuse_port=True)
    rtmp_probe = None
    try:
        port = settings.server.port = probe.getsockname()[1]
        rtmp_probe = _rtmp_listener(settings, reuse_port=True)
        if rtmp_probe is not None:  # every worker takes the port chosen here
            os.environ["RELAY_RTMP_PORT"] = str(settings.rtmp.port)
            print(f"relay: RTMP ingest on rtmp://{settings.rtmp_host}:{settings.rtmp.port}/live", flush=True)
        _check_data_dir(settings.data_path)
        prepare_data_dir(settings)
        supervisor = Supervisor(f"http://{host}:{port}", args.workers, lambda i: _worker_argv(args, port, i),
                                settings.server.shutdown_timeout_s)
        return uvloop.run(supervisor.run())
    finally:
        probe.close()
        if rtmp_probe is not None:
            rtmp_probe.close()


def _worker_argv(args: argparse.Namespace, port: int, index: int) -> list[str]:
    """Worker `index`'s command: this `relay serve` on the port bound, without --workers,
    with --demo in worker 0 only (one synthetic host is enough)."""
    argv = [sys.executable, "-m", "relay", "serve", "--port", str(port)]
    for action in _parsers()[1]._actions:  # every option of serve, so a new one is passed on too
        value = getattr(args, action.dest, None)
        if (not action.option_strings or action.dest in ("help", "port", "workers") or value is None
                or value is False or (action.dest == "demo" and index)):
            continue
        argv += [action.option_strings[-1]] + ([] if value is True else [str(value)])
    return argv


def _listen(host: str, port: int, reuse_port: bool = False, option: str = "--port") -> socket.socket:
    """A TCP socket bound to host:port (shared with others that ask for `reuse_port`), or a
    ConfigError saying why not (and which `option` picks another)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = f" (another server is using it; pick another with {option})" if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    return sock


def _rtmp_listener(settings: Settings, reuse_port: bool) -> socket.socket | None:
    """The RTMP ingest's port, bound (its real number put in the settings), if RTMP is on."""
    if not settings.rtmp.enabled:
        return None
    sock = _listen(settings.rtmp_host, settings.rtmp.port, reuse_port=reuse_port, option="[rtmp] port")
    settings.rtmp.port = sock.getsockname()[1]
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
    setup_logging(args.log_level, args.log_format, worker_index())
    try:
        if args.command == "serve" and args.workers > 1:
            return _supervise(args)
        if args.command == "serve":
            uvloop.run(_serve(args))
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
