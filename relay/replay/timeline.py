"""Maps wall-clock instants to replay stream time (seconds since the replay start)."""

from __future__ import annotations

import threading
from bisect import bisect_right
from dataclasses import dataclass


@dataclass
class _Run:
    wall_start: float
    stream_start: float
    duration: float | None = None  # None while the run is being recorded


class Timeline:
    """Stream time runs through each recorded run (host session) back to back: a gap while
    the host was away is not in the replay, so instants in it map to the gap's position."""

    def __init__(self) -> None:
        self._runs: list[_Run] = []
        self._lock = threading.Lock()

    def begin_run(self, wall_start: float) -> None:
        with self._lock:
            self._runs.append(_Run(wall_start, self._total()))

    def resume(self, wall_start: float, duration: float) -> None:
        """What was recorded before a restart: one finished run of `duration` from `wall_start`."""
        with self._lock:
            self._runs.append(_Run(wall_start, self._total(), duration))

    def end_run(self, duration: float) -> None:
        with self._lock:
            if self._runs and self._runs[-1].duration is None:
                self._runs[-1].duration = duration

    def _total(self) -> float:
        return sum(r.duration or 0.0 for r in self._runs)

    def stream_time(self, wall: float) -> float:
        with self._lock:
            if not self._runs:
                return 0.0
            i = bisect_right([r.wall_start for r in self._runs], wall) - 1
            if i < 0:
                return 0.0
            run = self._runs[i]
            into = wall - run.wall_start
            if run.duration is not None:
                into = min(into, run.duration)
            return run.stream_start + into
