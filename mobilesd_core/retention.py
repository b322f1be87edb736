"""Retention: how long finished jobs stay in the list and in the history.

Every finished job is stored in the monthly archive the moment it finishes (so a store write
never costs more than the live queue, whatever the history holds). "Archived" is therefore a
matter of age, not of place: a job finished longer ago than RETENTION_ARCHIVE_DAYS leaves the
default job list and is found with `?archived=1`; one finished longer ago than
RETENTION_PRUNE_DAYS is deleted from the history by a periodic sweep, unless it is pinned.
Images are never touched: they stay in the gallery until the user deletes them.

Pins live in `pinned_jobs.json` (a small set of ids, rewritten whole on change), not in the job
records: pinning an old job must not re-append it to the archive (which would also move it to the
top of the finished list).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import Settings
from .durable import atomic_write_bytes
from .jobs.store import JobStore
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

PINS_FILE = "pinned_jobs.json"
DAY = 86400.0
PRUNE_CHUNK = 500  # ids per tombstone write: a large first sweep is spread over several writes


class Pins:
    def __init__(self, data_path: Path) -> None:
        self._path = data_path / PINS_FILE
        self.ids: set[str] = set()
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        def read() -> set[str]:
            try:
                data = json.loads(self._path.read_text())
            except FileNotFoundError:
                return set()
            except (OSError, ValueError) as exc:
                # Losing pins could let a prune delete what the user wanted kept: say so.
                log.error("retention: %s unreadable (%s); no job is pinned", self._path, exc)
                return set()
            ids = data.get("pinned") if isinstance(data, dict) else None
            if not isinstance(ids, list):
                log.error("retention: %s holds no list of pins; no job is pinned", self._path)
                return set()
            return {i for i in ids if isinstance(i, str)}

        self.ids = await asyncio.to_thread(read)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.ids

    async def _save(self) -> None:
        async with self._lock:
            payload = json.dumps({"pinned": sorted(self.ids)}).encode()
            await asyncio.to_thread(atomic_write_bytes, self._path, payload)

    async def set(self, job_id: str, pinned: bool) -> None:
        if (job_id in self.ids) == pinned:
            return
        if pinned:
            self.ids.add(job_id)
        else:
            self.ids.discard(job_id)
        try:
            await self._save()
        except BaseException:
            # Memory follows the file: what the caller was told matches what survives.
            if pinned:
                self.ids.discard(job_id)
            else:
                self.ids.add(job_id)
            raise

    async def forget(self, job_ids: Iterable[str]) -> None:
        """Drop the pins of jobs that are gone."""
        gone = self.ids.intersection(job_ids)
        if gone:
            self.ids -= gone
            await self._save()


class Retention:
    def __init__(
        self,
        store: JobStore,
        pins: Pins,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.pins = pins
        self.archive_days = settings.retention_archive_days
        self.prune_days = settings.retention_prune_days
        self.interval = settings.retention_interval
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self.pruned_total = 0
        self.last_sweep: float | None = None

    def archive_cutoff(self) -> float | None:
        """Unix time before which a finished job counts as archived (None: never)."""
        return self.clock() - self.archive_days * DAY if self.archive_days > 0 else None

    def prune_cutoff(self) -> float | None:
        return self.clock() - self.prune_days * DAY if self.prune_days > 0 else None

    def is_archived(self, finished: float) -> bool:
        cutoff = self.archive_cutoff()
        return cutoff is not None and finished < cutoff

    async def prune(self) -> list[str]:
        """Delete finished jobs older than the prune age, pinned ones excepted."""
        self.last_sweep = self.clock()
        cutoff = self.prune_cutoff()
        if cutoff is None:
            return []
        doomed = [j for j in self.store.finished_before(cutoff) if j not in self.pins]
        removed: list[str] = []
        for i in range(0, len(doomed), PRUNE_CHUNK):
            removed += await self.store.remove_finished(doomed[i : i + PRUNE_CHUNK])
        if removed:
            self.pruned_total += len(removed)
            log.info(
                "retention: %d finished job(s) older than %g days pruned (images kept)",
                len(removed),
                self.prune_days,
            )
        return removed

    def start(self) -> None:
        if self.prune_days > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:  # a failed sweep is retried at the next interval
                log.exception("retention: prune sweep failed")
            await asyncio.sleep(self.interval)
