"""The synthetic host of tests and benches: the demo's pre-encoded test pattern and tone
(relay.demo.source), and the tracks a host sends them on."""

from __future__ import annotations

from relay.demo.source import EncodedTrack, audio_track, encode_pattern, encode_tone, video_track

__all__ = ["EncodedTrack", "audio_track", "encode_pattern", "encode_tone", "host_tracks", "video_track"]


def host_tracks(video: list[bytes] | None, audio: list[bytes] | None, fps: int = 30) -> list[EncodedTrack]:
    """A host's tracks, audio first: `video` and `audio` looped (None: the host sends no such track)."""
    out = []
    if audio is not None:
        out.append(audio_track(audio))
    if video is not None:
        out.append(video_track(video, fps))
    return out
