"""A GStreamer `webrtcbin` WHIP host or WHEP viewer, driven by tests/test_interop.py.

Runs under the system Python (Debian's python3-gi), not the project's venv. Prints one JSON
object per line on stdout: {"event": "answer"|"state"|"frames"|"error"|"done", ...}. It ends
after --seconds, or when a line "stop" (or end of file) arrives on stdin.

  gst_peer.py whip URL --token KEY [--codec h264|vp8] [--seconds N]
  gst_peer.py whep URL [--seconds N]
  --offer-setup active|passive: offer one DTLS role instead of actpass

ICE gathers on 127.0.0.1 only, as every peer in the tests does.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

VIDEO_ENCODERS = {
    "h264": "openh264enc bitrate=800000 gop-size=30 complexity=low ! video/x-h264,profile=constrained-baseline"
            " ! h264parse ! rtph264pay config-interval=-1 aggregate-mode=zero-latency"
            " ! application/x-rtp,media=video,encoding-name=H264,payload=102",
    "vp8": "vp8enc deadline=1 keyframe-max-dist=30 target-bitrate=800000"
           " ! rtpvp8pay ! application/x-rtp,media=video,encoding-name=VP8,payload=96",
}
VIEWER_CAPS = {
    "video": "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
             "packetization-mode=(string)1,profile-level-id=(string)42e01f",
    "audio": "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,encoding-params=(string)2",
}


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.counts = {"video": 0, "audio": 0}
        self.location: str | None = None
        self.exit_code = 0
        self.finished = False
        if args.role == "whip":
            self.pipe = Gst.parse_launch(
                "webrtcbin name=wb bundle-policy=max-bundle "
                "videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 "
                f"! videoconvert ! queue ! {VIDEO_ENCODERS[args.codec]} ! wb. "
                "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc "
                "! rtpopuspay ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111 ! wb.")
            self.wb = self.pipe.get_by_name("wb")
        else:
            self.pipe = Gst.Pipeline.new("viewer")
            self.wb = Gst.ElementFactory.make("webrtcbin", "wb")
            self.wb.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
            self.pipe.add(self.wb)
            for kind in ("video", "audio"):
                self.wb.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                             Gst.Caps.from_string(VIEWER_CAPS[kind]))
            self.wb.connect("pad-added", self._on_pad)
        # Kept referenced: PyGObject drops one reference too many when this object is freed.
        self.ice = self.wb.get_property("ice-agent")
        self.ice.get_property("agent").add_local_address(_nice_address("127.0.0.1"))
        self.wb.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.wb.connect("notify::ice-gathering-state", self._on_gathering)
        self.wb.connect("notify::connection-state", self._on_state)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)

    # -- signalling ------------------------------------------------------------------------
    def _on_negotiation_needed(self, wb) -> None:
        promise = Gst.Promise.new_with_change_func(self._on_offer, None)
        wb.emit("create-offer", None, promise)

    def _on_offer(self, promise, _data) -> None:
        reply = promise.get_reply()
        if reply.has_field("error"):
            self._fail(f"create-offer: {reply.get_value('error')}")
            return
        offer = reply.get_value("offer")
        self.wb.emit("set-local-description", offer, Gst.Promise.new())

    def _on_gathering(self, wb, _pspec) -> None:
        if wb.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            sdp = wb.get_property("local-description").sdp.as_text()
            threading.Thread(target=self._post, args=(sdp,), daemon=True).start()

    def _post(self, sdp: str) -> None:
        if self.args.offer_setup:  # what a peer that insists on one DTLS role sends
            sdp = sdp.replace("a=setup:actpass", f"a=setup:{self.args.offer_setup}")
        headers = {"Content-Type": "application/sdp"}
        if self.args.token:
            headers["Authorization"] = f"Bearer {self.args.token}"
        request = urllib.request.Request(self.args.url, sdp.encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=15) as res:
                answer = res.read().decode()
                location = res.headers.get("Location")
        except urllib.error.HTTPError as exc:
            GLib.idle_add(self._fail, f"HTTP {exc.code}: {exc.read().decode()[:500]}")
            return
        except OSError as exc:
            GLib.idle_add(self._fail, f"POST failed: {exc}")
            return
        GLib.idle_add(self._apply_answer, answer, location)

    def _apply_answer(self, answer: str, location: str | None) -> bool:
        self.location = location
        setup = [line for line in answer.splitlines() if line.startswith("a=setup:")]
        emit("answer", location=location, setup=setup[0] if setup else None)
        _, message = GstSdp.SDPMessage.new_from_text(answer)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.wb.emit("set-remote-description", description, Gst.Promise.new())
        return False

    # -- media -----------------------------------------------------------------------------
    def _on_pad(self, wb, pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        kind = caps.get_structure(0).get_value("media")
        decode = ("rtph264depay ! h264parse ! avdec_h264 ! videoconvert" if kind == "video"
                  else "rtpopusdepay ! opusdec ! audioconvert")
        sink = Gst.parse_bin_from_description(f"queue ! {decode} ! fakesink name=sink sync=false "
                                              "signal-handoffs=true", True)
        fakesink = sink.get_by_name("sink")
        fakesink.connect("handoff", self._on_buffer, kind)
        self.pipe.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    def _on_buffer(self, _sink, _buffer, _pad, kind: str) -> None:
        self.counts[kind] += 1  # decoded frames (video) or audio buffers

    def _report(self) -> bool:
        emit("frames", **self.counts)
        return True

    # -- lifecycle -------------------------------------------------------------------------
    def _on_state(self, wb, _pspec) -> None:
        state = wb.get_property("connection-state").value_nick
        emit("state", connection=state, ice=wb.get_property("ice-connection-state").value_nick)
        if state == "failed":
            self._fail("connection failed")

    def _on_error(self, _bus, message) -> None:
        error, debug = message.parse_error()
        self._fail(f"{error.message} ({debug})")

    def _fail(self, why: str) -> bool:
        emit("error", message=why)
        self.exit_code = 1
        self.loop.quit()
        return False

    def _finish(self) -> bool:
        if self.finished:
            return False
        self.finished = True
        if self.location and self.args.role == "whip" and self.args.delete:
            url = urllib.parse.urljoin(self.args.url, self.location)
            headers = {"Authorization": f"Bearer {self.args.token}"} if self.args.token else {}
            try:
                urllib.request.urlopen(urllib.request.Request(url, method="DELETE", headers=headers), timeout=5)
            except OSError as exc:
                emit("error", message=f"DELETE failed: {exc}")
        emit("done", **self.counts)
        self.loop.quit()
        return False

    def _on_stdin(self, source, _condition) -> bool:
        line = source.readline()
        if not line or line.strip() == "stop":  # told to stop, or the test went away
            self._finish()
            return False
        return True

    def run(self) -> int:
        GLib.io_add_watch(sys.stdin, GLib.IO_IN | GLib.IO_HUP, self._on_stdin)
        self.pipe.set_state(Gst.State.PLAYING)
        GLib.timeout_add(500, self._report)
        GLib.timeout_add(int(self.args.seconds * 1000), self._finish)
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        return self.exit_code


def _nice_address(ip: str) -> Nice.Address:
    address = Nice.Address()
    address.set_from_string(ip)
    return address


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("whip", "whep"))
    parser.add_argument("url")
    parser.add_argument("--token", default="")
    parser.add_argument("--codec", choices=tuple(VIDEO_ENCODERS), default="h264")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--offer-setup", choices=("active", "passive"),
                        help="offer this DTLS role instead of actpass")
    parser.add_argument("--delete", action="store_true", help="WHIP: DELETE the session at the end")
    args = parser.parse_args()
    Gst.init(None)
    return Peer(args).run()


if __name__ == "__main__":
    sys.exit(main())
