"""Restreaming: a WHIP show pushed over RTMP to Debian's ffmpeg as the platform (`ffmpeg -listen 1
-i rtmp://... -c copy out.flv`): the host's H.264 arrives as sent, with AAC audio; a receiver that
goes away and comes back gets the stream again; a target that never answers leaves viewers and
the other targets alone; the API masks stream keys, refuses bad input, and nothing logs a key."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest
from playwright.async_api import Route, expect

from relay import aiortc_hooks
from relay.app import SERVICES
from relay.models import Restream, Show, ShowState
from relay.redis_show_store import RedisShowStore
from relay import amf0 as amf
from relay.restream import flv, rtmp
from relay.restream.aac import OpusToAac
from relay.restream.rtmp import ChunkParser, encode_chunks
from relay.restream.url import BadUrl, mask, parse
from relay.show_store import SqliteShowStore
from relay_testkit.process import free_port
from relay_testkit.synthetic import encode_pattern, host_tracks, video_track
from relay_testkit.whip import WhipClient
from test_openapi import check_answer, fetch_document
from test_pages import Pages, browser, screenshots  # noqa: F401 (browser: the fixture)
from conftest import ADMIN_KEY, Relay, relay_settings

KEY = "sk-live-7f3a9c1e5b2d4a6f"  # a platform's stream key: it must never come back


def nal_units(access_unit: bytes) -> list[bytes]:
    return [n for n in aiortc_hooks.split_h264(access_unit) if n]


async def measure_fps(client, seconds: float) -> float:
    counter = client.tracks["video"]
    start_frames, start = counter.frames, time.monotonic()
    await asyncio.sleep(seconds)  # a measurement window, not a synchronisation point
    return counter.fps_since(start_frames, start)


def restream_config(settings) -> None:
    settings.restream.connect_timeout_s = 2.0
    settings.restream.retry_max_s = 4.0


# -- the platform: Debian's ffmpeg ------------------------------------------------------------
def listening(port: int) -> bool:
    """Something listens on 127.0.0.1:`port` (read from the kernel: connecting to probe would
    be the receiver's one connection)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(f"{row.split()[1]} {row.split()[3]}" == f"{wanted} 0A" for row in list(table)[1:])


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Received:
    video: list[list[bytes]]  # access units as NAL units, in order
    video_ms: list[int]
    keyframes: list[bool]
    audio_codec: str | None
    audio_layout: tuple[int, int] | None  # (sample rate, channels)
    audio_ms: list[int]
    audio_rms: float


def avcc_nal_units(data: bytes) -> list[bytes]:
    nals, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        nals.append(data[pos + 4:pos + 4 + size])
        pos += 4 + size
    return nals


@dataclass
class Receiver:
    """An RTMP platform: ffmpeg listening once on rtmp://127.0.0.1:`port`/app/KEY, copying what
    it receives into an FLV file."""

    folder: Path
    port: int = field(default_factory=free_port)
    name: str = "out"
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/app/{KEY}"

    @property
    def output(self) -> Path:
        return self.folder / f"{self.name}.flv"

    async def start(self) -> "Receiver":
        log = open(self.folder / f"{self.name}.log", "wb")
        self.proc = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", "-listen", "1", "-i", self.url,
            "-c", "copy", "-y", str(self.output), stdout=log, stderr=log)
        await until(lambda: listening(self.port), 10, "ffmpeg to listen")
        return self

    async def finished(self, timeout: float = 15) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    def read(self) -> Received:
        video, video_ms, keyframes, audio_ms = [], [], [], []
        codec = layout = None
        squares, samples = 0.0, 0
        with av.open(str(self.output)) as container:
            audio = next(iter(container.streams.audio), None)
            if audio is not None:
                codec = audio.codec_context.name
                layout = (audio.codec_context.sample_rate, audio.codec_context.layout.nb_channels)
            for packet in container.demux():
                if packet.size == 0:
                    continue
                ms = int(packet.pts * packet.time_base * 1000)
                if packet.stream.type == "video":
                    video.append(avcc_nal_units(bytes(packet)))
                    video_ms.append(ms)
                    keyframes.append(packet.is_keyframe)
                else:
                    audio_ms.append(ms)
                    for frame in packet.decode():
                        pcm = frame.to_ndarray()
                        squares += float((pcm.astype("float64") ** 2).sum())
                        samples += pcm.size
        return Received(video, video_ms, keyframes, codec, layout, audio_ms, (squares / max(samples, 1)) ** 0.5)


