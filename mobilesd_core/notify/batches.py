"""Which batches are still running, and how their finished jobs ended.

Jobs created together share a `batch_id`; a job without one is a batch of its own. A batch is
finished when none of its jobs is pending or processing any more. The live side is rebuilt from
the store at start; the counts of jobs already finished are kept in `notify_batches.json`
(small: open batches only), so a batch that spans a restart still reports all its jobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..durable import atomic_write_bytes
from ..jobs.types import Job, JobView
from ..schema import TERMINAL_STATUSES
from ..tasks import cancel_and_wait

log = logging.getLogger(__name__)

STATE_FILE = "notify_batches.json"


def batch_key(job: Job | JobView) -> str:
    return job.get("batch_id") or job["mobilesd_job_id"]


@dataclass
class Batch:
    key: str
    live: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TERMINAL_STATUSES, 0))
    first_id: str | None = None  # lowest and highest job id seen: the link to its images
    last_id: str | None = None

    def see(self, job_id: str) -> None:
        self.first_id = min(self.first_id or job_id, job_id)
        self.last_id = max(self.last_id or job_id, job_id)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class BatchTracker:
    def __init__(self, data_path: Path) -> None:
        self._path = data_path / STATE_FILE
        self.batches: dict[str, Batch] = {}
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, live_jobs: list[Job]) -> None:
        saved = await asyncio.to_thread(self._read)
        for job in live_jobs:
            self.observe(job)
        for key, entry in saved.items():
            batch = self.batches.get(key)
            if batch is None:
                continue  # finished while the core was down: nothing live to wait for
            for status in TERMINAL_STATUSES:
                batch.counts[status] += int(entry.get(status, 0))
            for job_id in (entry.get("first_id"), entry.get("last_id")):
                if isinstance(job_id, str):
                    batch.see(job_id)
        self._task = asyncio.create_task(self._saver(), name="notify-batches")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await asyncio.to_thread(self._write, self._snapshot())

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("notifications: %s unreadable, counts start afresh: %s", self._path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _snapshot(self) -> dict[str, Any]:
        return {
            key: {**b.counts, "first_id": b.first_id, "last_id": b.last_id}
            for key, b in self.batches.items()
            if b.total
        }

    def _write(self, snapshot: dict[str, Any]) -> None:
        try:
            atomic_write_bytes(self._path, json.dumps(snapshot).encode())
        except OSError as exc:
            log.error("notifications: cannot save batch counts: %s", exc.strerror or exc)

    async def _saver(self) -> None:
        # Coalesced: a burst of finishing jobs costs one write of the (small) open-batch table.
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await asyncio.to_thread(self._write, self._snapshot())

    def observe(self, job: Job | JobView) -> Batch | None:
        """Take note of a job's new state; returns its batch when this job finished it."""
        key = batch_key(job)
        job_id = job["mobilesd_job_id"]
        if job["status"] not in TERMINAL_STATUSES:
            open_batch = self.batches.setdefault(key, Batch(key))
            open_batch.live.add(job_id)
            open_batch.see(job_id)
            return None
        batch = self.batches.get(key)
        if batch is None or job_id not in batch.live:
            return None  # not seen live (or counted already): nothing to add up
        batch.live.discard(job_id)
        batch.counts[job["status"]] += 1
        self._dirty.set()
        if batch.live:
            return None
        del self.batches[key]
        return batch
