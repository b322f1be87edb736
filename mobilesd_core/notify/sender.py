"""Notices to people through Apprise (ntfy, Telegram, Discord, Pushover, e-mail, ...).

Apprise is blocking (requests underneath), so sends run in a worker thread, one at a time, fed by
a bounded queue: a slow or dead target delays notices, never the event loop or dispatching. Each
configured URL is its own Apprise object, so a failure is counted against the target that failed
and the others still get the notice. A failed send is tried again later (RETRY_DELAYS: a phone
push service's hiccup should not lose the "batch finished" notice), to that target only; a notice
that fails every try is logged (scheme only) and kept for the status route with its reason,
redacted. Retries live in memory: notices are about the moment, so a restart drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError
from ..schema import utc_now_iso
from ..tasks import cancel_and_wait
from .redact import Redactor, scheme_of

log = logging.getLogger(__name__)

QUEUE_MAX = 200  # notices waiting for a slow target; beyond this the oldest are dropped (counted)
# Seconds before each further try of a notice a target refused: three tries over half a minute.
RETRY_DELAYS: tuple[float, ...] = (5.0, 25.0)
# Apprise logs through one process-wide logger; a send holds this lock so the reason captured
# for a failure belongs to that send.
_SEND_LOCK = threading.Lock()


@dataclass(frozen=True)
class Notice:
    kind: str  # batch_finished | job_failed | server_offline | server_online | queue_empty
    title: str
    body: str
    level: str = "info"  # Apprise notify type: info | success | warning | failure


@dataclass
class TargetState:
    index: int
    scheme: str
    target: Any  # the Apprise object: holds the URL, so it never leaves this module
    sent: int = 0
    failed: int = 0  # notices given up on after every try
    retried: int = 0  # failed tries that were tried again
    last_sent: str | None = None
    last_error: dict[str, str] | None = None

    def public(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "scheme": self.scheme,
            "sent": self.sent,
            "failed": self.failed,
            "retried": self.retried,
            "last_sent": self.last_sent,
            "last_error": self.last_error,
        }


class _Capture(logging.Handler):
    """Collects Apprise's warnings during one send: they say why it failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(record.getMessage())


def _load_targets(urls: tuple[str, ...]) -> list[TargetState]:
    """One Apprise object per URL; an URL Apprise cannot parse is a ConfigError naming its
    position and scheme, never its text."""
    if not urls:
        return []
    import apprise  # imported only when configured: loading its plugins takes a moment

    asset = apprise.AppriseAsset(
        app_id="MobileSD",
        app_desc="MobileSD job queue",
        # No cache files in the user's home: MobileSD keeps its state in CONFIG_DATA_PATH.
        storage_mode=apprise.PersistentStoreMode.MEMORY,
    )
    targets = []
    for index, url in enumerate(urls, start=1):
        target = apprise.Apprise(asset=asset)
        if not target.add(url):
            raise ConfigError(
                f"NOTIFY_URLS: entry {index} ({scheme_of(url)}://...) is not a URL Apprise "
                "understands; see https://github.com/caronc/apprise/wiki for the formats"
            )
        targets.append(TargetState(index=index, scheme=scheme_of(url), target=target))
    return targets


class AppriseSender:
    def __init__(self, urls: tuple[str, ...], redactor: Redactor) -> None:
        self._redact = redactor
        self.targets = _load_targets(urls)
        self._queue: deque[Notice] = deque()
        # (due on the monotonic clock, order, target, notice, tries so far); the unique order
        # settles every comparison before the target is reached
        self._retries: list[tuple[float, int, TargetState, Notice, int]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped = 0

    @property
    def configured(self) -> bool:
        return bool(self.targets)

    def start(self) -> None:
        if self.targets and self._task is None:
            self._task = asyncio.create_task(self._run(), name="notify-apprise")

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Send what is queued (for a little while), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_timeout)
        if self._queue or self._retries:
            log.warning(
                "notifications: %d notice(s) not sent before stopping",
                len(self._queue) + len(self._retries),
            )
        await cancel_and_wait(self._task)
        self._task = None

    def enqueue(self, notice: Notice) -> None:
        """Queue a notice; never blocks (called from store listeners)."""
        if not self.targets:
            return
        if len(self._queue) >= QUEUE_MAX:
            self._queue.popleft()
            self.dropped += 1
            log.error("notifications: queue full, oldest notice dropped")
        self._queue.append(notice)
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self, timeout: float) -> None:
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            if self._queue:
                notice = self._queue.popleft()
                for state in self.targets:
                    await self._try(state, notice, tries=0)
            elif self._retries and self._retries[0][0] <= now:
                _, _, state, notice, tries = heapq.heappop(self._retries)
                await self._try(state, notice, tries=tries)
            else:
                if not self._retries:
                    self._idle.set()
                self._wake.clear()
                due = self._retries[0][0] - now if self._retries else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due):
                        await self._wake.wait()

    async def _try(self, state: TargetState, notice: Notice, *, tries: int) -> None:
        try:
            ok, reason = await asyncio.to_thread(self._send, state, notice)
        except Exception as exc:  # Apprise itself broke: count it, keep going
            ok, reason = False, self._redact(f"{type(exc).__name__}: {exc}")
        if not ok and tries < len(RETRY_DELAYS):
            delay = RETRY_DELAYS[tries]
            state.retried += 1
            log.warning(
                "notification %s to %s target %d failed (%s); trying again in %g s",
                notice.kind,
                state.scheme,
                state.index,
                reason,
                delay,
            )
            due = time.monotonic() + delay
            heapq.heappush(self._retries, (due, next(self._order), state, notice, tries + 1))
            return
        self._record(state, notice, ok, reason)

    def _send(self, state: TargetState, notice: Notice) -> tuple[bool, str | None]:
        """Blocking: one notice to one target (worker thread)."""
        capture = _Capture()
        apprise_log = logging.getLogger("apprise")
        with _SEND_LOCK:
            apprise_log.addHandler(capture)
            try:
                started = time.monotonic()
                result = state.target.notify(
                    body=notice.body, title=notice.title, notify_type=notice.level
                )
                ok = bool(result)
            finally:
                apprise_log.removeHandler(capture)
        if ok:
            return True, None
        # The capture sees records after the redacting filter; redact again all the same.
        reason = "; ".join(dict.fromkeys(capture.lines)) or "the service did not accept it"
        took = time.monotonic() - started
        return False, self._redact(f"{reason} (after {took:.1f}s)")

    def _record(self, state: TargetState, notice: Notice, ok: bool, reason: str | None) -> None:
        now = utc_now_iso()
        if ok:
            state.sent += 1
            state.last_sent = now
            log.info("notification %s sent to %s target %d", notice.kind, state.scheme, state.index)
        else:
            state.failed += 1
            state.last_error = {"at": now, "kind": notice.kind, "message": reason or "failed"}
            log.error(
                "notification %s to %s target %d failed: %s",
                notice.kind,
                state.scheme,
                state.index,
                reason,
            )

    def status(self) -> dict[str, Any]:
        return {
            "configured": self.configured,
            "targets": [t.public() for t in self.targets],
            "queued": len(self._queue),
            "retrying": len(self._retries),
            "dropped": self.dropped,
        }