@pytest.fixture
async def receivers(tmp_path):
    started: list[Receiver] = []

    async def start(port: int | None = None, name: str = "out") -> Receiver:
        receiver = Receiver(tmp_path, port or free_port(), name)
        started.append(await receiver.start())
        return receiver

    yield start
    for receiver in started:
        receiver.kill()
        await receiver.proc.wait()


async def add_target(relay, show_id: str, url: str, name: str = "Platform") -> dict:
    status, body = await relay.api("POST", f"/api/shows/{show_id}/restreams", {"name": name, "url": url})
    assert status == 201, body
    return body


async def target(relay, show_id: str, target_id: str) -> dict:
    status, body = await relay.api("GET", f"/api/shows/{show_id}/restreams")
    assert status == 200, body
    return next(t for t in body["restreams"] if t["id"] == target_id)


async def wait_target(relay, show_id: str, target_id: str, what: str, check, timeout: float = 15) -> dict:
    seen: dict = {}

    async def holds() -> bool:
        seen.update(await target(relay, show_id, target_id))
        return check(seen)

    await relay.wait_for(holds, timeout=timeout, what=f"restream {what} (last seen: {seen})")
    return seen


def cyclic_match(got: list[list[bytes]], clip: list[bytes]) -> None:
    """`got` is the host's looped clip from one of its keyframes on, NAL unit for NAL unit."""
    units = [nal_units(au) for au in clip]
    first = units.index(got[0])
    assert got == [units[(first + i) % len(units)] for i in range(len(got))]


# -- media --------------------------------------------------------------------------------------
async def test_a_whip_show_reaches_an_rtmp_receiver_with_its_h264_as_sent_and_aac(
        make_relay, receivers, h264_clip, opus_clip, caplog):
    caplog.set_level(logging.DEBUG)
    relay = await make_relay(configure=restream_config)
    show = await relay.create_show("push")
    receiver = await receivers()
    added = await add_target(relay, "push", receiver.url, "YouTube")
    assert added["state"] == "waiting" and added["url"] == f"rtmp://127.0.0.1:{receiver.port}/app/****"

    await relay.publish(show, host_tracks(h264_clip, opus_clip))  # the node reads its targets now
    await wait_target(relay, "push", added["id"], "live", lambda t: t["state"] == "live")
    # ~3 s of 800 kbit/s video and 128 kbit/s audio
    await wait_target(relay, "push", added["id"], "3 s sent", lambda t: t["bytes_sent"] > 330_000)
    assert (await relay.api("DELETE", f"/api/shows/push/restreams/{added['id']}"))[0] == 204
    assert await receiver.finished() == 0  # unpublished: the platform ends its file

    got = receiver.read()
    assert len(got.video) >= 75 and got.keyframes[0]
    cyclic_match(got.video, h264_clip)
    gaps = [b - a for a, b in zip(got.video_ms, got.video_ms[1:])]
    assert all(20 <= gap <= 50 for gap in gaps[5:]), gaps  # 30 fps, as the host sent them
    assert got.audio_codec == "aac" and got.audio_layout == (48000, 2)
    assert len(got.audio_ms) >= 100 and got.audio_rms > 0.05  # the tone, not silence
    assert abs(got.audio_ms[0] - got.video_ms[0]) < 150  # (and audio starts with the video)
    assert (await relay.api("GET", "/api/shows/push/restreams"))[1] == {"restreams": []}
    assert KEY not in caplog.text


