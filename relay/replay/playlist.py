"""The HLS media playlist of a replay (RFC 8216, fMP4 segments)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path


@dataclass
class Segment:
    uri: str
    duration: float
    program_date_time: float  # wall clock of the first frame, Unix seconds
    init: str  # init segment (EXT-X-MAP) this segment needs
    discontinuity: bool = False


@dataclass
class Playlist:
    segments: list[Segment] = field(default_factory=list)
    ended: bool = False

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    @property
    def discontinuities(self) -> int:
        return sum(1 for s in self.segments if s.discontinuity)

    def render(self) -> str:
        target = max([math.ceil(s.duration) for s in self.segments] or [1])
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:7",
            f"#EXT-X-TARGETDURATION:{target}",
            "#EXT-X-MEDIA-SEQUENCE:0",
            f"#EXT-X-PLAYLIST-TYPE:{'VOD' if self.ended else 'EVENT'}",
            "#EXT-X-INDEPENDENT-SEGMENTS",
        ]
        init = None
        for segment in self.segments:
            if segment.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if segment.init != init:
                init = segment.init
                lines.append(f'#EXT-X-MAP:URI="{init}"')
            pdt = datetime.fromtimestamp(segment.program_date_time, timezone.utc)
            lines.append("#EXT-X-PROGRAM-DATE-TIME:" + pdt.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
            lines.append(f"#EXTINF:{segment.duration:.5f},")
            lines.append(segment.uri)
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """Replace the playlist file atomically, so a reader or a crash never sees half of it."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(self.render())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> "Playlist":
        return cls.parse(path.read_text())

    @classmethod
    def parse(cls, text: str) -> "Playlist":
        playlist = cls()
        init = ""
        discontinuity = False
        duration = 0.0
        pdt = 0.0
        for line in text.splitlines():
            if line.startswith("#EXT-X-MAP:URI="):
                init = line.split("=", 1)[1].strip('"')
            elif line == "#EXT-X-DISCONTINUITY":
                discontinuity = True
            elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
                value = line.split(":", 1)[1].replace("Z", "+00:00")
                pdt = datetime.fromisoformat(value).timestamp()
            elif line.startswith("#EXTINF:"):
                duration = float(line[8:].split(",")[0])
            elif line == "#EXT-X-ENDLIST":
                playlist.ended = True
            elif line and not line.startswith("#"):
                playlist.segments.append(Segment(line, duration, pdt, init, discontinuity))
                discontinuity = False
        return playlist
