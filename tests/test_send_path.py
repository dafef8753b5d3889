"""The relay's own send path: RTP payloads made once, each viewer's packets written, protected
with its SRTP session and sent on its socket (in one segmented send per run of equal sizes)."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from aiortc.codecs.h264 import h264_depayload
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Policy, Session

from relay.aiortc_hooks import SenderWire
from relay.fanout.packetizer import MAX_PAYLOAD, packetize_h264
from relay.fanout.rtp_sender import RtpSender
from relay.media import RelayFrame


def test_h264_payloads_are_full_size_fragments_but_the_last_and_depacketize_to_the_access_unit():
    nals = [b"\x67" + os.urandom(20), b"\x68" + os.urandom(4), b"\x65" + os.urandom(7000),
            b"\x06" + os.urandom(30), b"\x41" + os.urandom(MAX_PAYLOAD - 1), b"\x41" + os.urandom(MAX_PAYLOAD)]
    payloads = packetize_h264(nals)
    sizes = [len(p) for p in payloads]
    # SPS + PPS in one STAP-A; the IDR in fragments of MAX_PAYLOAD bytes but the last; the SEI alone
    # (the next NAL unit does not fit with it); a NAL unit of exactly MAX_PAYLOAD as it is; one more in two.
    assert payloads[0][0] & 0x1F == 24 and sizes[0] == 1 + 2 + 21 + 2 + 5
    idr = [p for p in payloads if p[0] & 0x1F == 28 and p[1] & 0x1F == 5]
    assert [len(p) for p in idr[:-1]] == [MAX_PAYLOAD] * (len(idr) - 1) and len(idr[-1]) < MAX_PAYLOAD
    assert max(sizes) == MAX_PAYLOAD
    # aiortc's depacketizer (a receiver's) gives back the access unit, byte for byte.
    assert b"".join(h264_depayload(p) for p in payloads) == b"".join(b"\x00\x00\x00\x01" + n for n in nals)


class Viewer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr) -> None:
        self.datagrams.put_nowait(data)


def srtp_pair() -> tuple[Session, Session]:
    key = os.urandom(30)
    return Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)), \
        Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))


async def wired_sender(gso: bool) -> tuple[RtpSender, Viewer, Session, asyncio.DatagramTransport]:
    """An RtpSender on a real UDP socket and SRTP session, sending to a real receiving socket."""
    loop = asyncio.get_running_loop()
    viewer = Viewer()
    receiving, _ = await loop.create_datagram_endpoint(lambda: viewer, local_addr=("127.0.0.1", 0))
    sending, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    tx, rx = srtp_pair()
    extensions = HeaderExtensionsMap()
    wire = SenderWire(RtpPacket(payload_type=102, ssrc=1111).serialize(extensions),
                      RtpPacket(payload_type=103, ssrc=2222).serialize(extensions),
                      tx, sending, receiving.get_extra_info("sockname"), {})
    sender = RtpSender("video", gso)
    sender.attach(wire)
    return sender, viewer, rx, receiving


async def received(viewer: Viewer, rx: Session, count: int) -> list[RtpPacket]:
    return [RtpPacket.parse(rx.unprotect(await asyncio.wait_for(viewer.datagrams.get(), 5))) for _ in range(count)]


def frame(payloads: list[bytes], timestamp: int, key: bool) -> RelayFrame:
    return RelayFrame("video", "H264", b"", payloads, timestamp, key, sum(map(len, payloads)))


@pytest.mark.parametrize("gso", [True, False])
async def test_each_packet_is_protected_numbered_and_marked_and_a_nack_is_answered_over_rtx(gso):
    sender, viewer, rx, receiving = await wired_sender(gso)
    sender.put(frame([b"d" * 10], 90, key=False))  # video starts at a keyframe
    assert sender.dropped == 1 and sender.sent == 0
    keyframe = [bytes([i]) * MAX_PAYLOAD for i in range(5)] + [b"e" * 300]
    sender.put(frame(keyframe, 3000, key=True))
    sender.put(frame([b"p" * 700], 6000, key=False))
    packets = await received(viewer, rx, 7)
    assert [p.payload for p in packets] == keyframe + [b"p" * 700]
    assert [p.marker for p in packets] == [0, 0, 0, 0, 0, 1, 1]
    assert [(p.sequence_number - packets[0].sequence_number) % 65536 for p in packets] == list(range(7))
    assert len({p.timestamp for p in packets[:6]}) == 1 and (packets[6].timestamp - packets[0].timestamp) % 2**32 == 3000
    assert {p.ssrc for p in packets} == {1111} and {p.payload_type for p in packets} == {102}
    assert sender.gso is gso  # the kernel took the segmented sends (or they were off)

    lost = packets[2]
    sender.retransmit(lost.sequence_number)  # RFC 4588: RTX stream, original sequence number first
    (rtx,) = await received(viewer, rx, 1)
    assert rtx.ssrc == 2222 and rtx.payload_type == 103 and rtx.timestamp == lost.timestamp
    assert struct.unpack("!H", rtx.payload[:2])[0] == lost.sequence_number and rtx.payload[2:] == lost.payload
    sender.retransmit((lost.sequence_number + 1000) % 65536)  # not in the history: nothing

    # Sizes as a keyframe's come (STAP-A, fragments, a small NAL unit, fragments): runs of one size.
    mixed = [b"s" * 32, b"a" * MAX_PAYLOAD, b"b" * MAX_PAYLOAD, b"c" * 210, b"d" * MAX_PAYLOAD, b"e" * 4]
    sender.put(frame(mixed, 9000, key=True))
    again = await received(viewer, rx, len(mixed))
    assert [p.payload for p in again] == mixed and [p.marker for p in again] == [0, 0, 0, 0, 0, 1]
    assert [(p.sequence_number - packets[0].sequence_number) % 65536 for p in again] == list(range(7, 13))
    sender.close()
    sender.put(frame([b"x"], 12000, key=True))  # closed: nothing more goes out
    assert sender.retransmitted == 1 and sender.sent == 3
    receiving.close()


async def test_a_viewer_that_reports_heavy_loss_twice_in_a_row_skips_to_the_next_keyframe():
    sender, viewer, rx, receiving = await wired_sender(gso=True)
    asked = []
    sender.on_drop = lambda: asked.append(1)
    sender.put(frame([b"k" * 100], 0, key=True))
    sender.loss_report(100)  # one bad report (100/256 lost): it may pass
    sender.loss_report(10)  # a good one in between: the count starts again
    sender.loss_report(100)
    assert not sender.needs_keyframe and sender.skips == 0 and not asked
    sender.loss_report(64)  # a quarter lost, twice in a row: it cannot keep up
    assert sender.needs_keyframe and sender.skips == 1 and asked == [1]
    sender.put(frame([b"p" * 100], 3000, key=False))  # skipped
    sender.put(frame([b"K" * 100], 6000, key=True))  # resumes here
    got = await received(viewer, rx, 2)
    assert [p.payload for p in got] == [b"k" * 100, b"K" * 100] and sender.dropped == 1
    sender.close()
    receiving.close()