async def test_a_receiver_that_goes_away_and_comes_back_gets_the_stream_again(
        make_relay, receivers, h264_clip, opus_clip, caplog):
    caplog.set_level(logging.DEBUG)
    relay = await make_relay(configure=restream_config)
    show = await relay.create_show("again")
    await relay.publish(show, host_tracks(h264_clip, opus_clip))
    first = await receivers(name="first")
    added = await add_target(relay, "again", first.url)  # added while live: pushed at once
    await wait_target(relay, "again", added["id"], "live", lambda t: t["bytes_sent"] > 100_000)

    first.kill()  # the platform goes away
    dropped = await wait_target(relay, "again", added["id"], "retrying", lambda t: t["state"] == "retrying")
    assert dropped["last_error"]
    sent_before = dropped["bytes_sent"]
    second = await receivers(port=first.port, name="second")  # and comes back
    back = await wait_target(relay, "again", added["id"], "live again",
                             lambda t: t["state"] == "live" and t["bytes_sent"] > sent_before + 150_000)
    assert back["last_error"] == dropped["last_error"]  # (why it reconnected stays visible)
    assert (await relay.api("DELETE", f"/api/shows/again/restreams/{added['id']}"))[0] == 204
    assert await second.finished() == 0

    got = second.read()
    assert got.keyframes[0] and len(got.video) >= 30  # a new stream, from a keyframe
    cyclic_match(got.video, h264_clip)
    assert got.audio_codec == "aac" and len(got.audio_ms) >= 40
    assert KEY not in caplog.text


async def test_a_target_that_never_answers_slows_neither_viewers_nor_other_targets(
        make_relay, receivers, h264_clip, opus_clip):
    relay = await make_relay(configure=restream_config)
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts, reads, never says a word
        await reader.read()

    black_hole = await asyncio.start_server(silent, "127.0.0.1", 0)
    dead_port = black_hole.sockets[0].getsockname()[1]
    try:
        show = await relay.create_show("steady")
        await relay.publish(show, host_tracks(h264_clip, opus_clip))
        viewer = await relay.viewer("steady")
        await viewer.first_frame("video")
        dead = await add_target(relay, "steady", f"rtmp://127.0.0.1:{dead_port}/live/{KEY}", "Silent")
        receiver = await receivers()
        good = await add_target(relay, "steady", receiver.url, "Working")
        await wait_target(relay, "steady", dead["id"], "connecting", lambda t: t["state"] == "connecting")

        fps = await measure_fps(viewer, 3.0)  # while the silent one hangs in its handshake
        assert fps >= 25, fps
        failed = await wait_target(relay, "steady", dead["id"], "given up", lambda t: t["state"] == "retrying")
        assert failed["last_error"] == "no answer within 2 s"
        working = await target(relay, "steady", good["id"])
        assert working["state"] == "live" and working["bytes_sent"] > 150_000 and working["last_error"] is None
        assert await measure_fps(viewer, 2.0) >= 25
        assert relay.app[SERVICES].live.running["steady"].publisher is not None
    finally:
        black_hole.close()
        for writer in held:
            writer.close()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test platform")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "platform.crt", folder / "platform.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_rtmps_checks_the_platforms_certificate_then_pushes_over_tls(
        make_relay, receivers, tmp_path, monkeypatch, h264_clip, opus_clip):
    cert, key = self_signed(tmp_path)
    receiver = await receivers()

    async def terminate_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The platform's TLS end, in front of its plain RTMP."""
        inner_reader, inner_writer = await asyncio.open_connection("127.0.0.1", receiver.port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, inner_writer), pipe(inner_reader, writer), return_exceptions=True)

    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    front = await asyncio.start_server(terminate_tls, "127.0.0.1", 0, ssl=server_tls)
    url = f"rtmps://127.0.0.1:{front.sockets[0].getsockname()[1]}/app/{KEY}"
    try:
        relay = await make_relay(configure=restream_config)
        show = await relay.create_show("tls")
        await relay.publish(show, host_tracks(h264_clip, opus_clip))
        untrusted = await add_target(relay, "tls", url, "Not trusted")  # the system's CAs do not know it
        refused = await wait_target(relay, "tls", untrusted["id"], "refused", lambda t: t["state"] == "retrying")
        assert refused["last_error"].startswith("TLS: self-signed certificate"), refused
        assert (await relay.api("DELETE", f"/api/shows/tls/restreams/{untrusted['id']}"))[0] == 204

        monkeypatch.setattr(rtmp, "_tls", ssl.create_default_context(cafile=str(cert)))  # now it is trusted
        trusted = await add_target(relay, "tls", url, "Trusted")
        await wait_target(relay, "tls", trusted["id"], "live over TLS",
                          lambda t: t["state"] == "live" and t["bytes_sent"] > 150_000)
        assert (await relay.api("DELETE", f"/api/shows/tls/restreams/{trusted['id']}"))[0] == 204
        assert await receiver.finished() == 0
        got = receiver.read()
        assert got.keyframes[0] and got.audio_codec == "aac"
        cyclic_match(got.video, h264_clip)
    finally:
        front.close()


