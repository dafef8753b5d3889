"""Request and answer models of comments, moderation and likes."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from .common import RequestBody, Rule

MAX_WORDS = 20000  # per list: thousands of words are expected, the automaton takes them fast
Word = Annotated[str, AfterValidator(str.strip), Field(min_length=1, max_length=100)]


class NewComment(RequestBody):
    """A viewer's comment."""

    text: Annotated[str, AfterValidator(str.strip), Field(min_length=1, max_length=200),
                    Rule("must be 1-200 characters (after trimming)")]


class CommentAnswer(BaseModel):
    """The comment as its author's page shows it (a held comment says published)."""

    id: int
    text: str = Field(description="with any masked word starred, one * per character")
    status: str = Field(description="published or masked")


class CommentView(BaseModel):
    """A comment as the list shows it; the operator also sees `viewer_id` and held/deleted ones."""

    id: int
    room: str
    name: str = Field(description="the viewer's display name")
    text: str
    status: str = Field(description="published, masked, held or deleted")
    wall_time: float
    stream_time: float | None = Field(description="seconds into the show's recording, when it was recording")
    viewer_id: str | None = Field(None, description="the author (admin key only): for muting")


class CommentList(BaseModel):
    """Comments oldest first, at most 500: ask again with ?after=<the last id>."""

    comments: list[CommentView]


class Mute(RequestBody):
    """How long a viewer's comments are held."""

    duration_s: Annotated[float, Field(ge=0, le=30 * 86400), Rule("must be 0 (unmute) to 2592000 seconds")]


class MuteAnswer(BaseModel):
    viewer_id: str
    muted_until: float | None = Field(description="when the mute ends (wall clock); null: not muted")


class ModerationChange(RequestBody):
    """The operator's lists: words that hold a comment, words that are starred, and links."""

    block: Annotated[list[Word], Field(max_length=MAX_WORDS),
                     Rule(f"must be a list of at most {MAX_WORDS} words of 1-100 characters")]
    mask: Annotated[list[Word], Field(max_length=MAX_WORDS),
                    Rule(f"must be a list of at most {MAX_WORDS} words of 1-100 characters")]
    hold_links: Annotated[bool, Rule("must be true or false")] = True


class ModerationView(BaseModel):
    """The lists in force (matched after NFKC and case folding)."""

    block: list[str]
    mask: list[str]
    hold_links: bool


class NewLikes(RequestBody):
    """Taps of the like button, batched by the page."""

    count: Annotated[int, Field(ge=1, le=50), Rule("must be an integer from 1 to 50")] = 1


class LikesAnswer(BaseModel):
    room: str
    likes: int = Field(description="the room's total now")
