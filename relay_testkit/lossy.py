"""A lossy wire for test and bench peers: drop a share of the datagrams a client peer sends and
receives after its connection is up, as a bad network between it and the relay would."""

from __future__ import annotations

import random

from aiortc import RTCPeerConnection


def _is_media(data: bytes) -> bool:
    return bool(data) and 128 <= data[0] <= 191  # RTP and RTCP (RFC 7983); STUN and DTLS pass


def make_lossy(pc: RTCPeerConnection, loss: float, seed: int = 1, everything: bool = False) -> dict:
    """From now on drop `loss` of `pc`'s media datagrams both ways (all datagrams with
    `everything`: the peer vanished). Returns counters of what was dropped."""
    rng = random.Random(seed)
    counts = {"sent": 0, "dropped_out": 0, "received": 0, "dropped_in": 0}
    seen = set()
    for transceiver in pc.getTransceivers():
        ice = transceiver.sender.transport.transport  # RTCDtlsTransport -> RTCIceTransport
        for protocol in ice._connection._protocols:
            if id(protocol) in seen:
                continue
            seen.add(id(protocol))
            receive, send = protocol.datagram_received, protocol.transport.sendto

            def datagram_received(data, addr, receive=receive):
                counts["received"] += 1
                if (everything or _is_media(data)) and rng.random() < loss:
                    counts["dropped_in"] += 1
                    return
                receive(data, addr)

            def sendto(data, addr=None, send=send):
                counts["sent"] += 1
                if (everything or _is_media(data)) and rng.random() < loss:
                    counts["dropped_out"] += 1
                    return
                send(data, addr)

            protocol.datagram_received = datagram_received
            protocol.transport.sendto = sendto
    return counts
