"""A show's incoming stream: a host's WHIP session, or this node's pull of the show from its
origin node; one peer connection whose tracks are received but never decoded."""

from __future__ import annotations

import logging
import secrets
import time

from aiortc import RTCRtpReceiver

from .. import aiortc_hooks
from ..media import FrameHandler, GoneHandler
from ..webrtc import (Offer, answer_offer, apply_answer, codec_preferences, make_offer, new_peer_connection,
                      on_connection_end)

log = logging.getLogger(__name__)



class PublisherSession:
    """One incoming stream of a show. Frames go to `on_frame(session, kind, data, rtp_timestamp)`.
    A host's session answers its offer; a pull from the origin (`upstream`) makes the offer."""

    def __init__(self, show_id: str, on_frame: FrameHandler, on_gone: GoneHandler, upstream: bool = False) -> None:
        self.id = secrets.token_urlsafe(16)
        self.show_id = show_id
        self.pc = new_peer_connection()
        self.codecs: dict[str, str] = {}
        self.receivers: dict[str, RTCRtpReceiver] = {}
        self.started_at = time.time()
        self.last_frame_at = time.monotonic()
        self.frames = 0
        self.key_hash = ""  # of the stream key this session published with
        self.closed = False
        self.upstream = upstream
        self._on_frame = on_frame
        self._on_gone = on_gone

    async def answer(self, offer: Offer, video_codecs: list[str]) -> str:
        """Apply the host's offer and return the SDP answer."""
        for media in offer.media:
            self._receive(media.kind, video_codecs)
        answer, self.codecs = await answer_offer(self.pc, offer)
        on_connection_end(self.pc, self._ended)
        return answer

    async def offer(self, video_codecs: list[str]) -> str:
        """The offer to receive the show's audio and video from its origin node."""
        for kind in ("audio", "video"):
            self._receive(kind, video_codecs)
        return await make_offer(self.pc)

    async def accept(self, answer: str) -> None:
        """Apply the origin's answer to `offer()`."""
        self.codecs = await apply_answer(self.pc, answer)
        on_connection_end(self.pc, self._ended)

    def _receive(self, kind: str, video_codecs: list[str]) -> None:
        transceiver = self.pc.addTransceiver(kind, direction="recvonly")
        transceiver.setCodecPreferences(codec_preferences(kind, video_codecs if kind == "video" else ["opus"]))
        aiortc_hooks.tap_receiver(transceiver.receiver, self._sink(kind))
        self.receivers[kind] = transceiver.receiver

    def _ended(self) -> None:
        if not self.closed:
            log.info("publisher %s of show %s: connection %s", self.id, self.show_id, self.pc.connectionState)
            self._on_gone(self)

    def _sink(self, kind: str) -> aiortc_hooks.FrameSink:
        on_frame = self._on_frame

        def sink(codec, frame) -> None:
            self.last_frame_at = time.monotonic()
            self.frames += 1
            try:
                on_frame(self, kind, frame.data, frame.timestamp)
            except Exception:
                log.exception("forwarding a %s frame of show %s failed", kind, self.show_id)

        return sink

    def request_keyframe(self) -> bool:
        receiver = self.receivers.get("video")
        return receiver is not None and not self.closed and aiortc_hooks.request_keyframe(receiver)

    def describe(self) -> dict:
        return {
            "session": self.id,
            "since": self.started_at,
            "codecs": self.codecs,
            "connection": self.pc.connectionState,
            "frames": self.frames,
        }

    async def close(self) -> None:
        self.closed = True
        await self.pc.close()
