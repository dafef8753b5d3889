"""H.264 bitstream facts the relay needs, in one place: NAL unit types, keyframes, and the
picture size from a sequence parameter set (ITU-T H.264 section 7.3.2.1.1)."""

from __future__ import annotations

from .aiortc_hooks import split_h264

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F


def is_keyframe(annexb: bytes) -> bool:
    """The access unit holds an IDR slice."""
    return any(nal and nal_type(nal) == NAL_IDR for nal in split_h264(annexb))


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]
        value = (byte >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def _unescape(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            next_scale = (last + bits.se()) % 256
        last = next_scale if next_scale != 0 else last


def sps_dimensions(sps: bytes) -> tuple[int, int]:
    """(width, height) in pixels from an SPS NAL unit (with its one-byte header)."""
    bits = _Bits(_unescape(sps[1:]))
    profile = bits.bits(8)
    bits.bits(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    chroma_format = 1
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma_format = bits.ue()
        if chroma_format == 3:
            bits.bit()  # separate_colour_plane_flag
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.bit()  # qpprime_y_zero_transform_bypass_flag
        if bits.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format != 3 else 12):
                if bits.bit():
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.bit()
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_units = bits.ue() + 1
    frame_mbs_only = bits.bit()
    if not frame_mbs_only:
        bits.bit()
    bits.bit()  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if bits.bit():
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    sub_w, sub_h = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}[chroma_format]
    crop_x = sub_w if chroma_format else 1
    crop_y = (sub_h if chroma_format else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - crop_y * (crop[2] + crop[3])
    return width, height


def find_sps(annexb: bytes) -> bytes | None:
    """The first SPS NAL unit in an Annex-B access unit."""
    return next((nal for nal in split_h264(annexb) if nal and nal_type(nal) == NAL_SPS), None)