async def test_a_vp8_show_cannot_go_over_rtmp_its_targets_say_so(make_relay, receivers):
    relay = await make_relay(configure=restream_config)
    vp8 = encode_pattern(320, 240, 30, seconds=1.0, gop=30, bitrate=300_000, codec_name="libvpx")
    show = await relay.create_show("vp8")
    receiver = await receivers()
    added = await add_target(relay, "vp8", receiver.url)
    host = WhipClient(f"{relay.base}/whip/vp8", show["stream_key"], [video_track(vp8)], video_codec="VP8")
    await host.start()
    relay.clients.append(host)
    failed = await wait_target(relay, "vp8", added["id"], "failed", lambda t: t["state"] == "failed")
    assert "H.264 only" in failed["last_error"]


async def test_in_a_cluster_the_hosts_node_pushes_and_every_node_answers(
        server_process, tmp_path, redis_server, receivers, h264_clip, opus_clip):
    nodes = {name: server_process(tmp_path / f"data-{name}", args=("--redis", redis_server.url),
                                  env={"RELAY_CLUSTER_NODE_ID": name}) for name in "ab"}
    a, b = (Relay(server.base, relay_settings(server.data_dir)) for server in nodes.values())
    show = await a.create_show("spread")
    await a.publish(show, host_tracks(h264_clip, opus_clip))
    receiver = await receivers()
    added = await add_target(b, "spread", receiver.url)  # through the node the host is not on
    # a heard of it (the catalog's change feed) and pushes; b answers with a's state
    await wait_target(b, "spread", added["id"], "live, as b says",
                      lambda t: t["state"] == "live" and t["bytes_sent"] > 150_000)
    assert (await b.api("DELETE", f"/api/shows/spread/restreams/{added['id']}"))[0] == 204
    assert await receiver.finished() == 0  # a unpublished it
    got = receiver.read()
    assert got.keyframes[0] and got.audio_codec == "aac"
    cyclic_match(got.video, h264_clip)
    await a.close_clients()
    for server in nodes.values():
        server.stop()
        assert KEY not in server.log_text()


