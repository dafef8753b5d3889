"""A cluster: nodes sharing Redis; a show's host on one node, its viewers on any."""

from __future__ import annotations

from conftest import Relay, relay_settings

from relay_testkit.synthetic import host_tracks

from test_media import nal_units


def node(server_process, tmp_path, redis_server, name: str):
    return server_process(tmp_path / f"data-{name}", args=("--redis", redis_server.url),
                          env={"RELAY_CLUSTER_NODE_ID": name})


def client_for(server) -> Relay:
    return Relay(server.base, relay_settings(server.data_dir))


async def test_viewers_on_every_node_get_the_hosts_access_units(server_process, tmp_path, redis_server, h264_clip):
    a, b, c = (client_for(node(server_process, tmp_path, redis_server, name)) for name in "abc")
    show = await a.create_show("big", mirrors=("d1",))
    await a.publish(show, host_tracks(h264_clip, None))
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
    for relay in (a, b, c):
        await relay.close_clients()
