"""Live progress of running jobs: in memory only, never written to the job file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class _Live:
    progress: dict[str, Any]
    published_at: float = 0.0
    preview: bytes | None = None


class ProgressBoard:
    def __init__(self, *, min_interval: float = 0.25) -> None:
        self._live: dict[str, _Live] = {}
        self._min_interval = min_interval

    def get(self, job_id: str) -> dict[str, Any] | None:
        live = self._live.get(job_id)
        return live.progress if live else None

    def preview(self, job_id: str) -> bytes | None:
        live = self._live.get(job_id)
        return live.preview if live else None

    def set(self, job_id: str, progress: dict[str, Any], preview: bytes | None = None) -> bool:
        """Record progress; True when it is time to publish it (throttled per job)."""
        live = self._live.setdefault(job_id, _Live(progress))
        live.progress = progress
        if preview is not None:
            live.preview = preview
        now = time.monotonic()
        if now - live.published_at >= self._min_interval:
            live.published_at = now
            return True
        return False

    def clear(self, job_id: str) -> None:
        self._live.pop(job_id, None)

    def overlay(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job as clients see it: stored record plus live progress."""
        if job.get("status") != "processing":
            return job
        progress = self.get(job["mobilesd_job_id"])
        return {**job, "progress": progress} if progress is not None else job
