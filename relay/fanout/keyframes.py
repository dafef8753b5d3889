"""Keyframe requests to the host, throttled per show."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from .meter import METER


class KeyframeRequester:
    """Collapses viewers' PLI/FIR into at most one request to the host per `interval` seconds.

    A request that arrives inside the interval is not lost: one request is sent when the
    interval ends.
    """

    def __init__(self, interval: float, send: Callable[[], bool]) -> None:
        self.interval = interval
        self.sent = 0
        self.received = 0
        self._send = send
        self._last = -1e9
        self._pending: asyncio.TimerHandle | None = None

    def request(self) -> None:
        self.received += 1
        METER.keyframe_requests_received += 1
        if self._pending is not None:
            return
        wait = self._last + self.interval - time.monotonic()
        if wait <= 0:
            self._fire()
        else:
            self._pending = asyncio.get_running_loop().call_later(wait, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._last = time.monotonic()
        if self._send():
            self.sent += 1
            METER.keyframe_requests_sent += 1

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
