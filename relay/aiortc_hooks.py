"""Every touch of aiortc's and aioice's private internals, in one place.

The relay forwards encoded media; aiortc is built to decode and encode. These hooks take the
encoded frame out of a receiver before its decoder would see it, let the relay put a sender's
RTP on the wire itself (its header template, SRTP session and socket), and route viewers' NACKs
and keyframe requests to the relay.
`check()` verifies that every hook point still exists; tests/test_aiortc_hooks.py calls it so an
aiortc upgrade that moves one fails loudly. Verified against aiortc 1.16 and aioice 0.13.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import sys
import threading
from typing import Any, Callable, Iterable

import aioice.ice
from aiortc import RTCDtlsTransport, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCCertificate, State as DtlsState
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpRrPacket, RtcpSrPacket, RtpPacket
from pylibsrtp import Session as SrtpSession
from pylibsrtp._binding import ffi as _srtp_ffi, lib as _srtp_lib

# Name-mangled private attributes of RTCRtpReceiver and RTCRtpSender.
_RECEIVER_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_RECEIVER_RTX_SSRC = "_RTCRtpReceiver__rtx_ssrc"
_SENDER_MID = "_RTCRtpSender__mid"
_SENDER_EXTENSIONS = "_RTCRtpSender__rtp_header_extensions_map"
_SENDER_RTX_PT = "_RTCRtpSender__rtx_payload_type"
# What the sender's RTCP task puts in its sender reports.
_SENDER_REPORT = ("_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp",
                  "_RTCRtpSender__packet_count", "_RTCRtpSender__octet_count")

FrameSink = Callable[[RTCRtpCodecParameters, JitterFrame], None]


class EncodedFrameTap:
    """Stands in for a receiver's decoder queue: each assembled frame goes to `sink`, undecoded.

    aiortc's receiver puts (codec, frame) on this queue from its RTP handler in the event loop,
    and a decoder thread reads it. `put` calls the sink right there, so frames reach the relay
    without a thread hop; the decoder thread only ever sees the end-of-stream `None`, so no
    decoder is created.
    """

    def __init__(self, sink: FrameSink) -> None:
        self._sink = sink
        self._ended = threading.Event()

    def put(self, item: Any) -> None:
        if item is None:
            self._ended.set()
        else:
            self._sink(item[0], item[1])

    def get(self) -> None:
        self._ended.wait()
        return None


def tap_receiver(receiver: RTCRtpReceiver, sink: FrameSink) -> None:
    """Send `receiver`'s encoded frames to `sink` instead of its decoder. Call before it starts."""
    setattr(receiver, _RECEIVER_DECODER_QUEUE, EncodedFrameTap(sink))


def request_keyframe(receiver: RTCRtpReceiver) -> bool:
    """Send a PLI to the remote sender of `receiver`'s media. False if no media SSRC is known yet."""
    rtx = getattr(receiver, _RECEIVER_RTX_SSRC)
    ssrcs = [s.source for s in receiver.getSynchronizationSources() if s.source not in rtx]
    for ssrc in ssrcs:
        asyncio.ensure_future(receiver._send_rtcp_pli(ssrc))
    return bool(ssrcs)


class SrtpScratch:
    """Memory in which packets are written and SRTP-protected in place, back to back, to be
    sent from there (one per process: the send path runs on the event loop only)."""

    def __init__(self, size: int = 96 * 1024) -> None:
        self.size = size
        self.cdata = _srtp_ffi.new("char[]", size)
        self.view = memoryview(_srtp_ffi.buffer(self.cdata))
        self.length = _srtp_ffi.new("int *")


class SrtpError(RuntimeError):
    pass


def protect_in_place(session: SrtpSession, scratch: SrtpScratch) -> Callable[[int, int], int]:
    """A function (offset, length) -> protected length: protects the RTP packet written at
    `offset` of `scratch` with `session` (libsrtp's srtp_protect, as pylibsrtp's
    Session.protect calls it, without its allocation and copies)."""
    context = session._srtp[0]
    cdata, length_p, protect = scratch.cdata, scratch.length, _srtp_lib.srtp_protect

    def protect_at(offset: int, length: int, _session: SrtpSession = session) -> int:  # (keeps it alive)
        length_p[0] = length
        status = protect(context, cdata + offset, length_p)
        if status:
            raise SrtpError(f"srtp_protect failed ({status})")
        return length_p[0]

    return protect_at


