"""RTMP ingest: hosts push `rtmp://HOST:PORT/live/{show}?key={stream key}` (OBS: Server
`rtmp://HOST:PORT/live`, Stream Key `{show}?key={stream key}`), many shows on one port, one
TCP connection each.

A connection goes: handshake (C0 C1 / S0 S1 S2 / C2), `connect` to the app, `releaseStream`,
`FCPublish`, `createStream`, then `publish` with the stream name. The show and the key are
checked (through `open_stream`, as a WHIP host's are) before NetStream.Publish.Start is
answered: a refusal answers NetStream.Publish.BadName and closes, and nothing changes. Until
then no audio or video is taken. From then on the connection's `RtmpSource` is the show's
publisher; its closing starts the show's grace period.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from typing import Awaitable, Callable
from urllib.parse import parse_qs

from ..address_counter import AddressCounter
from ..errors import ApiError
from ..media import FrameHandler, GoneHandler, StreamSource
from ..metrics import RTMP_CONNECTIONS
from ..models import is_slug
from .. import amf0
from .rtmp_chunks import ChunkError, ChunkReader, Message, encode_message
from .rtmp_source import RtmpSource, UnsupportedMedia

log = logging.getLogger(__name__)

MakeSource = Callable[[FrameHandler, GoneHandler], StreamSource]
# LiveRegistry.open_stream: (show, key, make, client address) -> the show's publisher, or ApiError
OpenStream = Callable[[str, str | None, MakeSource, str], Awaitable[StreamSource]]

HANDSHAKE_SIZE = 1536
RTMP_VERSION = 3
OUT_CHUNK_SIZE = 4096
WINDOW_SIZE = 2_500_000  # bytes between the acknowledgements asked of the host (it sends, it hardly receives)
MAX_SETUP_MESSAGE = 64 * 1024  # before publishing, messages are commands: a few hundred bytes

# Message types (RTMP 1.0 section 5.4, 7.1)
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF3, COMMAND_AMF3, DATA_AMF0, COMMAND_AMF0, AGGREGATE = 8, 9, 15, 17, 18, 20, 22
STREAM_BEGIN, PING_REQUEST, PING_RESPONSE = 0, 6, 7  # user control events
CONTROL_CSID, COMMAND_CSID, STREAM_CSID = 2, 3, 5
PUBLISH_STREAM_ID = 1  # the one stream createStream makes
# Encoders write small messages with Nagle's algorithm on: each waits for the ACK of the one
# before, which Linux delays up to 40 ms unless told to ACK at once (per read: it is not kept).
# Without it the setup takes 4 x 40 ms and small audio messages wait behind unacknowledged video.
QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def parse_stream_name(name: str) -> tuple[str, str | None]:
    """(show id, stream key) from a publish name `{show}?key={stream key}`."""
    show_id, _, query = name.partition("?")
    keys = parse_qs(query, keep_blank_values=True).get("key")
    return show_id, keys[0] if keys else None


def _status(level: str, code: str, description: str) -> dict[str, object]:
    return {"level": level, "code": code, "description": description}


class RtmpServer:
    """The RTMP listener. `open_stream` checks a publish and makes its source the show's
    publisher (LiveRegistry.open_stream); `publish_wait(address)` says how long an address must
    wait before it may try another publish (0: now), so keys cannot be guessed fast."""

    def __init__(self, host: str, port: int, open_stream: OpenStream, *, app: str = "live",
                 setup_timeout_s: float = 10.0, max_setup_per_address: int = 10,
                 publish_wait: Callable[[str], float] = lambda address: 0.0) -> None:
        self.host = host
        self.port = port  # the real one once started (0 picks a free one)
        self.app = app
        self.setup_timeout_s = setup_timeout_s
        self.open_stream = open_stream
        self.publish_wait = publish_wait
        self.setting_up = AddressCounter(max_setup_per_address)  # connections not yet publishing
        self.connections: set[RtmpConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket | None = None) -> int:
        """Listen on `sock` (bound already) or on host:port; returns the port."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: RtmpConnection(self), sock=sock, backlog=256)
        else:
            self._server = await loop.create_server(lambda: RtmpConnection(self), self.host, self.port,
                                                    reuse_address=True, backlog=256)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("RTMP ingest on rtmp://%s:%d/%s", self.host, self.port, self.app)
        return self.port

    async def close(self) -> None:
        """No new connections; those still setting up are closed (publishing ones close with their show)."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.source is None:
                connection.close()


class RtmpConnection(asyncio.Protocol):
    """One host's TCP connection: the handshake, the chunk stream and the commands."""

    def __init__(self, server: RtmpServer) -> None:
        self.server = server
        self.client = ""
        self.source: RtmpSource | None = None
        self.transport: asyncio.Transport | None = None
        self._handshake = bytearray()
        self._handshaken = False
        self._c2_left = HANDSHAKE_SIZE
        self._reader = ChunkReader()
        self._checking = False  # a publish is being checked: no message is read meanwhile
        self._closed = False
        self._outcome = ""  # published, refused or failed, counted once
        self._setting_up = False
        self._received = 0
        self._acked = 0
        self._ack_window = 0  # the host asks for an acknowledgement every this many bytes
        self._stream_id = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._out_chunk_size = 128
        self._socket: socket.socket | None = None
        self._check: asyncio.Future | None = None  # the publish being checked

    # -- transport ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socket = sock if QUICKACK is not None else None
        self.server.connections.add(self)
        if not self.server.setting_up.take(self.client):
            self._fail("too many connections setting up from this address", quiet=True)
            return
        self._setting_up = True
        self._deadline = asyncio.get_running_loop().call_later(self.server.setup_timeout_s, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._received += len(data)
        if self._socket is not None:
            self._socket.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        if self._ack_window and self._received - self._acked >= self._ack_window:
            self._acked = self._received
            self._send(CONTROL_CSID, ACK, (self._received & 0xFFFFFFFF).to_bytes(4, "big"))
        if not self._handshaken:
            data = self._handshake_step(data)
            if not data:
                return
        self._reader.feed(data)
        if not self._checking:
            self._read()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        self._end_setup()
        self._count("failed")  # (unless it was counted before)
        source, self.source = self.source, None
        if source is not None:
            source.ended()

    def close(self) -> None:
        """Close the connection (what was sent is flushed first)."""
        if not self._closed:
            self._closed = True
            self._end_setup()
            if self.transport is not None:
                self.transport.close()

    def _fail(self, reason: str, quiet: bool = False) -> None:
        """The host broke the protocol or sent what cannot be played: log it and close."""
        (log.info if quiet else log.warning)("RTMP connection from %s closed: %s", self.client, reason)
        self._count("failed")
        self.close()

    def _too_slow(self) -> None:
        self._deadline = None
        if self.source is None and not self._closed:
            self._fail(f"no publish within {self.server.setup_timeout_s:.0f} s", quiet=True)

    def _end_setup(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._setting_up:
            self._setting_up = False
            self.server.setting_up.release(self.client)

    def _count(self, outcome: str) -> None:
        if not self._outcome:
            self._outcome = outcome
            RTMP_CONNECTIONS.labels(outcome).inc()

    # -- handshake ------------------------------------------------------------------------
    def _handshake_step(self, data: bytes) -> bytes:
        """Takes handshake bytes from `data`; returns what follows the handshake."""
        if self._c2_left == HANDSHAKE_SIZE and len(self._handshake) < 1 + HANDSHAKE_SIZE:
            need = 1 + HANDSHAKE_SIZE - len(self._handshake)
            self._handshake += data[:need]
            data = data[need:]
            if len(self._handshake) < 1 + HANDSHAKE_SIZE:
                return b""
            if self._handshake[0] != RTMP_VERSION:
                self._fail(f"not plain RTMP (version byte {self._handshake[0]}; RTMPS and RTMPE are not served)")
                return b""
            c1 = bytes(self._handshake[1:])
            s1 = bytes(8) + os.urandom(HANDSHAKE_SIZE - 8)  # time 0, version 0: the simple handshake
            self.transport.write(bytes([RTMP_VERSION]) + s1 + c1)  # S0 S1 S2 (S2 echoes C1)
        take = min(self._c2_left, len(data))
        self._c2_left -= take
        if self._c2_left:
            return b""
        self._handshaken = True
        self._handshake = bytearray()
        return data[take:]

    # -- messages -------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while not self._checking and not self._closed:
                message = self._reader.next_message()
                if message is None:
                    return
                self._handle(message)
        except (ChunkError, amf0.AmfError, UnsupportedMedia) as exc:
            self._fail(str(exc))
        except Exception:  # a bug here must not leave the connection half-read
            log.exception("RTMP connection from %s: handling a message failed", self.client)
            self._fail("the server failed to handle a message")

    def _handle(self, message: Message) -> None:
        kind, payload = message.type, message.payload
        source = self.source
        if source is not None and message.stream_id == self._stream_id:
            if kind == VIDEO:
                source.video(message.timestamp, payload)
                return
            if kind == AUDIO:
                source.audio(message.timestamp, payload)
                return
        if kind in (AUDIO, VIDEO):
            return  # not publishing (yet): media is not taken
        if kind == AGGREGATE:
            self._aggregate(message)
            return
        if source is None and len(payload) > MAX_SETUP_MESSAGE:
            raise ChunkError(f"a {len(payload)}-byte message of type {kind} before publishing")
        if kind == SET_CHUNK_SIZE and len(payload) >= 4:
            self._reader.set_chunk_size(int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)
        elif kind == ABORT and len(payload) >= 4:
            self._reader.abort(int.from_bytes(payload[:4], "big"))
        elif kind == WINDOW_ACK_SIZE and len(payload) >= 4:
            self._ack_window = int.from_bytes(payload[:4], "big")
        elif kind == USER_CONTROL and len(payload) >= 6 and int.from_bytes(payload[:2], "big") == PING_REQUEST:
            self._send(CONTROL_CSID, USER_CONTROL, PING_RESPONSE.to_bytes(2, "big") + payload[2:6])
        elif kind in (COMMAND_AMF0, COMMAND_AMF3):
            values = amf0.decode(payload[1:] if kind == COMMAND_AMF3 else payload)
            if len(values) >= 2 and isinstance(values[0], str):
                self._command(values[0], values[1], values[2:], message.stream_id)
        elif kind in (DATA_AMF0, DATA_AMF3) and source is not None:
            values = amf0.decode(payload[1:] if kind == DATA_AMF3 else payload)
            if values and values[0] == "@setDataFrame":
                values = values[1:]
            if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
                source.metadata_received(values[1])

    def _aggregate(self, message: Message) -> None:
        """FLV tags in one message (RTMP 1.0 section 7.1.6); their times are relative to the first."""
        if self.source is None or message.stream_id != self._stream_id:
            return
        data, pos, first = message.payload, 0, None
        while pos + 11 <= len(data):
            kind, size = data[pos], int.from_bytes(data[pos + 1:pos + 4], "big")
            stamp = int.from_bytes(data[pos + 4:pos + 7], "big") | (data[pos + 7] << 24)
            body = data[pos + 11:pos + 11 + size]
            if len(body) < size:
                raise ChunkError("an aggregate message cut short")
            first = stamp if first is None else first
            timestamp = (message.timestamp + stamp - first) & 0xFFFFFFFF
            if kind == VIDEO:
                self.source.video(timestamp, body)
            elif kind == AUDIO:
                self.source.audio(timestamp, body)
            pos += 11 + size + 4  # the tag, and the size of it that follows

    def _command(self, name: str, transaction: object, args: list[object], stream_id: int) -> None:
        tid = transaction if isinstance(transaction, (int, float)) else 0
        if name == "connect":
            self._connect(tid, args[0] if args and isinstance(args[0], dict) else {})
        elif name in ("releaseStream", "FCPublish"):
            if tid:
                self._reply("_result", tid, None, None)
        elif name == "createStream":
            self._reply("_result", tid, None, PUBLISH_STREAM_ID)
        elif name == "publish":
            stream_name = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            self._start_publish(stream_name, stream_id or PUBLISH_STREAM_ID)
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            source, self.source = self.source, None
            if source is not None:  # the host stopped: like a dropped host, the show waits for it
                source.ended()

    def _connect(self, tid: float, command: dict) -> None:
        app = command.get("app")
        app = app.partition("?")[0].strip("/") if isinstance(app, str) else ""
        if app != self.server.app:
            hint = f"no application {app!r} here: use rtmp://HOST:PORT/{self.server.app}"
            self._reply("_error", tid, None, _status("error", "NetConnection.Connect.Rejected", hint))
            self._count("refused")
            self._fail(f"connect to application {app[:64]!r}", quiet=True)
            return
        self._send(CONTROL_CSID, WINDOW_ACK_SIZE, WINDOW_SIZE.to_bytes(4, "big"))
        self._send(CONTROL_CSID, SET_PEER_BANDWIDTH, WINDOW_SIZE.to_bytes(4, "big") + b"\x02")
        self._send(CONTROL_CSID, SET_CHUNK_SIZE, OUT_CHUNK_SIZE.to_bytes(4, "big"))
        self._out_chunk_size = OUT_CHUNK_SIZE
        self._reply("_result", tid, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31},
                    {**_status("status", "NetConnection.Connect.Success", "Connection succeeded."),
                     "objectEncoding": 0})

    # -- publish --------------------------------------------------------------------------
    def _start_publish(self, stream_name: str, stream_id: int) -> None:
        """Stop reading until the show and key are checked: nothing the host sends next is
        taken before the answer."""
        self._checking = True
        if self.transport is not None:
            self.transport.pause_reading()
        self._check = asyncio.ensure_future(self._publish(stream_name, stream_id))

    async def _publish(self, stream_name: str, stream_id: int) -> None:
        show_id, key = parse_stream_name(stream_name)
        try:
            source = await self._open(show_id, key)
        except ApiError as exc:
            self._refuse(show_id, key, exc, stream_id)
            return
        except Exception:
            log.exception("RTMP publish to show %s failed", repr(show_id) if is_slug(show_id) else "(not a show id)")
            self._refuse(show_id, key, ApiError(500, "internal", "the server failed to start the stream"), stream_id)
            return
        finally:
            self._checking = False
        if self._closed:  # the host went while it was being checked
            source.ended()
            return
        self.source = source
        self._stream_id = stream_id
        self._end_setup()
        self._count("published")
        self._send(CONTROL_CSID, USER_CONTROL, STREAM_BEGIN.to_bytes(2, "big") + stream_id.to_bytes(4, "big"))
        self._reply("onStatus", 0, None, {**_status("status", "NetStream.Publish.Start", f"{show_id} is live"),
                                          "details": show_id}, stream_id=stream_id)
        log.info("show %s: RTMP publisher %s connected from %s", show_id, source.id, self.client,
                 extra={"show": show_id, "session": source.id})
        if self.transport is not None:
            self.transport.resume_reading()
        self._read()

    async def _open(self, show_id: str, key: str | None) -> RtmpSource:
        if self.source is not None:
            raise ApiError(409, "already_publishing", "this connection publishes already")
        wait = self.server.publish_wait(self.client)
        if wait > 0:
            raise ApiError(429, "rate_limited", f"too many publish attempts from this address; "
                                                f"retry in {math.ceil(wait)} s")
        if not is_slug(show_id):
            raise ApiError(404, "show_not_found", "no such show: the stream name is {show}?key={stream key}")

        def make(on_frame: FrameHandler, on_gone: GoneHandler) -> RtmpSource:
            return RtmpSource(show_id, on_frame, on_gone, self.client, self.close)

        source = await self.server.open_stream(show_id, key, make, self.client)
        assert isinstance(source, RtmpSource)
        return source

    def _refuse(self, show_id: str, key: str | None, exc: ApiError, stream_id: int) -> None:
        """Answer the refusal and close; the show is as it was. The key is never logged."""
        reason = exc.message
        if exc.status == 401 and not key:
            reason = "missing stream key: the stream name is {show}?key={stream key}"
        # (a name that is no show id may be a stream key pasted alone: it is not logged either)
        named = repr(show_id) if is_slug(show_id) else "(not a show id)"
        log.warning("RTMP publish to show %s from %s refused (%d %s): %s", named, self.client,
                    exc.status, exc.code, reason)
        self._count("refused")
        self._reply("onStatus", 0, None, _status("error", "NetStream.Publish.BadName", reason),
                    stream_id=stream_id)
        self.close()

    # -- sending --------------------------------------------------------------------------
    def _reply(self, name: str, tid: float, *values: object, stream_id: int = 0) -> None:
        self._send(STREAM_CSID if stream_id else COMMAND_CSID, COMMAND_AMF0, amf0.encode(name, tid, *values),
                   stream_id)

    def _send(self, csid: int, kind: int, payload: bytes, stream_id: int = 0) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_message(csid, Message(kind, stream_id, 0, payload), self._out_chunk_size))
