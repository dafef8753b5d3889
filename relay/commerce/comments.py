"""Viewers' comments and the operator's hand on them: every comment and every moderation action
goes through the CommentDesk, into the store and out as the show's events."""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import time
from typing import Callable

from ..errors import ApiError
from .events import EventHub
from .moderation import HELD, MASKED, PUBLISHED, ModerationLists, Moderator
from .store import Comment, CommerceStore

DELETED = "deleted"
LISTS_TTL_S = 2.0  # another node's change to the lists is in force here within this
LIST_LIMIT = 500


def display_name(viewer_id: str, name: str | None) -> str:
    """The name readers see: the viewer's own, else "viewer " and a short stable hash of its id."""
    if name:
        return name
    return "viewer " + hashlib.sha256(viewer_id.encode()).hexdigest()[:6]


@dataclass(frozen=True)
class Author:
    """Who posts: the viewer's id (never shown), its room and the name readers see."""

    viewer_id: str
    room: str
    name: str


def comment_view(comment: Comment, operator: bool = False) -> dict:
    """A comment as the API shows it; the operator also sees its author's id."""
    view = {"id": comment.id, "room": comment.room, "name": comment.name, "text": comment.text,
            "status": comment.status, "wall_time": comment.wall, "stream_time": comment.stream_time}
    if operator:
        view["viewer_id"] = comment.viewer_id
    return view


def _event_body(comment: Comment) -> dict:
    return {"id": comment.id, "room": comment.room, "name": comment.name, "text": comment.text,
            "status": comment.status}


class CommentDesk:
    """Posts comments through the moderator, and carries out the operator's actions (delete,
    release, pin, mute, the lists). The lists live in the store, shared by every node; each
    node re-reads them at most every LISTS_TTL_S."""

    def __init__(self, store: CommerceStore, events: EventHub,
                 stream_time: Callable[[str, float], float | None]) -> None:
        self._store = store
        self._events = events
        self._stream_time = stream_time
        self._moderator = Moderator()
        self._read_at = float("-inf")

    async def moderator(self) -> Moderator:
        """The moderator of the lists now in the store (rebuilt when they changed)."""
        now = time.monotonic()
        if now - self._read_at >= LISTS_TTL_S:
            self._read_at = now
            lists = ModerationLists.from_record(await self._store.moderation_lists())
            if lists != self._moderator.lists:
                self._moderator = Moderator(lists)
        return self._moderator

    async def lists(self) -> ModerationLists:
        return (await self.moderator()).lists

    async def set_lists(self, block: list[str], mask: list[str], hold_links: bool) -> ModerationLists:
        current = ModerationLists.from_record(await self._store.moderation_lists())
        lists = ModerationLists(tuple(block), tuple(mask), hold_links, current.version + 1)
        moderator = Moderator(lists)  # built before it is saved: a list that cannot be built changes nothing
        await self._store.save_moderation_lists(lists.record())
        self._moderator, self._read_at = moderator, time.monotonic()
        return lists

    async def post(self, show_id: str, author: Author, text: str) -> tuple[Comment, str]:
        """Keep and publish a comment; returns it and the status its author is told (a held
        comment is "published" to its author)."""
        verdict = (await self.moderator()).check(text)
        status, shown = verdict.status, verdict.text
        wall = time.time()
        if status != HELD and await self._store.muted_until(show_id, author.viewer_id) > wall:
            status = HELD
        comment = await self._store.add_comment(Comment(show_id, 0, author.room, author.viewer_id, author.name,
                                                        shown, status, wall, self._stream_time(show_id, wall)))
        await self._events.publish(show_id, "comment", {"comment": _event_body(comment),
                                                        "author": author.viewer_id})
        return comment, PUBLISHED if status == HELD else status

    async def _comment(self, show_id: str, comment_id: int) -> Comment:
        comment = await self._store.load_comment(show_id, comment_id)
        if comment is None or comment.status == DELETED:
            raise ApiError(404, "comment_not_found", f"show {show_id!r} has no comment {comment_id}")
        return comment

    async def delete(self, show_id: str, comment_id: int) -> None:
        comment = await self._comment(show_id, comment_id)
        await self._store.set_comment_status(show_id, comment_id, DELETED)
        await self._events.publish(show_id, "comment.deleted", {"comment": {"id": comment.id, "room": comment.room},
                                                                "author": comment.viewer_id})

    async def release(self, show_id: str, comment_id: int) -> Comment:
        comment = await self._comment(show_id, comment_id)
        if comment.status != HELD:
            raise ApiError(409, "comment_not_held", f"comment {comment_id} is {comment.status}, not held")
        comment.status = PUBLISHED
        await self._store.set_comment_status(show_id, comment_id, PUBLISHED)
        await self._events.publish(show_id, "comment", {"comment": _event_body(comment),
                                                        "author": comment.viewer_id, "released": True})
        return comment

    async def pin(self, show_id: str, comment_id: int) -> Comment:
        comment = await self._comment(show_id, comment_id)
        if comment.status not in (PUBLISHED, MASKED):
            raise ApiError(409, "comment_not_published", f"comment {comment_id} is held: release it first")
        await self._events.publish(show_id, "comment.pinned", {"comment": _event_body(comment),
                                                               "author": comment.viewer_id})
        return comment

    async def mute(self, show_id: str, viewer_id: str, duration_s: float) -> float:
        """Hold the viewer's comments for `duration_s` (0 unmutes); when the mute ends (0: none)."""
        until = time.time() + duration_s if duration_s > 0 else 0.0
        await self._store.mute_viewer(show_id, viewer_id, until)
        return until

    async def list(self, show_id: str, room: str | None, after: int, operator: bool) -> list[dict]:
        """The operator: every comment (of `room`, or all rooms), with status; anyone else: the
        room's published and masked ones."""
        comments = await self._store.comments(show_id, room, after, LIST_LIMIT)
        if operator:
            return [comment_view(c, operator=True) for c in comments]
        return [comment_view(c) for c in comments if c.status in (PUBLISHED, MASKED)]
