"""The WHIP client of tests and benches: the demo's publisher (relay.demo.whip), able to end
its session with DELETE as well as to vanish."""

from __future__ import annotations

from relay.demo.signaling import SignalingError
from relay.demo.whip import WhipPublisher

from .signaling import delete_session

__all__ = ["SignalingError", "WhipClient"]


class WhipClient(WhipPublisher):
    """A host: `stop()` ends the show as its stop button does, `drop()` vanishes (a lost network)."""

    async def stop(self) -> None:
        """End the session with DELETE, as a host pressing stop does."""
        if self.location:
            await delete_session(self.location, self.auth)
        await self.drop()
