"""A viewer's track on the wire: the show's shared RTP payloads, with this viewer's RTP header,
protected with this viewer's SRTP session and sent at once, as the frame arrives."""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
import struct
import time
from typing import Callable

from .. import aiortc_hooks
from ..media import RelayFrame
from .meter import METER

log = logging.getLogger(__name__)

HISTORY = 512  # packets kept for retransmission (a power of two): ~2.5 s of 2 Mbps video
NTP_EPOCH = 2208988800  # 1900 -> 1970, in seconds
_PACK = struct.Struct("!BHI").pack_into  # byte 1 (marker, payload type), sequence number, timestamp
# UDP generic segmentation offload (Linux 4.18+): one sendmsg, many datagrams of one size.
SOL_UDP, UDP_SEGMENT = 17, 103
GSO_MAX_SEGMENTS = 48  # (the kernel takes 64; 48 x ~1230 bytes stays under 64 KiB)
_SEGMENT_SIZE = struct.Struct("=H").pack
_NOT_SUPPORTED = {errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP}


def ntp_now() -> int:
    return int((time.time() + NTP_EPOCH) * 4294967296)


class RtpSender:
    """One track of one viewer: a reader of the show's frames (as `Forwarder` sees readers)
    that sends each frame's packets as soon as it is given them: no queue, no task.

    Until `attach` (its connection is up) frames are not sent. A frame's packets of one size go
    out in one segmented send (`gso`) where the kernel can, else one datagram per call. Video
    starts at a keyframe; a viewer whose socket buffer is full (the kernel does not take its
    datagrams) skips to the next keyframe (counted in `dropped`, `on_drop` asks the host for
    one). NACKed packets are sent again from a bounded history (as RTX where negotiated) and
    aiortc's RTCP task reports what was sent.
    """

    __slots__ = ("kind", "capacity", "needs_keyframe", "dropped", "sent", "on_drop", "on_first",
                 "packets", "octets", "retransmitted", "gso", "_video", "_wire", "_header", "_rtx_header",
                 "_seq", "_rtx_seq", "_ts_origin", "_history", "_closed", "_protect", "_sock", "_address", "_pt")

    def __init__(self, kind: str, gso: bool = True) -> None:
        self.kind = kind
        self.gso = gso  # segmented sends; off for good if the kernel refuses one
        self.capacity = 0  # (the GOP catch-up burst is sent at once)
        self.needs_keyframe = kind == "video"
        self.dropped = 0
        self.sent = 0  # frames
        self.packets = 0
        self.octets = 0
        self.retransmitted = 0
        self.on_drop: Callable[[], None] | None = None
        self.on_first: Callable[[], None] | None = None
        self._video = kind == "video"
        self._wire: aiortc_hooks.SenderWire | None = None
        self._seq = random.getrandbits(16)
        self._rtx_seq = random.getrandbits(16)
        self._ts_origin = random.getrandbits(32)
        self._history: list[tuple[int, int, int, bytes] | None] = [None] * HISTORY
        self._closed = False

    def attach(self, wire: aiortc_hooks.SenderWire) -> None:
        """The viewer's connection is up: send on `wire` from now on."""
        self._wire = wire
        self._header = bytearray(wire.header)
        self._rtx_header = bytearray(wire.rtx_header) if wire.rtx_header is not None else None
        self._pt = wire.header[1] & 0x7F
        self._protect = wire.protect
        # The ICE pair's socket, sent on directly (aiortc's RTCP still goes through its transport).
        shared = wire.udp.get_extra_info("socket")
        self._sock = socket.socket(shared.family, socket.SOCK_DGRAM, fileno=os.dup(shared.fileno()))
        self._address = wire.address

    @property
    def attached(self) -> bool:
        return self._wire is not None

    def __len__(self) -> int:
        return 0  # nothing waits here

    def put(self, frame: RelayFrame) -> None:
        if self._wire is None or self._closed:
            return
        if self.needs_keyframe:
            if not frame.keyframe:
                self.dropped += 1
                METER.frames_dropped[frame.kind] += 1
                return
            self.needs_keyframe = False
        header, protect, history = self._header, self._protect, self._history
        pt = self._pt
        seq = self._seq
        timestamp = (self._ts_origin + frame.timestamp) & 0xFFFFFFFF
        payloads = frame.payloads
        last = len(payloads) - 1
        packets = []
        for i, payload in enumerate(payloads):
            marker = 0x80 if i == last else 0
            _PACK(header, 1, marker | pt, seq, timestamp)
            packets.append(protect(bytes(header) + payload))
            history[seq & (HISTORY - 1)] = (seq, timestamp, marker, payload)
            seq = (seq + 1) & 0xFFFF
        self._seq = seq
        try:
            self._send(packets)
        except BlockingIOError:  # its socket buffer is full: it cannot keep up
            self.dropped += 1
            METER.frames_dropped[frame.kind] += 1
            if self._video:
                self.needs_keyframe = True
                if self.on_drop is not None:
                    self.on_drop()
            return
        except OSError as exc:  # (the connection is going: its close follows)
            log.debug("sending to %s failed: %s", self._address, exc)
            return
        if not self.sent and self.on_first is not None:
            self.on_first()
        self.sent += 1
        self.packets += len(payloads)
        self.octets += frame.size
        self._wire.set_report(ntp_now(), timestamp, self.packets, self.octets)
        METER.frames_sent[frame.kind] += 1
        METER.packets_sent[frame.kind] += len(payloads)
        METER.bytes_sent[frame.kind] += frame.size

    def _send(self, packets: list[bytes]) -> None:
        sock, address = self._sock, self._address
        if not self.gso or len(packets) == 1:
            for packet in packets:
                sock.sendto(packet, address)
            return
        i, n = 0, len(packets)
        while i < n:  # runs of one size (the last of a run may be shorter): one call each
            size = len(packets[i])
            j = i + 1
            while j < n and j - i < GSO_MAX_SEGMENTS and len(packets[j]) == size:
                j += 1
            if j < n and j - i < GSO_MAX_SEGMENTS and len(packets[j]) < size:
                j += 1
            if j - i == 1:
                sock.sendto(packets[i], address)
            else:
                try:
                    sock.sendmsg([b"".join(packets[i:j])], [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE(size))], 0, address)
                except OSError as exc:
                    if exc.errno not in _NOT_SUPPORTED:
                        raise
                    log.info("segmented UDP sends refused (%s): one datagram per call from now on", exc)
                    self.gso = False
                    for packet in packets[i:]:
                        sock.sendto(packet, address)
                    return
            i = j

    def retransmit(self, seq: int) -> None:
        """A viewer's NACK: send the packet again if it is still in the history."""
        entry = self._history[seq & (HISTORY - 1)]
        if entry is None or entry[0] != seq or self._wire is None or self._closed:
            return
        _, timestamp, marker, payload = entry
        if self._rtx_header is not None:  # RFC 4588: the original sequence number, then the payload
            header = self._rtx_header
            _PACK(header, 1, marker | (header[1] & 0x7F), self._rtx_seq, timestamp)
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            packet = bytes(header) + struct.pack("!H", seq) + payload
        else:
            header = bytearray(self._header)
            _PACK(header, 1, marker | self._pt, seq, timestamp)
            packet = bytes(header) + payload
        try:
            self._sock.sendto(self._protect(packet), self._address)
        except OSError:  # (a full buffer: the viewer asks again or gets the next keyframe)
            return
        self.retransmitted += 1

    def restart(self) -> None:
        """The source changed (host reconnected): wait for the new source's keyframe."""
        self.needs_keyframe = self._video

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        if self._wire is not None:
            self._sock.close()  # (our duplicate of the descriptor; aioice closes its own)
