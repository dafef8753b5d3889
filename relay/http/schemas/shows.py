"""Bodies of the shows API: a show, its mirror rooms, its stream key, figures and status."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from .common import Rate, RequestBody, Rule, Slug, Title, broken

Seconds = Annotated[float, Field(ge=60, le=365 * 86400),
                    Rule("must be a number of seconds from 60 to 31536000")]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$"),
                     Rule("must be an ISO 4217 code such as CNY, USD or EUR")]
Playback = Annotated[Literal["public", "token"], Rule("must be 'public' or 'token'")]
Identity = Annotated[Literal["anonymous", "shopper"], Rule("must be 'anonymous' or 'shopper'")]
StartsAt = Annotated[float, Field(gt=0, le=253402300799),
                     Rule("must be a Unix time in seconds (a number, before the year 10000)")]


# -- requests -------------------------------------------------------------------------------
class NewShow(RequestBody):
    """A show to create."""

    title: Title
    id: Slug | None = Field(None, description="the show's id; a random one when absent")
    replay_public: Annotated[bool, Rule("must be true or false")] | None = Field(
        None, description="anyone may watch the replay; by default true unless playback is 'token'")
    playback: Playback = Field("public", description="'token': WHEP and events need a signed viewer token")
    stream_key_ttl_s: Seconds | None = Field(None, description="the stream key expires after this; never when absent")
    currency: Currency = Field("CNY", description="the ISO 4217 code the shelf's prices are in")
    identity: Identity = Field("anonymous", description="'shopper': viewers are the brand's users, "
                                                        "coupon limits count per shopper")
    starts_at: StartsAt | None = Field(None, description="when the show is scheduled to start (Unix time): "
                                                         "listing, calendar, reminders")


class ShowChange(RequestBody):
    """Fields of a show to change; those left out stay as they are."""

    title: Title | None = None
    sharer_commission_rate: Rate | None = Field(
        None, description="of each sale that came through a sharer's link; with any distributor or product rate "
                          "at most 1")
    starts_at: StartsAt | None = Field(None, description="when the show is scheduled to start (Unix time)")


class NewStreamKey(RequestBody):
    """Options of a new stream key (the body may be left out)."""

    ttl_s: Seconds | None = Field(None, description="the new key expires after this; never when absent")


class NewMirror(RequestBody):
    """A distributor's mirror room to add to a show."""

    distributor: Slug = Field(description="the distributor's id, the room's id in URLs; not 'hq'")
    name: Title
    commission_rate: Rate = Field("0", description="the distributor's share of what its room sells; with the "
                                                   "show's sharer rate at most 1")

    @model_validator(mode="after")
    def _not_headquarters(self) -> "NewMirror":
        if self.distributor == "hq":
            raise broken("distributor", "must not be 'hq', the headquarters room; pick another distributor id")
        return self


class MirrorChange(RequestBody):
    """Fields of a mirror room to change; those left out stay as they are."""

    name: Title | None = None
    commission_rate: Rate | None = Field(None, description="the distributor's share of what its room sells")


# -- answers --------------------------------------------------------------------------------
class MirrorView(BaseModel):
    """A mirror room: same media as HQ, its own links and figures."""

    distributor: str
    name: str
    whep_url: str
    watch_url: str
    created_at: float
    commission_rate: str
    viewers: int | None = Field(None, description="viewers now (when one room or the list is read)")


class MirrorList(BaseModel):
    mirrors: list[MirrorView]


class ShowView(BaseModel):
    """A show as the admin API shows it (never its stream key but when it is made)."""

    id: str
    title: str
    state: Literal["scheduled", "live", "ended"]
    whip_url: str
    whep_url: str
    watch_url: str
    rtmp_url: str | None = Field(description="where a host pushes RTMP instead of WHIP (OBS: Server); "
                                             "null when [rtmp] is off")
    created_at: float
    started_at: float | None
    ended_at: float | None
    end_reason: str | None
    replay_public: bool
    playback: Literal["public", "token"]
    currency: str
    identity: Literal["anonymous", "shopper"]
    stream_key_expires_at: float | None
    sharer_commission_rate: str
    starts_at: float | None = Field(None, description="when the show is scheduled to start (Unix time)")


