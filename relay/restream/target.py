"""One restream target: a platform's RTMP(S) URL the show is pushed to while it is live here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum
import logging
import ssl
import time
from typing import Callable

from ..fanout.frame_queue import FrameQueue, QueueClosed
from ..media import RelayFrame
from ..models import Restream
from . import flv
from .feed import ShowFeed
from .rtmp import AUDIO, DATA, VIDEO, RtmpError, RtmpPublisher
from .url import RtmpUrl, parse

log = logging.getLogger(__name__)


class TargetState(str, Enum):
    WAITING = "waiting"  # the show is not live here
    CONNECTING = "connecting"
    LIVE = "live"
    RETRYING = "retrying"  # the connection failed or dropped: connecting again after a backoff
    FAILED = "failed"  # it cannot work with this show's media (until its next host session)


@dataclass(frozen=True)
class TargetOptions:
    connect_timeout_s: float = 10.0  # TCP, TLS, handshake and publish, all of it
    write_timeout_s: float = 10.0  # a receiver that takes nothing for this long is dropped
    retry_min_s: float = 1.0  # backoff: doubled after each failure up to retry_max_s
    retry_max_s: float = 30.0
    queue_frames: int = 300  # ~4 s of 30 fps video and its audio
    max_buffered_bytes: int = 1 << 20  # written, not yet sent: beyond it, wait (up to write_timeout_s)


class RestreamTarget:
    """Pushes the show to one RTMP(S) URL while it runs: connects, publishes, sends each frame of
    its own queue as an RTMP message, and when the connection fails or drops connects again
    after a backoff (1, 2, 4 ... 30 s; back to the first after a connection that held that long).

    Frames come from the show's `ShowFeed` into the target's `FrameQueue` only while it is live;
    the queue drops to the next keyframe when the receiver is slower than the show. States:
    waiting (not started) -> connecting -> live -> retrying -> connecting ...; failed when the
    show's video cannot go over RTMP (not H.264). Runs on the event loop.
    """

    def __init__(self, record: Restream, options: TargetOptions, ssl_context: ssl.SSLContext | None = None) -> None:
        self.record = record
        self.url: RtmpUrl = parse(record.url)
        self.options = options
        self.state = TargetState.WAITING
        self.since = time.time()
        self.last_error: str | None = None
        self.codecs: dict[str, str] | None = None  # of the host session it pushes
        self._ssl = ssl_context
        self._sent_before = 0  # bytes of the connections before the current one
        self._connection: RtmpPublisher | None = None
        self._task: asyncio.Task | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def bytes_sent(self) -> int:
        connection = self._connection
        return self._sent_before + (connection.bytes_sent if connection is not None else 0)

    def view(self) -> dict:
        """What the API says of it: the URL masked."""
        return {"id": self.record.id, "name": self.record.name, "url": self.url.masked, "state": self.state.value,
                "since": self.since, "bytes_sent": self.bytes_sent, "last_error": self.last_error,
                "created_at": self.record.created_at}

    def start(self, feed: ShowFeed, codecs: dict[str, str], request_keyframe: Callable[[], None]) -> None:
        """Push `feed` (a host session with `codecs`); a target already pushing goes on."""
        if self._task is not None and not self._task.done():
            return
        self.codecs = dict(codecs)
        self._task = asyncio.ensure_future(self._guarded(feed, request_keyframe))

    async def stop(self) -> None:
        """Stop pushing (the show ended here, or the target was removed): unpublish, close."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._set(TargetState.WAITING)

    # -- the connection loop ---------------------------------------------------------------
    async def _guarded(self, feed: ShowFeed, request_keyframe: Callable[[], None]) -> None:
        try:
            await self._run(feed, request_keyframe)
        except Exception as exc:  # a bug: said without a traceback, which could show the key
            self._set(TargetState.FAILED, "internal error")
            log.error("restream %s of show %s (%s) stopped: %s", self.id, self.record.show_id, self.url.masked,
                      self.url.redact(f"{type(exc).__name__}: {exc}"))

    async def _run(self, feed: ShowFeed, request_keyframe: Callable[[], None]) -> None:
        video = (self.codecs or {}).get("video")
        if video not in (None, "H264"):
            self._set(TargetState.FAILED, f"the show's video is {video}; RTMP carries H.264 only")
            log.warning("restream %s of show %s (%s): %s", self.id, self.record.show_id, self.url.masked,
                        self.last_error)
            return
        options = self.options
        delay = options.retry_min_s
        while True:
            self._set(TargetState.CONNECTING)
            try:
                connection = await asyncio.wait_for(RtmpPublisher.open(self.url, self._ssl),
                                                    options.connect_timeout_s)
            except (OSError, EOFError, TimeoutError, RtmpError, ssl.SSLError, ValueError) as exc:
                self._retry(_describe(exc, options.connect_timeout_s, self.url), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, options.retry_max_s)
                continue
            live_at = time.monotonic()
            self._connection = connection
            self._set(TargetState.LIVE)
            log.info("restream %s of show %s: live to %s", self.id, self.record.show_id, self.url.masked)
            queue = FrameQueue(options.queue_frames, video="video" in (self.codecs or {}))
            connection.lost.add_done_callback(lambda _, ended=queue: ended.close())  # (ends its get)
            feed.add(queue)
            request_keyframe()  # (a target joining mid-GOP starts at the next keyframe)
            try:
                reason = await self._push(connection, queue, feed)
            finally:
                feed.remove(queue)
                self._sent_before += connection.bytes_sent
                self._connection = None
                await asyncio.shield(connection.close())
            if time.monotonic() - live_at >= options.retry_max_s:
                delay = options.retry_min_s  # it held: a fresh start
            self._retry(reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, options.retry_max_s)

    async def _push(self, connection: RtmpPublisher, queue: FrameQueue, feed: ShowFeed) -> str:
        """Send the queue's frames until the connection ends; returns why it ended."""
        codecs = self.codecs or {}
        muxer = _FlvMuxer(connection, feed, "video" in codecs, "audio" in codecs)
        timeout = self.options.write_timeout_s
        limit = self.options.max_buffered_bytes
        try:
            while True:
                muxer.write(await queue.get())
                if connection.buffered > limit:
                    await asyncio.wait_for(connection.drain(), timeout)
        except QueueClosed:
            return connection.lost.result() if connection.lost.done() else "closed"
        except TimeoutError:
            return f"the receiver took no data for {timeout:.0f} s"
        except (OSError, RtmpError) as exc:
            return self.url.redact(f"sending failed: {exc}")

    def _retry(self, reason: str, delay: float) -> None:
        self._set(TargetState.RETRYING, reason)
        log.warning("restream %s of show %s (%s): %s; trying again in %.0f s", self.id, self.record.show_id,
                    self.url.masked, reason, delay)

    def _set(self, state: TargetState, error: str | None = None) -> None:
        """The new state (since now, if it changed) and, if given, the latest error (kept after)."""
        if state is not self.state:
            self.state = state
            self.since = time.time()
        if error is not None:
            self.last_error = error


