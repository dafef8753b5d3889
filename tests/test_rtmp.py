"""RTMP ingest: Debian's ffmpeg pushes an H.264 + AAC clip as a host's encoder would, WHEP
viewers play it (the access units as in the clip, the audio as Opus), and the replay keeps it."""

from __future__ import annotations

import asyncio
import subprocess
from array import array
from pathlib import Path

import av
import pytest
from av.audio.resampler import AudioResampler

from conftest import HEIGHT, WIDTH, Relay
from relay import aiortc_hooks
from relay.ingest.rtmp_chunks import ChunkReader, Message, encode_message
from test_replay import decode_all, ffprobe, wait_state

FPS, SECONDS, TONE_HZ = 30, 6, 440


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """6 s of 640x360 H.264 at 30 fps (a keyframe a second, no B-frames) with a 440 Hz AAC tone."""
    path = tmp_path_factory.mktemp("rtmp") / "clip.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
                    "-f", "lavfi", "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate={FPS}",
                    "-f", "lavfi", "-i", f"sine=frequency={TONE_HZ}:sample_rate=44100", "-t", str(SECONDS),
                    "-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS), "-bf", "0", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "128k", str(path)], check=True, timeout=60)
    return path


def clip_access_units(path: Path) -> list[list[bytes]]:
    """The clip's video as a WebRTC host sends it: Annex-B access units with SPS and PPS at the
    start of each keyframe (FFmpeg's own h264_mp4toannexb puts them in, just before the IDR
    slice), as lists of NAL units."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        annexb = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", stream)
        packets = [out for packet in container.demux(stream) for out in annexb.filter(packet)]
        packets += annexb.filter(None)
    units = [nal_units(bytes(packet)) for packet in packets]
    return [[n for n in au if n[0] & 0x1F in (7, 8)] + [n for n in au if n[0] & 0x1F not in (7, 8)] for au in units]


def nal_units(access_unit: bytes) -> list[bytes]:
    return [n for n in aiortc_hooks.split_h264(access_unit) if n]


def tone_hz(opus_packets: list[bytes]) -> float:
    """Decodes every packet (an error raises) and measures the tone by its zero crossings, 0.5 s
    in from either end (the codecs' start and end are quiet noise)."""
    decoder = av.CodecContext.create("opus", "r")
    to_s16 = AudioResampler(format="s16", layout="mono", rate=48000)
    samples = array("h")
    for data in opus_packets:
        for frame in decoder.decode(av.Packet(data)):
            for out in to_s16.resample(frame):
                samples.frombytes(bytes(out.planes[0])[:out.samples * 2])
    samples = samples[24000:-24000]
    crossings = sum(1 for a, b in zip(samples, samples[1:]) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / 48000)


@pytest.fixture
async def pushes():
    """Starts ffmpeg pushing a file to an RTMP URL; any still running at the end is killed."""
    procs: list[asyncio.subprocess.Process] = []

    async def push(url: str, clip: Path, realtime: bool = True) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", *(["-re"] if realtime else []),
            "-i", str(clip), "-c", "copy", "-f", "flv", url,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        procs.append(proc)
        return proc

    yield push
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def finished(proc: asyncio.subprocess.Process, timeout: float = 30) -> tuple[int, str]:
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, err.decode(errors="replace")


async def new_show(relay: Relay, show_id: str, mirrors: tuple[str, ...] = ()) -> str:
    """Creates the show; returns its RTMP push URL (Server + '/' + Stream Key)."""
    created = await relay.create_show(show_id, mirrors)
    assert created["rtmp_url"] == f"rtmp://127.0.0.1:{relay.settings.rtmp.port}/live"
    assert created["rtmp_stream_key"] == f"{show_id}?key={created['stream_key']}"
    return f"{created['rtmp_url']}/{created['rtmp_stream_key']}"


async def publishing(relay: Relay, show_id: str) -> dict:
    detail: dict = {}

    async def on_air() -> bool:
        nonlocal detail
        detail = await relay.show(show_id)
        return detail["publisher"] is not None

    await relay.wait_for(on_air, what=f"an RTMP publisher on {show_id}")
    return detail


async def test_an_ffmpeg_push_plays_in_hq_and_a_mirror_room(relay, clip, pushes):
    url = await new_show(relay, "pushed", mirrors=("d1",))
    detail = await relay.show("pushed")
    assert detail["rtmp_url"] == url.rsplit("/", 1)[0] and "rtmp_stream_key" not in detail
    viewers = [await relay.viewer("pushed", decode=False), await relay.viewer("pushed", "d1", decode=False)]
    for viewer in viewers:
        for track in viewer.tracks.values():
            track.data, track.timestamps = [], []

    async def both_watching() -> bool:
        return (await relay.show("pushed"))["viewers"] == {"hq": 1, "d1": 1}

    await relay.wait_for(both_watching, what="both viewers to join")  # (before any frame: they get them all)
    host = await pushes(url, clip)
    detail = await publishing(relay, "pushed")
    assert detail["state"] == "live" and detail["publisher"]["ingest"] == "rtmp"
    assert detail["publisher"]["codecs"] == {"video": "H264", "audio": "opus"}
    assert await finished(host) == (0, "")

    async def all_frames() -> bool:  # (a jitter buffer gives up a frame when the next one comes)
        return all(v.tracks["video"].frames >= FPS * SECONDS - 1 for v in viewers)

    await relay.wait_for(all_frames, what="every frame at both viewers")
    expected = clip_access_units(clip)
    for viewer in viewers:
        video, audio = viewer.tracks["video"], viewer.tracks["audio"]
        got = [nal_units(au) for au in video.data]
        assert got[0] in expected, "the first access unit is not one of the clip's"
        first = expected.index(got[0])  # (a keyframe: the first the viewer could play)
        assert got == expected[first:first + len(got)], "the access units differ from the clip's"
        decoder = av.CodecContext.create("h264", "r")
        pictures = [f for au in video.data for f in decoder.decode(av.Packet(au))]
        assert len(pictures) >= len(got) - 2 and (pictures[0].width, pictures[0].height) == (WIDTH, HEIGHT)
        span = (video.timestamps[-1] - video.timestamps[0]) & 0xFFFFFFFF  # in the 90 kHz clock
        assert abs((len(video.timestamps) - 1) * 90000 / span - FPS) < 0.5
        arrival_fps = (video.frames - 1) / (video.last_at - video.first_at)
        assert FPS - 3 <= arrival_fps <= FPS + 3  # pushed in real time, forwarded as it came
        assert len(audio.data) >= 50 * (SECONDS - 1)  # 20 ms Opus packets
        assert abs(tone_hz(audio.data) - TONE_HZ) < 5


async def test_a_wrong_or_missing_key_is_refused_and_changes_nothing(relay, clip, pushes, caplog):
    url = await new_show(relay, "guarded")
    server = url.split("/guarded?")[0]
    guess = "Guessed_Key-0123456789xyz"
    for attempt, message in ((f"{server}/guarded?key={guess}", "wrong stream key"),
                             (f"{server}/guarded", "missing stream key"),
                             (f"{server}/{guess}", "no such show"),  # (the key alone as the stream name)
                             (f"{server}/nosuchshow?key={guess}", "no show 'nosuchshow'"),
                             (f"{server.rsplit('/', 1)[0]}/other/guarded?key={guess}", "no application 'other'")):
        code, err = await finished(await pushes(attempt, clip, realtime=False))
        assert code != 0 and f"Server error: {message}" in err, err
    assert "refused" in caplog.text and guess not in caplog.text  # logged, without the key
    detail = await relay.show("guarded")
    assert detail["state"] == "scheduled" and detail["publisher"] is None and detail["started_at"] is None
    status, metrics = await relay.request("GET", "/metrics", headers=relay.admin)
    assert status == 200 and 'relay_rtmp_connections_total{outcome="refused"} ' in metrics


async def test_two_shows_pushed_at_once_both_play(relay, clip, pushes):
    urls = [await new_show(relay, show_id) for show_id in ("first", "second")]
    hosts = [await pushes(url, clip) for url in urls]
    for show_id in ("first", "second"):
        await publishing(relay, show_id)
    viewers = [await relay.viewer(show_id) for show_id in ("first", "second")]
    for viewer in viewers:
        await viewer.first_frame("video")
        await viewer.first_frame("audio")
        assert (viewer.tracks["video"].width, viewer.tracks["video"].height) == (WIDTH, HEIGHT)
    for host in hosts:
        assert await finished(host) == (0, "")
    for viewer in viewers:  # decoded all along: a keyframe a second, 30 fps
        assert viewer.tracks["video"].frames >= FPS * 2 and viewer.tracks["audio"].frames >= 50 * 2


async def test_a_second_push_takes_over_and_a_dropped_push_waits_for_the_host(relay, clip, pushes):
    url = await new_show(relay, "handover")
    first = await pushes(url, clip)
    before = (await publishing(relay, "handover"))["publisher"]["session"]
    second = await pushes(url, clip)

    async def taken_over() -> bool:
        publisher = (await relay.show("handover"))["publisher"]
        return publisher is not None and publisher["session"] != before

    await relay.wait_for(taken_over, what="the second push to take over")
    code, _ = await finished(first, timeout=10)  # its connection was closed under it
    assert code != 0 and second.returncode is None
    assert await finished(second) == (0, "")

    async def waiting() -> bool:
        detail = await relay.show("handover")
        return detail["publisher"] is None and detail["reconnecting_until"] is not None

    await relay.wait_for(waiting, what="the grace period to start")
    assert (await relay.show("handover"))["state"] == "live"


async def test_the_replay_of_an_rtmp_show_plays(relay, clip, pushes):
    url = await new_show(relay, "kept")
    assert await finished(await pushes(url, clip)) == (0, "")
    status, body = await relay.api("POST", "/api/shows/kept/end")
    assert status == 200, body
    info = await wait_state(relay, "kept", ("ready",))
    for target in (info["hls_url"], info["mp4_url"]):
        probe = await ffprobe(target)
        streams = {s["codec_type"]: s for s in probe["streams"]}
        assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "opus", probe
        assert (streams["video"]["width"], streams["video"]["height"]) == (WIDTH, HEIGHT)
        assert abs(float(probe["format"]["duration"]) - SECONDS) <= 1.5, probe
    counts = decode_all(str(Path(relay.settings.server.data_dir) / "replays" / "kept" / "show.mp4"))
    assert counts["video"] >= FPS * (SECONDS - 1) and counts["audio"] >= 50 * (SECONDS - 1), counts


async def test_what_is_not_rtmp_or_never_publishes_is_closed(make_relay):
    def quick(settings) -> None:
        settings.server.read_timeout_s = 1.0  # (the RTMP setup deadline too)

    relay = await make_relay(configure=quick)
    port = relay.settings.rtmp.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(1537))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(bytes([3]) + bytes(1536))  # C0 C1
    s0s1s2 = await asyncio.wait_for(reader.readexactly(1 + 2 * 1536), 5)
    writer.write(s0s1s2[1:1537])  # C2: then nothing
    assert s0s1s2[0] == 3 and await asyncio.wait_for(reader.read(), 5) == b""  # closed at the deadline
    writer.close()
    status, metrics = await relay.request("GET", "/metrics", headers=relay.admin)
    assert 'relay_rtmp_connections_total{outcome="failed"} ' in metrics


def test_chunk_headers_carry_time_deltas_and_extended_timestamps():
    """A format-3 chunk that starts a message adds the previous delta (after a format-0 chunk:
    its timestamp), and 4-byte extended timestamps repeat in continuation chunks."""
    reader = ChunkReader()
    audio = bytes([0xAF, 0x01]) + bytes(8)
    reader.feed(bytes([0x04]) + (0).to_bytes(3, "big") + len(audio).to_bytes(3, "big") + b"\x08"
                + (1).to_bytes(4, "little") + audio)  # format 0 at 0 ms
    reader.feed(bytes([0x84]) + (23).to_bytes(3, "big") + audio)  # format 2: +23
    reader.feed(bytes([0xC4]) + audio)  # format 3: +23 again
    late = 0x1234567
    reader.feed(encode_message(6, Message(9, 1, late, bytes(300)), 128))  # 3 chunks, extended timestamp
    got = []
    while (message := reader.next_message()) is not None:
        got.append((message.type, message.stream_id, message.timestamp, len(message.payload)))
    assert got == [(8, 1, 0, 10), (8, 1, 23, 10), (8, 1, 46, 10), (9, 1, late, 300)]
    assert reader.buffered == 0