class PublicShowView(BaseModel):
    """A public show (playback 'public') as anyone may list it: no keys, no commerce settings."""

    id: str
    title: str
    state: Literal["scheduled", "live", "ended"]
    starts_at: float | None = Field(description="when the show is scheduled to start (Unix time)")
    started_at: float | None
    ended_at: float | None
    watch_url: str
    replay_url: str | None = Field(description="the replay page, once the show has started, if its replay is public")
    calendar_url: str = Field(description="the show as an iCalendar event")
    subscriptions_url: str = Field(description="where a browser posts its Web Push subscription for a reminder")


class ShowCreated(ShowView):
    """A new show, with its stream key: shown this once."""

    stream_key: str
    rtmp_stream_key: str | None = Field(description="the RTMP stream name, {show}?key={stream_key} (OBS: Stream "
                                                    "Key); null when [rtmp] is off")


class ShowDetail(ShowView):
    """A show with its live state: host, tracks, viewers per room and mirror rooms."""

    publisher: dict[str, Any] | None = Field(description="the host's session: id, since, codecs, connection, frames")
    reconnecting_until: float | None = Field(description="while the host is away: when the show ends without it")
    viewers: dict[str, int] = Field(description="viewers now, per room ('hq' and each distributor)")
    mirrors: list[MirrorView]
    tracks: dict[str, dict[str, Any]] | None = Field(None, description="per kind (audio, video), while live")
    keyframe_requests: dict[str, int] | None = Field(None, description="received from viewers, sent to the host")


class ShowList(BaseModel):
    """Every show (admin key, ShowView), else the public shows (PublicShowView)."""

    shows: list[ShowView | PublicShowView]


class StreamKey(BaseModel):
    """A new stream key: shown this once."""

    stream_key: str
    rtmp_stream_key: str | None = Field(description="the RTMP stream name, {show}?key={stream_key} (OBS: Stream "
                                                    "Key); null when [rtmp] is off")
    stream_key_expires_at: float | None


class RoomStats(BaseModel):
    """One room's figures."""

    viewers: int
    peak_viewers: int
    total_sessions: int
    unique_viewers: int
    likes: int = Field(0, description="taps of the like button in the room, in total")
    claims: int
    claims_by_coupon: dict[str, int]
    claims_by_sharer: dict[str, int]
    orders: int = Field(description="orders credited to the room")
    gmv: str = Field(description="what they paid, before refunds")
    commission: str = Field(description="the distributor's commission, net of refunds")
    buyers: int = Field(description="viewers who bought")
    conversion: float = Field(description="buyers / unique viewers")


class ShowStats(BaseModel):
    """A show's figures, per room; never mixed across rooms."""

    show: str
    state: Literal["scheduled", "live", "ended"]
    rooms: dict[str, RoomStats]
    dropped_frames: int
    figures_saved_at: float | None = Field(
        description="when the live figures were last saved (every [media] figures_save_interval_s); "
                    "null unless the show runs on this server")


class PublicStatus(BaseModel):
    """What a watch or studio page shows: no secrets, no per-room figures but the room asked for."""

    id: str
    title: str
    state: Literal["scheduled", "live", "ended"]
    host: Literal["none", "live", "reconnecting"]
    viewers: int
    room_viewers: int
    room_name: str | None
    playback: Literal["public", "token"]
    currency: str
    started_at: float | None
    ended_at: float | None
    replay_page: str | None


class Health(BaseModel):
    ok: bool
    store: Literal["ok", "unavailable"]
    live_shows: int
    viewers: int
    node: str = Field(description="this process's [cluster] node_id (one per worker)")
