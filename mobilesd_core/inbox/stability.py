"""When a dropped file is complete: its size and mtime have held still for a quiet window.

A client writing over SMB creates the file at its first byte and fills it over seconds, and
shares deliver no "closed after write" event, so stillness is the only signal there is
(paperless-ngx's consumer does the same). Files are keyed by path plus (size, mtime_ns), never by
inode: CIFS and FUSE synthesize inode numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    since: float  # when this (size, mtime_ns) was first seen
    windows: float  # quiet windows it must hold for


class StabilityTracker:
    """Pure bookkeeping, fed with stat results and a clock, so it is testable without files."""

    def __init__(self, settle_seconds: float, *, empty_windows: int = 5) -> None:
        self.settle = settle_seconds
        # An editor may truncate a file, then write it: an empty file waits several windows.
        self.empty_windows = empty_windows
        self._candidates: dict[str, _Candidate] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._candidates

    def __len__(self) -> int:
        return len(self._candidates)

    def waiting(self) -> list[str]:
        return list(self._candidates)

    def observe(self, key: str, size: int, mtime_ns: int, now: float) -> bool:
        """Record a stat of `key`; True once it has been still for long enough."""
        seen = self._candidates.get(key)
        if seen is None or (seen.size, seen.mtime_ns) != (size, mtime_ns):
            windows = self.empty_windows if size == 0 else 1
            self._candidates[key] = _Candidate(size, mtime_ns, now, windows)
            return False
        return now - seen.since >= self.settle * seen.windows

    def doubt(self, key: str, now: float) -> None:
        """The content did not parse: hold it one more window before calling it invalid (a
        writer that paused longer than the window is still a writer)."""
        seen = self._candidates.get(key)
        if seen is not None:
            seen.since = now

    def back_off(self, key: str, now: float, windows: float) -> None:
        """Look at it again only after `windows` quiet windows (a move that keeps failing)."""
        seen = self._candidates.get(key)
        if seen is not None:
            seen.since = now
            seen.windows = windows

    def forget(self, key: str) -> None:
        self._candidates.pop(key, None)

    def due_in_for(self, key: str, now: float) -> float:
        seen = self._candidates[key]
        return max(0.0, seen.since + self.settle * seen.windows - now)

    def due_in(self, now: float) -> float | None:
        """Seconds until the earliest candidate could be ready (None: nothing is waiting)."""
        if not self._candidates:
            return None
        return max(
            0.0, min(c.since + self.settle * c.windows - now for c in self._candidates.values())
        )
