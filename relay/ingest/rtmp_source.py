"""A show's stream pushed over RTMP: the FLV audio and video tags of one publishing connection,
turned into what the forwarder takes from a WebRTC host. H.264 goes as Annex-B access units
(the AVCDecoderConfigurationRecord's SPS and PPS before each keyframe), AAC is converted to
Opus; timestamps go from RTMP's milliseconds to the RTP clocks (90 kHz video, 48 kHz audio)."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Callable

import av

from ..h264 import NAL_IDR, NAL_SPS
from ..media import FrameHandler, GoneHandler
from .aac_to_opus import AacToOpus

log = logging.getLogger(__name__)

CODEC_AVC, SOUND_AAC = 7, 10  # FLV codec ids
FRAME_COMMAND = 5  # a video tag that is a command ("start/end of seek"), not a picture
AVC_CONFIG, AVC_NALUS = 0, 1  # AVCPacketType
AAC_CONFIG, AAC_RAW = 0, 1  # AACPacketType
START_CODE = b"\x00\x00\x00\x01"
_VIDEO_CODECS = {2: "Sorenson H.263", 3: "Screen video", 4: "VP6", 5: "VP6 alpha", 6: "Screen video 2"}
_SOUND_FORMATS = {0: "PCM", 1: "ADPCM", 2: "MP3", 3: "PCM", 4: "Nellymoser", 5: "Nellymoser", 6: "Nellymoser",
                  7: "G.711 A-law", 8: "G.711 mu-law", 9: "enhanced RTMP audio", 11: "Speex", 14: "MP3",
                  15: "device-specific sound"}


class UnsupportedMedia(ValueError):
    """The host sends something this relay cannot forward (a video codec other than H.264)."""


def parse_avc_config(record: bytes) -> tuple[int, list[bytes]]:
    """(NAL unit length size, [SPS..., PPS...]) from an AVCDecoderConfigurationRecord
    (ISO/IEC 14496-15 5.2.4.1)."""
    if len(record) < 7 or record[0] != 1:
        raise UnsupportedMedia("an AVC sequence header that is not an AVCDecoderConfigurationRecord (version 1)")
    length_size = (record[4] & 0x03) + 1
    if length_size == 3:
        raise UnsupportedMedia("an AVC sequence header with 3-byte NAL unit lengths")
    units: list[bytes] = []
    pos = 5
    for mask in (0x1F, 0xFF):  # SPS count (5 bits), then PPS count
        if pos >= len(record):
            raise UnsupportedMedia("an AVC sequence header cut short")
        count = record[pos] & mask
        pos += 1
        for _ in range(count):
            size = int.from_bytes(record[pos:pos + 2], "big")
            unit = record[pos + 2:pos + 2 + size]
            if size == 0 or len(unit) != size:
                raise UnsupportedMedia("an AVC sequence header cut short")
            units.append(unit)
            pos += 2 + size
    return length_size, units


def avcc_to_annexb(data: memoryview, length_size: int) -> tuple[bytes, bool, bool]:
    """Length-prefixed H.264 as Annex-B (copied once), and whether it holds an IDR slice and an SPS."""
    parts: list[bytes | memoryview] = []
    idr = sps = False
    pos, end = 0, len(data)
    while pos < end:
        size = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if pos + size > end:
            raise UnsupportedMedia(f"a NAL unit length of {size} with {end - pos} bytes left in the frame")
        if size == 0:
            continue
        kind = data[pos] & 0x1F
        idr = idr or kind == NAL_IDR
        sps = sps or kind == NAL_SPS
        parts += (START_CODE, data[pos:pos + size])
        pos += size
    return b"".join(parts), idr, sps


class RtmpSource:
    """One RTMP publishing connection as a show's `StreamSource`. The connection hands it each
    FLV tag (`video`, `audio`, `metadata`) and calls `ended()` when it closes; `close()` closes
    the connection (the show ended, or another push took over)."""

    def __init__(self, show_id: str, on_frame: FrameHandler, on_gone: GoneHandler, client: str,
                 close_connection: Callable[[], None]) -> None:
        self.id = secrets.token_urlsafe(16)
        self.show_id = show_id
        # What RTMP brings (H.264 and AAC) is what viewers get (H.264 and Opus), known before
        # the first tag: the show's tracks start at once, as a WHIP host's do.
        self.codecs: dict[str, str] = {"video": "H264", "audio": "opus"}
        self.started_at = time.time()
        self.last_frame_at = time.monotonic()
        self.frames = 0
        self.key_hash = ""
        self.closed = False
        self.upstream = False
        self.client = client
        self.metadata: dict[str, object] = {}
        self._on_frame = on_frame
        self._on_gone = on_gone
        self._close_connection = close_connection
        self._length_size = 4
        self._parameter_sets = b""  # Annex-B SPS and PPS of the sequence header
        self._audio: AacToOpus | None = None
        self._warned: set[str] = set()
        self._last_pts: int | None = None

    # -- FLV tags ------------------------------------------------------------------------
    def video(self, timestamp_ms: int, tag: bytes) -> None:
        """A video tag (FLV VIDEODATA). Raises UnsupportedMedia for anything but H.264."""
        if len(tag) < 2:
            return
        frame_type, codec = tag[0] >> 4, tag[0] & 0x0F
        if tag[0] & 0x80:
            raise UnsupportedMedia("enhanced RTMP video (HEVC, AV1, VP9); push H.264")
        if codec != CODEC_AVC:
            raise UnsupportedMedia(f"{_VIDEO_CODECS.get(codec, f'FLV codec {codec}')} video; push H.264")
        if frame_type == FRAME_COMMAND or len(tag) < 5:
            return
        packet_type = tag[1]
        if packet_type == AVC_CONFIG:
            self._length_size, units = parse_avc_config(tag[5:])
            self._parameter_sets = b"".join(START_CODE + unit for unit in units)
            return
        if packet_type != AVC_NALUS:
            return  # end of sequence
        composition = int.from_bytes(tag[2:5], "big", signed=True)
        access_unit, idr, has_sps = avcc_to_annexb(memoryview(tag)[5:], self._length_size)
        if not access_unit:
            return
        if idr and not has_sps:
            access_unit = self._parameter_sets + access_unit
        pts = timestamp_ms + composition
        if self._last_pts is not None and pts < self._last_pts:
            self._warn_once("b-frames", "frames come out of order (B-frames): WebRTC players and the replay "
                                        "expect none; turn B-frames off in the encoder")
        self._last_pts = pts
        self._frame("video", access_unit, (pts * 90) & 0xFFFFFFFF)

    def audio(self, timestamp_ms: int, tag: bytes) -> None:
        """An audio tag (FLV AUDIODATA): AAC is converted to Opus; other formats are left out."""
        if len(tag) < 2:
            return
        sound_format = tag[0] >> 4
        if sound_format != SOUND_AAC:
            name = _SOUND_FORMATS.get(sound_format, f"FLV sound format {sound_format}")
            self._warn_once("audio", f"{name} audio is not supported (push AAC): the show has no sound")
            return
        if tag[1] == AAC_CONFIG:
            config = bytes(tag[2:])
            if self._audio is None or self._audio.config != config:
                self._audio = AacToOpus(config)
            return
        if self._audio is None:
            return  # no AudioSpecificConfig yet: nothing can decode it
        try:
            packets = self._audio.convert(tag[2:], timestamp_ms)
        except av.FFmpegError as exc:
            self._warn_once("aac", f"an AAC frame does not decode ({exc}); such frames are left out")
            return
        for packet, timestamp in packets:
            self._frame("audio", packet, timestamp)

    def metadata_received(self, values: dict[str, object]) -> None:
        """The stream's onMetaData (encoder, size, frame rate): shown in describe()."""
        keep = ("encoder", "width", "height", "framerate", "videodatarate", "audiodatarate", "audiosamplerate")
        self.metadata = {k: values[k] for k in keep if isinstance(values.get(k), (str, int, float))}

    def _frame(self, kind: str, data: bytes, timestamp: int) -> None:
        self.last_frame_at = time.monotonic()
        self.frames += 1
        try:
            self._on_frame(self, kind, data, timestamp)
        except Exception:
            log.exception("forwarding a %s frame of show %s failed", kind, self.show_id)

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("show %s: RTMP publisher %s: %s", self.show_id, self.id, message,
                        extra={"show": self.show_id, "session": self.id})

    # -- StreamSource --------------------------------------------------------------------
    def ended(self) -> None:
        """The connection closed (or the host deleted its stream): the show's grace period starts."""
        if not self.closed:
            log.info("show %s: RTMP publisher %s disconnected", self.show_id, self.id,
                     extra={"show": self.show_id, "session": self.id})
            self._on_gone(self)

    def request_keyframe(self) -> bool:
        return False  # RTMP has no way to ask the encoder; viewers wait for its next keyframe

    def describe(self) -> dict:
        return {
            "session": self.id,
            "since": self.started_at,
            "codecs": self.codecs,
            "connection": "closed" if self.closed else "connected",
            "frames": self.frames,
            "ingest": "rtmp",
            "metadata": self.metadata,
        }

    async def close(self) -> None:
        self.closed = True
        self._close_connection()
