"""What the API answers, as pydantic models: the OpenAPI document's response schemas are generated
from them (openapi.py), so each field is declared once, here.

The models describe the JSON the routes serve; they are not used to build it (the services return
plain dicts, which README, the phone page and the TUI read). tests/test_openapi.py checks real
answers against the generated schemas, with unknown fields refused, so a field served but not
declared here (or declared but not served) fails a test.

`absent()` marks a field that may be missing from an answer but is never null when present; a
field typed `X | None` without it is always present and may be null.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, RootModel

from ..civitai.downloads import ACTIVE
from ..schema import SEED_MAX, FieldProblem, GenerationParams, JobSource, JobStatus

NonNegative = Annotated[int, Field(ge=0)]
Time = datetime  # served as ISO 8601 text
JobId = Annotated[
    str,
    Field(
        pattern="^[0-9A-HJKMNP-TV-Z]{26}$", description="ULID: unique, sortable by creation time."
    ),
]
ModelKind = Literal["checkpoint", "lora"]
DownloadStatus = Literal["queued", "downloading", "verifying", "completed", "failed", "cancelled"]
assert set(get_args(DownloadStatus)) - {"completed", "failed", "cancelled"} == set(ACTIVE)


def absent(description: str | None = None, *, fmt: str | None = None, **constraints: Any) -> Any:
    """A field that may be missing (never null when present); its default is not documented.
    `fmt`: the JSON Schema format of the value."""

    def document(schema: dict[str, Any]) -> None:
        schema.pop("default", None)
        if fmt:
            schema["format"] = fmt

    return Field(default=None, description=description, json_schema_extra=document, **constraints)


class Response(BaseModel):
    """Base of the response models (their docstrings are the schemas' descriptions)."""


# --- jobs ---------------------------------------------------------------------------------------


class AttemptError(Response):
    """One failed attempt of a job."""

    attempt: int
    server: str = absent()
    error: str
    at: Time = absent()


class JobProgress(Response):
    """Live progress while the job is processing (not stored)."""

    fraction: float = Field(ge=0, le=1)
    phase: str = absent(
        "syncing model | verifying model copy | starting | waiting for server | loading model | "
        "sampling | finishing"
    )
    file: str = absent("While syncing: the library file being copied.")
    bytes_done: NonNegative = absent()
    bytes_total: NonNegative = absent()
    step: int = absent()
    steps: int = absent()
    batch: int = absent()
    batches: int = absent()
    eta_seconds: float | None = absent()
    preview: bool = absent("Whether a live preview image exists for the job.")


class RunInfo(Response):
    """What Forge reported about the run."""

    seed: int | None = absent()
    all_seeds: list[int] | None = absent()
    subseed: int | None = absent()
    sd_model_name: str | None = absent()
    sd_model_hash: str | None = absent()
    checkpoint_title: str | None = absent()
    version: str | None = absent()


class JobResult(Response):
    """result_details of a completed job."""

    images: list[str] = Field(description="Gallery file names (GET /gallery_files/{filename}).")
    info: RunInfo = absent()
    timings: dict[str, float] = absent("Seconds spent per phase.")


class JobFailure(Response):
    """result_details of a failed or cancelled job."""

    error: str = Field(description="Human readable reason.")
    server: str | None = absent("The server it last ran on; null: it never ran.")
    errors: list[AttemptError] = absent()


class PromptExpand(Response):
    """How the template was expanded; random mode with the seed used, so the same request
    replays the same prompts."""

    mode: Literal["combinatorial", "random"]
    count: int = absent()
    seed: int = absent()


class Job(Response):
    """A job as the API returns it, and as every `job` event carries it (jobs/view.py builds
    both, so they have the same fields)."""

    mobilesd_job_id: JobId
    status: JobStatus
    creation_timestamp: Time
    started_timestamp: Time | None
    completion_timestamp: Time | None
    target_server_alias: str | None = Field(description="null: any enabled server may take it.")
    assigned_server_alias: str | None = Field(description="The server that runs / ran it.")
    source: JobSource
    source_ref: str | None = Field(description="E.g. the inbox file name.")
    position: int = Field(description="Order among pending jobs; lower runs first.")
    attempts: NonNegative
    progress: JobProgress | None
    generation_params: GenerationParams
    result_details: JobResult | JobFailure | None
    waiting_reason: str | None = Field(
        description="Pending jobs: why it is not running yet (null: its turn, or not pending)."
    )
    retry_of: JobId = absent("The job this one retries.")
    batch_id: str = absent(
        "Shared by the jobs one request or job file created (a retry stays in its batch); see "
        "/api/v1/queue/batches/{batch_id}."
    )
    prompt_template: str | None = absent(
        "The template the prompt was expanded from (request with `expand`); null once the "
        "prompt was edited by hand."
    )
    prompt_expand: PromptExpand | None = absent()
    interruptions: NonNegative = Field(
        description="Runs cut short by the core stopping (not the job's fault)."
    )
    errors: list[AttemptError] = Field(description="Every failed attempt, oldest first.")
    retry_at: float | None = Field(
        description="Unix time before which a failed attempt is not retried."
    )
    webhook_url: str = absent(
        "Given with the request: each terminal state of the job is POSTed there as JSON, signed "
        "(see GenerateRequest.webhook_url).",
        fmt="uri",
    )
    pinned: bool = Field(
        description="Kept when old finished jobs are pruned (RETENTION_PRUNE_DAYS)."
    )
    archived: bool = Field(
        description="Finished longer ago than RETENTION_ARCHIVE_DAYS: listed only with "
        "?archived=1 or ?archived=only."
    )


class JobStatusView(Response):
    """The cheap view for polling."""

    mobilesd_job_id: JobId
    status: JobStatus
    progress: JobProgress | None
    result_details: JobResult | JobFailure | None


class JobAccepted(Response):
    """Jobs queued together, as one batch; a single job comes in full."""

    batch_id: str
    mobilesd_job_ids: list[JobId] = Field(min_length=1)
    mobilesd_job_id: JobId = absent("When one job was created.")
    job: Job = absent("When one job was created.")


class BatchResult(Response):
    """What a batch operation did."""

    batch_id: str
    cancelled: NonNegative = absent()
    retried: NonNegative = absent()
    moved: NonNegative = absent()
    removed: NonNegative = absent()
    mobilesd_job_ids: list[JobId] = absent("The jobs cancelled, created (retry) or moved.")


class JobList(Response):
    jobs: list[Job]
    total: NonNegative = Field(description="All matching jobs, not just this page.")


class ClearResult(Response):
    removed: NonNegative


class QueueCounts(Response):
    """Jobs per status, finished ones included."""

    pending: NonNegative
    processing: NonNegative
    completed: NonNegative
    failed: NonNegative
    cancelled: NonNegative


class QueueState(Response):
    paused: bool = Field(description="Paused: no new job is dispatched; running ones finish.")
    counts: QueueCounts


# --- sessions, notifications --------------------------------------------------------------------


class Session(Response):
    created: Time
    expires: Time = Field(description="Moves forward (at most daily) while in use.")
    current: bool = Field(description="The session of the browser asking.")


class SessionList(Response):
    """Signed-in browsers, oldest first (their ids are never shown)."""

    sessions: list[Session]


class SignedOut(Response):
    """How many sessions were ended."""

    revoked: NonNegative


class NotifyError(Response):
    """Why the last notice to a target failed (secrets masked as ***)."""

    at: Time
    kind: str = absent()
    message: str


class NotifyTarget(Response):
    index: int = Field(ge=1, description="Position in NOTIFY_URLS.")
    scheme: str = Field(description="The URL's scheme (ntfy, tgram, json, ...); never the URL.")
    sent: NonNegative
    failed: NonNegative = Field(description="Notices given up on after every try.")
    retried: NonNegative = Field(description="Failed tries that were tried again later.")
    last_sent: Time | None
    last_error: NotifyError | None


class WebhookError(Response):
    at: Time
    job_id: JobId
    target: str = Field(description="scheme://host:port only.")
    attempt: int = Field(ge=1)
    message: str = Field(
        description="Always `not delivered: no 2xx answer ...`: why (refused, timeout, HTTP "
        "status) is in the core's log only."
    )


class NotifyState(Response):
    """Apprise notices since the core started."""

    configured: bool = Field(description="Whether NOTIFY_URLS names any target.")
    targets: list[NotifyTarget]
    queued: NonNegative = absent()
    retrying: NonNegative = absent("Notices waiting to be tried again on a target.")
    dropped: NonNegative = absent("Notices dropped because the queue was full.")


class WebhookState(Response):
    """Webhook deliveries since the core started."""

    pending: NonNegative = absent("Not yet acknowledged (kept across restarts).")
    delivered: NonNegative = absent()
    failed: NonNegative = absent("Given up after WEBHOOK_MAX_ATTEMPTS tries.")
    attempts: NonNegative = absent()
    last_delivered: Time | None = absent()
    last_error: WebhookError | None = absent()
    secret_source: Literal["WEBHOOK_SECRET", "generated"] = Field(
        description="Where the signing key comes from: the variable, or the file "
        "CONFIG_DATA_PATH/webhook_secret made on first start."
    )


class RetentionState(Response):
    """RETENTION_ARCHIVE_DAYS, RETENTION_PRUNE_DAYS (0: off) and pins."""

    archive_days: float = Field(ge=0)
    prune_days: float = Field(ge=0)
    pinned: NonNegative
    pruned: NonNegative = Field(description="Jobs pruned since the core started.")


class NotificationStatus(Response):
    notify: NotifyState
    webhooks: WebhookState
    public_url: str = Field(description="The phone page's address used in links (PUBLIC_URL).")
    retention: RetentionState


# --- servers ------------------------------------------------------------------------------------


class ServerStatus(Response):
    alias: str = absent()
    online: bool
    enabled: bool = absent()
    checked: bool = absent("Whether it was probed yet.")
    latency_ms: float | None
    current_checkpoint: str | None
    busy: bool
    active_jobs: NonNegative = absent()
    max_concurrent: int = absent(ge=1)
    error: str | None = Field(
        description="Why it is offline; one coarse reason until its address has answered as "
        "Forge (the core's log names the cause)."
    )


class Server(Response):
    """A server as clients see it."""

    alias: str
    api_url: str
    username: str | None
    enabled: bool
    max_concurrent: int = Field(ge=1)
    checkpoint_dir: str | None = absent()
    lora_dir: str | None = absent()
    sync_cap_gb: float | None = absent()
    has_password: bool = Field(description="Passwords are never returned.")
    status: ServerStatus = absent()


class ServerCheckpoint(Response):
    title: str
    path: str
    model_name: str
    hash: str | None = absent()


class LibraryOnly(Response):
    """Models in the local library (CHECKPOINT_PATH, LORA_PATH) that this server does not list,
    compared by relative path (the server's folder may nest it deeper). A job naming one runs
    there only after model sync copied it, so only on a server with checkpoint_dir / lora_dir."""

    checkpoints: list[str] = Field(
        description="relativePath of each library checkpoint the server does not list."
    )
    loras: list[str] = Field(description="Names of library LoRAs the server does not list.")


class SyncedCopy(Response):
    """A file model sync copied to a server (the only files it may delete)."""

    kind: ModelKind
    relpath: str = Field(description="Under the library and the sync folder.")
    path: str = Field(description="Absolute path of the copy.")
    size: NonNegative
    sha256: str
    copied_at: Time
    last_used: float = Field(description="Epoch seconds; eviction takes the oldest.")


class ServerSync(Response):
    """Model sync state of a server with sync folders."""

    checkpoint_dir: str | None
    lora_dir: str | None
    cap_bytes: int | None = Field(description="sync_cap_gb, else MODEL_SYNC_CAP_GB; null: no cap.")
    used_bytes: NonNegative
    copies: list[SyncedCopy] = Field(description="Most recently used first.")
    copying: list[str] = Field(description="Target paths of copies in progress.")


class ServerModels(Response):
    """What one Forge server offers."""

    checkpoints: list[ServerCheckpoint]
    loras: list[str]
    samplers: list[str]
    schedulers: list[str]
    upscalers: list[str] = absent()
    styles: list[str] = Field(description="Style names (Forge's divider entries left out).")
    modules: list[str] = Field(
        description="VAE and text-encoder files (Forge's /sd-modules; A1111's /sd-vae)."
    )
    adetailer_models: list[str] | None = Field(
        description="ADetailer's detection models; null: no ADetailer."
    )
    controlnet_models: list[str] | None = Field(
        description="ControlNet models; null: no ControlNet."
    )
    controlnet_modules: list[str] | None = Field(
        description="ControlNet preprocessors; null: no ControlNet."
    )
    current_checkpoint: str | None = absent()
    library_only: LibraryOnly
    sync: ServerSync | None


# --- gallery and library ------------------------------------------------------------------------


class GalleryImage(Response):
    filename: str
    url: str
    thumb_url: str
    width: NonNegative
    height: NonNegative
    created: Time
    mobilesd_job_id: str | None
    prompt: str
    negative_prompt: str = absent()
    seed: Annotated[int, Field(ge=-1, le=SEED_MAX)] | None
    checkpoint: str | None


class GalleryList(Response):
    images: list[GalleryImage]
    total: NonNegative


class LibrarySidecar(Response):
    """What the files named after the model say (.civitai.info or .json, and a preview image).
    Paths are relative to the library folder; nothing is served."""

    file: str | None = Field(description="The metadata file, relative path.")
    name: str | None
    baseModel: str | None
    trainedWords: list[str]
    preview: str | None = Field(description="The preview image, relative path.")


class LibraryItem(Response):
    filename: str
    relativePath: str = Field(description="From the library folder, with '/'.")
    size: NonNegative
    modified: Time
    sidecar: LibrarySidecar | None
    on_servers: list[str] = Field(
        description="Aliases of the servers whose model lists (as last fetched) include this "
        "file; GET /api/v1/servers/{alias}/models?refresh=1 fetches them again."
    )


class Library(Response):
    """A scan of a local model folder, sorted by relativePath."""

    configured: bool = Field(
        description="False when the folder's variable is not set (feature off)."
    )
    root: str | None
    available: bool = Field(description="The folder could be read.")
    error: str | None = Field(description="Why the folder could not be read, naming the variable.")
    items: list[LibraryItem]
    total: NonNegative


# --- Civitai ------------------------------------------------------------------------------------


class LocalMatch(Response):
    relative_path: str = Field(description="In LORA_PATH or CHECKPOINT_PATH.")
    matched_by: Literal["hash", "name"]


class CivitaiResource(Response):
    """A model the image was made with, and where it is locally (null: missing)."""

    type: Literal["checkpoint", "lora", "other"]
    name: str | None = Field(description="As the image's data names it.")
    weight: float | None
    hash: str | None = Field(description="A hash naming the file (lower-case).")
    model_version_id: int | None = Field(description="What to download.")
    model_id: int | None
    model_name: str | None
    version_name: str | None
    model_type: str | None = Field(description="Civitai's type: LORA, Checkpoint...")
    base_model: str | None
    local: LocalMatch | None
    downloadable: bool = Field(description="POST /api/v1/civitai/download-model can fetch it.")


class CivitaiImage(Response):
    id: int
    url: str | None = absent()
    width: int | None = absent()
    height: int | None = absent()
    base_model: str | None = absent()


class CivitaiImageInfo(Response):
    image: CivitaiImage = absent()
    generation_params: GenerationParams
    resources: list[CivitaiResource]
    missing: list[CivitaiResource] = Field(description="The resources not found locally.")
    warnings: list[str] = absent("Values changed to fit (clamped, rounded) or not found.")


class CivitaiDownload(Response):
    """A Civitai model download."""

    download_id: str = Field(description="ULID.")
    status: DownloadStatus = Field(
        description="queued -> downloading -> verifying -> completed | failed | cancelled."
    )
    model_version_id: int
    file_id: int | None = absent()
    model_id: int | None = absent()
    model_name: str | None = absent()
    version_name: str | None = absent()
    model_type: str = absent()
    base_model: str | None = absent()
    kind: ModelKind
    filename: str | None = Field(description="null until the storage names it.")
    relative_path: str | None = Field(description="In LORA_PATH or CHECKPOINT_PATH, '/' separated.")
    bytes_done: NonNegative
    bytes_total: NonNegative | None
    error: str | None = Field(description="Why it failed and what to do.")
    error_code: str | None = absent()
    note: str | None = absent("E.g. a retry under way.")
    attempts: NonNegative = absent()
    created: Time = absent()
    updated: Time = absent()


class CivitaiDownloadAccepted(Response):
    download_id: str
    download: CivitaiDownload = absent()


class CivitaiDownloadList(Response):
    """Newest first; unfinished ones resume when the core restarts."""

    downloads: list[CivitaiDownload]


# --- meta ---------------------------------------------------------------------------------------


class Health(Response):
    status: Literal["ok"]
    version: str


class ErrorBody(Response):
    code: str = Field(
        description="Machine-readable: bad_json, unauthorized, job_not_found, server_not_found, "
        "image_not_found, server_exists, wrong_state, too_large, invalid_fields, bad_filename, "
        "server_unavailable, not_found, internal, ..."
    )
    message: str
    details: list[FieldProblem] | dict[str, Any] = absent(
        "422: one FieldProblem per field; 409 wrong_state: "
        '{"status": <the job\'s status>}; otherwise absent.'
    )


class Error(Response):
    """The one error shape of every route."""

    error: ErrorBody


# --- data of the Server-Sent Events (GET /api/v1/events) ----------------------------------------


class JobRemovedEvent(Response):
    mobilesd_job_id: JobId


class ServerRemoved(Response):
    model_config = ConfigDict(extra="forbid")

    alias: str
    removed: Literal[True]


class ServerEvent(RootModel[ServerStatus | ServerRemoved]):
    pass


class ImageAdded(Response):
    model_config = ConfigDict(extra="forbid")

    added: GalleryImage


class ImageRemoved(Response):
    model_config = ConfigDict(extra="forbid")

    removed: GalleryImage


class ImageEvent(RootModel[ImageAdded | ImageRemoved]):
    pass


class DownloadEvent(RootModel[CivitaiDownload]):
    """A Civitai download after a change (progress: a few per second)."""


class SyncEvent(Response):
    """Model sync of one file to one server (progress: a few per second), or a copy evicted by
    the cache cap."""

    server: str
    kind: ModelKind
    file: str = Field(description="relativePath in the library.")
    path: str = Field(description="Where the copy goes on the server's folder.")
    status: Literal["copying", "verifying", "done", "failed", "evicted"]
    bytes_done: NonNegative
    bytes_total: NonNegative
    jobs: list[JobId] = Field(description="Jobs waiting for this copy.")
    error: str | None = absent()


class ResetEvent(Response):
    """The events a reconnecting client missed are gone: reload everything."""

    model_config = ConfigDict(extra="allow")


# Event name -> the model of its data.
EVENT_DATA: dict[str, type[BaseModel]] = {
    "job": Job,
    "job_removed": JobRemovedEvent,
    "server": ServerEvent,
    "image": ImageEvent,
    "download": DownloadEvent,
    "sync": SyncEvent,
    "reset": ResetEvent,
    "queue": QueueState,
}


# --- uploads ------------------------------------------------------------------------------------


class UploadStored(Response):
    """An image stored for img2img, inpaint or upscale jobs (the same picture again: the same
    sha256)."""

    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    ref: str = Field(description="How a job names it: upload:<sha256>.")
    width: int
    height: int
    bytes: int = Field(description="Size of the stored PNG.")


class UpscaleQueued(Response):
    """The upscale jobs, one per image, in one batch."""

    batch_id: str
    mobilesd_job_ids: list[JobId]
