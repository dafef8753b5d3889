"""WebRTC clients of the relay's own protocols: a WHIP publisher and a WHEP viewer built on
aiortc, and a synthetic pre-encoded source. Used by `relay serve --demo`, bench/ and tests/."""
