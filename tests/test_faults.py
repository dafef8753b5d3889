"""The fault and bad-input suite (CI-sized; bench/faults.py runs the long part).

Packet loss on either side of the relay, hosts and viewers that vanish without a goodbye, a
join storm over the viewer cap, and fuzzed SDP offers against WHIP and WHEP.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from relay_testkit.fuzz import base_offers, mutated_offers
from relay_testkit.lossy import make_lossy
from relay_testkit.synthetic import host_tracks


async def frames_per_second(viewer, seconds: float) -> list[int]:
    """Frames the viewer decoded in each second of the next `seconds`."""
    counts = []
    for _ in range(int(seconds)):
        before = viewer.tracks["video"].frames
        await asyncio.sleep(1.0)  # a measuring window, not a wait for an event
        counts.append(viewer.tracks["video"].frames - before)
    return counts


@pytest.mark.parametrize("side", ["host", "viewer"])
@pytest.mark.parametrize("loss", [0.05, 0.2])
async def test_viewers_keep_playing_through_packet_loss(make_relay, h264_clip, side, loss):
    """5 % and 20 % of the RTP/RTCP datagrams lost between host and relay, or between relay and
    viewer: NACK retransmissions and keyframe requests keep the picture coming."""
    relay = await make_relay()
    show = await relay.create_show("lossy")
    host = await relay.publish(show, host_tracks(h264_clip, None))
    viewer = await relay.viewer("lossy", kinds=("video",))  # decodes: only whole frames count
    await viewer.first_frame("video")
    counts = make_lossy(host.pc if side == "host" else viewer.pc, loss, seed=7)
    per_second = await frames_per_second(viewer, 6)
    dropped = counts["dropped_out"] + counts["dropped_in"]
    assert dropped > 0
    # The source sends 30 fps; through the loss the viewer still decodes most of them, every two seconds
    # (a frame that waits for its retransmission on a loaded machine may land in the next second).
    per_two = [a + b for a, b in zip(per_second, per_second[1:])]
    assert min(per_two) >= 2 * (20 if loss < 0.1 else 8), (per_second, counts)
    assert sum(per_second) >= 6 * (27 if loss < 0.1 else 15), (per_second, counts)


async def test_a_host_that_vanishes_ends_the_show_after_timeout_and_grace(make_relay, h264_clip):
    relay = await make_relay(grace_period_s=1.0, publisher_timeout_s=1.5)
    show = await relay.create_show("vanish")
    host = await relay.publish(show, host_tracks(h264_clip, None))
    viewer = await relay.viewer("vanish", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    make_lossy(host.pc, 1.0, everything=True)  # the host's machine is gone: nothing, not even a DELETE

    async def ended() -> bool:
        return (await relay.show("vanish"))["state"] == "ended"

    await relay.wait_for(ended, timeout=10, what="media timeout, then the grace period, to end the show")
    assert (await relay.show("vanish"))["end_reason"] == "host_left"


async def test_a_viewer_that_vanishes_is_reaped_and_counted_out(make_relay, h264_clip):
    relay = await make_relay(configure=lambda s: setattr(s.ice, "consent_timeout_s", 3.0))
    show = await relay.create_show("reap", mirrors=("d1",))
    await relay.publish(show, host_tracks(h264_clip, None))
    staying = await relay.viewer("reap", kinds=("video",), decode=False)
    leaving = await relay.viewer("reap", "d1", kinds=("video",), decode=False)
    await staying.first_frame("video")
    await leaving.first_frame("video")
    make_lossy(leaving.pc, 1.0, everything=True)  # its tab was killed: no DELETE, no DTLS close

    async def reaped() -> bool:
        rooms = (await relay.api("GET", "/api/shows/reap/stats"))[1]["rooms"]
        return rooms["d1"]["viewers"] == 0 and rooms["hq"]["viewers"] == 1

    await relay.wait_for(reaped, timeout=15, what="the vanished viewer's session to be reaped")
    stats = (await relay.api("GET", "/api/shows/reap/stats"))[1]["rooms"]["d1"]
    assert stats["peak_viewers"] == 1 and stats["total_sessions"] == 1
    frames = staying.tracks["video"].frames

    async def others_unaffected() -> bool:
        return staying.tracks["video"].frames > frames + 15

    await relay.wait_for(others_unaffected, what="the other viewer to keep playing")


async def test_a_join_storm_over_the_cap_connects_or_refuses_everyone_promptly(make_relay, h264_clip):
    from relay_testkit.whep import SignalingError

    relay = await make_relay(configure=lambda s: setattr(s.limits, "max_viewers_per_process", 40))
    show = await relay.create_show("storm")
    await relay.publish(show, host_tracks(h264_clip, None))
    started = time.monotonic()

    async def join():
        try:
            viewer = await relay.viewer("storm", kinds=("video",), decode=False)
            await viewer.first_frame("video", timeout=20)
            return "playing"
        except SignalingError as exc:
            return exc.status

    outcomes = await asyncio.wait_for(asyncio.gather(*(join() for _ in range(60))), 60)
    assert sorted(outcomes, key=str).count("playing") == 40
    assert outcomes.count(503) == 20
    assert time.monotonic() - started < 30
    stats = (await relay.api("GET", "/api/shows/storm/stats"))[1]["rooms"]["hq"]
    assert stats["viewers"] == 40


# -- fuzzed SDP against WHIP and WHEP ---------------------------------------------------------

def test_fuzzed_sdp_never_crashes_leaks_or_500s(server_process, tmp_path):
    import http.client
    import json
    import re

    from hypothesis import HealthCheck, given, settings

    from conftest import ADMIN_KEY

    server = server_process(tmp_path / "data", env={"RELAY_MEDIA_PUBLISHER_TIMEOUT_S": "2"})
    host, port = server.base.removeprefix("http://").split(":")
    offers = asyncio.run(base_offers())

    def call(method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            res = conn.getresponse()
            return res.status, res.getheader("Location"), res.read()
        finally:
            conn.close()

    def admin(method: str, path: str, body: dict | None = None):
        status, _, raw = call(method, path, json.dumps(body).encode() if body is not None else None,
                              {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
        return status, json.loads(raw) if raw.startswith(b"{") else raw.decode()

    def gauge(name: str) -> float:
        text = admin("GET", "/metrics")[1]
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))

    def rss_kib() -> int:
        status = open(f"/proc/{server.proc.pid}/status").read()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    key = admin("POST", "/api/shows", {"title": "Fuzz", "id": "fuzz"})[1]["stream_key"]
    tried = {"whip": 0, "whep": 0}
    answered: dict[int, int] = {}

    def send(kind: str, sdp: str) -> None:
        headers = {"Content-Type": "application/sdp"}
        if kind == "whip":
            headers["Authorization"] = f"Bearer {key}"
        status, location, raw = call("POST", f"/{kind}/fuzz", sdp.encode("utf-8", "surrogatepass"), headers)
        tried[kind] += 1
        answered[status] = answered.get(status, 0) + 1
        assert status in (201, 400, 409, 413, 415, 422, 503), (status, raw[:300], sdp[:300])
        if status >= 400:
            assert "error" in json.loads(raw)  # a clear JSON error, never a stack trace
        elif kind == "whep":
            call("DELETE", location)

    for kind in ("whep", "whip"):  # warm-up with valid offers: what the process holds anyway
        for _ in range(5):
            send(kind, offers[kind])
    baseline_rss = rss_kib()
    baseline_tasks = gauge("relay_asyncio_tasks")

    for kind in ("whip", "whep"):
        @settings(max_examples=300, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(sdp=mutated_offers(offers[kind]))
        def fuzz(sdp: str) -> None:
            send(kind, sdp)

        fuzz()

    admin("POST", "/api/shows/fuzz/end")
    deadline = time.monotonic() + 20
    while gauge("relay_peer_connections") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # peers close asynchronously after the show ends; polled with a deadline
    assert gauge("relay_peer_connections") == 0  # nothing leaked
    assert gauge("relay_asyncio_tasks") <= baseline_tasks + 5
    growth_mib = (rss_kib() - baseline_rss) / 1024
    assert growth_mib < 40, growth_mib
    assert server.proc.poll() is None  # still serving
    print(f"fuzz: {tried} answers {answered}; RSS growth {growth_mib:.1f} MiB")
    assert tried["whip"] >= 100 and tried["whep"] >= 100
    assert answered.get(400, 0) > 50 and answered.get(201, 0) > 5, answered
    server.stop()


async def test_an_offer_whose_bundle_names_a_missing_section_is_a_400(relay):
    """Found by the fuzzer: aiortc accepted it and then failed to answer (a 500 before)."""
    show = await relay.create_show("bundle")
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    start = offer.index("m=audio")
    broken = offer[:start] + offer[offer.index("m=video"):]  # the audio section is gone, its mid still bundled
    status, body = await relay.request("POST", "/whip/bundle", data=broken.encode(), headers={
        "Authorization": f"Bearer {show['stream_key']}", "Content-Type": "application/sdp"})
    assert status == 400 and body["error"] == "bad_sdp" and "BUNDLE" in body["message"]
    assert (await relay.show("bundle"))["state"] == "scheduled"
