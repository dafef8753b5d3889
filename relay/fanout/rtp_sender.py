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
GSO_MAX_SEGMENTS = 48  # (the kernel takes 64; 48 x ~1250 bytes stays under 64 KiB)
LOSSY = 64  # a receiver report's fraction lost (of 256) from which a viewer is not keeping up
LOSSY_REPORTS = 2  # ... in this many reports in a row
REPORT_EVERY = 16  # frames between two updates of the sender report's figures (any frame's pair is true)
SCRATCH = aiortc_hooks.SrtpScratch()  # shared by every sender: sends are synchronous, on the loop
_ROOM = 1600  # a packet, protected, fits in this many bytes
_SEGMENT_SIZE = struct.Struct("=H").pack
_NOT_SUPPORTED = {errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP}


def ntp_now() -> int:
    return int((time.time() + NTP_EPOCH) * 4294967296)


class RtpSender:
    """One track of one viewer: a reader of the show's frames (as `Forwarder` sees readers)
    that sends each frame's packets as soon as it is given them: no queue, no task.

    Each packet is written (this viewer's header, the shared payload) into a scratch buffer,
    SRTP-protected in place with this viewer's session, and sent from there: a run of packets
    of one size in one segmented send (`gso`) where the kernel can, else one datagram per call.
    Until `attach` (its connection is up) frames are not sent. Video starts at a keyframe; a
    viewer whose socket buffer is full (the kernel does not take its datagrams) skips to the
    next keyframe (counted in `dropped`, `on_drop` asks the host for one), as does one whose
    receiver reports say it loses a quarter of the packets, report after report. NACKed packets are
    sent again from a bounded history (as RTX where negotiated) and aiortc's RTCP task reports
    what was sent.
    """

    __slots__ = ("kind", "capacity", "needs_keyframe", "dropped", "sent", "on_drop", "on_first",
                 "packets", "octets", "retransmitted", "gso", "_video", "_wire", "_header", "_rtx_header",
                 "_seq", "_rtx_seq", "_ts_origin", "_history", "_history_meta", "_closed", "_protect_at", "_sock", "_address",
                 "_pt", "_lossy_reports", "skips")

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
        self.skips = 0  # times the viewer's video skipped to the next keyframe for its losses
        self._lossy_reports = 0
        self.on_drop: Callable[[], None] | None = None
        self.on_first: Callable[[], None] | None = None
        self._video = kind == "video"
        self._wire: aiortc_hooks.SenderWire | None = None
        self._seq = random.getrandbits(16)
        self._rtx_seq = random.getrandbits(16)
        self._ts_origin = random.getrandbits(32)
        # The payloads sent last, by sequence number modulo HISTORY, and beside each its sequence
        # number, marker and timestamp in one int (no tuple per packet for the collector to track).
        self._history: list[bytes | None] = [None] * HISTORY
        self._history_meta: list[int] = [-1] * HISTORY
        self._closed = False

    def attach(self, wire: aiortc_hooks.SenderWire) -> None:
        """The viewer's connection is up: send on `wire` from now on."""
        self._wire = wire
        self._header = bytes(wire.header)
        self._rtx_header = bytearray(wire.rtx_header) if wire.rtx_header is not None else None
        self._pt = wire.header[1] & 0x7F
        self._protect_at = aiortc_hooks.protect_in_place(wire.srtp, SCRATCH)
        # The ICE pair's socket, sent on directly (aiortc's RTCP still goes through its transport).
        shared = wire.udp.get_extra_info("socket")
        self._sock = socket.socket(shared.family, socket.SOCK_DGRAM, fileno=os.dup(shared.fileno()))
        self._address = wire.address

    @property
    def attached(self) -> bool:
        return self._wire is not None

    def put(self, frame: RelayFrame) -> None:
        if self._wire is None or self._closed:
            return
        if self.needs_keyframe:
            if not frame.keyframe:
                self.dropped += 1
                METER.frames_dropped[frame.kind] += 1
                return
            self.needs_keyframe = False
        timestamp = (self._ts_origin + frame.timestamp) & 0xFFFFFFFF
        try:
            self._send_frame(frame.payloads, timestamp)
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
        self.packets += len(frame.payloads)
        self.octets += frame.size
        if self.sent % REPORT_EVERY == 1:
            self._wire.set_report(ntp_now(), timestamp, self.packets, self.octets)
        METER.frames_sent[frame.kind] += 1
        METER.packets_sent[frame.kind] += len(frame.payloads)
        METER.bytes_sent[frame.kind] += frame.size

    def _send_frame(self, payloads: list[bytes], timestamp: int) -> None:
        """Write, protect and send the frame's packets, a run of one size at a time (the last of
        a run may be shorter)."""
        view, header, protect_at = SCRATCH.view, self._header, self._protect_at
        history, meta = self._history, self._history_meta
        stamp = timestamp << 24
        header_len, pt, seq = len(header), self._pt, self._seq
        limit = SCRATCH.size - _ROOM
        n, i = len(payloads), 0
        while i < n:
            offset = count = segment = 0
            first = -1
            while i < n and count < GSO_MAX_SEGMENTS and offset < limit:
                payload = payloads[i]
                end = header_len + len(payload)
                if count and end != first:
                    if end > first:
                        break
                    shorter = True
                else:
                    shorter = False
                    first = end
                marker = 0x80 if i == n - 1 else 0
                view[offset:offset + header_len] = header
                _PACK(view, offset + 1, marker | pt, seq, timestamp)
                view[offset + header_len:offset + end] = payload
                size = protect_at(offset, end)
                history[seq & (HISTORY - 1)] = payload
                meta[seq & (HISTORY - 1)] = stamp | marker << 16 | seq
                seq = (seq + 1) & 0xFFFF
                if not count:
                    segment = size
                offset += size
                count += 1
                i += 1
                if shorter:
                    break
            self._seq = seq  # (before the send: a refused run still used its numbers)
            self._send_run(view, offset, segment, count)

    def _send_run(self, view: memoryview, length: int, segment: int, count: int) -> None:
        sock, address = self._sock, self._address
        if count == 1:
            sock.sendto(view[:length], address)
            return
        if self.gso:
            try:
                sock.sendmsg([view[:length]], [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE(segment))], 0, address)
                return
            except OSError as exc:
                if exc.errno not in _NOT_SUPPORTED:
                    raise
                log.info("segmented UDP sends refused (%s): one datagram per call from now on", exc)
                self.gso = False
        for offset in range(0, length, segment):
            sock.sendto(view[offset:min(offset + segment, length)], address)

    def retransmit(self, seq: int) -> None:
        """A viewer's NACK: send the packet again if it is still in the history."""
        slot = seq & (HISTORY - 1)
        meta, payload = self._history_meta[slot], self._history[slot]
        if payload is None or meta & 0xFFFF != seq or self._wire is None or self._closed:
            return
        timestamp, marker = meta >> 24, meta >> 16 & 0x80
        if self._rtx_header is not None:  # RFC 4588: the original sequence number, then the payload
            header = self._rtx_header
            _PACK(header, 1, marker | (header[1] & 0x7F), self._rtx_seq, timestamp)
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            payload = struct.pack("!H", seq) + payload
        else:
            header = bytearray(self._header)
            _PACK(header, 1, marker | self._pt, seq, timestamp)
        view = SCRATCH.view
        view[:len(header)] = header
        view[len(header):len(header) + len(payload)] = payload
        try:
            size = self._protect_at(0, len(header) + len(payload))
            self._sock.sendto(view[:size], self._address)
        except OSError:  # (a full buffer: the viewer asks again or gets the next keyframe)
            return
        self.retransmitted += 1
        METER.packets_retransmitted[self.kind] += 1

    def loss_report(self, fraction_lost: int) -> None:
        """A receiver report from the viewer: one that loses a quarter of the packets report after
        report cannot keep up; its video skips to the next keyframe (as when its socket is full)."""
        if fraction_lost < LOSSY:
            self._lossy_reports = 0
            return
        self._lossy_reports += 1
        if self._lossy_reports >= LOSSY_REPORTS and self._video and not self.needs_keyframe:
            self._lossy_reports = 0
            self.skips += 1
            METER.loss_skips += 1
            self.needs_keyframe = True
            if self.on_drop is not None:
                self.on_drop()

    def restart(self) -> None:
        """The source changed (host reconnected): wait for the new source's keyframe."""
        self.needs_keyframe = self._video

    def close(self) -> None:
        self._closed = True
        if self._wire is not None:
            self._sock.close()  # (our duplicate of the descriptor; aioice closes its own)
