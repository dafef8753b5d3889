"""Peer connections, offer validation and codec choices shared by WHIP and WHEP."""

from __future__ import annotations

import asyncio
import re
import weakref
from dataclasses import dataclass, field
from typing import Callable

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from . import aiortc_hooks
from .errors import ApiError
from .media import AUDIO_CODECS, VIDEO_CODECS

MAX_MEDIA_SECTIONS = 8
_SDP_LINE = re.compile(r"^[a-z]=")


PEERS: "weakref.WeakSet[RTCPeerConnection]" = weakref.WeakSet()  # the server's peers, for /metrics


def new_peer_connection() -> RTCPeerConnection:
    # No ICE servers: aiortc would otherwise add a public STUN server.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    PEERS.add(pc)
    return pc


def open_peer_count() -> int:
    """Peer connections of the server not closed yet (a leak shows here)."""
    return sum(1 for pc in list(PEERS) if pc.connectionState != "closed")


@dataclass
class OfferMedia:
    kind: str
    direction: str
    codecs: list[str]
    dtls_role: str = "auto"  # the offerer's a=setup: auto (actpass), client (active), server (passive)


@dataclass
class Offer:
    sdp: str
    media: list[OfferMedia] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [m.kind for m in self.media]


def parse_offer(text: str, *, sending: bool) -> Offer:
    """Validate an SDP offer. `sending`: the remote must send media (WHIP), else receive (WHEP)."""
    if not text.lstrip().startswith("v=0"):
        raise ApiError(400, "bad_sdp", "malformed SDP offer: it must start with v=0")
    for number, line in enumerate(text.splitlines(), 1):
        if line and not _SDP_LINE.match(line):
            raise ApiError(400, "bad_sdp", f"malformed SDP offer: line {number} is not <type>=<value>")
    try:
        description = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc raises assorted errors on malformed lines
        raise ApiError(400, "bad_sdp", f"malformed SDP offer: {exc}") from exc
    if len(description.media) > MAX_MEDIA_SECTIONS:
        raise ApiError(400, "bad_sdp", f"SDP offer has more than {MAX_MEDIA_SECTIONS} media sections")
    mids = [m.rtp.muxId for m in description.media]
    if len(set(mids)) != len(mids):
        raise ApiError(400, "bad_sdp", "malformed SDP offer: two media sections share a mid")
    for group in description.group:
        if group.semantic == "BUNDLE" and not set(group.items) <= set(mids):
            raise ApiError(400, "bad_sdp", "malformed SDP offer: the BUNDLE group names a mid no section has")
    offer = Offer(sdp=text)
    unsupported: list[str] = []
    wanted = ("sendonly", "sendrecv") if sending else ("recvonly", "sendrecv")
    for media in description.media:
        if media.kind not in ("audio", "video"):
            continue
        if not (media.ice and media.ice.usernameFragment and media.ice.password):
            raise ApiError(400, "bad_sdp", f"malformed SDP offer: {media.kind} section has no ICE credentials")
        if not media.dtls or not media.dtls.fingerprints:
            raise ApiError(400, "bad_sdp", f"malformed SDP offer: {media.kind} section has no DTLS fingerprint")
        if media.direction not in wanted:
            raise ApiError(
                400, "bad_sdp",
                f"{media.kind} section is {media.direction}; "
                f"{'a publisher must send' if sending else 'a viewer must receive'} media",
            )
        names = [c.name for c in media.rtp.codecs if c.name.lower() != "rtx"]
        allowed = VIDEO_CODECS if media.kind == "video" else AUDIO_CODECS
        if not any(n.lower() in (a.lower() for a in allowed) for n in names):
            unsupported.append(f"{media.kind} offers {', '.join(names) or 'no codec'}")
        offer.media.append(OfferMedia(media.kind, media.direction, names, media.dtls.role or "auto"))
    if not offer.media:
        raise ApiError(400, "bad_sdp", "malformed SDP offer: no audio or video section")
    kinds = offer.kinds()
    for kind in ("audio", "video"):
        if kinds.count(kind) > 1:
            role = "publisher" if sending else "viewer"
            raise ApiError(400, "bad_sdp", f"a {role} has one {kind} track, the offer has {kinds.count(kind)}")
    if unsupported:
        raise ApiError(
            400, "unsupported_codec",
            "no supported codec: " + "; ".join(unsupported)
            + f" (this relay accepts video {', '.join(VIDEO_CODECS)} and audio {', '.join(AUDIO_CODECS)})",
        )
    return offer


