"""Every touch of aiortc's and aioice's private internals, in one place.

The relay forwards encoded media; aiortc is built to decode and encode. These hooks take the
encoded frame out of a receiver before its decoder would see it, hand pre-packetized payloads
to a sender instead of letting it encode, and route viewers' keyframe requests to the relay.
`check()` verifies that every hook point still exists; tests/test_aiortc_hooks.py calls it so an
aiortc upgrade that moves one fails loudly. Verified against aiortc 1.16 and aioice 0.13.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any, Awaitable, Callable, Iterable

import aioice.ice
from aiortc import RTCDtlsTransport, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCCertificate, State as DtlsState
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

# Name-mangled private attributes of RTCRtpReceiver.
_RECEIVER_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_RECEIVER_RTX_SSRC = "_RTCRtpReceiver__rtx_ssrc"

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


def feed_sender(
    sender: RTCRtpSender,
    next_frame: Callable[[], Awaitable[Any]],
    on_keyframe_request: Callable[[], None],
) -> None:
    """Make `sender` send frames from `next_frame()` as they are: no encoder is created.

    `next_frame` returns an object with `payloads` (RTP payloads), `timestamp` (RTP clock) and
    `audio_level` (None), i.e. aiortc's RTCEncodedFrame shape. A viewer's PLI/FIR, which aiortc
    routes to `_send_keyframe` for its encoder, calls `on_keyframe_request` instead.
    """

    async def _next_encoded_frame(codec: RTCRtpCodecParameters) -> Any:
        return await next_frame()

    sender._next_encoded_frame = _next_encoded_frame  # type: ignore[method-assign]
    sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]


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
