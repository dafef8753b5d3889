"""The interoperability matrix: real third-party WebRTC stacks against the relay over loopback.

GStreamer `webrtcbin` (Debian's python3-gi, in a subprocess: tests/gst_peer.py) as WHIP host
and WHEP viewer, against aiortc and headless Chromium on the other side, every DTLS role an
offer can ask for. Chromium and aiortc against each other are covered by test_pages.py and
test_media.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from conftest import Relay
from test_pages import Pages, browser, playing  # noqa: F401  (browser is a fixture)
from test_replay import wait_state

from relay_testkit.synthetic import host_tracks

GST_PEER = Path(__file__).with_name("gst_peer.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # where Debian's python3-gi lives


class GstPeer:
    """tests/gst_peer.py in a subprocess; its JSON lines collected as they come."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.events: list[dict] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self.stderr = b""

    async def start(self) -> "GstPeer":
        self.proc = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, str(GST_PEER), *self.args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                continue
            self._changed.set()
        self.stderr = await self.proc.stderr.read()
        self._changed.set()

    def last(self, event: str) -> dict | None:
        return next((e for e in reversed(self.events) if e["event"] == event), None)

    async def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if self._reader.done() and not predicate(self):
                raise AssertionError(f"GStreamer peer ended before {what}: {self.events[-5:]} "
                                     f"{self.stderr.decode(errors='replace')[-1500:]}")
            errors = [e for e in self.events if e["event"] == "error"]
            if errors:
                raise AssertionError(f"GStreamer peer failed before {what}: {errors}")
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; GStreamer said {self.events[-5:]}")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    async def connected(self, timeout: float = 15.0) -> None:
        await self.wait_for(lambda p: (p.last("state") or {}).get("connection") == "connected", timeout,
                            "the connection")

    async def fps(self, seconds: float = 2.0) -> tuple[float, float]:
        """Decoded video frames and audio buffers per second over the next `seconds`."""
        await self.wait_for(lambda p: (p.last("frames") or {}).get("video", 0) > 0, 15, "the first frame")
        first = self.last("frames")
        started = time.monotonic()
        await self.wait_for(lambda p: time.monotonic() - started >= seconds and p.last("frames") is not first,
                            seconds + 5, "frames")
        last = self.last("frames")
        elapsed = time.monotonic() - started
        return (last["video"] - first["video"]) / elapsed, (last["audio"] - first["audio"]) / elapsed

    async def stop(self, timeout: float = 20.0) -> int:
        """Tell the peer to end (a host sends its DELETE first) and wait for it."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        return await self.finished(timeout)

    async def finished(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


@pytest.fixture
async def gst():
    peers: list[GstPeer] = []

    async def start(*args: str) -> GstPeer:
        peer = await GstPeer(*args).start()
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        await peer.kill()


async def wait_live(relay: Relay, show_id: str) -> None:
    async def live() -> bool:
        detail = await relay.show(show_id)
        return detail["state"] == "live" and detail["publisher"] is not None

    await relay.wait_for(live, timeout=15, what=f"{show_id} to be on air")


@pytest.mark.parametrize("offer_setup", ["actpass", "active", "passive"])
async def test_gstreamer_host_plays_to_gstreamer_and_aiortc_viewers_and_records(make_relay, gst, offer_setup):
    """actpass: the relay answers passive (GStreamer is the DTLS client); passive: the relay is
    the client and must offer a suite GStreamer's RSA certificate can sign."""
    relay = await make_relay(configure=lambda s: setattr(s.replay, "segment_target_s", 1.0))
    show = await relay.create_show("gst", mirrors=("d1",))
    setup = () if offer_setup == "actpass" else ("--offer-setup", offer_setup)
    host = await gst("whip", f"{relay.base}/whip/gst", f"--token={show['stream_key']}", "--seconds", "30",
                     "--delete", *setup)
    await host.connected()
    answer = host.last("answer")
    assert answer["setup"] == {"actpass": "a=setup:passive", "active": "a=setup:passive",
                               "passive": "a=setup:active"}[offer_setup]
    await wait_live(relay, "gst")

    viewer = await gst("whep", f"{relay.base}/whep/gst/d1", "--seconds", "30", *setup)
    await viewer.connected()
    video_fps, audio_per_s = await viewer.fps(3.0)
    assert video_fps >= 25, f"GStreamer viewer decoded {video_fps:.1f} fps"
    assert audio_per_s >= 25  # Opus: 50 buffers a second of 20 ms
    aiortc_viewer = await relay.viewer("gst")
    await aiortc_viewer.first_frame("video")
    await aiortc_viewer.first_frame("audio")
    assert (aiortc_viewer.tracks["video"].width, aiortc_viewer.tracks["video"].height) == (640, 360)
    detail = await relay.show("gst")
    assert detail["viewers"] == {"hq": 1, "d1": 1}
    assert detail["tracks"]["video"]["codec"] == "H264" and detail["tracks"]["audio"]["codec"] == "opus"

    # The host ends the show with DELETE; the replay is ready and holds what was sent.
    await viewer.kill()
    assert await host.stop() == 0
    detail = await relay.show("gst")
    assert detail["state"] == "ended" and detail["end_reason"] == "host_ended"
    info = await wait_state(relay, "gst", ("ready",))
    assert info["duration_s"] >= 2 and info["error"] is None


