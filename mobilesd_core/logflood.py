"""Keep floods of one log message out of the log.

Some records are written once per network event a stranger controls: asyncio's "accept() out of
system resource" while descriptors are exhausted, aiohttp's "Error handling request" for every
malformed request, a traceback per failing request. In Docker the log is a file on the host's
disk. `FloodFilter` lets a few records of each kind (logger and message) through per period and
counts the rest; the next record of that kind let through says how many were left out.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Loggers that write on behalf of requests and connections, not of the core's own work.
NETWORK_LOGGERS = ("asyncio", "aiohttp.server", "aiohttp.web", "mobilesd_core.api.errors")


@dataclass
class _Kind:
    since: float
    passed: int = 0
    dropped: int = 0


class FloodFilter(logging.Filter):
    BURST = 5
    PERIOD = 60.0
    MAX_KINDS = 256

    def __init__(
        self,
        burst: int = BURST,
        period: float = PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self.clock = clock
        self._kinds: OrderedDict[tuple[str, str], _Kind] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = self.clock()
        kind = self._kinds.pop(key, None)
        if kind is None or now - kind.since >= self.period:
            dropped = kind.dropped if kind else 0
            kind = _Kind(since=now)
            if dropped:
                self._note(record, f"[{dropped} more like this were not logged]")
        self._kinds[key] = kind
        while len(self._kinds) > self.MAX_KINDS:
            self._kinds.popitem(last=False)
        if kind.passed < self.burst:
            kind.passed += 1
            if kind.passed == self.burst:
                self._note(
                    record,
                    f"[repeated: more like this are counted, not logged, for {self.period:g} s]",
                )
            return True
        kind.dropped += 1
        return False

    @staticmethod
    def _note(record: logging.LogRecord, text: str) -> None:
        # Appended to the format string: escape it so `%` in the note cannot meet the args.
        record.msg = f"{record.msg} {text.replace('%', '%%') if record.args else text}"


def install(loggers: tuple[str, ...] = NETWORK_LOGGERS) -> FloodFilter:
    """One shared filter on each of `loggers` (records they create; idempotent per logger)."""
    flood = FloodFilter()
    for name in loggers:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, FloodFilter)]:
            logger.removeFilter(old)
        logger.addFilter(flood)
    return flood
