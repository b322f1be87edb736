"""Live progress of running jobs: in memory only, never written to the job file."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .jobs.types import JobProgress


@dataclass
class _Live:
    progress: JobProgress
    published_at: float = 0.0
    preview: bytes | None = None


class ProgressBoard:
    def __init__(self, *, min_interval: float = 0.25) -> None:
        self._live: dict[str, _Live] = {}
        self._min_interval = min_interval

    def get(self, job_id: str) -> JobProgress | None:
        live = self._live.get(job_id)
        return live.progress if live else None

    def preview(self, job_id: str) -> bytes | None:
        live = self._live.get(job_id)
        return live.preview if live else None

    def set(self, job_id: str, progress: JobProgress, preview: bytes | None = None) -> bool:
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