async def test_aiortc_host_plays_to_a_gstreamer_viewer(relay, gst, h264_clip, opus_clip):
    show = await relay.create_show("toget")
    await relay.publish(show, host_tracks(h264_clip * 20, opus_clip * 40))
    viewer = await gst("whep", f"{relay.base}/whep/toget", "--seconds", "20")
    await viewer.connected()
    video_fps, audio_per_s = await viewer.fps(2.0)
    assert video_fps >= 25 and audio_per_s >= 25, (video_fps, audio_per_s)


async def test_gstreamer_vp8_host_plays_to_an_aiortc_viewer(relay, gst):
    show = await relay.create_show("vp8")
    host = await gst("whip", f"{relay.base}/whip/vp8", f"--token={show['stream_key']}", "--codec", "vp8",
                     "--seconds", "20")
    await host.connected()
    await wait_live(relay, "vp8")
    viewer = await relay.viewer("vp8", kinds=("video",))
    await viewer.first_frame("video")
    assert viewer.tracks["video"].width == 640
    assert (await relay.show("vp8"))["tracks"]["video"]["codec"] == "VP8"


async def test_chromium_and_gstreamer_both_ways(relay, gst, browser):  # noqa: F811
    """Chromium publishes from the studio page to a GStreamer viewer; GStreamer publishes to
    Chromium's watch page."""
    pages = Pages(browser, relay.base)
    show = await relay.create_show("fromchrome")
    studio = await pages.open("/studio/fromchrome")
    await studio.get_by_label("Stream key").fill(show["stream_key"])
    await studio.get_by_role("button", name="Go live").click()
    await wait_live(relay, "fromchrome")
    viewer = await gst("whep", f"{relay.base}/whep/fromchrome", "--seconds", "20")
    await viewer.connected()
    video_fps, audio_per_s = await viewer.fps(3.0)
    assert video_fps >= 15 and audio_per_s >= 25, (video_fps, audio_per_s)  # the fake camera sends 20 fps

    show = await relay.create_show("tochrome")
    host = await gst("whip", f"{relay.base}/whip/tochrome", f"--token={show['stream_key']}", "--seconds", "30")
    await host.connected()
    await wait_live(relay, "tochrome")
    watch = await pages.open("/watch/tochrome")
    await playing(watch)
    assert await watch.evaluate("document.querySelector('#video').videoWidth") == 640
    assert not pages.errors, pages.errors
