"""Servers in subprocesses for tests and benches: `relay serve` on 127.0.0.1 with a data dir,
a durable redis-server, or any command that prints a line once it is ready."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent

# Tests and benches run hundreds of clients from one address: the per-address limits are off.
NO_LIMITS = {f"RELAY_LIMITS_{name}": "0" for name in (
    "VIEWER_REGISTRATIONS_PER_S", "CLAIMS_PER_S", "ATTRIBUTIONS_PER_S", "WHEP_PER_S", "WHIP_PER_S", "MAX_PENDING_SESSIONS_PER_ADDRESS",
    "MAX_CONNECTIONS_PER_ADDRESS", "REGISTRATIONS_PER_ADDRESS_PER_SHOW")}


class ServerError(RuntimeError):
    """A server did not start (it exited, or never printed that it was ready)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` to `cpus` (threads started later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass


def _pinned_child(cpus: set[int]) -> None:
    """In the child before exec: pin it to `cpus` and have it die with its parent, even if the
    parent is killed (a bench stopped with SIGKILL leaves no server behind)."""
    os.sched_setaffinity(0, cpus)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ServerProcess:
    """A command in a subprocess, its output (stdout and stderr) appended to `log_path`; started
    once a line of it matches `ready`. With `cpus`, it runs pinned to them (benches)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, ready: re.Pattern[str], *,
                 env: dict[str, str] | None = None, cpus: set[int] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.ready = ready
        self.env = env if env is not None else dict(os.environ)
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self._copier: threading.Thread | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError(f"{self.name} is not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> re.Match[str]:
        """Start it and wait for its ready line (at most `timeout` s); returns that line's match."""
        cpus = self.cpus
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env, cwd=REPO,
                                     preexec_fn=(lambda: _pinned_child(cpus)) if cpus else None)
        assert self.proc.stdout is not None
        found: list[re.Match[str]] = []
        done = threading.Event()  # the ready line came, or the output ended
        self._copier = threading.Thread(target=self._copy_output, args=(self.proc.stdout, found, done),
                                        name=f"{self.name}-log", daemon=True)
        self._copier.start()
        if not done.wait(timeout):
            self.kill()
            raise ServerError(f"{self.name} did not say it was ready within {timeout:.0f}s:\n{self.log_tail()}")
        if not found:
            code = self.stop(timeout=5)
            raise ServerError(f"{self.name} exited with {code}:\n{self.log_tail()}")
        if cpus:
            pin(self.proc.pid, cpus)
        return found[0]

    def _copy_output(self, out: IO[bytes], found: list[re.Match[str]], done: threading.Event) -> None:
        """Appends the child's output to the log as it comes (the pipe never fills up) and puts
        the ready line's match in `found`; sets `done` then, or at the end of the output."""
        with out, open(self.log_path, "ab") as log:
            for raw in out:
                log.write(raw)
                log.flush()
                if not found:
                    match = self.ready.search(raw.decode(errors="replace"))
                    if match is not None:
                        found.append(match)
                        done.set()
        done.set()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def problems(self, limit: int = 12) -> list[str]:
        """Log lines at WARNING or worse, and traceback lines."""
        found = [line for line in self.log_text().splitlines()
                 if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Error:", line)]
        return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send `sig` and wait for the exit (SIGKILL after `timeout` s); returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._copier is not None:
            self._copier.join(5)  # the log holds everything the process wrote once this returns
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.stop(signal.SIGKILL)


def relay_env(admin_key: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a `relay serve` under test: this checkout's relay, the admin key,
    loopback ICE, a free RTMP port, no per-address limits; then `extra`."""
    return {**os.environ, "PYTHONPATH": str(REPO), "RELAY_ADMIN_KEY": admin_key,
            "RELAY_ICE_ADDRESSES": "127.0.0.1", "RELAY_RTMP_PORT": "0", **NO_LIMITS, **(extra or {})}


class RelayProcess(ServerProcess):
    """`relay serve` on 127.0.0.1 (port 0: any free one) with `data_dir`; `wrapper` is a script run
    instead of `-m relay`. Started again, it keeps its port and data dir."""

    def __init__(self, data_dir: Path, admin_key: str, *, env: dict[str, str] | None = None, port: int = 0,
                 args: tuple[str, ...] = (), wrapper: str | None = None, log_path: Path | None = None,
                 cpus: set[int] | None = None, name: str = "relay") -> None:
        self.data_dir = data_dir
        self.port = port
        self.args = args
        self.wrapper = wrapper
        self.base = ""
        super().__init__(name, [], log_path or data_dir.parent / f"{data_dir.name}-server.log",
                         re.compile(r"listening on (http://\S+)"), env=relay_env(admin_key, env), cpus=cpus)

    def start(self, timeout: float = 30.0) -> re.Match[str]:
        self.argv = [sys.executable, *([self.wrapper] if self.wrapper else ["-m", "relay"]), "serve",
                     "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.args]
        match = super().start(timeout)
        self.base = match.group(1)
        self.port = int(self.base.rsplit(":", 1)[1])
        return match


class RedisProcess(ServerProcess):
    """A redis-server on a free loopback port (chosen now, kept across restarts), durable as
    production wants it: append-only file, fsync always."""

    def __init__(self, workdir: Path, cpus: set[int] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(workdir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        super().__init__("redis-server", argv, workdir.parent / f"{workdir.name}.log",
                         re.compile(r"Ready to accept connections"), cpus=cpus)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> re.Match[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return super().start(timeout)