def _describe(exc: BaseException, timeout: float, url: RtmpUrl) -> str:
    """Why opening the connection failed, for people (never the stream key)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:.0f} s"
    if isinstance(exc, EOFError):  # (asyncio.IncompleteReadError)
        return "the receiver closed the connection during the handshake"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return url.redact(f"connection failed: {exc.strerror}")
    return url.redact(str(exc) or type(exc).__name__)


class _FlvMuxer:
    """A connection's frames as FLV bodies: metadata and the sequence headers first, each
    timestamp counted from the first frame sent (a keyframe; audio before it is left out)."""

    def __init__(self, connection: RtmpPublisher, feed: ShowFeed, video: bool, audio: bool) -> None:
        self._connection = connection
        self._feed = feed
        self._video = video
        self._audio = audio
        self._start_ms: int | None = None
        self._last_ms = {"audio": 0, "video": 0}
        self._avc_config: bytes | None = None
        self._sps: bytes | None = None
        self._pps: list[bytes] = []
        self._audio_started = False

    def write(self, frame: RelayFrame) -> None:
        if frame.kind == "video":
            if self._video:
                self._video_frame(frame)
        elif self._audio and frame.codec == "aac" and (self._start_ms is not None or not self._video):
            self._audio_frame(frame)

    def _time(self, frame: RelayFrame) -> int | None:
        """The frame's RTMP timestamp (None: from before the stream's start)."""
        if self._start_ms is None:
            self._start_ms = frame.timestamp
            self._connection.send(DATA, 0, flv.metadata(self._sps if self._video else None, self._audio,
                                                        self._feed.audio_bitrate))
        ms = frame.timestamp - self._start_ms
        if ms < 0 and frame.kind == "audio":
            return None
        ms = max(ms, self._last_ms[frame.kind])  # (each track's timestamps never go back)
        self._last_ms[frame.kind] = ms
        return ms

    def _video_frame(self, frame: RelayFrame) -> None:
        nals = flv.nal_units(frame.data)
        if frame.keyframe:
            sps, pps = flv.parameter_sets(nals)
            if sps is not None and pps:
                self._sps, self._pps = sps, pps
        if self._sps is None or (self._avc_config is None and not frame.keyframe):
            return  # no decoder configuration yet: wait for a keyframe that carries it
        ms = self._time(frame)
        config = flv.avc_decoder_config(self._sps, self._pps)
        if config != self._avc_config:  # the first keyframe, or a host session with other parameters
            self._avc_config = config
            self._connection.send(VIDEO, ms, flv.avc_sequence_header(config))
        self._connection.send(VIDEO, ms, flv.avc_access_unit(nals, frame.keyframe))

    def _audio_frame(self, frame: RelayFrame) -> None:
        ms = self._time(frame)
        if ms is None:
            return
        if not self._audio_started:
            self._audio_started = True
            self._connection.send(AUDIO, ms, flv.aac_sequence_header(self._feed.audio_config))
        self._connection.send(AUDIO, ms, flv.aac_frame(frame.data))