@dataclass
class SenderWire:
    """What a sender needs to put its RTP on the wire itself, once its connection is up: the
    RTP header it sends (12 bytes and its header extensions, sequence number and timestamp to
    fill in) and the RTX one if RTX was negotiated, the SRTP protection of its DTLS transport,
    the UDP transport and address of the nominated ICE pair, and where aiortc's RTCP task reads
    the figures of its sender reports."""

    header: bytes
    rtx_header: bytes | None
    srtp: SrtpSession
    udp: asyncio.DatagramTransport
    address: tuple[str, int]
    report: dict[str, Any]  # the sender's __dict__: set_report() writes the SR figures there

    def set_report(self, ntp: int, rtp_timestamp: int, packets: int, octets: int) -> None:
        report = self.report
        report[_SENDER_REPORT[0]] = ntp
        report[_SENDER_REPORT[1]] = rtp_timestamp
        report[_SENDER_REPORT[2]] = packets & 0xFFFFFFFF
        report[_SENDER_REPORT[3]] = octets & 0xFFFFFFFF


def take_over_sender(sender: RTCRtpSender, retransmit: Callable[[int], None],
                     on_keyframe_request: Callable[[], None],
                     on_started: Callable[[RTCRtpCodecParameters], None],
                     on_loss_report: Callable[[int], None]) -> None:
    """The relay sends `sender`'s RTP itself: aiortc's RTP loop only says when the sender started
    (`on_started` with its codec: its connection is up and its header extensions are known)
    and then waits for ever; its RTCP loop goes on (sender reports, the viewer's feedback). A
    NACKed sequence number goes to `retransmit`, a PLI/FIR to `on_keyframe_request`, the
    fraction lost (0-255) of each receiver report about this sender to `on_loss_report`."""
    handle_rtcp = sender._handle_rtcp_packet

    async def _handle_rtcp_packet(packet: Any) -> None:
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    on_loss_report(report.fraction_lost)
        await handle_rtcp(packet)

    async def _next_encoded_frame(codec: RTCRtpCodecParameters) -> Any:
        on_started(codec)
        await asyncio.get_running_loop().create_future()  # cancelled when the sender stops

    async def _retransmit(sequence_number: int) -> None:
        retransmit(sequence_number)

    sender._next_encoded_frame = _next_encoded_frame  # type: ignore[method-assign]
    sender._handle_rtcp_packet = _handle_rtcp_packet  # type: ignore[method-assign]
    sender._retransmit = _retransmit  # type: ignore[method-assign]
    sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]


def sender_wire(sender: RTCRtpSender, codec: RTCRtpCodecParameters) -> SenderWire | None:
    """How to send `sender`'s RTP (see SenderWire); None if its connection is not up."""
    dtls = sender.transport
    srtp = getattr(dtls, "_tx_srtp", None)
    connection = dtls.transport._connection
    pair = connection._nominated.get(1)
    if dtls.state != "connected" or srtp is None or pair is None or pair.protocol.transport is None:
        return None
    extensions = getattr(sender, _SENDER_EXTENSIONS)

    def header(payload_type: int, ssrc: int) -> bytes:
        packet = RtpPacket(payload_type=payload_type, ssrc=ssrc)
        packet.extensions.mid = getattr(sender, _SENDER_MID)
        return packet.serialize(extensions)

    rtx_pt = getattr(sender, _SENDER_RTX_PT)
    return SenderWire(header(codec.payloadType, sender._ssrc),
                      header(rtx_pt, sender._rtx_ssrc) if rtx_pt is not None else None,
                      srtp, pair.protocol.transport, pair.remote_addr, sender.__dict__)


def intercept_datagrams(pc: RTCPeerConnection, take: Callable[[bytes], bool]) -> None:
    """Show every datagram `pc`'s ICE sockets receive to `take` first; those it takes (returns
    True for) go no further (a load generator's viewer counting RTP at the socket). Call after
    the local description is set (its sockets exist) and before the connection is up."""
    transports = {t.receiver.transport.transport for t in pc.getTransceivers()}
    for transport in transports:
        for protocol in transport._connection._protocols:
            original = protocol.datagram_received

            def datagram_received(data: bytes, addr: Any, original: Any = original) -> None:
                if not take(data):
                    original(data, addr)

            protocol.datagram_received = datagram_received


def split_h264(annexb: bytes) -> list[bytes]:
    """NAL units of an Annex-B access unit, start codes removed."""
    return list(H264Encoder._split_bitstream(annexb))


def packetize_h264(nal_units: Iterable[bytes]) -> list[bytes]:
    """RTP payloads (RFC 6184: single NAL, STAP-A, FU-A) for one access unit."""
    return H264Encoder._packetize(nal_units)


