"""Webhook deliveries: a signed JSON POST of a job when it reaches a terminal state.

Deliveries sit in an outbox, `webhook_outbox.jsonl` in CONFIG_DATA_PATH: a delivery is written
there before its first attempt, each failed attempt appends when to try next, and success (or
giving up) appends its end. A delivery still pending when the core stops is tried again after the
next start. The file is folded down to the pending deliveries at every start and whenever the
outbox empties, so it never grows with history.

Attempts run on their own tasks (a few at a time) with their own HTTP session: a slow or dead
receiver never holds up dispatching or the other deliveries. Retries back off exponentially from
WEBHOOK_BACKOFF seconds, up to WEBHOOK_MAX_ATTEMPTS tries; only a 2xx answer counts as delivered
(redirects are not followed). A receiver may see a delivery twice (the core stopped after it
answered but before the answer was recorded): `X-MobileSD-Delivery` is the same each time.

Logs and the status route name a target as scheme://host:port only: the rest of a webhook URL
may be a credential. Why an attempt failed (refused, timeout, unknown host, HTTP status) is
logged only: the token holder chooses webhook URLs, and a status that told those apart would
scan the owner's network for them. Answers and the outbox say NOT_DELIVERED.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .. import __version__
from ..backoff import backoff_delay
from ..durable import AppendLog
from ..schema import new_job_id, utc_now_iso
from ..tasks import cancel_and_wait, wait_ended

log = logging.getLogger(__name__)

OUTBOX_FILE = "webhook_outbox.jsonl"
SIGNATURE_HEADER = "X-MobileSD-Signature"
CONCURRENCY = 4
COMPACT_LINES = 1000
NOT_DELIVERED = "not delivered: no 2xx answer (the core's log says why)"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: `sha256=<hex HMAC-SHA256 of the body>`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def target_of(url: str) -> str:
    """How a webhook URL may be shown: scheme://host[:port], nothing that could be a token."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _describe(exc: BaseException, timeout: float) -> str:
    """Why an attempt failed, without the URL (aiohttp puts it into some messages)."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    return type(exc).__name__


@dataclass
class Delivery:
    id: str
    url: str
    event: str
    job_id: str
    body: str  # exactly the bytes signed and sent (UTF-8)
    created: str
    attempts: int = 0
    next_at: float = 0.0  # unix time of the next attempt
    last_error: str | None = None
    saved: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    running: bool = False

    def record(self) -> dict[str, Any]:
        return {
            "op": "add",
            "id": self.id,
            "url": self.url,
            "event": self.event,
            "job_id": self.job_id,
            "body": self.body,
            "created": self.created,
            "attempts": self.attempts,
            "next_at": self.next_at,
            "last_error": self.last_error,
        }


class WebhookOutbox:
    def __init__(
        self,
        data_path: Path,
        secret: str,
        *,
        max_attempts: int,
        backoff: float,
        backoff_max: float,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = AppendLog(data_path / OUTBOX_FILE)
        self._secret = secret.encode()
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.timeout = timeout
        self._clock = clock
        self.pending: dict[str, Delivery] = {}
        self._lines = 0
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.delivered = 0
        self.failed = 0  # given up after the last attempt
        self.tries = 0
        self.last_delivered: str | None = None
        self.last_error: dict[str, Any] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.pending = await asyncio.to_thread(self._load)
        for delivery in self.pending.values():
            delivery.saved.set()
        if self.pending:
            log.info("webhooks: %d delivery(ies) pending from the last run", len(self.pending))
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": f"MobileSD/{__version__} webhook"},
        )
        self._task = asyncio.create_task(self._run(), name="webhook-outbox")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, *self._attempts)
        self._task = None
        with contextlib.suppress(Exception):  # outbox writes already under way finish
            await wait_ended(*self._background)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _load(self) -> dict[str, Delivery]:
        """Fold the file into the pending deliveries and rewrite it as just those (thread)."""
        pending: dict[str, Delivery] = {}
        for _, _, record in self._log.iter_records():
            op, delivery_id = record.get("op"), record.get("id")
            if op == "add" and isinstance(delivery_id, str):
                try:
                    pending[delivery_id] = Delivery(
                        id=delivery_id,
                        url=record["url"],
                        event=record["event"],
                        job_id=record["job_id"],
                        body=record["body"],
                        created=record["created"],
                        attempts=int(record.get("attempts") or 0),
                        next_at=float(record.get("next_at") or 0.0),
                        last_error=record.get("last_error"),
                    )
                except (KeyError, TypeError, ValueError):
                    log.warning("webhooks: unreadable outbox entry skipped")
            elif op == "try" and delivery_id in pending:
                pending[delivery_id].attempts = int(record["attempts"])
                pending[delivery_id].next_at = float(record["next_at"])
                pending[delivery_id].last_error = record.get("error")
            elif op in ("done", "gave_up") and isinstance(delivery_id, str):
                pending.pop(delivery_id, None)
        if self._log.path.exists():
            self._log.rewrite([d.record() for d in pending.values()])
        self._lines = len(pending)
        return pending

    # -- the outbox file --------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write(self, records: list[dict[str, Any]]) -> None:
        # One writer at a time, in call order (asyncio.Lock is FIFO): an attempt's outcome
        # never lands before the delivery it belongs to.
        async with self._write_lock:
            try:
                if not self.pending and records[-1]["op"] != "add":
                    # The outbox is empty: start the file afresh instead of appending.
                    await asyncio.to_thread(self._log.rewrite, [])
                    self._lines = 0
                    return
                if self._lines > COMPACT_LINES:
                    snapshot = [d.record() for d in self.pending.values()]
                    await asyncio.to_thread(self._log.rewrite, snapshot)
                    self._lines = len(snapshot)
                    return
                await asyncio.to_thread(self._log.append, records)
                self._lines += len(records)
            except OSError as exc:
                # Deliveries go on from memory; only surviving a restart is lost.
                log.error("webhooks: outbox file write failed: %s", exc.strerror or exc)

    # -- queueing ---------------------------------------------------------------------------

    def enqueue(self, url: str, event: str, job_id: str, body: str) -> Delivery:
        """Queue a delivery; returns at once (called from the store's listener)."""
        delivery = Delivery(
            id=new_job_id(),
            url=url,
            event=event,
            job_id=job_id,
            body=body,
            created=utc_now_iso(),
            next_at=self._clock(),
        )
        self.pending[delivery.id] = delivery

        async def save() -> None:
            await self._write([delivery.record()])
            delivery.saved.set()
            self._wake.set()

        self._spawn(save())
        return delivery

    # -- sending ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            now = self._clock()
            due = sorted(
                (d for d in self.pending.values() if not d.running and d.saved.is_set()),
                key=lambda d: d.next_at,
            )
            for delivery in due:
                if delivery.next_at > now or len(self._attempts) >= CONCURRENCY:
                    break
                delivery.running = True
                task = asyncio.create_task(self._attempt(delivery), name="webhook-attempt")
                self._attempts.add(task)
                task.add_done_callback(self._attempts.discard)
            waiting = [d.next_at for d in due if not d.running]
            if len(self._attempts) >= CONCURRENCY or not waiting:
                delay = None  # a finishing attempt (or a new delivery) wakes the loop
            else:
                delay = max(0.0, min(waiting) - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _delay(self, attempts: int) -> float:
        return backoff_delay(attempts, self.backoff, self.backoff_max)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            error = await self._post(delivery)
            delivery.attempts += 1
            self.tries += 1
            if error is None:
                await self._finish(delivery, "done")
                self.delivered += 1
                self.last_delivered = utc_now_iso()
                log.info(
                    "webhook for job %s delivered to %s (attempt %d)",
                    delivery.job_id,
                    target_of(delivery.url),
                    delivery.attempts,
                )
                return
            # `error` (the detail) goes to the log below, never into answers.
            delivery.last_error = NOT_DELIVERED
            self.last_error = {
                "at": utc_now_iso(),
                "job_id": delivery.job_id,
                "target": target_of(delivery.url),
                "attempt": delivery.attempts,
                "message": NOT_DELIVERED,
            }
            if delivery.attempts >= self.max_attempts:
                await self._finish(delivery, "gave_up")
                self.failed += 1
                log.error(
                    "webhook for job %s to %s failed %d times, giving up: %s",
                    delivery.job_id,
                    target_of(delivery.url),
                    delivery.attempts,
                    error,
                )
                return
            delay = self._delay(delivery.attempts)
            delivery.next_at = self._clock() + delay
            log.warning(
                "webhook for job %s to %s failed (attempt %d of %d): %s; retrying in %.1fs",
                delivery.job_id,
                target_of(delivery.url),
                delivery.attempts,
                self.max_attempts,
                error,
                delay,
            )
            await self._write(
                [
                    {
                        "op": "try",
                        "id": delivery.id,
                        "attempts": delivery.attempts,
                        "next_at": delivery.next_at,
                        "error": NOT_DELIVERED,
                    }
                ]
            )
        finally:
            delivery.running = False
            self._wake.set()

    async def _finish(self, delivery: Delivery, outcome: str) -> None:
        self.pending.pop(delivery.id, None)
        await self._write([{"op": outcome, "id": delivery.id}])

    async def _post(self, delivery: Delivery) -> str | None:
        """One attempt; None when the receiver answered 2xx, else why not."""
        assert self._session is not None
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body),
            "X-MobileSD-Event": delivery.event,
            "X-MobileSD-Delivery": delivery.id,
        }
        try:
            async with self._session.post(
                delivery.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _describe(exc, self.timeout)

    def status(self) -> dict[str, Any]:
        return {
            "pending": len(self.pending),
            "delivered": self.delivered,
            "failed": self.failed,
            "attempts": self.tries,
            "last_delivered": self.last_delivered,
            "last_error": self.last_error,
        }

    async def wait_idle(self, timeout: float) -> None:
        """Until nothing is pending (tests)."""
        deadline = time.monotonic() + timeout
        while self.pending or self._background:
            if time.monotonic() > deadline:
                raise TimeoutError("webhook outbox still busy")
            await asyncio.sleep(0.01)
