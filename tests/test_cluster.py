"""A cluster: nodes sharing Redis; a show's host on one node, its viewers on any."""

from __future__ import annotations

import aiohttp
import redis.asyncio as aioredis

from conftest import Relay, relay_settings

from test_bad_input import make_offer
from test_workers import health

from relay_testkit.synthetic import host_tracks

from test_media import nal_units


def node(server_process, tmp_path, redis_server, name: str):
    # A peer that vanished (a killed node) is noticed after 3 s without ICE consent.
    return server_process(tmp_path / f"data-{name}", args=("--redis", redis_server.url),
                          env={"RELAY_CLUSTER_NODE_ID": name, "RELAY_ICE_CONSENT_TIMEOUT_S": "3"})


def client_for(server) -> Relay:
    return Relay(server.base, relay_settings(server.data_dir))


async def three_nodes_live(server_process, tmp_path, redis_server, h264_clip, show_id: str, mirrors=()):
    """Nodes a, b and c (servers, clients) and a show whose host publishes to a."""
    servers = {name: node(server_process, tmp_path, redis_server, name) for name in "abc"}
    clients = [client_for(servers[name]) for name in "abc"]
    show = await clients[0].create_show(show_id, mirrors=mirrors)
    await clients[0].publish(show, host_tracks(h264_clip, None))
    return servers, clients, show


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
    servers, (a, b, c), show = await three_nodes_live(server_process, tmp_path, redis_server, h264_clip, "phoenix")
    viewer = await c.viewer("phoenix", kinds=("video",), decode=False)
    await viewer.first_frame("video")
    pc = viewer.pc

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
    for relay in (b, c):
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

