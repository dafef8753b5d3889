"""A synthetic host: a moving test pattern (H.264) and a tone (Opus), encoded once, sent looped.

Encoding happens once up front, so sending costs no encoder time: what a real host's
encoder would have produced, replayed at the right pace.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import av
import numpy as np
from aiortc import MediaStreamTrack

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms


def encode_pattern(width: int = 1280, height: int = 720, fps: int = 30, seconds: float = 4.0,
                   gop: int = 60, bitrate: int = 2_000_000, codec_name: str = "libx264") -> list[bytes]:
    """Frames of a moving colour pattern with a sweeping bar, a keyframe every `gop` frames:
    H.264 access units (Annex-B) with libx264, VP8 frames with libvpx."""
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
    ys, xs = np.mgrid[0:height, 0:width]
    units: list[bytes] = []
    count = int(seconds * fps)
    for i in range(count):
        t = i / fps
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        rgb[..., 0] = ((xs + i * 4) % 256).astype(np.uint8)
        rgb[..., 1] = ((ys + i * 2) % 256).astype(np.uint8)
        rgb[..., 2] = (128 + 127 * math.sin(t * 2)).__int__()
        bar = int((t * 0.25 % 1.0) * width)
        rgb[:, max(0, bar - 8):bar + 8] = 255
        # noise keeps the bitrate near the target, like a camera would
        rgb ^= np.random.randint(0, 24, size=(height, width, 1), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = codec.time_base
        frame.pict_type = av.video.frame.PictureType.I if i % gop == 0 else av.video.frame.PictureType.NONE
        units += [bytes(p) for p in codec.encode(frame)]
    units += [bytes(p) for p in codec.encode(None)]
    return units


def encode_tone(seconds: float = 2.0, frequency: float = 440.0) -> list[bytes]:
    """20 ms Opus packets of a sine tone."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_RATE
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 64000
    packets: list[bytes] = []
    n = int(seconds * AUDIO_RATE / AUDIO_SAMPLES)
    for i in range(n):
        t = (np.arange(AUDIO_SAMPLES) + i * AUDIO_SAMPLES) / AUDIO_RATE
        mono = (np.sin(2 * np.pi * frequency * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = i * AUDIO_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        packets += [bytes(p) for p in codec.encode(frame)]
    return packets


class EncodedTrack(MediaStreamTrack):
    """Sends pre-encoded frames in a loop at `rate` frames per second (aiortc only packetizes)."""

    def __init__(self, kind: str, frames: list[bytes], rate: float, clock: int, step: int) -> None:
        super().__init__()
        self.kind = kind
        self.frames = frames
        self.sent = 0
        self.sent_data: list[bytes] | None = None  # set to a list to keep what was sent
        self._rate = rate
        self._time_base = fractions.Fraction(1, clock)
        self._step = step
        self._start: float | None = None

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.sent / self._rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        data = self.frames[self.sent % len(self.frames)]
        packet = av.Packet(data)
        packet.pts = self.sent * self._step
        packet.time_base = self._time_base
        if self.sent_data is not None:
            self.sent_data.append(data)
        self.sent += 1
        return packet


def video_track(frames: list[bytes], fps: int = 30) -> EncodedTrack:
    return EncodedTrack("video", frames, fps, VIDEO_CLOCK, VIDEO_CLOCK // fps)


def audio_track(packets: list[bytes]) -> EncodedTrack:
    return EncodedTrack("audio", packets, AUDIO_RATE / AUDIO_SAMPLES, AUDIO_RATE, AUDIO_SAMPLES)