# -- the API ------------------------------------------------------------------------------------
async def test_bad_input_is_refused_naming_the_field_and_changes_nothing(make_relay, caplog):
    caplog.set_level(logging.DEBUG)
    relay = await make_relay(configure=lambda s: setattr(s.restream, "max_targets_per_show", 2))
    await relay.create_show("api")
    kept = await add_target(relay, "api", f"rtmps://live-api-s.facebook.com:443/rtmp/{KEY}?s_bl=1", "Facebook")
    assert kept["url"] == "rtmps://live-api-s.facebook.com/rtmp/****"
    before = (await relay.api("GET", "/api/shows/api/restreams"))[1]
    answers = [kept, before]

    async def refused(body, status: int, field: str | None = "url", path: str = "/api/shows/api/restreams",
                      headers=None) -> None:
        code, answer = await relay.request("POST", path, json=body, headers=relay.admin if headers is None else headers)
        answers.append(answer)
        assert code == status, answer
        if field is not None:
            assert answer["error"] == "invalid_field" and answer["message"].startswith(f"'{field}'"), answer

    await refused({"name": "X", "url": f"http://example.com/app/{KEY}"}, 422)  # not rtmp(s)
    await refused({"name": "X", "url": f"srt://example.com/app/{KEY}"}, 422)
    await refused({"name": "X", "url": f"rtmp:///app/{KEY}"}, 422)  # no host
    await refused({"name": "X", "url": f"rtmp://bad_host!/app/{KEY}"}, 422)
    await refused({"name": "X", "url": "rtmp://example.com/" + KEY}, 422)  # no application
    await refused({"name": "X", "url": f"rtmp://user:{KEY}@example.com/app/key"}, 422)  # credentials
    await refused({"name": "X", "url": f"rtmp://example.com:99999/app/{KEY}"}, 422)
    await refused({"name": "X", "url": f"rtmp://example.com/app/{KEY} x"}, 422)
    await refused({"name": "X", "url": f"rtmp://example.com/app/{KEY}" + "k" * 1100}, 422)  # too long
    await refused({"name": "X", "url": 5}, 422)
    await refused({"name": "X"}, 422)
    await refused({"name": "", "url": f"rtmp://example.com/app/{KEY}"}, 422, "name")
    await refused({"url": f"rtmp://example.com/app/{KEY}"}, 422, "name")
    await refused({"name": "X", "url": f"rtmp://example.com/app/{KEY}"}, 404, None, "/api/shows/nope/restreams")
    await refused({"name": "X", "url": f"rtmp://example.com/app/{KEY}"}, 401, None, headers={})
    await refused({"name": "Two", "url": f"rtmp://a.rtmp.youtube.com/live2/{KEY}"}, 201, None)
    await refused({"name": "Three", "url": f"rtmp://example.com/app/{KEY}"}, 409, None)  # at the limit
    for path in ("/api/shows/api/restreams/nope", "/api/shows/nope/restreams/" + kept["id"]):
        status, answer = await relay.api("DELETE", path)
        answers.append(answer)
        assert status == 404, answer
    listed = (await relay.api("GET", "/api/shows/api/restreams"))[1]
    answers += [listed, await relay.show("api")]
    assert [t["id"] for t in listed["restreams"]][0] == kept["id"] and len(listed["restreams"]) == 2
    assert listed["restreams"][1]["url"] == "rtmp://a.rtmp.youtube.com/live2/****"
    assert all(t["state"] == "waiting" and t["bytes_sent"] == 0 for t in listed["restreams"])

    document, _ = await fetch_document(relay)  # the answers are what the API's document says
    path = "/api/shows/{show}/restreams"
    check_answer(document, "post", path, 201, kept)
    check_answer(document, "get", path, 200, listed)
    check_answer(document, "post", path, 422, answers[2])
    check_answer(document, "delete", path + "/{restream}", 404, answers[-3])

    assert (await relay.api("POST", "/api/shows/api/end"))[0] == 200
    await refused({"name": "Late", "url": f"rtmp://example.com/app/{KEY}"}, 409, None)
    assert KEY not in repr(answers) and KEY not in caplog.text
    assert (await relay.api("DELETE", "/api/shows/api"))[0] == 204
    store = relay.app[SERVICES].catalog._store
    assert await store.list_restreams("api") == []  # deleting the show deletes its targets


