"""A cluster: nodes sharing Redis; a show's host on one node, its viewers on any."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from conftest import Relay, relay_settings

from test_bad_input import make_offer
from test_workers import health

from relay_testkit.synthetic import host_tracks

from test_media import nal_units
from test_replay import decode_all, wait_state


def node(server_process, tmp_path, redis_server, name: str, replay_dir: Path | None = None):
    # A peer that vanished (a killed node) is noticed after 3 s without ICE consent; replays are
    # cut in 1 s segments (a part recorded before a node dies has some); `replay_dir`: a disk the
    # nodes share (else each its own).
    env = {"RELAY_CLUSTER_NODE_ID": name, "RELAY_ICE_CONSENT_TIMEOUT_S": "3", "RELAY_REPLAY_SEGMENT_TARGET_S": "1"}
    if replay_dir is not None:
        env["RELAY_REPLAY_DIR"] = str(replay_dir)
    return server_process(tmp_path / f"data-{name}", args=("--redis", redis_server.url), env=env)


def client_for(server) -> Relay:
    return Relay(server.base, relay_settings(server.data_dir))


async def three_nodes_live(server_process, tmp_path, redis_server, h264_clip, show_id: str, mirrors=(),
                           replay_dir: Path | None = None):
    """Nodes a, b and c (servers, clients) and a show whose host publishes to a."""
    servers = {name: node(server_process, tmp_path, redis_server, name, replay_dir) for name in "abc"}
    clients = [client_for(servers[name]) for name in "abc"]
    show = await clients[0].create_show(show_id, mirrors=mirrors)
    await clients[0].publish(show, host_tracks(h264_clip, None))
    return servers, clients, show


async def part_recorded(relay: Relay, show_id: str, node_name: str) -> None:
    """Wait until `node_name`'s part of the replay has a segment (the playlist any node serves)."""
    async def has_segment() -> bool:
        status, text = await relay.request("GET", f"/replay/{show_id}/index.m3u8", headers=relay.admin)
        return status == 200 and f"seg-{node_name}-p0-" in text

    await relay.wait_for(has_segment, timeout=20, what=f"a segment of {node_name}'s part of the replay")


async def replay_plays_end_to_end(relay: Relay, show_id: str, parts: tuple[str, ...], tmp_dir: Path) -> dict:
    """The ended show's replay, as `relay` serves it: ready, one discontinuity between the parts,
    its HLS and its MP4 decode from start to end."""
    info = await wait_state(relay, show_id, ("ready",), timeout=60)
    assert info["discontinuities"] == len(parts) - 1, info
    status, text = await relay.request("GET", f"/replay/{show_id}/index.m3u8", headers=relay.admin)
    assert status == 200 and text.count("#EXT-X-DISCONTINUITY") == len(parts) - 1, text
    assert all(f"seg-{name}-p0-" in text for name in parts), text
    hls = await decode_hls(relay, show_id, text, tmp_dir)
    mp4 = await asyncio.get_running_loop().run_in_executor(None, decode_all, info["mp4_url"])
    assert abs(mp4["video"] - info["duration_s"] * 30) <= 15 and hls == mp4["video"], (hls, mp4, info)
    return info


async def decode_hls(relay: Relay, show_id: str, playlist: str, tmp_dir: Path) -> int:
    """Video frames decoded from an HLS replay as a player that honours EXT-X-DISCONTINUITY
    plays it (each stretch from its own init segment; timestamps start again after one),
    every file fetched from `relay`."""
    stretches: list[list[str]] = []
    for line in playlist.splitlines():
        if line.startswith("#EXT-X-MAP:URI="):
            stretches.append([line.split("=", 1)[1].strip('"')])
        elif line and not line.startswith("#"):
            stretches[-1].append(line)
    frames = 0
    async with aiohttp.ClientSession() as http:
        for i, names in enumerate(stretches):
            path = tmp_dir / f"{show_id}-stretch-{i}.mp4"
            with open(path, "wb") as out:
                for name in names:
                    async with http.get(f"{relay.base}/replay/{show_id}/{name}", headers=relay.admin) as res:
                        assert res.status == 200, (name, res.status)
                        out.write(await res.read())
            frames += (await asyncio.get_running_loop().run_in_executor(None, decode_all, str(path)))["video"]
    return frames


