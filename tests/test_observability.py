"""What the operator sees: Prometheus metrics and structured JSON logs."""

from __future__ import annotations

import json

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from conftest import Relay, relay_settings
from test_commerce import SseReader

from relay_testkit.synthetic import host_tracks


async def scrape(relay, token: str) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{relay.base}/metrics", headers={"Authorization": f"Bearer {token}"}) as res:
            assert res.status == 200, await res.text()
            text = await res.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_show_the_live_show_media_claims_recording_and_events(make_relay, h264_clip):
    relay = await make_relay(configure=lambda s: setattr(s.replay, "segment_target_s", 1.0))
    assert (await relay.request("GET", "/metrics"))[0] == 401
    show = await relay.create_show("m", mirrors=("d1",))
    before = await scrape(relay, "test-admin-key")
    await relay.publish(show, host_tracks(h264_clip, None))
    viewer = await relay.viewer("m", "d1", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    reader = await SseReader(f"{relay.base}/events/m/d1").start()
    await relay.api("POST", "/api/shows/m/coupons", {"id": "c", "title": "C", "quantity": 5, "duration_s": 60})
    await relay.api("POST", "/api/shows/m/coupons/c/launch")
    await reader.wait_for(1)
    await reader.close()
    status, registered = await relay.request("POST", "/api/shows/m/viewers", json={"room": "d1"})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{relay.base}/api/shows/m/coupons/c/claim", headers={
                "Authorization": f"Bearer {registered['token']}", "Idempotency-Key": "k"}) as res:
            assert (await res.json())["result"] == "claimed"

    async def segment_written() -> bool:
        return (await relay.api("GET", "/api/shows/m/replay"))[1]["duration_s"] > 0

    await relay.wait_for(segment_written, timeout=15, what="a replay segment")
    after = await scrape(relay, "test-admin-key")

    def grew(name: str, labels: tuple = ()) -> float:
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert after[("relay_publishers", ())] == 1
    assert after[("relay_viewers", (("room", "d1"), ("show", "m")))] == 1
    assert grew("relay_frames_forwarded_total", (("kind", "video"),)) > 0
    assert grew("relay_packets_forwarded_total", (("kind", "video"),)) > 0
    assert grew("relay_bytes_forwarded_total", (("kind", "video"),)) > 1000
    assert grew("relay_join_seconds_count") >= 1
    assert grew("relay_claims_total", (("result", "claimed"),)) == 1
    assert grew("relay_store_seconds_count", (("op", "claim"),)) == 1
    assert grew("relay_recording_segments_total") >= 1
    assert grew("relay_event_delivery_lag_seconds_count") >= 1  # coupon.launched, to a reader
    assert ("relay_keyframe_requests_total", (("direction", "to_hosts"),)) in after


async def test_json_logs_carry_show_and_session_fields(server_process, tmp_path, h264_clip):
    data = tmp_path / "data"
    server = server_process(data, args=("--log-format", "json"))
    relay = Relay(server.base, relay_settings(data))
    show = await relay.create_show("logged")
    await relay.publish(show, host_tracks(h264_clip, None))
    viewer = await relay.viewer("logged", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    await relay.close_clients()
    server.stop()
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    access = [line for line in lines if line.get("path") == "/whep/logged"]
    assert access and access[0]["status"] == 201 and access[0]["show"] == "logged" and "ms" in access[0]
