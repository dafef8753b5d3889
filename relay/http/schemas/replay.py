"""Bodies of the replay API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Chapter(BaseModel):
    """A product card over the time it was pinned, in replay time."""

    product: str
    title: str
    start_s: float
    end_s: float


class SignedLinks(BaseModel):
    """Links to a private replay to hand to viewers; they expire."""

    hls_url: str
    mp4_url: str | None
    chapters_url: str
    expires_at: float


class ReplayInfo(BaseModel):
    """A show's recording: HLS while live, then a VOD playlist and an MP4."""

    state: Literal["recording", "processing", "ready", "failed"]
    duration_s: float
    hls_url: str
    mp4_url: str | None
    started_at: float
    ended_at: float | None
    discontinuities: int
    error: str | None
    chapters: list[Chapter]
    chapters_url: str
    signed_links: SignedLinks | None = None
