"""The show's Opus audio as AAC, for RTMP targets: decoded and encoded once per show."""

from __future__ import annotations

import fractions
import logging

import av
from av.error import FFmpegError

log = logging.getLogger(__name__)

RATE = 48000
AAC_FRAME = 1024  # samples per AAC-LC frame
SAMPLES_PER_MS = RATE / 1000
GAP_MS = 30.0  # Opus packets further than this from where the last ended start the clock again


class OpusToAac:
    """Decodes Opus packets (48 kHz, stereo, as WebRTC hosts send) and encodes AAC-LC frames of
    the same sound at `bitrate`, with FFmpeg's own AAC encoder.

    Timestamps are milliseconds of the restream clock: an AAC frame's is that of its first
    sample, counted from the Opus packets' (a gap, such as a host reconnecting, moves the clock
    on). `config` is the AudioSpecificConfig a receiver needs first. Not thread-safe: its owner
    uses it on one thread.
    """

    def __init__(self, bitrate: int = 128000) -> None:
        self._decoder = av.CodecContext.create("opus", "r")
        self._decoder.sample_rate = RATE
        self._decoder.layout = "stereo"
        self._encoder = av.CodecContext.create("aac", "w")
        self._encoder.sample_rate = RATE
        self._encoder.layout = "stereo"
        self._encoder.format = "fltp"
        self._encoder.bit_rate = bitrate
        self._encoder.time_base = fractions.Fraction(1, RATE)
        self._encoder.open()
        self.config = bytes(self._encoder.extradata or b"")
        self.bitrate = bitrate
        self._fifo = av.AudioFifo()
        self._written = 0  # samples into the FIFO so far: the encoder's clock
        self._read = 0  # samples out of it, to the encoder
        self._origin_ms = 0.0  # the restream time of sample 0 of the encoder's clock
        self._next_ms: float | None = None  # where the next Opus packet should start
        self.bad_packets = 0

    def convert(self, opus: bytes, ms: float) -> list[tuple[bytes, float]]:
        """The AAC frames (raw, with their time in ms) completed by one Opus packet at `ms`."""
        try:
            frames = self._decoder.decode(av.Packet(opus))
        except FFmpegError:  # (a damaged packet: its 20 ms are missing, the clock moves on)
            self.bad_packets += 1
            return []
        out: list[tuple[bytes, float]] = []
        for frame in frames:
            if self._next_ms is None or abs(ms - self._next_ms) > GAP_MS:
                self._origin_ms = ms - self._written / SAMPLES_PER_MS
            frame.pts = None
            self._fifo.write(frame)
            self._written += frame.samples
            ms += frame.samples / SAMPLES_PER_MS
            self._next_ms = ms
            while self._fifo.samples >= AAC_FRAME:
                chunk = self._fifo.read(AAC_FRAME)
                chunk.pts = self._read
                chunk.time_base = self._encoder.time_base
                self._read += AAC_FRAME
                for packet in self._encoder.encode(chunk):
                    out.append((bytes(packet), self._origin_ms + packet.pts / SAMPLES_PER_MS))
        return out
