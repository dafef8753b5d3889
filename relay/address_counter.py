"""How many of something each client address holds, against a limit."""

from __future__ import annotations


class AddressCounter:
    """Per-address counts; `take` refuses past `limit` (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def take(self, address: str) -> bool:
        held = self._held.get(address, 0)
        if self.limit and held >= self.limit:
            return False
        self._held[address] = held + 1
        return True

    def release(self, address: str) -> None:
        held = self._held.get(address, 0) - 1
        if held > 0:
            self._held[address] = held
        else:
            self._held.pop(address, None)

    def held(self, address: str) -> int:
        return self._held.get(address, 0)
