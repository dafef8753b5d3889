"""A host's WHIP session: one peer connection whose tracks are received but never decoded."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Callable

from aiortc import RTCRtpReceiver

from .. import aiortc_hooks
from ..webrtc import Offer, answer_offer, codec_preferences, new_peer_connection, on_connection_end

log = logging.getLogger(__name__)

FrameHandler = Callable[["PublisherSession", str, bytes, int], None]


class PublisherSession:
    """One WHIP session. Frames go to `on_frame(session, kind, data, rtp_timestamp)`."""

    def __init__(self, show_id: str, on_frame: FrameHandler, on_gone: Callable[["PublisherSession"], None]) -> None:
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
        self._on_frame = on_frame
        self._on_gone = on_gone

    async def answer(self, offer: Offer, video_codecs: list[str]) -> str:
        """Apply the host's offer and return the SDP answer."""
        for media in offer.media:
            transceiver = self.pc.addTransceiver(media.kind, direction="recvonly")
            names = video_codecs if media.kind == "video" else ["opus"]
            transceiver.setCodecPreferences(codec_preferences(media.kind, names))
            aiortc_hooks.tap_receiver(transceiver.receiver, self._sink(media.kind))
            self.receivers[media.kind] = transceiver.receiver
        answer, self.codecs = await answer_offer(self.pc, offer)
        on_connection_end(self.pc, self._ended)
        return answer

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
