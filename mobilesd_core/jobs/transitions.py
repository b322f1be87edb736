"""Every status change of a job, in one place.

One function per transition. Each returns a `Transition`: the fields it writes and the statuses
the job must be in for it to apply (the store's compare-and-set, `JobStore.apply`). Whoever moves
a job (the dispatcher, the service, the store at start) calls these, so a job's record reads the
same whoever moved it: every failure carries the same failure fields, every requeue clears the
same run fields.

    pending    --claim-->                processing
    processing --retry_later-->          pending      (a transient failure, after a backoff)
    processing --requeue_interrupted-->  pending      (the core stopped while it ran)
    processing --complete-->             completed
    pending/processing --fail-->         failed
    pending/processing --cancel-->       cancelled

A job is made pending by `schema.new_job`; a finished job is never moved again (a retry is a new
job, `retry_of` naming the old one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

from ..schema import utc_now_iso
from .types import (
    ActiveStatus,
    AttemptError,
    EndStatus,
    Job,
    JobFailure,
    JobResult,
    JobStatus,
)

CANCELLED_BY_USER = "cancelled by user"


class Claimed(TypedDict):
    """What `claim` writes: the run starts."""

    status: Literal["processing"]
    assigned_server_alias: str
    attempts: int
    started_timestamp: str
    retry_at: None


class Requeued(TypedDict):
    """What both requeues write: the run's fields cleared, the reason counted."""

    status: Literal["pending"]
    assigned_server_alias: None
    started_timestamp: None
    progress: None
    retry_at: float | None
    errors: list[AttemptError]
    interruptions: int


class RequeuedFirst(Requeued):
    """A requeue after a crash also moves the job to the queue's front."""

    position: int


class Ended(TypedDict):
    """What every ending writes, whichever it is."""

    status: EndStatus
    completion_timestamp: str
    progress: None
    errors: list[AttemptError]
    result_details: JobResult | JobFailure


JobChanges = Claimed | Requeued | Ended


@dataclass(frozen=True, slots=True)
class Transition:
    name: str
    changes: JobChanges
    expect: frozenset[JobStatus]  # the statuses it applies from; else the store's Conflict


ACTIVE: frozenset[JobStatus] = frozenset({"pending", "processing"})
PENDING: frozenset[JobStatus] = frozenset({"pending"})
PROCESSING: frozenset[JobStatus] = frozenset({"processing"})


def with_attempt_error(job: Job, server: str, message: str) -> list[AttemptError]:
    """The job's attempt errors with its current attempt's failure appended."""
    return [
        *(job.get("errors") or []),
        {"attempt": job["attempts"], "server": server, "error": message, "at": utc_now_iso()},
    ]


def claim(job: Job, server: str) -> Transition:
    """A pending job goes to `server`: the attempt is counted before the request leaves."""
    return Transition(
        "claim",
        {
            "status": "processing",
            "assigned_server_alias": server,
            "attempts": job.get("attempts", 0) + 1,
            "started_timestamp": utc_now_iso(),
            "retry_at": None,
        },
        PENDING,
    )


def retry_later(job: Job, errors: list[AttemptError], retry_at: float) -> Transition:
    """A transient failure: the job waits in the queue until `retry_at` (unix time)."""
    return Transition(
        "retry_later",
        {
            "status": "pending",
            "assigned_server_alias": None,
            "started_timestamp": None,
            "progress": None,
            "retry_at": retry_at,
            "errors": errors,
            "interruptions": job.get("interruptions", 0),
        },
        PROCESSING,
    )


def requeue_interrupted(job: Job, position: int) -> RequeuedFirst:
    """At start: a job the core left `processing` goes back to the queue at `position` (the
    front). The store applies it while loading, before anyone else sees the job, so it is bare
    changes, not a Transition."""
    return {
        "status": "pending",
        "assigned_server_alias": None,
        "started_timestamp": None,
        "progress": None,
        "retry_at": None,
        "errors": job.get("errors") or [],
        # Not the server's fault: counted apart from the retry budget.
        "interruptions": job.get("interruptions", 0) + 1,
        "position": position,
    }


def _end(
    name: str,
    status: EndStatus,
    result: JobResult | JobFailure,
    errors: list[AttemptError],
    expect: frozenset[JobStatus],
) -> Transition:
    return Transition(
        name,
        {
            "status": status,
            "completion_timestamp": utc_now_iso(),
            "progress": None,
            "errors": errors,
            "result_details": result,
        },
        expect,
    )


def complete(job: Job, result: JobResult) -> Transition:
    """Forge answered and the images are in the gallery."""
    return _end("complete", "completed", result, job.get("errors") or [], PROCESSING)


def failure(job: Job, message: str, errors: list[AttemptError] | None = None) -> JobFailure:
    """The failure fields of `result_details`, the same for every failure and cancel."""
    errors = errors if errors is not None else job.get("errors") or []
    return {"error": message, "server": job.get("assigned_server_alias"), "errors": errors}


def fail(job: Job, message: str, *, errors: list[AttemptError] | None = None) -> Transition:
    """The job ends failed: a permanent Forge error, a lost server, retries used up, a
    checkpoint no server lists, a core that kept stopping during it. Applies only while the
    job is still in the status `job` shows (its caller's view of it)."""
    current: ActiveStatus = "pending" if job["status"] == "pending" else "processing"
    errors = errors if errors is not None else job.get("errors") or []
    return _end("fail", "failed", failure(job, message, errors), errors, frozenset({current}))


def cancel(job: Job) -> Transition:
    """The user cancelled a pending or running job."""
    errors = job.get("errors") or []
    return _end("cancel", "cancelled", failure(job, CANCELLED_BY_USER, errors), errors, ACTIVE)


__all__ = [
    "CANCELLED_BY_USER",
    "Claimed",
    "Ended",
    "JobChanges",
    "Requeued",
    "RequeuedFirst",
    "Transition",
    "cancel",
    "claim",
    "complete",
    "fail",
    "failure",
    "requeue_interrupted",
    "retry_later",
    "with_attempt_error",
]
