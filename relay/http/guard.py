"""Connection limits in front of the HTTP server: slow or silent clients cannot hold sockets.

aiohttp closes idle keep-alive connections (`keepalive_timeout`) but waits forever for a request
that never finishes arriving. `GuardedProtocol` wraps each connection's protocol: a request's
head and body must arrive within `read_timeout_s` of its first byte (of the connection opening,
for the first one), and one address may hold at most `max_per_address` connections. A request
being handled (a long event stream included) has no deadline here.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Callable

from ..address_counter import AddressCounter

log = logging.getLogger(__name__)

_END_OF_HEAD = b"\r\n\r\n"
_MAX_HEAD = 128 * 1024  # past this aiohttp refuses the request itself; stop tracking
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,18})[ \t]*\r\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)
_END_OF_CHUNKS = b"\r\n0\r\n\r\n"
_TOO_MANY = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nConnection: close\r\n"
             b"Retry-After: 5\r\nContent-Length: 91\r\n\r\n"
             b'{"error": "too_many_connections", "message": "this address has too many open connections"}\n')
assert len(_TOO_MANY.split(b"\r\n\r\n", 1)[1]) == 91


class ConnectionGuard:
    """The limits, and the open connections per client address."""

    def __init__(self, read_timeout_s: float, max_per_address: int) -> None:
        self.read_timeout_s = read_timeout_s
        self._open = AddressCounter(max_per_address)

    def admit(self, address: str) -> bool:
        return self._open.take(address)

    def release(self, address: str) -> None:
        self._open.release(address)


class GuardedProtocol(asyncio.Protocol):
    """Wraps one connection's HTTP protocol, watching where each request is: its head, its body,
    or being handled."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._address = ""
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._state = "idle"  # idle | head | body | chunked | handling
        self._request_started = 0.0  # loop time of the current request's first byte
        self._head = bytearray()
        self._body_left = 0
        self._tail = b""  # the last bytes of a chunked body, to spot its end across reads

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport
        peer = transport.get_extra_info("peername")
        self._address = peer[0] if isinstance(peer, tuple) else ""
        if not self._guard.admit(self._address):
            # Answered when its request arrives (closing with the request unread would reset
            # the connection before the client reads why); closed soon either way.
            self._timer = asyncio.get_running_loop().call_later(1.0, transport.close)
            return
        self._admitted = True
        self._inner.connection_made(transport)
        self._begin_request()
        self._arm()  # a connection that never says anything is closed too

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(_TOO_MANY)
                self._transport.close()
            return
        self._follow(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self._admitted = False
            self._guard.release(self._address)
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- where the request is ----------------------------------------------------------------
    def _begin_request(self) -> None:
        self._state = "head"
        self._head.clear()
        self._request_started = asyncio.get_running_loop().time()

    def _follow(self, data: bytes) -> None:
        self._take(data)
        # A request that came whole in one read needs no timer; one still arriving gets the
        # rest of its deadline.
        if self._state in ("head", "body", "chunked") and self._timer is None:
            self._arm()

    def _take(self, data: bytes) -> None:
        while data:
            if self._state in ("idle", "handling"):  # the next request on this connection
                self._begin_request()
            if self._state == "head":
                self._head += data
                end = self._head.find(_END_OF_HEAD)
                if end < 0:
                    if len(self._head) > _MAX_HEAD:
                        self._state = "handling"  # aiohttp answers 400/431 itself
                        self._disarm()
                    return
                head, data = bytes(self._head[:end + 2]), bytes(self._head[end + 4:])
                self._head.clear()
                length = _CONTENT_LENGTH.search(head)
                if _CHUNKED.search(head):
                    self._state, self._tail = "chunked", b""
                elif length and int(length.group(1)) > 0:
                    self._state, self._body_left = "body", int(length.group(1))
                else:
                    self._complete()
            elif self._state == "body":
                taken = min(len(data), self._body_left)
                self._body_left -= taken
                data = data[taken:]
                if not self._body_left:
                    self._complete()
            elif self._state == "chunked":
                window = self._tail + data
                end = window.find(_END_OF_CHUNKS)
                if end < 0:
                    self._tail = window[-(len(_END_OF_CHUNKS) - 1):]
                    return
                data = window[end + len(_END_OF_CHUNKS):]
                self._complete()

    def _complete(self) -> None:
        self._state = "handling"
        self._disarm()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(self._request_started + self._guard.read_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            log.info("closing a connection from %s: no complete request within %.0fs (%s)", self._address,
                     self._guard.read_timeout_s, self._state)
            self._transport.close()


def guarded(factory: Callable[[], asyncio.Protocol], guard: ConnectionGuard) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for `loop.create_server` that wraps `factory`'s protocols."""
    return lambda: GuardedProtocol(factory(), guard)


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's open-file soft limit to its hard limit (each viewer holds sockets);
    returns (soft, hard) as they are now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft, hard
