"""AAC in, Opus out: an RTMP host's audio made playable by WebRTC viewers. Each AAC frame is
decoded once, resampled to 48 kHz and encoded as 20 ms Opus packets (PyAV's FFmpeg codecs).

About 0.7 % of a core per show (bench/rtmp.py), 0.1-0.2 ms per packet: done inline, on the
event loop, as the frames arrive.
"""

from __future__ import annotations

from fractions import Fraction

import av
from av.audio.resampler import AudioResampler

RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
BITRATE = 96000  # stereo music and voice; a browser host sends 32-64 kb/s of voice
RESYNC_SAMPLES = RATE // 5  # input this far from where the output is (a gap in the stream): start again from it


class AacToOpus:
    """One host's audio. `convert(aac_frame, timestamp_ms)` returns the Opus packets now ready,
    each with its timestamp in the 48 kHz RTP clock."""

    def __init__(self, audio_specific_config: bytes, bitrate: int = BITRATE) -> None:
        self.config = audio_specific_config
        self._bitrate = bitrate
        self._decoder = av.CodecContext.create("aac", "r")
        self._decoder.extradata = audio_specific_config
        self._resampler: AudioResampler | None = None
        self._encoder: av.AudioCodecContext | None = None
        self._next_in: int | None = None  # 48 kHz time of the next sample given to the encoder
        self._out = 0  # 48 kHz time of the next Opus packet

    def convert(self, aac_frame: bytes, timestamp_ms: int) -> list[tuple[bytes, int]]:
        """Raises av.FFmpegError on a frame the decoder refuses (the caller drops it)."""
        ready: list[tuple[bytes, int]] = []
        at = timestamp_ms * (RATE // 1000)
        for frame in self._decoder.decode(av.Packet(aac_frame)):
            if self._encoder is None:
                self._open(frame)
            if self._next_in is None or abs(at - self._next_in) > RESYNC_SAMPLES:
                self._restart(at)
            frame.pts = None  # the resampler counts samples; the timestamps are ours
            for chunk in self._resampler.resample(frame):
                chunk.pts = self._next_in
                self._next_in += chunk.samples
                for packet in self._encoder.encode(chunk):
                    ready.append((bytes(packet), self._out & 0xFFFFFFFF))
                    self._out += FRAME_SAMPLES
        return ready

    def _open(self, frame: av.AudioFrame) -> None:
        layout = "mono" if frame.layout.nb_channels == 1 else "stereo"  # (more channels: down-mixed)
        self._resampler = AudioResampler(format="s16", layout=layout, rate=RATE, frame_size=FRAME_SAMPLES)
        encoder = av.CodecContext.create("libopus", "w")
        encoder.sample_rate = RATE
        encoder.layout = layout
        encoder.format = "s16"
        encoder.bit_rate = self._bitrate
        encoder.time_base = Fraction(1, RATE)
        encoder.open()
        self._encoder = encoder

    def _restart(self, at: int) -> None:
        """The first frame, or input far from where the output is: the next packet is at `at`."""
        if self._next_in is not None:
            self._resampler = AudioResampler(format="s16", layout=self._encoder.layout.name, rate=RATE,
                                             frame_size=FRAME_SAMPLES)  # (drops the samples it held)
        self._next_in = self._out = at
