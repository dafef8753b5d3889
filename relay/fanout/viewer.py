"""A viewer's WHEP session: a peer connection whose tracks send the show's shared frames, put on
the wire by the relay (aiortc does the signalling, ICE, DTLS and RTCP)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Callable

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .. import aiortc_hooks
from ..webrtc import Offer, answer_offer, codec_preferences, new_peer_connection, on_connection_end
from ..metrics import JOIN_SECONDS
from .rtp_sender import RtpSender

log = logging.getLogger(__name__)


class _SharedTrack(MediaStreamTrack):
    """Placeholder track for a sender that is fed encoded frames directly."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self):  # never called: the relay sends the track's RTP itself
        raise MediaStreamError


class ViewerSession:
    """One WHEP session in one room of a show."""

    def __init__(self, show_id: str, room: str, udp_gso: bool, on_gone: Callable[["ViewerSession"], None],
                 on_channel: Callable[["ViewerSession", object], None] | None = None) -> None:
        self.id = secrets.token_urlsafe(16)
        self.show_id = show_id
        self.room = room
        self.pc = new_peer_connection()
        self.senders: dict[str, RtpSender] = {}
        self.sending = asyncio.Event()  # every track sends (its connection is up)
        self.codecs: dict[str, str] = {}
        self.started_at = time.time()
        self.closed = False
        self.reader: str | None = None  # who watches (a viewer id from its token), for what only it may see
        self._udp_gso = udp_gso
        self._on_gone = on_gone
        self._on_channel = on_channel

    async def answer(self, offer: Offer, codecs: dict[str, list[str]], on_keyframe_request: Callable[[], None]) -> str:
        for media in offer.media:
            transceiver = self.pc.addTransceiver(_SharedTrack(media.kind), direction="sendonly")
            transceiver.setCodecPreferences(codec_preferences(media.kind, codecs[media.kind]))
            sender = RtpSender(media.kind, self._udp_gso)
            sender.on_drop = on_keyframe_request
            if media.kind == "video":
                sender.on_first = self._joined
            aiortc_hooks.take_over_sender(transceiver.sender, sender.retransmit, on_keyframe_request,
                                          lambda codec, t=transceiver, s=sender: self._started(t, s, codec),
                                          sender.loss_report)
            self.senders[media.kind] = sender
        sends = "; ".join(f"{k} {'/'.join(v)}" for k, v in codecs.items() if k in offer.kinds())
        if self._on_channel is not None:
            # A viewer that opened a data channel gets the show's events on it.
            self.pc.on("datachannel", lambda channel: self._on_channel(self, channel))
        answer, self.codecs = await answer_offer(self.pc, offer, f" (this show sends {sends})")
        on_connection_end(self.pc, lambda: self.closed or self._on_gone(self))
        return answer

    def _started(self, transceiver, sender: RtpSender, codec) -> None:
        """aiortc started the track's sender (after DTLS): the relay sends from now on."""
        wire = aiortc_hooks.sender_wire(transceiver.sender, codec)
        if wire is None:  # (its connection went meanwhile)
            return
        sender.attach(wire)
        if all(s.attached for s in self.senders.values()):
            self.sending.set()

    def _joined(self) -> None:
        JOIN_SECONDS.observe(time.time() - self.started_at)

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.senders.values())

    def describe(self) -> dict:
        return {
            "session": self.id,
            "room": self.room,
            "since": self.started_at,
            "codecs": self.codecs,
            "connection": self.pc.connectionState,
            "dropped_frames": self.dropped,
            "loss_skips": sum(s.skips for s in self.senders.values()),
        }

    async def close(self) -> None:
        self.closed = True
        for sender in self.senders.values():
            sender.close()
        await self.pc.close()
