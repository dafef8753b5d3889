"""FLV tag bodies, which are what RTMP's audio, video and data messages carry (Adobe FLV 10.1,
annex E): H.264 as AVC packets (its decoder configuration built from the stream's SPS and PPS,
then access units with length-prefixed NAL units), AAC (AudioSpecificConfig, then raw frames)
and the onMetaData script."""

from __future__ import annotations

from .. import amf0 as amf
from ..aiortc_hooks import split_h264
from ..h264 import NAL_PPS, NAL_SPS, nal_type, sps_dimensions

AVC_KEYFRAME, AVC_INTER = 0x17, 0x27  # frame type (1 key, 2 inter) << 4 | codec id 7 (AVC)
AVC_SEQUENCE_HEADER, AVC_NALU = 0, 1
AAC_HEADER = 0xAF  # sound format 10 (AAC) << 4 | 44 kHz (always, for AAC) | 16 bit | stereo
AAC_SEQUENCE_HEADER, AAC_RAW = 0, 1
HIGH_PROFILES = (100, 110, 122, 144, 244)


def nal_units(access_unit: bytes) -> list[bytes]:
    """The NAL units of an Annex-B access unit."""
    return [nal for nal in split_h264(access_unit) if nal]


def parameter_sets(nals: list[bytes]) -> tuple[bytes | None, list[bytes]]:
    """The access unit's first SPS and its PPSs."""
    sps = next((n for n in nals if nal_type(n) == NAL_SPS), None)
    return sps, [n for n in nals if nal_type(n) == NAL_PPS]


def avc_decoder_config(sps: bytes, pps: list[bytes]) -> bytes:
    """AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.2.4.1): 4-byte NAL lengths, one SPS, its
    PPSs. High profiles add their chroma format and bit depths: 4:2:0, 8 bits (what WebRTC
    encoders and RTMP platforms use)."""
    record = bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps
    record += bytes([len(pps)]) + b"".join(len(p).to_bytes(2, "big") + p for p in pps)
    if sps[1] in HIGH_PROFILES:
        record += bytes([0xFC | 1, 0xF8, 0xF8, 0])
    return record


def avc_sequence_header(config: bytes) -> bytes:
    return bytes([AVC_KEYFRAME, AVC_SEQUENCE_HEADER, 0, 0, 0]) + config


def avc_access_unit(nals: list[bytes], keyframe: bool) -> bytes:
    """A video body: the access unit's NAL units as they came, each after its 4-byte length
    (composition time 0: one timestamp per frame, as WebRTC has no B-frames)."""
    parts = [bytes([AVC_KEYFRAME if keyframe else AVC_INTER, AVC_NALU, 0, 0, 0])]
    for nal in nals:
        parts += (len(nal).to_bytes(4, "big"), nal)
    return b"".join(parts)


def aac_sequence_header(audio_specific_config: bytes) -> bytes:
    return bytes([AAC_HEADER, AAC_SEQUENCE_HEADER]) + audio_specific_config


def aac_frame(raw: bytes) -> bytes:
    return bytes([AAC_HEADER, AAC_RAW]) + raw


def metadata(sps: bytes | None, audio: bool, audio_bitrate: int) -> bytes:
    """@setDataFrame onMetaData: what a receiver learns before the first frame."""
    fields: dict[str, object] = {}
    if sps is not None:
        try:
            width, height = sps_dimensions(sps)
            fields.update(width=width, height=height)
        except (ValueError, IndexError):  # (the SPS goes as it is; only the metadata lacks its size)
            pass
        fields["videocodecid"] = 7
    if audio:
        fields.update(audiocodecid=10, audiosamplerate=48000, audiosamplesize=16, stereo=True,
                      audiodatarate=audio_bitrate / 1000)
    fields["encoder"] = "livecast relay"
    return amf.encode("@setDataFrame", "onMetaData", amf.EcmaArray(fields))
