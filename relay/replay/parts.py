"""A replay recorded on several nodes of a cluster: one part for each stretch its host published
to one node, put together in order with a discontinuity between two parts."""

from __future__ import annotations

from dataclasses import replace
import re
from typing import Protocol

from ..models import ReplayPart
from .playlist import Playlist

_TAG = r"[a-z0-9-]+-p\d+"
PART_FILE = re.compile(rf"^(?:init|seg)-(?P<tag>{_TAG})-\d+\.(?:mp4|m4s)$")
PART_PLAYLIST = re.compile(rf"^part-(?P<tag>{_TAG})\.m3u8$")


def part_tag(name: str) -> str | None:
    """The tag of the part a replay file belongs to (None: a file of the whole replay)."""
    match = PART_FILE.fullmatch(name) or PART_PLAYLIST.fullmatch(name)
    return match.group("tag") if match else None


def node_prefix(node: str) -> str:
    """A node id as it may appear in file names."""
    return re.sub(r"[^a-z0-9-]+", "-", node.lower()).strip("-") or "node"


def combine(playlists: list[Playlist], ended: bool) -> Playlist:
    """The parts' playlists one after the other, each part after the first beginning with a
    discontinuity (another node, another host session: new timestamps, a new init segment)."""
    segments = []
    for playlist in playlists:
        for i, segment in enumerate(playlist.segments):
            segments.append(replace(segment, discontinuity=segment.discontinuity or (i == 0 and bool(segments))))
    return Playlist(segments, ended)


class ReplayCluster(Protocol):
    """Where the nodes of a cluster keep the parts of their replays, and how one node reads
    another's files (those not on a shared disk)."""

    node: str
    url: str

    async def add_part(self, show_id: str, part: ReplayPart) -> None: ...
    async def end_part(self, show_id: str, tag: str) -> None: ...
    async def parts(self, show_id: str) -> list[ReplayPart]: ...
    async def claim_assembly(self, show_id: str) -> bool: ...
    async def set_home(self, show_id: str, url: str) -> None: ...
    async def home(self, show_id: str) -> str | None: ...
    async def forget(self, show_id: str) -> None: ...
    async def alive(self, node: str) -> bool: ...
    async def fetch(self, base_url: str, show_id: str, name: str) -> bytes | None: ...