async def test_viewers_on_every_node_get_the_hosts_access_units(server_process, tmp_path, redis_server, h264_clip):
    _, (a, b, c), _ = await three_nodes_live(server_process, tmp_path, redis_server, h264_clip, "big",
                                             mirrors=("d1",))
    viewers = [await a.viewer("big", kinds=("video",), decode=False),
               await b.viewer("big", "d1", kinds=("video",), decode=False),
               await c.viewer("big", kinds=("video",), decode=False)]
    for viewer in viewers:
        viewer.tracks["video"].data = []
    clip = [nal_units(au) for au in h264_clip]

    async def ninety_each() -> bool:
        return all(v.tracks["video"].frames >= 90 for v in viewers)

    await a.wait_for(ninety_each, timeout=20, what="90 frames at each node's viewer")
    for viewer in viewers:  # from a cached keyframe on, the host's access units unchanged
        got = [nal_units(au) for au in viewer.tracks["video"].data[:90]]
        first = clip.index(got[0])
        assert got == [clip[(first + i) % len(clip)] for i in range(len(got))]

    # Every node answers the same for the show; its figures are the cluster's.
    details = [await relay.show("big") for relay in (a, b, c)]
    assert all(d["state"] == "live" for d in details)
    assert {d["id"] for d in details} == {"big"} and {len(d["mirrors"]) for d in details} == {1}

    async def counted_everywhere() -> bool:
        stats = [(await relay.api("GET", "/api/shows/big/stats"))[1] for relay in (a, b, c)]
        viewers_per_room = [{room: r["viewers"] for room, r in s["rooms"].items()} for s in stats]
        return all(v == {"hq": 2, "d1": 1} for v in viewers_per_room)

    await a.wait_for(counted_everywhere, timeout=10, what="every node to count the cluster's viewers")

    async def metrics_say_so() -> bool:  # each node's /metrics has the cluster's sums too
        text = (await b.request("GET", "/metrics", headers=b.admin))[1]
        return 'relay_cluster_viewers{room="hq",show="big"} 2.0' in text

    await b.wait_for(metrics_say_so, timeout=10, what="the cluster's viewers in B's /metrics")
    for relay in (a, b, c):
        await relay.close_clients()


