"""The RTMP chunk stream (RTMP 1.0 specification, section 5.3): messages cut into chunks and
interleaved on chunk streams, reassembled here; and the chunks of the messages the server sends.

`ChunkReader` is fed the bytes as they arrive and hands out whole messages one at a time, so
its owner can stop reading between two (while a publish is being checked).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CHUNK_SIZE = 128
MIN_CHUNK_SIZE = 64  # smaller is legal but only ever a way to make the server work per byte
MAX_MESSAGE_BYTES = 8 << 20  # a keyframe of a 4K stream is ~1-2 MB
MAX_PENDING_BYTES = 16 << 20  # parts of messages held at once, over every chunk stream
MAX_CHUNK_STREAMS = 64  # encoders use 3-6
_HEADER_SIZES = (11, 7, 3, 0)  # message header bytes of chunk format 0, 1, 2, 3
_EXTENDED = 0xFFFFFF  # a timestamp field saying: the real value follows in 4 bytes


class ChunkError(ValueError):
    """The peer broke the chunk stream's rules; the connection cannot go on."""


@dataclass(frozen=True, slots=True)
class Message:
    type: int
    stream_id: int
    timestamp: int  # milliseconds
    payload: bytes


class _ChunkStream:
    """What one chunk stream id remembers from its previous chunk headers."""

    __slots__ = ("timestamp", "delta", "length", "type", "stream_id", "extended", "parts", "received")

    def __init__(self) -> None:
        self.timestamp = 0
        self.delta = 0  # what a format-3 chunk that starts a message adds to the timestamp
        self.length = 0
        self.type = 0
        self.stream_id = 0
        self.extended = False  # the last timestamp field was 0xFFFFFF: format-3 chunks carry 4 more bytes
        self.parts: list[bytes] = []
        self.received = 0  # bytes of the message in progress (0: none)


class ChunkReader:
    """Reassembles messages from the chunk stream of one connection."""

    def __init__(self) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self._buf = bytearray()
        self._pos = 0
        self._streams: dict[int, _ChunkStream] = {}
        self._pending = 0  # bytes held in unfinished messages

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read into a message."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def set_chunk_size(self, size: int) -> None:
        if not MIN_CHUNK_SIZE <= size <= 0x7FFFFFFF:
            raise ChunkError(f"chunk size {size} is out of range ({MIN_CHUNK_SIZE} or more)")
        self.chunk_size = size

    def abort(self, chunk_stream_id: int) -> None:
        """The peer gave up the message in progress on a chunk stream (Abort Message)."""
        stream = self._streams.get(chunk_stream_id)
        if stream is not None and stream.received:
            self._pending -= stream.received
            stream.parts, stream.received = [], 0

    def next_message(self) -> Message | None:
        """The next whole message, or None until more bytes arrive."""
        while True:
            message, done = self._read_chunk()
            if message is not None or not done:
                return message

    def _read_chunk(self) -> tuple[Message | None, bool]:
        """Reads one chunk if all of it is here: (a message it completed, True), else (None, False)."""
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < 1:
            return None, False
        first = buf[pos]
        fmt, csid, basic = first >> 6, first & 0x3F, 1
        if csid == 0:
            if available < 2:
                return None, False
            csid, basic = 64 + buf[pos + 1], 2
        elif csid == 1:
            if available < 3:
                return None, False
            csid, basic = 64 + buf[pos + 1] + (buf[pos + 2] << 8), 3
        header = basic + _HEADER_SIZES[fmt]
        if available < header:
            return None, False
        stream = self._streams.get(csid)
        if stream is None:
            if fmt != 0:
                raise ChunkError(f"chunk stream {csid} starts without a full header (format {fmt})")
            if len(self._streams) >= MAX_CHUNK_STREAMS:
                raise ChunkError(f"more than {MAX_CHUNK_STREAMS} chunk streams")
            stream = _ChunkStream()
            self._streams[csid] = stream
        p = pos + basic
        extended = stream.extended
        field = length = kind = stream_id = 0
        if fmt <= 2:
            field = int.from_bytes(buf[p:p + 3], "big")
            extended = field == _EXTENDED
        if fmt <= 1:
            length = int.from_bytes(buf[p + 3:p + 6], "big")
            kind = buf[p + 6]
        if fmt == 0:
            stream_id = int.from_bytes(buf[p + 7:p + 11], "little")
        if extended:
            if available < header + 4:
                return None, False
            field = int.from_bytes(buf[pos + header:pos + header + 4], "big")
            header += 4
        starting = stream.received == 0
        if not starting and fmt != 3:
            raise ChunkError(f"a new message header on chunk stream {csid} before its message ended")
        if starting and fmt <= 1:
            if length > MAX_MESSAGE_BYTES:
                raise ChunkError(f"a message of {length} bytes (at most {MAX_MESSAGE_BYTES})")
            total = length
        else:
            total = stream.length
        size = min(self.chunk_size, total - stream.received)
        if available < header + size:
            return None, False

        # The whole chunk is here: only now does the stream's state change.
        self._pos = pos + header + size
        stream.extended = extended
        if starting:
            if fmt == 0:
                stream.timestamp, stream.delta = field, field  # (a format-3 chunk after it adds the same)
                stream.length, stream.type, stream.stream_id = length, kind, stream_id
            elif fmt == 3:
                stream.timestamp = (stream.timestamp + stream.delta) & 0xFFFFFFFF
            else:
                stream.delta = field
                stream.timestamp = (stream.timestamp + field) & 0xFFFFFFFF
                if fmt == 1:
                    stream.length, stream.type = length, kind
        start = pos + header
        if starting and size == stream.length:  # the message is one chunk: no copy but one
            return Message(stream.type, stream.stream_id, stream.timestamp, bytes(buf[start:start + size])), True
        stream.parts.append(bytes(buf[start:start + size]))
        stream.received += size
        self._pending += size
        if self._pending > MAX_PENDING_BYTES:
            raise ChunkError(f"over {MAX_PENDING_BYTES} bytes of unfinished messages")
        if stream.received < stream.length:
            return None, True
        payload = b"".join(stream.parts)
        self._pending -= stream.received
        stream.parts, stream.received = [], 0
        return Message(stream.type, stream.stream_id, stream.timestamp, payload), True


def encode_message(chunk_stream_id: int, message: Message, chunk_size: int) -> bytes:
    """The chunks of a message the server sends: a full header, then format-3 continuations."""
    if not 2 <= chunk_stream_id <= 63:
        raise ValueError("the server writes on chunk streams 2-63")
    timestamp = message.timestamp & 0xFFFFFFFF
    extended = timestamp >= _EXTENDED
    ext = timestamp.to_bytes(4, "big") if extended else b""
    out = bytearray([chunk_stream_id])
    out += min(timestamp, _EXTENDED).to_bytes(3, "big") + len(message.payload).to_bytes(3, "big")
    out += bytes([message.type]) + message.stream_id.to_bytes(4, "little") + ext
    payload = message.payload
    for offset in range(0, max(1, len(payload)), chunk_size):
        if offset:
            out += bytes([0xC0 | chunk_stream_id]) + ext
        out += payload[offset:offset + chunk_size]
    return bytes(out)