@pytest.mark.parametrize("kind", ["embedded", "redis"])
async def test_targets_are_kept_with_the_show(kind, tmp_path, request):
    store = (SqliteShowStore(tmp_path / "relay.db") if kind == "embedded"
             else RedisShowStore(request.getfixturevalue("redis_server").url, "t"))
    try:
        await store.create_show(Show("kept", "Kept", ShowState.SCHEDULED, "hash", 1.0))
        first = Restream("kept", "a1", "YouTube", f"rtmp://a.rtmp.youtube.com/live2/{KEY}", 10.0)
        second = Restream("kept", "b2", "Twitch", f"rtmp://live.twitch.tv/app/{KEY}", 11.0)
        await store.add_restream(second, 2)
        await store.add_restream(first, 2)
        assert await store.list_restreams("kept") == [first, second]
        with pytest.raises(Exception, match="at most 2"):
            await store.add_restream(Restream("kept", "c3", "Three", "rtmp://h/a/k", 12.0), 2)
        with pytest.raises(Exception, match="no show"):
            await store.add_restream(Restream("gone", "d4", "X", "rtmp://h/a/k", 12.0), 2)
        assert await store.delete_restream("kept", "a1") and not await store.delete_restream("kept", "a1")
        assert await store.list_restreams("kept") == [second]
        await store.delete_show("kept")
        assert await store.list_restreams("kept") == []
    finally:
        await store.close()


# -- the parts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("url, masked", [
    (f"rtmp://a.rtmp.youtube.com/live2/{KEY}", "rtmp://a.rtmp.youtube.com/live2/****"),
    (f"rtmps://live-api-s.facebook.com:443/rtmp/{KEY}", "rtmps://live-api-s.facebook.com/rtmp/****"),
    (f"RTMP://Example.COM:1936/a/b/{KEY}?token=x&y=1", "rtmp://example.com:1936/a/b/****"),
    (f"rtmp://[::1]/app/{KEY}", "rtmp://[::1]/app/****"),
])
def test_urls_are_masked_after_the_application(url, masked):
    target = parse(url)
    assert target.masked == masked and KEY not in target.masked and KEY not in target.tc_url
    assert target.stream.startswith(KEY)
    assert mask(url) == masked
    redacted = target.redact(f"{url} said {KEY} no")
    assert KEY not in redacted and redacted.endswith("/**** said **** no") and "token" not in redacted


@pytest.mark.parametrize("url", ["", "rtmp://", f"rtmp://h/{KEY}", f"ftp://h/a/{KEY}", f"rtmp://h:0/a/{KEY}",
                                 f"rtmp://h/a/{KEY}#x", "rtmp://h/a/\n" + KEY])
def test_bad_urls_say_why_without_quoting_them(url):
    with pytest.raises(BadUrl) as refused:
        parse(url)
    assert KEY not in str(refused.value)
    assert KEY not in mask(url)


def test_amf0_and_the_chunk_stream_round_trip():
    values = ["connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live", "n": None, "ok": True}, "é" * 70000]
    assert amf.decode(amf.encode(*values)) == values
    assert amf.decode(amf.encode(amf.EcmaArray(width=640.0))) == [{"width": 640.0}]
    parser = ChunkParser()
    parser.chunk_size = 100
    payload = os.urandom(1234)
    stream = (encode_chunks(4, 8, 1, 0x1234567, payload, 100)  # an extended timestamp, 13 chunks
              + encode_chunks(3, 20, 0, 5, b"abc", 100))
    got = [message for i in range(0, len(stream), 7) for message in parser.feed(stream[i:i + 7])]
    assert got == [(8, payload), (20, b"abc")]


def test_the_avc_configuration_is_what_ffmpeg_decodes_with(h264_clip):
    nals = nal_units(h264_clip[0])
    sps, pps = flv.parameter_sets(nals)
    config = flv.avc_decoder_config(sps, pps)
    assert config[:4] == bytes([1, sps[1], sps[2], sps[3]]) and config[4] == 0xFF
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = config
    frames = []
    for au in h264_clip[:30]:  # AVCC packets, as a receiver reads them from FLV
        body = flv.avc_access_unit(nal_units(au), False)[5:]
        frames += decoder.decode(av.Packet(body))
    assert frames and (frames[0].width, frames[0].height) == (640, 360)


