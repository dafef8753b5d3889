"""What a comment may say: the operator's block and mask words and links, matched case- and
width-insensitively by one Aho-Corasick automaton, and the verdict (published, masked, held)."""

from __future__ import annotations

from dataclasses import dataclass, field
import re
import unicodedata

import ahocorasick

PUBLISHED, MASKED, HELD = "published", "masked", "held"
BLOCK, MASK = 0, 1

# http(s)://, www., or a bare domain ending in a top-level domain people type ("document.title" or
# "e.g" are words, not links); "。" and "．" are dots too (width folding makes "．" a ".", the
# ideographic full stop stays what it is).
_TLDS = ("com|net|org|info|biz|io|co|me|cc|tv|xyz|top|shop|store|site|online|app|vip|club|link|live|"
         "cn|hk|tw|mo|jp|kr|sg|my|th|vn|id|ph|in|ru|uk|de|fr|us|ca|au|eu|ly|gg|to|ws|la")
_LINK = re.compile(r"https?://|www[.。]|\b[a-z0-9][a-z0-9-]*(?:[.。][a-z0-9-]+)*[.。](?:" + _TLDS + r")\b",
                   re.ASCII)


def fold(text: str) -> str:
    """The form words are compared in: NFKC (full-width and half-width forms become one) and
    casefolded."""
    return unicodedata.normalize("NFKC", text).casefold()


@dataclass(frozen=True)
class ModerationLists:
    """The operator's lists, as saved."""

    block: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    hold_links: bool = True
    version: int = 0

    def view(self) -> dict:
        return {"block": list(self.block), "mask": list(self.mask), "hold_links": self.hold_links}

    def record(self) -> dict:
        return {**self.view(), "version": self.version}

    @classmethod
    def from_record(cls, record: dict | None) -> ModerationLists:
        if not record:
            return cls()
        return cls(tuple(record.get("block", ())), tuple(record.get("mask", ())),
                   bool(record.get("hold_links", True)), int(record.get("version", 0)))


@dataclass(frozen=True)
class Verdict:
    status: str  # published | masked | held
    text: str  # what readers see: the matched mask words starred
    reason: str | None = None  # held for: "word" or "link"


@dataclass
class _Folded:
    """A text folded for matching, with where each folded character came from in the original."""

    text: str
    origin: list[int] | None = field(default=None)  # None: the same positions

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original [start, end) behind folded [start, end)."""
        if self.origin is None:
            return start, end
        return self.origin[start], self.origin[end - 1] + 1


def _fold_mapped(text: str) -> _Folded:
    folded = fold(text)
    if len(folded) == len(text) and unicodedata.is_normalized("NFKC", text):
        return _Folded(folded)  # the common case: one character for one
    out: list[str] = []
    origin: list[int] = []
    i = 0
    while i < len(text):
        j = i + 1  # a character and the marks that combine with it fold as one
        while j < len(text) and unicodedata.combining(unicodedata.normalize("NFKC", text[j])[:1] or " "):
            j += 1
        piece = fold(text[i:j])
        out.append(piece)
        origin.extend([i] * len(piece))
        i = j
    return _Folded("".join(out), origin)


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _inside_word(text: str, start: int, end: int) -> bool:
    """A Latin-script word matched inside a longer word ("ass" in "class") is no match; scripts
    without spaces between words (CJK) match anywhere."""
    if _is_word_char(text[start]) and start > 0 and _is_word_char(text[start - 1]):
        return True
    return _is_word_char(text[end]) and end + 1 < len(text) and _is_word_char(text[end + 1])


class Moderator:
    """Decides a comment's fate from the lists: a block word or (with hold_links) a link holds
    it; mask words are starred, one * per character of the original text they cover."""

    def __init__(self, lists: ModerationLists = ModerationLists()) -> None:
        self.lists = lists
        self._automaton: ahocorasick.Automaton | None = None
        words = [(fold(w), BLOCK) for w in lists.block] + [(fold(w), MASK) for w in lists.mask]
        words = [(w, kind) for w, kind in words if w.strip()]
        if words:
            automaton = ahocorasick.Automaton()
            for word, kind in words:
                known = automaton.get(word, None)
                if known is None or kind == BLOCK:  # a word on both lists blocks
                    automaton.add_word(word, (len(word), kind))
            automaton.make_automaton()
            self._automaton = automaton

    def check(self, text: str) -> Verdict:
        folded = _fold_mapped(text)
        if self.lists.hold_links and _LINK.search(folded.text):
            return Verdict(HELD, text, "link")
        if self._automaton is None:
            return Verdict(PUBLISHED, text)
        spans: list[tuple[int, int]] = []
        haystack = folded.text
        for end, (length, kind) in self._automaton.iter(haystack):
            start = end - length + 1
            if _inside_word(haystack, start, end):
                continue
            if kind == BLOCK:
                return Verdict(HELD, text, "word")
            spans.append(folded.span(start, end + 1))
        if not spans:
            return Verdict(PUBLISHED, text)
        chars = list(text)
        for start, stop in spans:
            chars[start:stop] = "*" * (stop - start)
        return Verdict(MASKED, "".join(chars))
