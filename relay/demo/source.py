"""The demo's synthetic host: a moving test pattern (H.264 or VP8) and a tone (Opus), encoded
once from FFmpeg's lavfi sources, then sent looped at the right pace.

Encoding happens once up front, so sending costs no encoder time: what a real host's encoder
would have produced, replayed.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import av
from aiortc import MediaStreamTrack
from av.video.frame import PictureType

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms


def _encode(source: str, codec: av.CodecContext, count: int, step: int, keyframe_every: int = 0) -> list[bytes]:
    """The first `count` frames of the lavfi graph `source` through `codec`, flushed."""
    out: list[bytes] = []
    with av.open(source, format="lavfi") as container:
        for i, frame in zip(range(count), container.decode(container.streams[0])):
            frame.pts = i * step
            frame.time_base = codec.time_base
            if keyframe_every:
                frame.pict_type = PictureType.I if i % keyframe_every == 0 else PictureType.NONE
            out += [bytes(p) for p in codec.encode(frame)]
    return out + [bytes(p) for p in codec.encode(None)]


def encode_pattern(width: int = 1280, height: int = 720, fps: int = 30, seconds: float = 4.0,
                   gop: int = 60, bitrate: int = 2_000_000, codec_name: str = "libx264") -> list[bytes]:
    """Frames of FFmpeg's moving colour test pattern, a keyframe every `gop` frames: H.264
    access units (Annex-B, constant bitrate) with libx264, VP8 frames with libvpx."""
    codec = av.CodecContext.create(codec_name, "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fractions.Fraction(fps, 1)
    codec.bit_rate = bitrate
    codec.gop_size = gop
    if codec_name == "libx264":
        codec.options = {"preset": "veryfast", "tune": "zerolatency", "profile": "baseline",
                         "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:nal-hrd=cbr",
                         "maxrate": str(bitrate), "bufsize": str(bitrate // 2)}
    else:
        codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                         "keyint_min": str(gop)}
    # Light noise, like a camera sensor's: the encoder spends the bitrate on picture, not filler.
    # (Heavier noise made keyframes ~50 % bigger and recovery from packet loss in
    # tests/test_faults.py measurably slower.)
    source = f"testsrc2=size={width}x{height}:rate={fps},noise=alls=10:allf=t+u,format=yuv420p"
    return _encode(source, codec, int(seconds * fps), 1, keyframe_every=gop)


def encode_tone(seconds: float = 2.0, frequency: float = 440.0) -> list[bytes]:
    """20 ms Opus packets (stereo, 64 kbit/s) of a sine tone."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_RATE
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 64000
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    source = (f"sine=frequency={frequency}:sample_rate={AUDIO_RATE}:samples_per_frame={AUDIO_SAMPLES},"
              "aformat=sample_fmts=s16:channel_layouts=stereo")
    return _encode(source, codec, int(seconds * AUDIO_RATE / AUDIO_SAMPLES), AUDIO_SAMPLES)


class EncodedTrack(MediaStreamTrack):
    """Sends pre-encoded frames in a loop at `rate` frames per second (aiortc only packetizes)."""

    def __init__(self, kind: str, frames: list[bytes], rate: float, clock: int, step: int) -> None:
        super().__init__()
        self.kind = kind
        self.frames = frames
        self.sent = 0
        self._rate = rate
        self._time_base = fractions.Fraction(1, clock)
        self._step = step
        self._start: float | None = None

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.sent / self._rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the frame's due time: a live host's pace
        packet = av.Packet(self.frames[self.sent % len(self.frames)])
        packet.pts = self.sent * self._step
        packet.time_base = self._time_base
        self.sent += 1
        return packet


def video_track(frames: list[bytes], fps: int = 30) -> EncodedTrack:
    return EncodedTrack("video", frames, fps, VIDEO_CLOCK, VIDEO_CLOCK // fps)


def audio_track(packets: list[bytes]) -> EncodedTrack:
    return EncodedTrack("audio", packets, AUDIO_RATE / AUDIO_SAMPLES, AUDIO_RATE, AUDIO_SAMPLES)