def codec_preferences(kind: str, names: list[str]) -> list[RTCRtpCodecCapability]:
    """aiortc's capabilities for `names` in that order, each followed by its RTX."""
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    chosen = []
    for name in names:
        chosen += [c for c in capabilities if c.name.lower() == name.lower()]
    if kind == "video":
        chosen += [c for c in capabilities if c.name.lower() == "rtx"]
    return chosen


async def answer_offer(pc: RTCPeerConnection, offer: Offer, hint: str = "") -> tuple[str, dict[str, str]]:
    """Apply `offer` to `pc` (its transceivers already set up); return the SDP answer and the
    codec negotiated per kind. A rejected offer closes `pc` and raises a 400."""
    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
    except Exception as exc:  # aiortc raises ValueError, OperationError, InternalError...
        await pc.close()
        raise ApiError(400, "bad_sdp", f"SDP offer rejected: {exc or type(exc).__name__}{hint}") from exc
    if all(m.dtls_role == "auto" for m in offer.media):
        aiortc_hooks.answer_as_dtls_server(pc)
    codecs = negotiated_codecs(pc)
    try:
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # an offer aiortc accepted but cannot answer (found by fuzzing)
        await pc.close()
        raise ApiError(400, "bad_sdp", f"SDP offer cannot be answered: {exc or type(exc).__name__}{hint}") from exc
    return pc.localDescription.sdp, codecs


async def make_offer(pc: RTCPeerConnection) -> str:
    """The SDP offer of `pc` (its transceivers set up), with every candidate gathered."""
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def apply_answer(pc: RTCPeerConnection, sdp: str) -> dict[str, str]:
    """Apply the answer to `pc`'s offer; the codec negotiated per kind."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
    return negotiated_codecs(pc)


def negotiated_codecs(pc: RTCPeerConnection) -> dict[str, str]:
    codecs = {}
    for transceiver in pc.getTransceivers():
        codec = aiortc_hooks.negotiated_codec(transceiver)
        if codec:
            codecs[transceiver.kind] = codec
    return codecs


def watch_handshake(pc: RTCPeerConnection, timeout: float, on_connected: Callable[[], None],
                    on_failed: Callable[[str], None]) -> None:
    """Call `on_connected()` once `pc` is connected (ICE and DTLS done; called before any media
    is handled), or `on_failed(reason)` if it fails, closes or is not connected within `timeout`.
    The reason says what went wrong: ICE, the DTLS error or alert, or how far it got."""
    timer: asyncio.TimerHandle | None = None

    def finish(failure: str | None) -> None:
        pc.remove_listener("connectionstatechange", changed)
        if timer is not None:
            timer.cancel()
        if failure is None:
            on_connected()
        else:
            on_failed(failure)

    def changed() -> None:
        if pc.connectionState == "connected":
            finish(None)
        elif pc.connectionState in ("failed", "closed"):
            finish(handshake_failure(pc))

    def expired() -> None:
        if pc.connectionState != "connected":
            finish(handshake_failure(pc, timeout))

    pc.on("connectionstatechange", changed)
    timer = asyncio.get_running_loop().call_later(timeout, expired)


def handshake_failure(pc: RTCPeerConnection, timeout: float | None = None) -> str:
    """Why `pc` did not connect."""
    dtls = aiortc_hooks.dtls_failure(pc)
    if dtls:
        return f"DTLS handshake failed ({dtls})"
    if pc.iceConnectionState == "failed":
        return "ICE failed: no candidate pair answered connectivity checks"
    if timeout is not None:
        return (f"not connected within {timeout:g}s (ICE {pc.iceConnectionState}, "
                f"connection {pc.connectionState})")
    return f"connection {pc.connectionState} before it was established"


def on_connection_end(pc: RTCPeerConnection, callback: Callable[[], None]) -> None:
    """Call `callback` once the connection has failed or closed."""

    @pc.on("connectionstatechange")
    async def _changed() -> None:
        if pc.connectionState in ("failed", "closed"):
            callback()
