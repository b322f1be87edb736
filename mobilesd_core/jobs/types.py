"""What a job is: the stored record, its progress, its result, and the events about it.

TypedDicts, not classes: the store keeps plain dicts (TinyDB's JSON snapshot, JSON-lines journal
and archive), and a type that is a dict reads and writes those files byte for byte as before.
Pydantic is kept for data that crosses a boundary (requests: schema.py).

This module imports nothing of the project, so every module (schema.py included) can use it.
"""

from typing import Any, Literal, NotRequired, Required, TypedDict, final

JobStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]
ActiveStatus = Literal["pending", "processing"]
EndStatus = Literal["completed", "failed", "cancelled"]
JobSource = Literal["tui", "web", "api", "inbox", "cli"]


class AttemptError(TypedDict):
    """One failed attempt of a job."""

    attempt: int
    server: str
    error: str
    at: str  # ISO 8601 UTC


class JobProgress(TypedDict, total=False):
    """Live progress of a processing job: in memory only (ProgressBoard), never stored."""

    fraction: Required[float]
    phase: str  # syncing model | verifying model copy | starting | waiting for server | ...
    step: int | None
    steps: int | None
    batch: int
    batches: int
    eta_seconds: float | None
    preview: bool
    # While model sync copies a library file for the job:
    file: str
    bytes_done: int
    bytes_total: int


class RunInfo(TypedDict):
    """What Forge reported about a completed run (values as Forge sent them)."""

    seed: Any
    all_seeds: Any
    subseed: Any
    sd_model_name: Any
    sd_model_hash: Any
    checkpoint_title: str | None
    version: Any


@final  # final: `"error" in details` tells a failure from a result (mypy narrows on it)
class JobResult(TypedDict):
    """`result_details` of a completed job."""

    images: list[str]  # gallery file names
    info: RunInfo
    timings: dict[str, float]  # seconds per phase


@final
class JobFailure(TypedDict):
    """`result_details` of a failed or cancelled job: one shape whoever ended it (transitions
    write all three; jobs that ended before they did may have `error` alone)."""

    error: str  # human readable reason
    server: NotRequired[str | None]  # the server it last ran on (None: it never ran)
    errors: NotRequired[list[AttemptError]]  # every failed attempt, oldest first


class PromptExpand(TypedDict, total=False):
    mode: Required[Literal["combinatorial", "random"]]
    count: int
    seed: int


class JobExtras(TypedDict, total=False):
    """Fields a job gets when it is made, or never (a job's key set does not change later)."""

    retry_of: str  # the job this one retries
    prompt_template: str | None  # None once the prompt was edited by hand
    prompt_expand: PromptExpand | None
    webhook_url: str  # each terminal state is POSTed there


class _JobBase(JobExtras):
    """The fields every job has from its creation (schema.new_job)."""

    mobilesd_job_id: str
    batch_id: str
    status: JobStatus
    creation_timestamp: str
    started_timestamp: str | None
    completion_timestamp: str | None
    target_server_alias: str | None
    assigned_server_alias: str | None
    source: JobSource
    source_ref: str | None
    position: int
    attempts: int
    progress: JobProgress | None
    generation_params: dict[str, Any]  # GenerationParams.model_dump(mode="json")
    result_details: JobResult | JobFailure | None


class Job(_JobBase, total=False):
    """A job as the store keeps it (jobs.json, jobs.journal, archive/*.jsonl).

    The fields below are written by transitions (jobs/transitions.py) and absent on records that
    never went through them; readers use `.get`. The public view (jobs/view.py) fills them in.
    """

    retry_at: float | None  # unix time before which a failed attempt is not retried
    errors: list[AttemptError]
    interruptions: int  # runs cut short by the core stopping (not the job's fault)


class JobView(_JobBase):
    """A job as clients see it: every route and every `job` event, whoever publishes it."""

    retry_at: float | None
    errors: list[AttemptError]
    interruptions: int
    waiting_reason: str | None  # pending jobs: why it does not run yet (None: its turn)
    pinned: bool  # kept when old finished jobs are pruned
    archived: bool  # finished longer ago than RETENTION_ARCHIVE_DAYS


class JobRemovedEvent(TypedDict):
    """Payload of a `job_removed` event (the job left the history)."""

    mobilesd_job_id: str


# Payload of a `job` event: the public view, the same as GET /api/v1/queue/jobs/{id} returns.
JobEvent = JobView


class QueueState(TypedDict):
    """GET /api/v1/queue, and the payload of a `queue` event."""

    paused: bool
    counts: dict[str, int]  # jobs per status, every status present


class BatchCancelled(TypedDict):
    batch_id: str
    cancelled: int
    mobilesd_job_ids: list[str]  # the jobs this call cancelled


class BatchRetried(TypedDict):
    batch_id: str
    retried: int
    mobilesd_job_ids: list[str]  # the new jobs


class BatchMoved(TypedDict):
    batch_id: str
    moved: int
    mobilesd_job_ids: list[str]  # the moved block, in its order


class BatchDeleted(TypedDict):
    batch_id: str
    removed: int


__all__ = [
    "ActiveStatus",
    "AttemptError",
    "BatchCancelled",
    "BatchDeleted",
    "BatchMoved",
    "BatchRetried",
    "EndStatus",
    "Job",
    "JobEvent",
    "JobExtras",
    "JobFailure",
    "JobProgress",
    "JobRemovedEvent",
    "JobResult",
    "JobSource",
    "JobStatus",
    "JobView",
    "PromptExpand",
    "QueueState",
    "RunInfo",
]
