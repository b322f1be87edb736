"""Throttling token guesses without ever turning the right token away.

A block that refused every request from an address (the old way) let anyone lock the owner out:
ten `<img src="/login?token=x">` on a page the phone opens, or ten requests through the reverse
proxy everyone shares, and the right token got 429 for a minute. Letting the right token through
while wrong ones are refused is no throttle at all, though: the answer to each guess would still
say whether it was right, at whatever rate the guesser can send.

So an address is judged in two speeds:

- **Free:** fewer than `LIMIT` wrong tokens in the current `WINDOW`: every token is checked at
  once; right passes, wrong is 401 and counted.
- **Throttled:** after that, its tokens are checked one after another, and after each wrong one
  the next check waits `INTERVAL` seconds. A right token passes when its turn comes (at once when
  nobody is guessing, after the guesses queued ahead of it otherwise); a wrong one is 429. At most
  `DEPTH` checks wait per address: more are 429 without being checked.

An address therefore gets at most `LIMIT + WINDOW / INTERVAL` answers to guesses per window (70 a
minute), however many it sends at once, and the right token is never refused because of them,
only queued behind at most `DEPTH` of them. Session cookies are not judged here: they are random
256-bit values looked up by hash, not guessable secrets.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


class FailureLimiter:
    """Counts wrong tokens per client address in fixed windows; bounded in memory.

    After `limit` failures within `window` seconds of the first one, `retry_after` tells how
    long until that address's window ends. At most `max_clients` addresses are tracked; the least
    recently failing are dropped.
    """

    LIMIT = 10
    WINDOW = 60.0
    MAX_CLIENTS = 4096

    def __init__(
        self,
        limit: int = LIMIT,
        window: float = WINDOW,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, key: str) -> float | None:
        """Seconds until `key`'s window ends when it is over the limit, else None."""
        entry = self._failures.get(key)
        if entry is None:
            return None
        start, count = entry
        left = start + self.window - self.clock()
        if left <= 0:
            del self._failures[key]
            return None
        return left if count >= self.limit else None

    def fail(self, key: str) -> None:
        now = self.clock()
        start, count = self._failures.pop(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        self._failures[key] = (start, count + 1)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)


class Verdict(enum.Enum):
    RIGHT = "right"
    WRONG = "wrong"  # 401: the address is not throttled (yet)
    THROTTLED = "throttled"  # 429: a wrong token from a throttled address
    BUSY = "busy"  # 429: too many checks already waiting for this address


@dataclass
class _Lane:
    """The single file of checks of one throttled address."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    next_at: float = 0.0


class GuessThrottle:
    INTERVAL = 1.0
    DEPTH = 5

    def __init__(
        self,
        limiter: FailureLimiter | None = None,
        *,
        interval: float = INTERVAL,
        depth: int = DEPTH,
    ) -> None:
        self.limiter = limiter or FailureLimiter()
        self.interval = interval
        self.depth = depth
        self._lanes: OrderedDict[str, _Lane] = OrderedDict()

    def retry_after(self, key: str) -> float | None:
        return self.limiter.retry_after(key)

    async def judge(self, key: str, right: Callable[[], bool]) -> Verdict:
        """Check a token from address `key`; `right()` compares it (in constant time)."""
        if self.limiter.retry_after(key) is None:
            if right():
                return Verdict.RIGHT
            self.limiter.fail(key)
            return Verdict.WRONG
        lane = self._lane(key)
        if lane.waiting >= self.depth:
            return Verdict.BUSY
        lane.waiting += 1
        try:
            async with lane.lock:
                wait = lane.next_at - self.limiter.clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                if right():
                    return Verdict.RIGHT
                self.limiter.fail(key)
                lane.next_at = self.limiter.clock() + self.interval
                return Verdict.THROTTLED
        finally:
            lane.waiting -= 1

    def _lane(self, key: str) -> _Lane:
        lane = self._lanes.get(key)
        if lane is not None:
            return lane
        # Forget idle lanes whose pause is over, and the oldest idle ones past the bound.
        now = self.limiter.clock()
        for old_key, old in list(self._lanes.items()):
            if old.waiting == 0 and (
                old.next_at <= now or len(self._lanes) >= self.limiter.max_clients
            ):
                del self._lanes[old_key]
        lane = self._lanes[key] = _Lane()
        return lane
