"""An RTMP(S) publishing client on asyncio: handshake, connect, createStream, publish, then the
show's FLV audio, video and metadata as RTMP messages.

Nothing blocks the event loop: the socket is asyncio's, TLS (rtmps) is the ssl module's, and the
caller bounds the opening with a timeout. (FFmpeg's own RTMP output, as PyAV opens it, holds the
GIL while it connects and takes no timeout there: a receiver that never answers would stop the
whole relay.) What the receiver says (its refusals, the end of the connection) comes back as
`RtmpError` or as the reason `lost` resolves with, the stream key taken out.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct

from .. import amf0 as amf
from .url import RtmpUrl

HANDSHAKE_SIZE = 1536
OUT_CHUNK_SIZE = 4096
FLASH_VERSION = "FMLE/3.0 (compatible; livecast-relay)"

# Message types (RTMP 1.0 sections 5.4, 6.2, 7.1) and the chunk streams this client writes on.
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK_SIZE, PEER_BANDWIDTH = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF3, COMMAND_AMF3, DATA, COMMAND = 8, 9, 15, 17, 18, 20
CONTROL_CHUNKS, COMMAND_CHUNKS, AUDIO_CHUNKS, DATA_CHUNKS, VIDEO_CHUNKS = 2, 3, 4, 5, 6
PING_REQUEST, PING_RESPONSE = 6, 7
_EXTENDED = 0xFFFFFF
MAX_MESSAGE_BYTES = 1 << 20  # a receiver's answers are small
_tls: ssl.SSLContext | None = None  # the system's CAs, loaded once (it takes a while, on the loop)


def default_tls() -> ssl.SSLContext:
    global _tls
    if _tls is None:
        _tls = ssl.create_default_context()
    return _tls


class RtmpError(Exception):
    """The receiver refused, broke the protocol, or went away (the message has no stream key)."""


def encode_chunks(chunk_stream: int, kind: int, stream_id: int, timestamp: int, payload: bytes,
                  chunk_size: int) -> bytes:
    """One message as chunks: a full (format 0) header, then format-3 continuations."""
    timestamp &= 0xFFFFFFFF
    ext = timestamp.to_bytes(4, "big") if timestamp >= _EXTENDED else b""
    parts = [bytes([chunk_stream]) + min(timestamp, _EXTENDED).to_bytes(3, "big") + len(payload).to_bytes(3, "big")
             + bytes([kind]) + stream_id.to_bytes(4, "little") + ext, payload[:chunk_size]]
    if len(payload) > chunk_size:
        continuation = bytes([0xC0 | chunk_stream]) + ext
        view = memoryview(payload)
        for offset in range(chunk_size, len(payload), chunk_size):
            parts += (continuation, view[offset:offset + chunk_size])
    return b"".join(parts)


class _ChunkStream:
    __slots__ = ("length", "kind", "stream_id", "extended", "parts", "received")

    def __init__(self) -> None:
        self.length = self.kind = self.stream_id = self.received = 0
        self.extended = False
        self.parts: list[bytes] = []


class ChunkParser:
    """Messages out of the receiver's chunk stream (their timestamps are of no use here)."""

    def __init__(self) -> None:
        self.chunk_size = 128
        self._buf = bytearray()
        self._streams: dict[int, _ChunkStream] = {}

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Every (type, payload) completed by `data`."""
        self._buf += data
        done = []
        while (message := self._chunk()) is not None:
            if message:
                done.append(message)
        return done

    def _chunk(self) -> tuple[int, bytes] | tuple[()] | None:
        """One chunk if it is all here: the message it ends, () if it ends none; None: wait for more."""
        buf = self._buf
        if not buf:
            return None
        fmt, csid, pos = buf[0] >> 6, buf[0] & 0x3F, 1
        if csid < 2:
            pos += 1 + csid
            if len(buf) < pos:
                return None
            csid = 64 + buf[1] + (buf[2] << 8 if csid == 1 else 0)
        header = pos + (11, 7, 3, 0)[fmt]
        if len(buf) < header:
            return None
        stream = self._streams.get(csid)
        if stream is None:
            if fmt != 0:
                raise RtmpError(f"chunk stream {csid} starts without a full header")
            stream = self._streams[csid] = _ChunkStream()
        extended = stream.extended
        length, kind, stream_id = stream.length, stream.kind, stream.stream_id
        if fmt <= 2:
            extended = int.from_bytes(buf[pos:pos + 3], "big") == _EXTENDED
        if fmt <= 1:
            length, kind = int.from_bytes(buf[pos + 3:pos + 6], "big"), buf[pos + 6]
        if fmt == 0:
            stream_id = int.from_bytes(buf[pos + 7:pos + 11], "little")
        if extended:
            header += 4
        if length > MAX_MESSAGE_BYTES:
            raise RtmpError(f"the receiver sent a message of {length} bytes")
        size = min(self.chunk_size, length - stream.received)
        if len(buf) < header + size:
            return None
        if stream.received and fmt != 3:
            raise RtmpError(f"a new message on chunk stream {csid} before the last one ended")
        stream.extended, stream.length, stream.kind, stream.stream_id = extended, length, kind, stream_id
        stream.parts.append(bytes(buf[header:header + size]))
        stream.received += size
        del buf[:header + size]
        if stream.received < stream.length:
            return ()
        payload = b"".join(stream.parts)
        stream.parts, stream.received = [], 0
        return kind, payload


class RtmpPublisher:
    """One publishing connection to a target. Made by `open`; `send` queues a message on the
    socket (never waits: the caller watches `buffered` and `drain`s), `lost` resolves with the
    reason when the receiver ends the connection, `close` says goodbye."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, url: RtmpUrl) -> None:
        self.url = url
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = reader
        self._writer = writer
        self._written = 0
        self._received = 0
        self._acked = 0
        self._window = 0
        self._chunk_size = 128
        self._parser = ChunkParser()
        self._stream_id = 0
        self._transactions: dict[int, asyncio.Future[list]] = {}
        self._next_transaction = 1
        self._publishing: asyncio.Future[None] | None = None
        self._reading: asyncio.Task | None = None

    @classmethod
    async def open(cls, url: RtmpUrl, ssl_context: ssl.SSLContext | None = None) -> "RtmpPublisher":
        """Connect and publish to `url` (bound it with a timeout: a receiver may never answer)."""
        tls = (ssl_context or default_tls()) if url.tls else None
        reader, writer = await asyncio.open_connection(url.host, url.port, ssl=tls,
                                                       server_hostname=url.host if tls else None)
        publisher = cls(reader, writer, url)
        try:
            await publisher._handshake()
            publisher._reading = asyncio.ensure_future(publisher._read_loop())
            await publisher._publish()
        except BaseException:
            publisher.abort()
            raise
        return publisher

    # -- sending media ---------------------------------------------------------------------
    def send(self, kind: int, timestamp: int, body: bytes) -> None:
        """An AUDIO, VIDEO or DATA message of the published stream at `timestamp` ms."""
        chunks = AUDIO_CHUNKS if kind == AUDIO else VIDEO_CHUNKS if kind == VIDEO else DATA_CHUNKS
        self._write(encode_chunks(chunks, kind, self._stream_id, timestamp, body, self._chunk_size))

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        transport = self._writer.transport
        return 0 if transport.is_closing() else transport.get_write_buffer_size()

    @property
    def bytes_sent(self) -> int:
        """Bytes of this connection handed to the network (RTMP chunks, TLS aside)."""
        return self._written - self.buffered

    async def drain(self) -> None:
        await self._writer.drain()

    async def close(self) -> None:
        """Unpublish and close (at once, without a goodbye, if the connection is lost)."""
        if not self.lost.done() and self._stream_id:
            try:
                self._command("FCUnpublish", self._transaction(), None, self.url.stream)
                self._command("deleteStream", self._transaction(), None, self._stream_id)
                self._writer.close()
                await asyncio.wait_for(self._writer.wait_closed(), 2.0)
            except (OSError, TimeoutError, ssl.SSLError):
                pass
        self.abort()

    def abort(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        self._writer.transport.abort()
        self._lose("closed")

    # -- opening ---------------------------------------------------------------------------
    async def _handshake(self) -> None:
        """RTMP's plain handshake: C0 C1, then S0 S1 S2, then C2 (S1 echoed)."""
        self._write(b"\x03" + bytes(8) + os.urandom(HANDSHAKE_SIZE - 8))
        answer = await self._reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
        if answer[0] != 3:
            raise RtmpError(f"the receiver speaks RTMP version {answer[0]}, not 3")
        self._write(answer[1:1 + HANDSHAKE_SIZE])

    async def _publish(self) -> None:
        url = self.url
        await self._call("connect", {"app": url.app, "type": "nonprivate", "flashVer": FLASH_VERSION,
                                     "tcUrl": url.tc_url})
        self._write(encode_chunks(CONTROL_CHUNKS, SET_CHUNK_SIZE, 0, 0, OUT_CHUNK_SIZE.to_bytes(4, "big"), 128))
        self._chunk_size = OUT_CHUNK_SIZE
        self._command("releaseStream", self._transaction(), None, url.stream)
        self._command("FCPublish", self._transaction(), None, url.stream)
        answer = await self._call("createStream", None)
        stream_id = next((v for v in answer[3:] if isinstance(v, float)), None)
        if stream_id is None:
            raise RtmpError("the receiver's answer to createStream has no stream id")
        self._stream_id = int(stream_id)
        self._publishing = asyncio.get_running_loop().create_future()
        self._command("publish", self._transaction(), None, url.stream, "live")
        await self._publishing

    def _transaction(self) -> int:
        self._next_transaction += 1
        return self._next_transaction - 1

    async def _call(self, name: str, *args: object) -> list:
        """A command whose _result the receiver sends back (its _error raises)."""
        transaction = self._transaction()
        answer = self._transactions[transaction] = asyncio.get_running_loop().create_future()
        self._command(name, transaction, *args)
        try:
            return await answer
        finally:
            self._transactions.pop(transaction, None)

    def _command(self, name: str, transaction: int, *args: object) -> None:
        stream_id = self._stream_id if name in ("publish", "FCUnpublish", "deleteStream") else 0
        payload = amf.encode(name, transaction, *args)
        self._write(encode_chunks(COMMAND_CHUNKS, COMMAND, stream_id, 0, payload, self._chunk_size))

    def _write(self, data: bytes) -> None:
        self._written += len(data)
        self._writer.write(data)

    # -- what the receiver says ------------------------------------------------------------
    async def _read_loop(self) -> None:
        reason = "the receiver closed the connection"
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                self._received += len(data)
                for kind, payload in self._parser.feed(data):
                    self._on_message(kind, payload)
                if self._window and self._received - self._acked >= self._window:
                    self._acked = self._received
                    self._write(encode_chunks(CONTROL_CHUNKS, ACK, 0, 0, (self._received & 0xFFFFFFFF)
                                              .to_bytes(4, "big"), self._chunk_size))
        except (OSError, ssl.SSLError) as exc:
            reason = f"the connection failed: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
        except (RtmpError, amf.AmfError) as exc:
            reason = f"the receiver broke the protocol: {exc}"
        except asyncio.CancelledError:
            reason = "closed"
        self._lose(reason)

    def _on_message(self, kind: int, payload: bytes) -> None:
        if kind == SET_CHUNK_SIZE and len(payload) >= 4:
            self._parser.chunk_size = max(1, int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)
        elif kind == WINDOW_ACK_SIZE and len(payload) >= 4:
            self._window = int.from_bytes(payload[:4], "big")
        elif kind == USER_CONTROL and len(payload) >= 6 and int.from_bytes(payload[:2], "big") == PING_REQUEST:
            body = struct.pack(">H", PING_RESPONSE) + payload[2:6]
            self._write(encode_chunks(CONTROL_CHUNKS, USER_CONTROL, 0, 0, body, self._chunk_size))
        elif kind in (COMMAND, COMMAND_AMF3):
            self._on_command(amf.decode(payload[1:] if kind == COMMAND_AMF3 else payload))

    def _on_command(self, values: list) -> None:
        if len(values) < 2 or not isinstance(values[0], str):
            return
        name, transaction = values[0], values[1]
        if name in ("_result", "_error") and isinstance(transaction, float):
            answer = self._transactions.get(int(transaction))
            if answer is not None and not answer.done():
                if name == "_result":
                    answer.set_result(values)
                else:
                    answer.set_exception(RtmpError(f"the receiver refused: {self._describe(values)}"))
        elif name == "onStatus":
            info = next((v for v in values[2:] if isinstance(v, dict)), {})
            code, level = str(info.get("code", "")), str(info.get("level", ""))
            publishing = self._publishing
            if publishing is not None and not publishing.done():
                if code == "NetStream.Publish.Start":
                    publishing.set_result(None)
                elif level == "error" or code.endswith(("BadName", "Failed", "Rejected")):
                    publishing.set_exception(RtmpError(f"the receiver refused the stream: {self._describe(values)}"))
            elif level == "error":
                self._lose(f"the receiver ended the stream: {self._describe(values)}")
        elif name == "close":
            self._lose("the receiver closed the stream")

    def _describe(self, values: list) -> str:
        info = next((v for v in values[2:] if isinstance(v, dict)), {})
        text = " ".join(str(info[k]) for k in ("code", "description") if info.get(k)) or "no reason given"
        return self.url.redact(text[:300])

    def _lose(self, reason: str) -> None:
        reason = self.url.redact(reason)
        if not self.lost.done():
            self.lost.set_result(reason)
        for waiting in [*self._transactions.values(), self._publishing]:
            if waiting is not None and not waiting.done():
                waiting.set_exception(RtmpError(reason))
