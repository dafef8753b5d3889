"""Shared types of the show model: shows, mirror rooms, room figures, and id rules."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

HQ_ROOM = "hq"
EDGE_ROOM = "~edge"  # where another node's pull of a show watches from (not a slug: never a real room)
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # fullmatch: no trailing newline slips through



def is_slug(value: object) -> bool:
    return isinstance(value, str) and bool(_SLUG.fullmatch(value))


class ShowState(str, Enum):
    SCHEDULED = "scheduled"
    LIVE = "live"
    ENDED = "ended"


@dataclass
class Show:
    id: str
    title: str
    state: ShowState
    stream_key_hash: str
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    replay_public: bool = True
    stream_key_expires_at: float | None = None
    playback: str = "public"  # public | token (WHEP and events need a signed viewer token)
    currency: str = "CNY"  # ISO 4217 code the shelf's prices are in
    identity: str = "anonymous"  # anonymous | shopper (viewers are the brand's users; limits per shopper)
    sharer_commission_rate: str = "0"  # of each sale that came through a sharer's link
    starts_at: float | None = None  # when the show is scheduled to start (listing, reminders, calendar)


@dataclass
class Mirror:
    """A distributor's room attached to a show: same media, own identity and figures."""

    show_id: str
    distributor: str
    name: str
    created_at: float
    commission_rate: str = "0"  # the distributor's share of what its room sold


@dataclass(frozen=True)
class Restream:
    """A platform the show is pushed to over RTMP(S) while it is live. `url` ends with the
    platform's stream key: a secret, kept as given, never shown or logged unmasked."""

    show_id: str
    id: str
    name: str
    url: str
    created_at: float


@dataclass
class RoomFigures:
    """Viewer figures of one room (HQ or one distributor); never mixed across rooms."""

    viewers: int = 0
    peak_viewers: int = 0
    total_sessions: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "viewers": self.viewers,
            "peak_viewers": self.peak_viewers,
            "total_sessions": self.total_sessions,
        }


@dataclass
class ShowFigures:
    rooms: dict[str, RoomFigures] = field(default_factory=dict)

    def room(self, room: str) -> RoomFigures:
        return self.rooms.setdefault(room, RoomFigures())


class ReplayState(str, Enum):
    RECORDING = "recording"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


@dataclass
class Replay:
    """The recording of a show: HLS while live, then a VOD playlist and an MP4 download."""

    show_id: str
    state: ReplayState
    started_at: float
    ended_at: float | None = None
    duration_s: float = 0.0
    discontinuities: int = 0
    mp4_ready: bool = False
    error: str | None = None


# A node reading a replay file from another asks for what is on that node's disk only.
LOCAL_ONLY_HEADER = "Relay-Local-Only"


@dataclass
class ReplayPart:
    """In a cluster: what one node recorded of a show while its host published there. A replay
    is its parts in order, a discontinuity between two."""

    tag: str  # unique among the show's parts; names the part's files
    node: str
    url: str  # the node's base URL for other nodes
    started_at: float
    ended: bool = False
