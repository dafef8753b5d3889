"""AMF0 (Action Message Format 0), the encoding of RTMP's commands and metadata, for both ends
of RTMP: what an encoder sends (numbers, booleans, strings, objects, arrays, null) is decoded,
and the values a server answers with or a publishing client sends are encoded."""

from __future__ import annotations

import struct

NUMBER, BOOLEAN, STRING, OBJECT, NULL, UNDEFINED = 0x00, 0x01, 0x02, 0x03, 0x05, 0x06
REFERENCE, ECMA_ARRAY, OBJECT_END, STRICT_ARRAY, DATE, LONG_STRING = 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C
MAX_DEPTH = 16  # objects in objects: encoders send two levels at most
_DOUBLE = struct.Struct(">d")


class AmfError(ValueError):
    """The bytes are not AMF0 this server reads."""


class EcmaArray(dict):
    """A dict sent as an AMF0 ECMA array (what onMetaData carries)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise AmfError(f"AMF0 value cut short at byte {self.pos}")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def text(self, size: int) -> str:
        return self.take(size).decode("utf-8", errors="replace")

    def value(self, depth: int = 0) -> object:
        if depth > MAX_DEPTH:
            raise AmfError(f"AMF0 values nested deeper than {MAX_DEPTH}")
        marker = self.take(1)[0]
        if marker == NUMBER:
            return _DOUBLE.unpack(self.take(8))[0]
        if marker == BOOLEAN:
            return self.take(1)[0] != 0
        if marker == STRING:
            return self.text(self.u16())
        if marker == LONG_STRING:
            return self.text(self.u32())
        if marker in (NULL, UNDEFINED):
            return None
        if marker == OBJECT:
            return self.properties(depth)
        if marker == ECMA_ARRAY:
            self.u32()  # a count encoders get wrong; the end marker is what counts
            return self.properties(depth)
        if marker == STRICT_ARRAY:
            count = self.u32()
            if count > len(self.data) - self.pos:  # each value is at least one byte
                raise AmfError(f"AMF0 array of {count} values in {len(self.data) - self.pos} bytes")
            return [self.value(depth + 1) for _ in range(count)]
        if marker == DATE:
            milliseconds = _DOUBLE.unpack(self.take(8))[0]
            self.take(2)  # time zone, unused
            return milliseconds
        if marker == REFERENCE:
            self.u16()
            return None
        raise AmfError(f"AMF0 type {marker:#04x} is not supported")

    def properties(self, depth: int) -> dict[str, object]:
        values: dict[str, object] = {}
        while True:
            name = self.text(self.u16())
            if not name and self.data[self.pos:self.pos + 1] == bytes([OBJECT_END]):
                self.pos += 1
                return values
            values[name] = self.value(depth + 1)


def decode(data: bytes) -> list[object]:
    """Every value in `data`, in order (a command: its name, transaction id, then arguments)."""
    reader = _Reader(data)
    values = []
    while reader.pos < len(data):
        values.append(reader.value())
    return values


def encode(*values: object) -> bytes:
    """`values` one after the other: float or int (a number), bool, str, None (null), dict (an
    object; an EcmaArray as an ECMA array)."""
    out = bytearray()
    for value in values:
        _encode(out, value)
    return bytes(out)


def _encode(out: bytearray, value: object) -> None:
    if value is None:
        out.append(NULL)
    elif isinstance(value, bool):
        out += bytes([BOOLEAN, value])
    elif isinstance(value, (int, float)):
        out.append(NUMBER)
        out += _DOUBLE.pack(float(value))
    elif isinstance(value, str):
        raw = value.encode()
        if len(raw) > 0xFFFF:
            out.append(LONG_STRING)
            out += len(raw).to_bytes(4, "big")
        else:
            out.append(STRING)
            out += len(raw).to_bytes(2, "big")
        out += raw
    elif isinstance(value, dict):
        if isinstance(value, EcmaArray):
            out += bytes([ECMA_ARRAY]) + len(value).to_bytes(4, "big")
        else:
            out.append(OBJECT)
        for name, item in value.items():
            raw = name.encode()
            out += len(raw).to_bytes(2, "big") + raw
            _encode(out, item)
        out += b"\x00\x00" + bytes([OBJECT_END])
    else:
        raise TypeError(f"AMF0 cannot encode {type(value).__name__}")
