"""Faults a test or a demo switches on at run time: what a flaky Forge or its proxy does.

Status faults ("500", "502", "503", "422", "401", "404") answer instead of Forge: nothing runs.
Body faults ("drop", "truncated", "nonjson") let Forge do the work, then spoil the answer, so
a txt2img hit by one has really generated (and is in `generations`) but the client gets nothing
usable; "stall" sends the headers and half of the body, then holds the rest until the faults
are cleared (an answer that never ends). "hang" on txt2img freezes the generation mid-way with
the lock held; elsewhere it holds the request. "reset" closes the connection without an answer
(on txt2img once the job is running, which goes on). "slow" only waits. Every kind first
waits `delay_ms`.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

STATUS_KINDS = ("500", "502", "503", "422", "401", "404")
BODY_KINDS = ("drop", "truncated", "nonjson", "stall")
FAULT_KINDS = (*STATUS_KINDS, *BODY_KINDS, "hang", "slow", "reset")


@dataclass
class Fault:
    kind: str
    count: int | None = None
    """Requests still to hit; None: until cleared."""
    path: str | None = None
    """Only paths containing this; None: every path except `/_sim/`."""
    delay_ms: float = 0
    status: int | None = None
    """Overrides the status code of a status or body fault."""
    hits: int = 0

    def matches(self, path: str) -> bool:
        return self.path is None or self.path in path

    def summary(self) -> dict[str, Any]:
        return asdict(self)


class FaultBook:
    """Active faults, first match wins; clearing also releases whatever a "hang" holds."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._released = asyncio.Event()

    def add(
        self,
        kind: str,
        *,
        count: int | None = None,
        path: str | None = None,
        delay_ms: float = 0,
        status: int | None = None,
    ) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1, or None for 'until cleared'")
        if delay_ms < 0:
            raise ValueError("delay_ms must not be negative")
        if status is not None and not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        fault = Fault(kind, count, path or None, delay_ms, status)
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()
        self._released.set()
        self._released = asyncio.Event()

    @property
    def release_event(self) -> asyncio.Event:
        """Set by the next `clear()`; a hang waits on the one current when it began."""
        return self._released

    def take(self, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.matches(path):
                fault.hits += 1
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def summary(self) -> list[dict[str, Any]]:
        return [f.summary() for f in self._faults]