def test_opus_becomes_aac_frames_on_one_clock(opus_clip):
    converter = OpusToAac(128000)
    assert converter.config[:2] == bytes([0x11, 0x90])  # AAC-LC, 48 kHz, stereo
    out = []
    for i, packet in enumerate(opus_clip * 2):
        gap = 500.0 if i >= len(opus_clip) else 0.0  # a host that came back half a second later
        out += converter.convert(packet, 1000.0 + 20.0 * i + gap)
    times = [ms for _, ms in out]
    assert len(out) >= 2 * len(opus_clip) * 960 // 1024 - 3
    steps = [b - a for a, b in zip(times, times[1:])]
    assert all(abs(step - 1024 / 48) < 0.01 for step in steps if step < 100)
    assert sum(1 for step in steps if step > 100) == 1 and 978 < times[0] < 980  # (AAC's priming frame first)


# -- the ops page -------------------------------------------------------------------------------
async def test_ops_page_adds_watches_and_removes_a_restream(make_relay, receivers, browser, h264_clip, opus_clip):
    relay = await make_relay(configure=restream_config)
    show = await relay.create_show("opsrs")
    receiver = await receivers()
    pages = Pages(browser, relay.base)
    ops = await pages.open("/ops?show=opsrs")

    async def with_rtmp_ingest(route: Route) -> None:  # the show view of a server with RTMP ingest
        answer = await route.fetch()
        view = await answer.json()
        view.update(rtmp_url="rtmp://127.0.0.1:1935/live", rtmp_stream_key="opsrs?key=secret")
        await route.fulfill(response=answer, json=view)

    await ops.route("**/api/shows/opsrs", with_rtmp_ingest)
    await ops.get_by_label("Admin key").fill(ADMIN_KEY)
    await ops.get_by_role("button", name="Sign in").click()
    await expect(ops.locator("#rtmp-url")).to_have_text("rtmp://127.0.0.1:1935/live")
    await expect(ops.locator("#rtmp-key")).to_have_text("opsrs?key=secret")
    await ops.unroute("**/api/shows/opsrs")  # the real view: the RTMP key is not in it (given once)
    await expect(ops.locator("#rtmp-key")).to_have_text("given once, with the show's stream key", timeout=5000)
    await expect(ops.get_by_role("button", name="Copy RTMP stream key")).to_be_hidden()

    await ops.get_by_label("Platform name").fill("Local")
    await ops.get_by_label("RTMP URL with stream key").fill("http://nope/app/key")
    await ops.get_by_role("button", name="Add restream").click()
    await expect(ops.get_by_role("alert")).to_contain_text("'url' must start with rtmp:// or rtmps://")
    await ops.get_by_label("RTMP URL with stream key").fill(receiver.url)
    await ops.get_by_role("button", name="Add restream").click()
    row = ops.locator("#restreams tr")
    await expect(row.locator("td").nth(1)).to_have_text(f"rtmp://127.0.0.1:{receiver.port}/app/****")
    await expect(row.locator("td").nth(2)).to_contain_text("waiting for the show")
    assert await ops.get_by_label("RTMP URL with stream key").input_value() == ""

    await relay.publish(show, host_tracks(h264_clip, opus_clip))
    await expect(row.locator("td").nth(2)).to_contain_text("live since", timeout=10000)
    await expect(row.locator("td").nth(3)).to_contain_text("kB", timeout=10000)
    assert KEY not in await ops.content()
    await ops.locator("#restreams-heading").scroll_into_view_if_needed()
    await screenshots(ops, "ops-restream")

    ops.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await ops.get_by_role("button", name="Remove Local").click()
    await expect(row).to_have_count(0)
    assert await receiver.finished() == 0
    assert [e for e in pages.errors if "status of 422" not in e] == []  # (the browser logs the refused URL's 422)