async def test_origin_killed_host_republishes_elsewhere_and_edge_viewers_resume_on_their_connection(
        server_process, tmp_path, redis_server, h264_clip):
    # The nodes keep replays on one shared disk: the dead origin's part is still there.
    servers, (a, b, c), show = await three_nodes_live(server_process, tmp_path, redis_server, h264_clip, "phoenix",
                                                      replay_dir=tmp_path / "shared-replays")
    viewer = await c.viewer("phoenix", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    pc = viewer.pc
    await part_recorded(c, "phoenix", "a")

    servers["a"].kill()  # the origin dies mid-show; the host's encoder reconnects to another node
    await a.close_clients()
    await b.publish(show, host_tracks(h264_clip, None))
    frames = viewer.tracks["video"].frames

    async def resumed() -> bool:
        return viewer.tracks["video"].frames > frames + 60

    await c.wait_for(resumed, timeout=20, what="the viewer on C to play again, from the new origin B")
    assert viewer.pc is pc and pc.connectionState == "connected"  # no new peer connection
    detail = await c.show("phoenix")
    assert detail["state"] == "live"

    # The host ends the show on B: the replay holds A's part and B's, one discontinuity between.
    await part_recorded(c, "phoenix", "b")
    await b.clients[0].stop()
    await replay_plays_end_to_end(c, "phoenix", ("a", "b"), tmp_path)
    for relay in (b, c):
        await relay.close_clients()


async def test_a_replay_whose_origin_moved_is_served_by_any_node_from_the_nodes_that_wrote_it(
        server_process, tmp_path, redis_server, h264_clip):
    # Each node its own disk: the parts stay where they were recorded, and are read over HTTP.
    _, (a, b, c), show = await three_nodes_live(server_process, tmp_path, redis_server, h264_clip, "nomad")
    viewer = await c.viewer("nomad", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    await part_recorded(c, "nomad", "a")
    await a.clients[0].drop()  # the host's network changed: it pushes to B now, A stays up
    await b.publish(show, host_tracks(h264_clip, None))
    await part_recorded(c, "nomad", "b")
    await b.clients[0].stop()
    await wait_state(c, "nomad", ("ready",), timeout=60)
    # One node put the replay together (any may): it has every file. Another node serves it,
    # reading what it has not from the node that wrote it.
    replays = {name: tmp_path / f"data-{name}" / "replays" / "nomad" for name in "abc"}
    made = [name for name in "abc" if (replays[name] / "show.mp4").is_file()]
    assert len(made) == 1, made
    server = next(name for name in "cab" if name != made[0])
    await replay_plays_end_to_end({"a": a, "b": b, "c": c}[server], "nomad", ("a", "b"), tmp_path)
    assert {p.name.split("-")[1] for p in replays[made[0]].glob("seg-*")} == {"a", "b"}
    for name in set("ab") - set(made):  # a part that moved on stays where it was recorded
        assert {p.name.split("-")[1] for p in replays[name].glob("seg-*")} == {name}
    if server == "c":
        assert not replays["c"].exists()  # C recorded nothing and stored nothing to serve it
    for relay in (a, b, c):
        await relay.close_clients()


async def test_a_killed_edge_viewers_rejoin_through_another_node(server_process, tmp_path, redis_server,
                                                                 h264_clip):
    servers, (a, b, c), _ = await three_nodes_live(server_process, tmp_path, redis_server, h264_clip, "hop",
                                                   mirrors=("d1",))
    await (await b.viewer("hop", "d1", kinds=("video",), decode=False)).first_frame("video")
    servers["b"].kill()
    await b.close_clients()
    again = await c.viewer("hop", "d1", kinds=("video",), decode=True)  # what the watch page does
    assert await again.first_frame("video", timeout=3) < 3
    for relay in (a, c):
        await relay.close_clients()


async def test_a_full_node_redirects_the_offer_to_another_node(server_process, tmp_path, redis_server, h264_clip):
    full = {"RELAY_CLUSTER_MAX_VIEWERS_PER_NODE": "1"}
    servers = {name: server_process(tmp_path / f"data-{name}", args=("--redis", redis_server.url),
                                    env={"RELAY_CLUSTER_NODE_ID": name, **full}) for name in "ab"}
    a, b = (client_for(servers[name]) for name in "ab")
    show = await a.create_show("busy")
    await a.publish(show, host_tracks(h264_clip, None))
    await (await a.viewer("busy", kinds=("video",), decode=False)).first_frame("video")  # A is full now
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{a.base}/whep/busy", data=await make_offer("recvonly"), allow_redirects=False,
                             headers={"Content-Type": "application/sdp"}) as res:
            assert res.status == 307 and (await res.json())["error"] == "node_full"
            assert res.headers["Location"] == f"{servers['b'].base}/whep/busy"
    redirected = await a.viewer("busy", kinds=("video",), decode=True)  # the client follows it to B
    await redirected.first_frame("video")
    assert (await health(servers["b"].base))["viewers"] == 1

    # The session's URL names B: a DELETE that reaches A (a load balancer's choice) is passed to B.
    path = redirected.location.removeprefix(servers["b"].base)
    async with aiohttp.ClientSession() as http:
        async with http.delete(a.base + path) as res:
            assert res.status == 200, await res.text()
        assert (await health(servers["b"].base))["viewers"] == 0
        async with http.delete(a.base + path) as res:  # gone: B's answer, through A
            assert res.status == 404 and (await res.json())["error"] == "session_not_found"
    for relay in (a, b):
        await relay.close_clients()


async def test_redis_restarted_media_keeps_flowing_and_the_origin_registry_is_rebuilt(
        server_process, tmp_path, redis_server, h264_clip):
    _, (a, b, c), _ = await three_nodes_live(server_process, tmp_path, redis_server, h264_clip, "steady")
    viewer = await b.viewer("steady", kinds=("video",), decode=False)
    await viewer.first_frame("video")

    redis_server.kill()  # Redis away: the media path does not need it
    frames = viewer.tracks["video"].frames

    async def flowing() -> bool:
        return viewer.tracks["video"].frames > frames + 60

    await b.wait_for(flowing, timeout=10, what="media on B while Redis is down")
    redis_server.start()
    origin_key = "relay:{steady}:origin"
    http_redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await http_redis.delete(origin_key)  # as if Redis had come back empty: the heartbeat says it again

        async def registered() -> bool:
            value = await http_redis.get(origin_key)
            return value is not None and '"a"' in value

        await a.wait_for(registered, timeout=10, what="node A's heartbeat to claim the show again")
    finally:
        await http_redis.aclose()
    late = await c.viewer("steady", kinds=("video",), decode=False)  # C finds the origin again
    await late.first_frame("video")
    for relay in (a, b, c):
        await relay.close_clients()

