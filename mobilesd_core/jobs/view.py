"""The one function that makes a job what clients see.

Every route that returns a job and every `job` event goes through `JobViews`, whoever publishes
it (the store's change listener, the dispatcher's progress, a pin), so a client never sees a job
with fewer fields from one source than from another. Its key set is that of `JobView`, plus the
creation-time extras a job has (`retry_of`, `prompt_template`, `webhook_url`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Protocol

from ..progress import ProgressBoard
from .store import finish_time
from .types import Job, JobProgress, JobView


class _Retention(Protocol):
    """What the view needs of retention.Retention."""

    @property
    def pins(self) -> Container[str]: ...

    def is_archived(self, finished: float) -> bool: ...


def job_view(
    job: Job,
    *,
    progress_of: Callable[[str], JobProgress | None] | None = None,
    waiting_reason: str | None = None,
    pinned: bool = False,
    archived: bool = False,
) -> JobView:
    """`job` as clients see it. Fields a record may lack get the value their absence means."""
    view: JobView = {
        **job,
        "retry_at": job.get("retry_at"),
        "errors": job.get("errors") or [],
        "interruptions": job.get("interruptions", 0),
        "waiting_reason": waiting_reason if job["status"] == "pending" else None,
        "pinned": pinned,
        "archived": archived,
    }
    if job["status"] == "processing" and progress_of is not None:
        live = progress_of(job["mobilesd_job_id"])
        if live is not None:
            view["progress"] = live
    return view


class JobViews:
    """Builds views with the core's live state: progress, why a job waits, retention."""

    def __init__(
        self,
        board: ProgressBoard,
        *,
        waiting_reason: Callable[[Job], str | None] | None = None,
        retention: _Retention | None = None,
    ) -> None:
        self._board = board
        self._waiting_reason = waiting_reason
        self._retention = retention

    def __call__(self, job: Job) -> JobView:
        status = job["status"]
        reason = None
        if status == "pending" and self._waiting_reason is not None:
            reason = self._waiting_reason(job)
        pinned = archived = False
        if self._retention is not None:
            pinned = job["mobilesd_job_id"] in self._retention.pins
            archived = status not in ("pending", "processing") and self._retention.is_archived(
                finish_time(job)
            )
        return job_view(
            job,
            progress_of=self._board.get,
            waiting_reason=reason,
            pinned=pinned,
            archived=archived,
        )
