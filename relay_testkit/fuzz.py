"""Fuzzed SDP offers for WHIP and WHEP (Hypothesis strategies), for tests/ and bench/.

Offers are a real aiortc offer mutated line by line (dropped, duplicated, garbled lines, wild
numbers, extra media sections, huge values), plus random text and random bytes.
"""

from __future__ import annotations

import re

from aiortc import RTCConfiguration, RTCPeerConnection


async def base_offers() -> dict[str, str]:
    """A valid WHIP offer (sending) and WHEP offer (receiving), with a data channel."""

    async def make(direction: str) -> str:
        pc = RTCPeerConnection()
        for kind in ("audio", "video"):
            pc.addTransceiver(kind, direction=direction)
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return {"whip": await make("sendonly"), "whep": await make("recvonly")}


async def half_open_offer() -> str:
    """A viewer's offer with ICE credentials and a fingerprint but no candidate: a server
    answers it, and nobody ever connects."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = re.sub(r"a=(candidate|end-of-candidates).*\r\n", "", pc.localDescription.sdp)
    await pc.close()
    return sdp


def mutated_offers(base: str):
    """A Hypothesis strategy of offers derived from `base`."""
    from hypothesis import strategies as st

    lines = base.strip().split("\r\n")
    garbage = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)

    @st.composite
    def offer(draw) -> str:
        out = list(lines)
        for _ in range(draw(st.integers(0, 8))):
            op = draw(st.sampled_from(["drop", "dup", "garble", "number", "insert", "more_media", "huge"]))
            i = draw(st.integers(0, max(0, len(out) - 1)))
            if not out:
                out.append(draw(garbage))
            elif op == "drop":
                del out[i]
            elif op == "dup":
                out.insert(i, out[i])
            elif op == "garble":
                out[i] = out[i][:2] + draw(garbage)
            elif op == "number":
                out[i] = "".join(str(draw(st.integers(-2**40, 2**40))) if c.isdigit() else c for c in out[i][:60])
            elif op == "insert":
                out.insert(i, draw(garbage))
            elif op == "more_media":
                start = next((j for j, line in enumerate(out) if line.startswith("m=")), len(out))
                out += out[start:] * draw(st.integers(1, 12))
            else:
                out[i] = out[i][:2] + "x" * draw(st.integers(1000, 70000))
        return draw(st.sampled_from(["\r\n", "\n"])).join(out) + "\r\n"

    return st.one_of(offer(), garbage, st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