def packetize_vp8(frame: bytes, picture_id: int) -> list[bytes]:
    """RTP payloads (RFC 7741) for one VP8 frame."""
    return Vp8Encoder._packetize(frame, picture_id)


def negotiated_codec(transceiver: Any) -> str | None:
    """The media codec (not RTX) chosen for `transceiver` by the last negotiation."""
    codecs = [c for c in transceiver._codecs if c.name.lower() != "rtx"]
    return codecs[0].name if codecs else None


def answer_as_dtls_server(pc: RTCPeerConnection) -> None:
    """Answer `a=setup:passive` to an offer's `actpass`: the relay waits for the peer's DTLS
    ClientHello, so a peer with an RSA certificate (GStreamer) negotiates a suite with ours.
    Call between setRemoteDescription and createAnswer; roles the offer fixed are kept."""
    transports = {t.receiver.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    for transport in transports:
        if transport._role == "auto":
            transport._set_role("server")


# aiortc offers ECDSA suites only: as the DTLS client it cannot talk to a server whose
# certificate is RSA. Our own certificate stays ECDSA, so as the server nothing changes.
DTLS_CIPHERS = (b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:"
                b"ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
                b"ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA")
_original_ssl_context = RTCCertificate._create_ssl_context
_original_set_state = RTCDtlsTransport._set_state


def _ssl_context_with_rsa(self: RTCCertificate, srtp_profiles: list) -> Any:
    context = _original_ssl_context(self, srtp_profiles)
    context.set_cipher_list(DTLS_CIPHERS)
    return context


def _set_state_noting_failure(self: RTCDtlsTransport, state: DtlsState) -> None:
    # aiortc swallows the handshake error; it is still the exception being handled here.
    if state == DtlsState.FAILED and getattr(self, "relay_failure", None) is None:
        error = sys.exc_info()[1]
        self.relay_failure = (f"{type(error).__name__}: {error}" if error is not None
                              else "the certificate does not match the fingerprint, or no SRTP profile in common")
    _original_set_state(self, state)


def install_dtls_hooks() -> None:
    """Let the DTLS client offer RSA suites too, and keep why a DTLS handshake failed."""
    RTCCertificate._create_ssl_context = _ssl_context_with_rsa  # type: ignore[method-assign]
    RTCDtlsTransport._set_state = _set_state_noting_failure  # type: ignore[method-assign]


def dtls_failure(pc: RTCPeerConnection) -> str | None:
    """Why the DTLS handshake of `pc` failed (the OpenSSL error or alert), if it did."""
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport.state == "failed":
            return getattr(transport, "relay_failure", None) or "handshake failed"
    return None


_original_get_host_addresses = aioice.ice.get_host_addresses


def set_host_addresses(addresses: list[str] | None) -> None:
    """Choose the addresses ICE gathers host candidates on, for every peer in this process.

    aioice leaves 127.0.0.1 out; the relay must offer it for loopback peers. `None` or an
    empty list means every interface plus 127.0.0.1.
    """
    if addresses:
        fixed = list(addresses)

        def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]
    else:

        def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            found = _original_get_host_addresses(use_ipv4, use_ipv6)
            return (["127.0.0.1"] if use_ipv4 else []) + found

    aioice.ice.get_host_addresses = get_host_addresses


def set_consent_timeout(seconds: float) -> None:
    """A peer that stops answering ICE consent checks (RFC 7675) is closed after about `seconds`
    (aioice: 6 failed checks, one every 5 s = 30 s), for every peer in this process."""
    aioice.ice.CONSENT_INTERVAL = max(0.2, seconds / aioice.ice.CONSENT_FAILURES)


def check() -> list[str]:
    """The hook points that are missing from the installed aiortc/aioice (empty when all are there)."""
    missing = []
    receiver_init = RTCRtpReceiver.__init__.__code__.co_names
    if "_RTCRtpReceiver__decoder_queue" not in receiver_init:
        missing.append("RTCRtpReceiver.__decoder_queue")
    if "_RTCRtpReceiver__rtx_ssrc" not in receiver_init:
        missing.append("RTCRtpReceiver.__rtx_ssrc")
    if not asyncio.iscoroutinefunction(getattr(RTCRtpReceiver, "_send_rtcp_pli", None)):
        missing.append("RTCRtpReceiver._send_rtcp_pli")
    import aiortc.rtcrtpreceiver as rtcrtpreceiver

    worker = getattr(rtcrtpreceiver, "decoder_worker", None)
    if worker is None or "get" not in worker.__code__.co_names:
        missing.append("rtcrtpreceiver.decoder_worker reading input_q.get()")
    sender_init = RTCRtpSender.__init__.__code__.co_names
    for name in (_SENDER_MID, _SENDER_EXTENSIONS, _SENDER_RTX_PT, *_SENDER_REPORT, "_ssrc", "_rtx_ssrc"):
        if name not in sender_init:
            missing.append(f"RTCRtpSender.{name}")
    if not asyncio.iscoroutinefunction(getattr(RTCRtpSender, "_retransmit", None)):
        missing.append("RTCRtpSender._retransmit")
    handle = getattr(RTCRtpSender, "_handle_rtcp_packet", None)
    if handle is None or "_retransmit" not in handle.__code__.co_names:
        missing.append("RTCRtpSender._handle_rtcp_packet calling _retransmit")
    import aiortc.rtcdtlstransport as rtcdtlstransport

    if "_handle_rtcp_packet" not in rtcdtlstransport.RTCDtlsTransport._handle_rtcp_data.__code__.co_names:
        missing.append("RTCDtlsTransport._handle_rtcp_data calling a recipient's _handle_rtcp_packet")
    run_rtcp = getattr(RTCRtpSender, "_run_rtcp", None)
    if run_rtcp is None or not set(_SENDER_REPORT) <= set(run_rtcp.__code__.co_names):
        missing.append("RTCRtpSender._run_rtcp reading the sender report figures")
    if "_tx_srtp" not in RTCDtlsTransport.__init__.__code__.co_names:
        missing.append("RTCDtlsTransport._tx_srtp")
    if "_srtp" not in SrtpSession.__init__.__code__.co_names or not callable(getattr(_srtp_lib, "srtp_protect", None)):
        missing.append("pylibsrtp Session._srtp / srtp_protect")
    if "_nominated" not in aioice.ice.Connection.__init__.__code__.co_names:
        missing.append("aioice.ice.Connection._nominated")
    if "_protocols" not in aioice.ice.Connection.__init__.__code__.co_names:
        missing.append("aioice.ice.Connection._protocols")
    if not callable(getattr(aioice.ice.StunProtocol, "datagram_received", None)):
        missing.append("aioice.ice.StunProtocol.datagram_received")
    if ("protocol" not in aioice.ice.CandidatePair.__init__.__code__.co_names
            or not isinstance(getattr(aioice.ice.CandidatePair, "remote_addr", None), property)):
        missing.append("aioice.ice.CandidatePair.protocol / remote_addr")
    run_rtp = getattr(RTCRtpSender, "_run_rtp", None)
    if run_rtp is None or "_next_encoded_frame" not in run_rtp.__code__.co_names:
        missing.append("RTCRtpSender._run_rtp calling _next_encoded_frame")
    if not callable(getattr(RTCRtpSender, "_send_keyframe", None)):
        missing.append("RTCRtpSender._send_keyframe")
    handle_rtcp = getattr(RTCRtpSender, "_handle_rtcp_packet", None)
    if handle_rtcp is None or "_send_keyframe" not in handle_rtcp.__code__.co_names:
        missing.append("RTCRtpSender._handle_rtcp_packet calling _send_keyframe")
    for owner, name in ((H264Encoder, "_split_bitstream"), (H264Encoder, "_packetize"),
                        (Vp8Encoder, "_packetize")):
        if not callable(getattr(owner, name, None)):
            missing.append(f"{owner.__name__}.{name}")
    from aiortc import RTCRtpTransceiver

    if "_codecs" not in RTCRtpTransceiver.__init__.__code__.co_names:
        missing.append("RTCRtpTransceiver._codecs")
    if not callable(getattr(aioice.ice, "get_host_addresses", None)):
        missing.append("aioice.ice.get_host_addresses")
    if "set_cipher_list" not in _original_ssl_context.__code__.co_names:
        missing.append("RTCCertificate._create_ssl_context setting the cipher list")
    if not callable(getattr(RTCDtlsTransport, "_set_role", None)):
        missing.append("RTCDtlsTransport._set_role")
    if "_role" not in RTCDtlsTransport.__init__.__code__.co_names:
        missing.append("RTCDtlsTransport._role")
    if "_set_state" not in RTCDtlsTransport._do_handshake.__code__.co_names:
        missing.append("RTCDtlsTransport._do_handshake calling _set_state")
    consent = aioice.ice.Connection.query_consent.__code__.co_names
    if "CONSENT_INTERVAL" not in consent or "CONSENT_FAILURES" not in consent:
        missing.append("aioice.ice.CONSENT_INTERVAL / CONSENT_FAILURES read by query_consent")
    return missing
