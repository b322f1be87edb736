"""The OpenAPI 3.1 document of the core's HTTP API: the reference beside docs/http-api.md.

Request bodies come from the pydantic models (the same ones the routes validate with); responses
are described here by hand. tests/test_openapi.py keeps both honest: every registered route must be
documented (and every documented one registered), and real responses must validate against it.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from pydantic import BaseModel

from .. import __version__
from ..civitai.downloads import ACTIVE
from ..civitai.schema import DownloadRequest, ImageInfoRequest
from ..jobfile_schema import SERVER_DESCRIPTION, expand_schema, model_schemas
from ..jobfiles import MAX_JOBS
from ..schema import ALL_STATUSES, SEED_MAX, TERMINAL_STATUSES
from .auth import SESSION_COOKIE

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    """`schema` or null."""
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    out.update(extra)
    return out


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
JOB_ID: Schema = {
    "type": "string",
    "description": "ULID: unique, sortable by creation time.",
    "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$",
}


# --- response schemas -------------------------------------------------------------------------


def _response_schemas() -> dict[str, Schema]:
    terminal = [s for s in ALL_STATUSES if s in TERMINAL_STATUSES]
    attempt_error = _obj(
        {
            "attempt": INT,
            "server": STR,
            "error": STR,
            "at": TIME,
        },
        ["attempt", "error"],
        description="One failed attempt of a job.",
    )
    return {
        "JobStatus": {"type": "string", "enum": list(ALL_STATUSES)},
        "JobSource": {"type": "string", "enum": ["tui", "web", "api", "inbox", "cli"]},
        "AttemptError": attempt_error,
        "JobProgress": _obj(
            {
                "fraction": {"type": "number", "minimum": 0, "maximum": 1},
                "phase": {
                    "type": "string",
                    "description": (
                        "syncing model | verifying model copy | starting | waiting for server | "
                        "loading model | sampling | finishing"
                    ),
                },
                "file": {
                    **STR,
                    "description": "While syncing: the library file being copied.",
                },
                "bytes_done": {"type": "integer", "minimum": 0},
                "bytes_total": {"type": "integer", "minimum": 0},
                "step": INT,
                "steps": INT,
                "batch": INT,
                "batches": INT,
                "eta_seconds": _nullable(NUM),
                "preview": {
                    "type": "boolean",
                    "description": "Whether a live preview image exists for the job.",
                },
            },
            ["fraction"],
            description="Live progress while the job is processing (not stored).",
        ),
        "JobResult": _obj(
            {
                "images": {
                    "type": "array",
                    "items": STR,
                    "description": "Gallery file names (GET /gallery_files/{filename}).",
                },
                "info": _obj(
                    {
                        "seed": _nullable(INT),
                        "all_seeds": _nullable({"type": "array", "items": INT}),
                        "subseed": _nullable(INT),
                        "sd_model_name": _nullable(STR),
                        "sd_model_hash": _nullable(STR),
                        "checkpoint_title": _nullable(STR),
                        "version": _nullable(STR),
                    },
                    description="What Forge reported about the run.",
                ),
                "timings": {
                    "type": "object",
                    "additionalProperties": NUM,
                    "description": "Seconds spent per phase.",
                },
            },
            ["images"],
            description="result_details of a completed job.",
        ),
        "JobFailure": _obj(
            {
                "error": {"type": "string", "description": "Human readable reason."},
                "server": {
                    "type": ["string", "null"],
                    "description": "The server it last ran on; null: it never ran.",
                },
                "errors": {"type": "array", "items": _ref("AttemptError")},
            },
            ["error"],
            description="result_details of a failed or cancelled job.",
        ),
        "Job": _obj(
            {
                "mobilesd_job_id": JOB_ID,
                "status": _ref("JobStatus"),
                "creation_timestamp": TIME,
                "started_timestamp": _nullable(TIME),
                "completion_timestamp": _nullable(TIME),
                "target_server_alias": {
                    "type": ["string", "null"],
                    "description": "null: any enabled server may take it.",
                },
                "assigned_server_alias": {
                    "type": ["string", "null"],
                    "description": "The server that runs / ran it.",
                },
                "source": _ref("JobSource"),
                "source_ref": {
                    "type": ["string", "null"],
                    "description": "E.g. the inbox file name.",
                },
                "position": {
                    "type": "integer",
                    "description": "Order among pending jobs; lower runs first.",
                },
                "attempts": {"type": "integer", "minimum": 0},
                "progress": _nullable(_ref("JobProgress")),
                "generation_params": _ref("GenerationParams"),
                "result_details": {
                    "anyOf": [_ref("JobResult"), _ref("JobFailure"), {"type": "null"}],
                },
                "waiting_reason": {
                    "type": ["string", "null"],
                    "description": "Pending jobs: why it is not running yet (null: its turn).",
                },
                "retry_of": {**JOB_ID, "description": "The job this one retries."},
                "batch_id": {
                    "type": "string",
                    "description": "Shared by the jobs one request or job file created "
                    "(a retry stays in its batch); see /api/v1/queue/batches/{batch_id}.",
                },
                "prompt_template": {
                    "type": ["string", "null"],
                    "description": "The template the prompt was expanded from (request with "
                    "`expand`); null once the prompt was edited by hand.",
                },
                "prompt_expand": {
                    "type": ["object", "null"],
                    "properties": {
                        "mode": {"type": "string", "enum": ["combinatorial", "random"]},
                        "count": INT,
                        "seed": INT,
                    },
                    "required": ["mode"],
                    "description": "How the template was expanded; random mode with the seed "
                    "used, so the same request replays the same prompts.",
                },
                "interruptions": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Runs cut short by the core stopping (not the job's fault).",
                },
                "errors": {"type": "array", "items": _ref("AttemptError")},
                "retry_at": {
                    "type": ["number", "null"],
                    "description": "Unix time before which a failed attempt is not retried.",
                },
                "webhook_url": {
                    "type": "string",
                    "format": "uri",
                    "description": (
                        "Given with the request: each terminal state of the job is POSTed "
                        "there as JSON, signed (see GenerateRequest.webhook_url)."
                    ),
                },
                "pinned": {
                    "type": "boolean",
                    "description": "Kept when old finished jobs are pruned (RETENTION_PRUNE_DAYS).",
                },
                "archived": {
                    "type": "boolean",
                    "description": (
                        "Finished longer ago than RETENTION_ARCHIVE_DAYS: listed only with "
                        "?archived=1 or ?archived=only."
                    ),
                },
            },
            [
                "mobilesd_job_id",
                "status",
                "creation_timestamp",
                "started_timestamp",
                "completion_timestamp",
                "target_server_alias",
                "assigned_server_alias",
                "source",
                "source_ref",
                "position",
                "attempts",
                "progress",
                "generation_params",
                "result_details",
            ],
            description="A job as the API returns it.",
        ),
        "JobStatusView": _obj(
            {
                "mobilesd_job_id": JOB_ID,
                "status": _ref("JobStatus"),
                "progress": _nullable(_ref("JobProgress")),
                "result_details": {
                    "anyOf": [_ref("JobResult"), _ref("JobFailure"), {"type": "null"}],
                },
            },
            ["mobilesd_job_id", "status", "progress", "result_details"],
            description="The cheap view for polling.",
        ),
        "JobAccepted": _obj(
            {
                "batch_id": STR,
                "mobilesd_job_ids": {"type": "array", "items": JOB_ID, "minItems": 1},
                "mobilesd_job_id": {**JOB_ID, "description": "When one job was created."},
                "job": {**_ref("Job"), "description": "When one job was created."},
            },
            ["batch_id", "mobilesd_job_ids"],
            description="Jobs queued together, as one batch; a single job comes in full.",
        ),
        "JobEdit": _obj(
            {
                "generation_params": {
                    "type": "object",
                    "description": "Any generation_params fields; merged onto the job's, then "
                    "the whole is validated like a new job's.",
                },
                "target_server_alias": {"type": ["string", "null"]},
            },
            additionalProperties=False,
            description="A change of a pending job.",
        ),
        "BatchResult": _obj(
            {
                "batch_id": STR,
                "cancelled": {"type": "integer", "minimum": 0},
                "retried": {"type": "integer", "minimum": 0},
                "moved": {"type": "integer", "minimum": 0},
                "removed": {"type": "integer", "minimum": 0},
                "mobilesd_job_ids": {
                    "type": "array",
                    "items": JOB_ID,
                    "description": "The jobs cancelled, created (retry) or moved.",
                },
            },
            ["batch_id"],
            description="What a batch operation did.",
        ),
        "JobList": _obj(
            {
                "jobs": {"type": "array", "items": _ref("Job")},
                "total": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "All matching jobs, not just this page.",
                },
            },
            ["jobs", "total"],
        ),
        "MoveRequest": {
            "oneOf": [
                _obj(
                    {"to": {"type": "string", "enum": ["top", "bottom", "up", "down"]}},
                    ["to"],
                    additionalProperties=False,
                ),
                _obj(
                    {"before": {**JOB_ID, "description": "A pending job to move in front of."}},
                    ["before"],
                    additionalProperties=False,
                ),
            ],
        },
        "ClearRequest": _obj(
            {
                "status": {
                    "type": "array",
                    "items": {"type": "string", "enum": terminal},
                    "default": terminal,
                },
            },
        ),
        "ClearResult": _obj({"removed": {"type": "integer", "minimum": 0}}, ["removed"]),
        "SessionList": _obj(
            {
                "sessions": {
                    "type": "array",
                    "items": _obj(
                        {
                            "created": TIME,
                            "expires": {
                                **TIME,
                                "description": "Moves forward (at most daily) while in use.",
                            },
                            "current": {
                                "type": "boolean",
                                "description": "The session of the browser asking.",
                            },
                        },
                        ["created", "expires", "current"],
                    ),
                }
            },
            ["sessions"],
            description="Signed-in browsers, oldest first (their ids are never shown).",
        ),
        "SignedOut": _obj(
            {"revoked": {"type": "integer", "minimum": 0}},
            ["revoked"],
            description="How many sessions were ended.",
        ),
        "QueueState": _obj(
            {
                "paused": {
                    "type": "boolean",
                    "description": "Paused: no new job is dispatched; running ones finish.",
                },
                "counts": _obj(
                    {s: {"type": "integer", "minimum": 0} for s in ALL_STATUSES},
                    list(ALL_STATUSES),
                    description="Jobs per status, finished ones included.",
                ),
            },
            ["paused", "counts"],
        ),
        "NotifyError": _obj(
            {"at": TIME, "kind": STR, "message": STR},
            ["at", "message"],
            description="Why the last notice to a target failed (secrets masked as ***).",
        ),
        "NotifyTarget": _obj(
            {
                "index": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Position in NOTIFY_URLS.",
                },
                "scheme": {
                    "type": "string",
                    "description": "The URL's scheme (ntfy, tgram, json, ...); never the URL.",
                },
                "sent": {"type": "integer", "minimum": 0},
                "failed": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Notices given up on after every try.",
                },
                "retried": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Failed tries that were tried again later.",
                },
                "last_sent": _nullable(TIME),
                "last_error": _nullable(_ref("NotifyError")),
            },
            ["index", "scheme", "sent", "failed", "retried", "last_sent", "last_error"],
        ),
        "WebhookError": _obj(
            {
                "at": TIME,
                "job_id": JOB_ID,
                "target": {"type": "string", "description": "scheme://host:port only."},
                "attempt": {"type": "integer", "minimum": 1},
                "message": {
                    **STR,
                    "description": "Always `not delivered: no 2xx answer ...`: why (refused, "
                    "timeout, HTTP status) is in the core's log only.",
                },
            },
            ["at", "job_id", "target", "attempt", "message"],
        ),
        "NotificationStatus": _obj(
            {
                "notify": _obj(
                    {
                        "configured": {
                            "type": "boolean",
                            "description": "Whether NOTIFY_URLS names any target.",
                        },
                        "targets": {"type": "array", "items": _ref("NotifyTarget")},
                        "queued": {"type": "integer", "minimum": 0},
                        "retrying": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Notices waiting to be tried again on a target.",
                        },
                        "dropped": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Notices dropped because the queue was full.",
                        },
                    },
                    ["configured", "targets"],
                    description="Apprise notices since the core started.",
                ),
                "webhooks": _obj(
                    {
                        "pending": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Not yet acknowledged (kept across restarts).",
                        },
                        "delivered": {"type": "integer", "minimum": 0},
                        "failed": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Given up after WEBHOOK_MAX_ATTEMPTS tries.",
                        },
                        "attempts": {"type": "integer", "minimum": 0},
                        "last_delivered": _nullable(TIME),
                        "last_error": _nullable(_ref("WebhookError")),
                        "secret_source": {
                            "type": "string",
                            "enum": ["WEBHOOK_SECRET", "generated"],
                            "description": (
                                "Where the signing key comes from: the variable, or the file "
                                "CONFIG_DATA_PATH/webhook_secret made on first start."
                            ),
                        },
                    },
                    ["secret_source"],
                    description="Webhook deliveries since the core started.",
                ),
                "public_url": {
                    "type": "string",
                    "description": "The phone page's address used in links (PUBLIC_URL).",
                },
                "retention": _obj(
                    {
                        "archive_days": {"type": "number", "minimum": 0},
                        "prune_days": {"type": "number", "minimum": 0},
                        "pinned": {"type": "integer", "minimum": 0},
                        "pruned": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Jobs pruned since the core started.",
                        },
                    },
                    ["archive_days", "prune_days", "pinned", "pruned"],
                    description="RETENTION_ARCHIVE_DAYS, RETENTION_PRUNE_DAYS (0: off) and pins.",
                ),
            },
            ["notify", "webhooks", "public_url", "retention"],
        ),
        "ServerStatus": _obj(
            {
                "alias": STR,
                "online": BOOL,
                "enabled": BOOL,
                "checked": {"type": "boolean", "description": "Whether it was probed yet."},
                "latency_ms": _nullable(NUM),
                "current_checkpoint": _nullable(STR),
                "busy": BOOL,
                "active_jobs": {"type": "integer", "minimum": 0},
                "max_concurrent": {"type": "integer", "minimum": 1},
                "error": {
                    "type": ["string", "null"],
                    "description": "Why it is offline; one coarse reason until its address "
                    "has answered as Forge (the core's log names the cause).",
                },
            },
            ["online", "latency_ms", "current_checkpoint", "busy", "error"],
        ),
        "Server": _obj(
            {
                "alias": STR,
                "api_url": STR,
                "username": _nullable(STR),
                "enabled": BOOL,
                "max_concurrent": {"type": "integer", "minimum": 1},
                "checkpoint_dir": _nullable(STR),
                "lora_dir": _nullable(STR),
                "sync_cap_gb": _nullable(NUM),
                "has_password": {
                    "type": "boolean",
                    "description": "Passwords are never returned.",
                },
                "status": _ref("ServerStatus"),
            },
            ["alias", "api_url", "username", "enabled", "max_concurrent", "has_password"],
            description="A server as clients see it.",
        ),
        "ServerModels": _obj(
            {
                "checkpoints": {
                    "type": "array",
                    "items": _obj(
                        {
                            "title": STR,
                            "path": STR,
                            "model_name": STR,
                            "hash": _nullable(STR),
                        },
                        ["title", "path", "model_name"],
                    ),
                },
                "loras": {"type": "array", "items": STR},
                "samplers": {"type": "array", "items": STR},
                "schedulers": {"type": "array", "items": STR},
                "upscalers": {"type": "array", "items": STR},
                "styles": {
                    "type": "array",
                    "items": STR,
                    "description": "Style names (Forge's divider entries left out).",
                },
                "modules": {
                    "type": "array",
                    "items": STR,
                    "description": "VAE and text-encoder files (Forge's /sd-modules; "
                    "A1111's /sd-vae).",
                },
                **{
                    name: _nullable({"type": "array", "items": STR, "description": text})
                    for name, text in (
                        ("adetailer_models", "ADetailer's detection models; null: no ADetailer."),
                        ("controlnet_models", "ControlNet models; null: no ControlNet."),
                        ("controlnet_modules", "ControlNet preprocessors; null: no ControlNet."),
                    )
                },
                "current_checkpoint": _nullable(STR),
                "library_only": _obj(
                    {
                        "checkpoints": {
                            "type": "array",
                            "items": STR,
                            "description": "relativePath of each library checkpoint the "
                            "server does not list.",
                        },
                        "loras": {
                            "type": "array",
                            "items": STR,
                            "description": "Names of library LoRAs the server does not list.",
                        },
                    },
                    ["checkpoints", "loras"],
                    description=(
                        "Models in the local library (CHECKPOINT_PATH, LORA_PATH) that this "
                        "server does not list, compared by relative path (the server's folder "
                        "may nest it deeper). A job naming one runs there only after model sync "
                        "copied it, so only on a server with checkpoint_dir / lora_dir."
                    ),
                ),
                "sync": _nullable(_ref("ServerSync")),
            },
            [
                "checkpoints",
                "loras",
                "samplers",
                "schedulers",
                "styles",
                "modules",
                "library_only",
                "sync",
            ],
            description="What one Forge server offers.",
        ),
        "SyncedCopy": _obj(
            {
                "kind": {"type": "string", "enum": ["checkpoint", "lora"]},
                "relpath": {**STR, "description": "Under the library and the sync folder."},
                "path": {**STR, "description": "Absolute path of the copy."},
                "size": {"type": "integer", "minimum": 0},
                "sha256": STR,
                "copied_at": TIME,
                "last_used": {**NUM, "description": "Epoch seconds; eviction takes the oldest."},
            },
            ["kind", "relpath", "path", "size", "sha256", "copied_at", "last_used"],
            description="A file model sync copied to a server (the only files it may delete).",
        ),
        "ServerSync": _obj(
            {
                "checkpoint_dir": _nullable(STR),
                "lora_dir": _nullable(STR),
                "cap_bytes": _nullable(
                    {
                        "type": "integer",
                        "description": "sync_cap_gb, else MODEL_SYNC_CAP_GB; null: no cap.",
                    }
                ),
                "used_bytes": {"type": "integer", "minimum": 0},
                "copies": {
                    "type": "array",
                    "items": _ref("SyncedCopy"),
                    "description": "Most recently used first.",
                },
                "copying": {
                    "type": "array",
                    "items": STR,
                    "description": "Target paths of copies in progress.",
                },
            },
            ["checkpoint_dir", "lora_dir", "cap_bytes", "used_bytes", "copies", "copying"],
            description="Model sync state of a server with sync folders.",
        ),
        "GalleryImage": _obj(
            {
                "filename": STR,
                "url": STR,
                "thumb_url": STR,
                "width": {"type": "integer", "minimum": 0},
                "height": {"type": "integer", "minimum": 0},
                "created": TIME,
                "mobilesd_job_id": _nullable(STR),
                "prompt": STR,
                "negative_prompt": STR,
                "seed": _nullable({"type": "integer", "minimum": -1, "maximum": SEED_MAX}),
                "checkpoint": _nullable(STR),
            },
            [
                "filename",
                "url",
                "thumb_url",
                "width",
                "height",
                "created",
                "mobilesd_job_id",
                "prompt",
                "seed",
                "checkpoint",
            ],
        ),
        "GalleryList": _obj(
            {
                "images": {"type": "array", "items": _ref("GalleryImage")},
                "total": {"type": "integer", "minimum": 0},
            },
            ["images", "total"],
        ),
        "LibrarySidecar": _obj(
            {
                "file": _nullable({**STR, "description": "The metadata file, relative path."}),
                "name": _nullable(STR),
                "baseModel": _nullable(STR),
                "trainedWords": {"type": "array", "items": STR},
                "preview": _nullable({**STR, "description": "The preview image, relative path."}),
            },
            ["file", "name", "baseModel", "trainedWords", "preview"],
            description="What the files named after the model say (.civitai.info or .json, and "
            "a preview image). Paths are relative to the library folder; nothing is served.",
        ),
        "LibraryItem": _obj(
            {
                "filename": STR,
                "relativePath": {**STR, "description": "From the library folder, with '/'."},
                "size": {"type": "integer", "minimum": 0},
                "modified": TIME,
                "sidecar": _nullable(_ref("LibrarySidecar")),
                "on_servers": {
                    "type": "array",
                    "items": STR,
                    "description": (
                        "Aliases of the servers whose model lists (as last fetched) include this "
                        "file; GET /api/v1/servers/{alias}/models?refresh=1 fetches them again."
                    ),
                },
            },
            ["filename", "relativePath", "size", "modified", "sidecar", "on_servers"],
        ),
        "Library": _obj(
            {
                "configured": {
                    **BOOL,
                    "description": "False when the folder's variable is not set (feature off).",
                },
                "root": _nullable(STR),
                "available": {**BOOL, "description": "The folder could be read."},
                "error": _nullable(
                    {**STR, "description": "Why the folder could not be read, naming the variable."}
                ),
                "items": {"type": "array", "items": _ref("LibraryItem")},
                "total": {"type": "integer", "minimum": 0},
            },
            ["configured", "root", "available", "error", "items", "total"],
            description="A scan of a local model folder, sorted by relativePath.",
        ),
        "Health": _obj(
            {"status": {"const": "ok"}, "version": STR},
            ["status", "version"],
        ),
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "code": {
                            "type": "string",
                            "description": (
                                "Machine-readable: bad_json, unauthorized, job_not_found, "
                                "server_not_found, image_not_found, server_exists, wrong_state, "
                                "too_large, invalid_fields, bad_filename, server_unavailable, "
                                "not_found, internal, ..."
                            ),
                        },
                        "message": STR,
                        "details": {
                            "description": (
                                "422: one FieldProblem per field; 409 wrong_state: "
                                '{"status": <the job\'s status>}; otherwise absent.'
                            ),
                            "anyOf": [
                                {"type": "array", "items": _ref("FieldProblem")},
                                {"type": "object"},
                            ],
                        },
                    },
                    ["code", "message"],
                ),
            },
            ["error"],
            description="The one error shape of every route.",
        ),
        # Data of the Server-Sent Events (see GET /api/v1/events).
        "JobRemovedEvent": _obj({"mobilesd_job_id": JOB_ID}, ["mobilesd_job_id"]),
        "ServerEvent": {
            "anyOf": [
                _ref("ServerStatus"),
                _obj(
                    {"alias": STR, "removed": {"const": True}},
                    ["alias", "removed"],
                    additionalProperties=False,
                ),
            ],
        },
        "ImageEvent": {
            "oneOf": [
                _obj({"added": _ref("GalleryImage")}, ["added"], additionalProperties=False),
                _obj({"removed": _ref("GalleryImage")}, ["removed"], additionalProperties=False),
            ],
        },
        "DownloadEvent": {
            **_ref("CivitaiDownload"),
            "description": "A Civitai download after a change (progress: a few per second).",
        },
        "SyncEvent": _obj(
            {
                "server": STR,
                "kind": {"type": "string", "enum": ["checkpoint", "lora"]},
                "file": {**STR, "description": "relativePath in the library."},
                "path": {**STR, "description": "Where the copy goes on the server's folder."},
                "status": {
                    "type": "string",
                    "enum": ["copying", "verifying", "done", "failed", "evicted"],
                },
                "bytes_done": {"type": "integer", "minimum": 0},
                "bytes_total": {"type": "integer", "minimum": 0},
                "jobs": {
                    "type": "array",
                    "items": JOB_ID,
                    "description": "Jobs waiting for this copy.",
                },
                "error": _nullable(STR),
            },
            ["server", "kind", "file", "path", "status", "bytes_done", "bytes_total", "jobs"],
            description=(
                "Model sync of one file to one server (progress: a few per second), or a copy "
                "evicted by the cache cap."
            ),
        ),
        **_civitai_schemas(),
        "ResetEvent": {
            "type": "object",
            "description": "The events a reconnecting client missed are gone: reload everything.",
        },
    }


def _civitai_schemas() -> dict[str, Schema]:
    resource = _obj(
        {
            "type": {"type": "string", "enum": ["checkpoint", "lora", "other"]},
            "name": _nullable({**STR, "description": "As the image's data names it."}),
            "weight": _nullable(NUM),
            "hash": _nullable({**STR, "description": "A hash naming the file (lower-case)."}),
            "model_version_id": _nullable({**INT, "description": "What to download."}),
            "model_id": _nullable(INT),
            "model_name": _nullable(STR),
            "version_name": _nullable(STR),
            "model_type": _nullable({**STR, "description": "Civitai's type: LORA, Checkpoint..."}),
            "base_model": _nullable(STR),
            "local": _nullable(
                _obj(
                    {
                        "relative_path": {
                            **STR,
                            "description": "In LORA_PATH or CHECKPOINT_PATH.",
                        },
                        "matched_by": {"type": "string", "enum": ["hash", "name"]},
                    },
                    ["relative_path", "matched_by"],
                )
            ),
            "downloadable": {
                **BOOL,
                "description": "POST /api/v1/civitai/download-model can fetch it.",
            },
        },
        [
            "type",
            "name",
            "weight",
            "hash",
            "model_version_id",
            "model_id",
            "model_name",
            "version_name",
            "model_type",
            "base_model",
            "local",
            "downloadable",
        ],
        description="A model the image was made with, and where it is locally (null: missing).",
    )
    download = _obj(
        {
            "download_id": {**STR, "description": "ULID."},
            "status": {
                "type": "string",
                "enum": [*sorted(ACTIVE), "completed", "failed", "cancelled"],
                "description": "queued -> downloading -> verifying -> completed | failed | "
                "cancelled.",
            },
            "model_version_id": INT,
            "file_id": _nullable(INT),
            "model_id": _nullable(INT),
            "model_name": _nullable(STR),
            "version_name": _nullable(STR),
            "model_type": STR,
            "base_model": _nullable(STR),
            "kind": {"type": "string", "enum": ["checkpoint", "lora"]},
            "filename": _nullable({**STR, "description": "null until the storage names it."}),
            "relative_path": _nullable(
                {**STR, "description": "In LORA_PATH or CHECKPOINT_PATH, '/' separated."}
            ),
            "bytes_done": {"type": "integer", "minimum": 0},
            "bytes_total": _nullable({"type": "integer", "minimum": 0}),
            "error": _nullable({**STR, "description": "Why it failed and what to do."}),
            "error_code": _nullable(STR),
            "note": _nullable({**STR, "description": "E.g. a retry under way."}),
            "attempts": {"type": "integer", "minimum": 0},
            "created": TIME,
            "updated": TIME,
        },
        [
            "download_id",
            "status",
            "model_version_id",
            "kind",
            "filename",
            "relative_path",
            "bytes_done",
            "bytes_total",
            "error",
        ],
        description="A Civitai model download.",
    )
    return {
        "CivitaiImageInfoRequest": _request_schema(ImageInfoRequest, "url", "image_id"),
        "CivitaiDownloadRequest": _request_schema(DownloadRequest, "url", "model_version_id"),
        "CivitaiResource": resource,
        "CivitaiImageInfo": _obj(
            {
                "image": _obj(
                    {
                        "id": INT,
                        "url": _nullable(STR),
                        "width": _nullable(INT),
                        "height": _nullable(INT),
                        "base_model": _nullable(STR),
                    },
                    ["id"],
                ),
                "generation_params": _ref("GenerationParams"),
                "resources": {"type": "array", "items": _ref("CivitaiResource")},
                "missing": {
                    "type": "array",
                    "items": _ref("CivitaiResource"),
                    "description": "The resources not found locally.",
                },
                "warnings": {
                    "type": "array",
                    "items": STR,
                    "description": "Values changed to fit (clamped, rounded) or not found.",
                },
            },
            ["generation_params", "resources", "missing"],
        ),
        "CivitaiDownload": download,
        "CivitaiDownloadAccepted": _obj(
            {"download_id": STR, "download": _ref("CivitaiDownload")},
            ["download_id"],
        ),
        "CivitaiDownloadList": _obj(
            {"downloads": {"type": "array", "items": _ref("CivitaiDownload")}},
            ["downloads"],
            description="Newest first; unfinished ones resume when the core restarts.",
        ),
    }


def _request_schema(model: type[BaseModel], *one_of: str) -> Schema:
    """A request body from its pydantic model, with the exactly-one-of rule its validator adds."""
    schema = model.model_json_schema()
    schema.pop("title", None)
    schema["oneOf"] = [{"required": [name]} for name in one_of]
    return schema


def _generate_request(params: Schema) -> Schema:
    """POST /api/v1/generate's body: generation_params [+ matrix], or defaults + jobs (the job
    file shapes, expanded by the same code); `expand` with either."""
    job_fields = {
        "type": "object",
        "properties": {
            **copy.deepcopy(params["properties"]),
            "server": {"type": ["string", "null"], "description": SERVER_DESCRIPTION},
            "expand": expand_schema(),
        },
        "additionalProperties": False,
        "description": "generation_params fields plus `server` and `expand`, as in job files.",
    }
    return {
        "type": "object",
        "properties": {
            "target_server_alias": {
                "type": ["string", "null"],
                "description": "null: any enabled server; a job's own `server` wins.",
            },
            "generation_params": _ref("GenerationParams"),
            "matrix": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {"type": "array", "minItems": 1},
                "description": f"One job per combination (at most {MAX_JOBS}); a key that is a "
                "generation_params field sets it, any other is a {placeholder} in strings.",
            },
            "defaults": {**job_fields, "description": "Fields every job starts from."},
            "jobs": {"type": "array", "minItems": 1, "maxItems": MAX_JOBS, "items": job_fields},
            "expand": expand_schema(),
            "webhook_url": {
                "type": ["string", "null"],
                "format": "uri",
                "description": "http(s) URL that gets a signed JSON POST of each job the request "
                "creates, on every terminal state (X-MobileSD-Signature: sha256=<HMAC>).",
            },
        },
        "additionalProperties": False,
        "oneOf": [
            {
                "required": ["generation_params"],
                "not": {"anyOf": [{"required": ["defaults"]}, {"required": ["jobs"]}]},
            },
            {
                "required": ["jobs"],
                "not": {"anyOf": [{"required": ["generation_params"]}, {"required": ["matrix"]}]},
            },
        ],
        "description": "One job, a sweep (generation_params + matrix) or defaults + jobs.",
    }


# Event name -> schema of its data.
EVENT_DATA: dict[str, str] = {
    "job": "Job",
    "job_removed": "JobRemovedEvent",
    "server": "ServerEvent",
    "image": "ImageEvent",
    "download": "DownloadEvent",
    "sync": "SyncEvent",
    "reset": "ResetEvent",
    "queue": "QueueState",
}


# --- responses and parameters -----------------------------------------------------------------

_ERRORS: dict[str, tuple[str, str]] = {
    # status: (component name, description)
    "400": ("BadRequest", "The body is not JSON, not an object, or a name is unusable."),
    "401": ("Unauthorized", "Missing or wrong access token."),
    "403": (
        "CrossSite",
        "A cookie-authenticated change that does not come from the core's own page.",
    ),
    "404": ("NotFound", "No such job, server, image or download."),
    "409": ("Conflict", "Wrong state for this operation, or the name is taken."),
    "408": ("BodyTimeout", "The request body did not arrive in time (30 s); connection closed."),
    "413": ("TooLarge", "The request body is larger than 1 MB."),
    "422": ("InvalidFields", "Invalid fields; `details` lists each problem."),
    "429": (
        "TooManyAttempts",
        "Too many wrong tokens from this address: this token was wrong, or too many wait to be "
        "checked. The right token still passes.",
    ),
    "502": ("ServerUnavailable", "The Forge server (or Civitai) did not answer."),
}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(status: int) -> Schema:
    return {"$ref": f"#/components/responses/{_ERRORS[str(status)][0]}"}


def _errors(*statuses: int) -> dict[str, Schema]:
    """Error responses: `statuses`, plus what the access check answers on any protected route."""
    return {str(s): _error(s) for s in sorted({*statuses, 401, 429})}


def _add_cross_site(paths: dict[str, Schema]) -> None:
    """Protected requests that change state can also meet the cross-site check (403)."""
    for item in paths.values():
        for method, op in item.items():
            if method in ("post", "put", "patch", "delete") and "401" in op["responses"]:
                responses = {**op["responses"], "403": _error(403)}
                op["responses"] = dict(sorted(responses.items()))


def _add_body_timeout(paths: dict[str, Schema]) -> None:
    """Every body is read against a deadline (408)."""
    for item in paths.values():
        for op in item.values():
            if isinstance(op, dict) and "requestBody" in op:
                op["responses"] = dict(sorted({**op["responses"], "408": _error(408)}.items()))


def _path_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _page(limit_default: int) -> list[Schema]:
    return [
        _query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": 1000, "default": limit_default},
            "Page size.",
        ),
        _query("offset", {"type": "integer", "minimum": 0, "default": 0}, "Entries to skip."),
    ]


def _body(schema: Schema, *, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _op(
    operation_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Schema],
    **extra: Any,
) -> Schema:
    return {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        **extra,
        "responses": responses,
    }


ALIAS = _path_param("alias", "The server's alias.")
JOB = _path_param("job_id", "The job's mobilesd_job_id.")
FILENAME = _path_param("filename", "A gallery image's file name (.png).")
BATCH = _path_param("batch_id", "A batch_id (jobs created together).")
DOWNLOAD = _path_param("download_id", "A Civitai download's download_id.")


def _paths() -> dict[str, Schema]:
    job_ok = _json(_ref("Job"), "The job after the change.")
    accepted = _json(_ref("JobAccepted"), "Queued.")
    batch_ok = _json(_ref("BatchResult"), "What was done.")
    return {
        "/healthz": {
            "get": _op(
                "healthz",
                "meta",
                "Liveness; needs no token.",
                {"200": _json(_ref("Health"), "The core is up.")},
                security=[],
            ),
        },
        "/api/v1/openapi.json": {
            "get": _op(
                "openapi",
                "meta",
                "This document.",
                {"200": _json({"type": "object"}, "The OpenAPI document."), **_errors()},
            ),
        },
        "/api/v1/servers": {
            "get": _op(
                "list_servers",
                "servers",
                "List servers (passwords never returned).",
                {
                    "200": _json({"type": "array", "items": _ref("Server")}, "By alias."),
                    **_errors(),
                },
            ),
            "post": _op(
                "add_server",
                "servers",
                "Add a server.",
                {"201": _json(_ref("Server"), "Added."), **_errors(400, 409, 413, 422)},
                requestBody=_body(_ref("ServerConfig")),
            ),
        },
        "/api/v1/servers/{alias}": {
            "parameters": [ALIAS],
            "get": _op(
                "get_server",
                "servers",
                "One server.",
                {"200": _json(_ref("Server"), "The server."), **_errors(404)},
            ),
            "put": _op(
                "update_server",
                "servers",
                "Change any field, the alias too (pending jobs aimed at it follow a rename). "
                "A new scheme, host or port for a server with a password needs `password` in "
                "the same request (422 naming it otherwise; null for none).",
                {"200": _json(_ref("Server"), "Changed."), **_errors(400, 404, 409, 413, 422)},
                requestBody=_body(_ref("ServerUpdate")),
            ),
            "delete": _op(
                "delete_server",
                "servers",
                "Remove a server; pending jobs targeting it stay pending, flagged.",
                {"204": {"description": "Removed."}, **_errors(404)},
            ),
        },
        "/api/v1/servers/{alias}/status": {
            "parameters": [ALIAS],
            "get": _op(
                "server_status",
                "servers",
                "Probe the server now.",
                {"200": _json(_ref("ServerStatus"), "Its status."), **_errors(404)},
            ),
        },
        "/api/v1/servers/{alias}/models": {
            "parameters": [ALIAS],
            "get": _op(
                "server_models",
                "servers",
                "The server's checkpoints, LoRAs, samplers, schedulers, upscalers, styles and "
                "VAE/text-encoder modules "
                "(cached; `refresh=1` rescans), the library models it lacks (`library_only`) "
                "and its model sync state.",
                {
                    "200": _json(_ref("ServerModels"), "What it offers."),
                    **_errors(404, 502),
                },
                parameters=[
                    _query(
                        "refresh",
                        {"type": "string", "enum": ["1", "true", "yes"]},
                        "Ask Forge to rescan instead of using the cached lists.",
                    )
                ],
            ),
        },
        "/api/v1/generate": {
            "post": _op(
                "generate",
                "jobs",
                "Queue a job, a sweep (matrix), defaults + jobs, or prompt variants: one batch, "
                "all or none.",
                {"202": accepted, **_errors(400, 413, 422)},
                requestBody=_body(_ref("GenerateRequest")),
                parameters=[
                    {
                        "name": "X-MobileSD-Source",
                        "in": "header",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "enum": ["tui", "web", "api", "cli"],
                            "default": "api",
                        },
                        "description": "The job's `source`; anything else counts as api.",
                    }
                ],
            ),
        },
        "/api/v1/queue": {
            "get": _op(
                "queue_state",
                "queue",
                "Whether the queue is paused, and jobs per status.",
                {"200": _json(_ref("QueueState"), "The queue's state."), **_errors()},
            ),
        },
        "/api/v1/queue/jobs": {
            "get": _op(
                "list_jobs",
                "jobs",
                "Jobs, pending in run order first.",
                {"200": _json(_ref("JobList"), "A page of jobs."), **_errors(422)},
                parameters=[
                    _query(
                        "status",
                        {"type": "string", "examples": ["pending,processing"]},
                        f"Comma-separated statuses ({', '.join(ALL_STATUSES)}).",
                    ),
                    *_page(100),
                    _query("q", STR, "Words that must all occur (prompt, checkpoint, ...)."),
                    _query("batch_id", STR, "Only the jobs of this batch."),
                    _query(
                        "archived",
                        {"type": "string", "enum": ["0", "1", "only"], "default": "0"},
                        "Finished jobs older than RETENTION_ARCHIVE_DAYS are archived: 0 leaves "
                        "them out, 1 lists them too (the whole history, `q` included), only "
                        "lists them alone.",
                    ),
                ],
            ),
        },
        "/api/v1/queue/jobs/{job_id}": {
            "parameters": [JOB],
            "get": _op(
                "get_job",
                "jobs",
                "One job.",
                {"200": _json(_ref("Job"), "The job."), **_errors(404)},
            ),
            "delete": _op(
                "delete_job",
                "jobs",
                "Remove a finished job from the list (its images stay).",
                {"204": {"description": "Removed."}, **_errors(404, 409)},
            ),
            "patch": _op(
                "edit_job",
                "jobs",
                "Edit a pending job (params merged, then validated whole); 409 once it left "
                "pending.",
                {"200": job_ok, **_errors(400, 404, 409, 413, 422)},
                requestBody=_body(_ref("JobEdit")),
            ),
        },
        "/api/v1/queue/jobs/{job_id}/status": {
            "parameters": [JOB],
            "get": _op(
                "job_status",
                "jobs",
                "Status, progress and result only; cheap, for polling.",
                {"200": _json(_ref("JobStatusView"), "The job's status."), **_errors(404)},
            ),
        },
        "/api/v1/queue/jobs/{job_id}/preview": {
            "parameters": [JOB],
            "get": _op(
                "job_preview",
                "jobs",
                (
                    "The live preview of a running job: the image Forge sent last (PNG, JPEG "
                    "or WebP), with a strong ETag of its bytes and Cache-Control no-cache; "
                    "If-None-Match with that ETag answers 304 while it is unchanged. Ask when "
                    "a job event's progress.preview is true. 404 no_preview: none (yet)."
                ),
                {
                    "200": {
                        "description": "The preview image.",
                        "content": {
                            kind: {"schema": {"type": "string", "format": "binary"}}
                            for kind in ("image/png", "image/jpeg", "image/webp")
                        },
                    },
                    "304": {"description": "Unchanged since the ETag given in If-None-Match."},
                    **_errors(404),
                },
                parameters=[
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "schema": STR,
                        "description": "The ETag of the preview the client has.",
                    }
                ],
            ),
        },
        "/api/v1/queue/jobs/{job_id}/cancel": {
            "parameters": [JOB],
            "post": _op(
                "cancel_job",
                "jobs",
                "Cancel a pending or processing job (a running one is interrupted).",
                {"200": job_ok, **_errors(404, 409)},
            ),
        },
        "/api/v1/queue/jobs/{job_id}/retry": {
            "parameters": [JOB],
            "post": _op(
                "retry_job",
                "jobs",
                "Queue a new job with a finished job's parameters.",
                {"202": accepted, **_errors(404, 409, 422)},
            ),
        },
        "/api/v1/queue/jobs/{job_id}/move": {
            "parameters": [JOB],
            "post": _op(
                "move_job",
                "jobs",
                "Move a pending job in the run order.",
                {"200": job_ok, **_errors(400, 404, 409, 413, 422)},
                requestBody=_body(_ref("MoveRequest")),
            ),
        },
        "/api/v1/queue/batches/{batch_id}/cancel": {
            "parameters": [BATCH],
            "post": _op(
                "cancel_batch",
                "jobs",
                "Cancel every pending or processing job of the batch.",
                {"200": batch_ok, **_errors(404)},
            ),
        },
        "/api/v1/queue/batches/{batch_id}/retry": {
            "parameters": [BATCH],
            "post": _op(
                "retry_batch",
                "jobs",
                "Queue again the batch's failed and cancelled jobs not retried yet (into the "
                "same batch).",
                {"202": _json(_ref("BatchResult"), "Queued."), **_errors(404, 422)},
            ),
        },
        "/api/v1/queue/batches/{batch_id}/move": {
            "parameters": [BATCH],
            "post": _op(
                "move_batch",
                "jobs",
                "Move the batch's pending jobs as one block.",
                {"200": batch_ok, **_errors(400, 404, 409, 413, 422)},
                requestBody=_body(_ref("MoveRequest")),
            ),
        },
        "/api/v1/queue/batches/{batch_id}": {
            "parameters": [BATCH],
            "delete": _op(
                "delete_batch",
                "jobs",
                "Remove a finished batch's jobs from the list (images stay); 409 while any runs.",
                {"200": batch_ok, **_errors(404, 409)},
            ),
        },
        "/api/v1/queue/jobs/{job_id}/pin": {
            "parameters": [JOB],
            "post": _op(
                "pin_job",
                "jobs",
                "Pin a job: it is kept when finished jobs older than RETENTION_PRUNE_DAYS are "
                "pruned (deleting it by hand still works).",
                {"200": job_ok, **_errors(404)},
            ),
        },
        "/api/v1/queue/jobs/{job_id}/unpin": {
            "parameters": [JOB],
            "post": _op(
                "unpin_job",
                "jobs",
                "Unpin a job: it is pruned with the others once old enough.",
                {"200": job_ok, **_errors(404)},
            ),
        },
        "/api/v1/notifications": {
            "get": _op(
                "notifications",
                "meta",
                "Notification targets and webhook deliveries: counts and last errors (no URL "
                "or secret is ever shown), and the retention settings.",
                {"200": _json(_ref("NotificationStatus"), "The status."), **_errors()},
            ),
        },
        "/api/v1/sessions": {
            "get": _op(
                "list_sessions",
                "meta",
                "The page's signed-in browsers (sessions made by /login).",
                {"200": _json(_ref("SessionList"), "The sessions."), **_errors()},
            ),
            "delete": _op(
                "sign_out_everywhere",
                "meta",
                "Sign out everywhere: end every session (the Bearer token is unaffected). A "
                "browser calling it with its cookie is signed out too.",
                {"200": _json(_ref("SignedOut"), "How many ended."), **_errors()},
            ),
        },
        "/api/v1/queue/clear": {
            "post": _op(
                "clear_jobs",
                "queue",
                "Remove finished jobs of the given statuses (their images stay).",
                {"200": _json(_ref("ClearResult"), "How many went."), **_errors(400, 413, 422)},
                requestBody=_body(_ref("ClearRequest"), required=False),
            ),
        },
        "/api/v1/queue/pause": {
            "post": _op(
                "pause",
                "queue",
                "Stop dispatching new jobs (running ones finish).",
                {"200": _json(_ref("QueueState"), "The queue's state."), **_errors()},
            ),
        },
        "/api/v1/queue/resume": {
            "post": _op(
                "resume",
                "queue",
                "Dispatch jobs again.",
                {"200": _json(_ref("QueueState"), "The queue's state."), **_errors()},
            ),
        },
        "/api/v1/gallery/images": {
            "get": _op(
                "list_images",
                "gallery",
                "Gallery images, newest first.",
                {"200": _json(_ref("GalleryList"), "A page of images."), **_errors(422)},
                parameters=[
                    *_page(50),
                    _query("q", STR, "Words that must all occur (prompt, checkpoint, file name)."),
                    _query("job_id", STR, "Only this job's images."),
                    _query(
                        "jobs",
                        {
                            "type": "string",
                            "pattern": "^[0-9A-HJKMNP-TV-Z]{26}(\\.\\.[0-9A-HJKMNP-TV-Z]{26})?$",
                        },
                        "Only the images of jobs whose ids lie between <first>..<last> (both "
                        "included), or of one job: a batch's jobs have consecutive ids. The links "
                        "in notifications use it.",
                    ),
                ],
            ),
        },
        "/api/v1/gallery/archive": {
            "get": _op(
                "gallery_archive",
                "gallery",
                (
                    "A zip of the images (and JSON sidecars, without webhook URLs) of a batch or "
                    "of jobs, streamed. A client that takes nothing for 60 s is dropped."
                ),
                {
                    "200": {
                        "description": "application/zip, stored entries under one folder.",
                        "content": {
                            "application/zip": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    **_errors(404, 422),
                },
                parameters=[
                    _query("batch_id", STR, "Every image of this batch's jobs."),
                    _query("job_ids", STR, "Or: comma-separated job ids (at most 1000)."),
                ],
            ),
        },
        "/api/v1/gallery/images/{filename}": {
            "parameters": [FILENAME],
            "delete": _op(
                "delete_image",
                "gallery",
                "Delete an image, its sidecar and its thumbnail.",
                {"204": {"description": "Deleted."}, **_errors(400, 404)},
            ),
        },
        "/gallery_files/{filename}": {
            "parameters": [FILENAME],
            "get": _op(
                "gallery_file",
                "gallery",
                (
                    "The image itself, or its JPEG thumbnail (the entry's thumb_url). An image "
                    "over 8192x8192 pixels, or one that cannot be decoded, has no thumbnail: "
                    "404 no_thumbnail."
                ),
                {
                    "200": {
                        "description": "The PNG, or with thumb=1 a JPEG thumbnail.",
                        "content": {
                            "image/png": {"schema": {"type": "string", "format": "binary"}},
                            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    **_errors(400, 404),
                },
                parameters=[
                    _query(
                        "thumb",
                        {"type": "string", "enum": ["1", "true"]},
                        "Return the thumbnail instead.",
                    )
                ],
            ),
        },
        "/api/v1/checkpoints": {
            "get": _op(
                "list_library_checkpoints",
                "library",
                "Checkpoint files under CHECKPOINT_PATH (.safetensors, .ckpt, .gguf).",
                {"200": _json(_ref("Library"), "The scan, or why there is none."), **_errors()},
            ),
        },
        "/api/v1/loras": {
            "get": _op(
                "list_library_loras",
                "library",
                "LoRA files under LORA_PATH (.safetensors, .ckpt, .pt).",
                {"200": _json(_ref("Library"), "The scan, or why there is none."), **_errors()},
            ),
        },
        "/api/v1/civitai/image-info": {
            "post": _op(
                "civitai_image_info",
                "civitai",
                "A Civitai image's generation data as generation_params, its resources matched "
                "to the local library (by hash, then name), and what is missing locally.",
                {
                    "200": _json(_ref("CivitaiImageInfo"), "The parameters to review."),
                    **_errors(400, 404, 413, 422, 502),
                },
                requestBody=_body(_ref("CivitaiImageInfoRequest")),
                description=(
                    "404 `civitai_image_not_found`: Civitai lists no such image; 422 "
                    "`civitai_no_meta`: the image has no generation data; 502 "
                    "`civitai_unavailable`: Civitai did not answer (after retries)."
                ),
            ),
        },
        "/api/v1/civitai/download-model": {
            "post": _op(
                "civitai_download_model",
                "civitai",
                "Download a Civitai model into LORA_PATH (LORA, LoCon, DoRA) or CHECKPOINT_PATH "
                "(Checkpoint); progress in GET /api/v1/civitai/downloads and `download` events.",
                {
                    "202": _json(_ref("CivitaiDownloadAccepted"), "Queued (or already under way)."),
                    **_errors(400, 404, 409, 413, 422, 502),
                },
                requestBody=_body(_ref("CivitaiDownloadRequest")),
                description=(
                    "404: no such model, version or file; 409 `folder_not_configured`: the "
                    "folder's variable is not set; 422 `unsupported_model_type`: not a checkpoint "
                    "or LoRA. With CIVITAI_SUBFOLDERS=1 the file goes into a subfolder named "
                    "after its base model."
                ),
            ),
        },
        "/api/v1/civitai/downloads": {
            "get": _op(
                "civitai_downloads",
                "civitai",
                "Civitai downloads with bytes done/total, status and error.",
                {"200": _json(_ref("CivitaiDownloadList"), "Newest first."), **_errors()},
            ),
        },
        "/api/v1/civitai/downloads/{download_id}/cancel": {
            "parameters": [DOWNLOAD],
            "post": _op(
                "civitai_cancel_download",
                "civitai",
                "Cancel a queued or running download: it stops, its partial file is deleted, and "
                "it does not resume when the core restarts.",
                {
                    "200": _json(_ref("CivitaiDownload"), "The download, now cancelled."),
                    **_errors(404, 409),
                },
                description=(
                    "404 `download_not_found`: no such download; 409 `wrong_state`: it is "
                    "already completed, failed or cancelled, or verified and being put in place "
                    "(it will be completed)."
                ),
            ),
        },
        "/api/v1/events": {
            "get": _op(
                "events",
                "events",
                "Server-Sent Events: every change, live.",
                {
                    "200": {
                        "description": "A text/event-stream that stays open.",
                        "content": {
                            "text/event-stream": {
                                "schema": {"type": "string"},
                                "example": (
                                    'id: 42\nevent: queue\ndata: {"paused":false,"counts":'
                                    '{"pending":1,"processing":0,"completed":3,"failed":0,'
                                    '"cancelled":0}}\n\n'
                                ),
                            }
                        },
                    },
                    **_errors(),
                },
                description=_EVENTS_DESCRIPTION,
                parameters=[
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        "description": (
                            "The id of the last event seen: the stream starts with what was "
                            "missed when the core still has it, else with a `reset` event."
                        ),
                    },
                    _query(
                        "last_event_id",
                        {"type": "string", "pattern": "^[0-9]+$"},
                        "The same as Last-Event-ID, for clients that cannot set headers.",
                    ),
                    _query(
                        "events",
                        {"type": "string", "pattern": "^[a-z_]+(,[a-z_]+)*$"},
                        "Only these event names, comma-separated (`reset` always comes).",
                    ),
                ],
                **{
                    "x-event-data": {
                        name: {"$ref": f"#/components/schemas/{schema}"}
                        for name, schema in EVENT_DATA.items()
                    }
                },
            ),
        },
    }


_EVENTS_DESCRIPTION = """\
Each event has an `id` (increasing), an `event` name and JSON `data`; a comment line is sent as a
heartbeat at least every 15 s. `x-event-data` maps each event name to the schema of its data:

| event | data |
|---|---|
| `job` | the full job after any change, progress included (at most a few per second per job) |
| `job_removed` | `{mobilesd_job_id}` |
| `server` | the status of one server, or `{alias, removed: true}` |
| `image` | `{added: <gallery entry>}` or `{removed: <gallery entry>}` |
| `download` | a Civitai download after a change (progress at most a few per second) |
| `sync` | model sync of a library file to a server (progress, done, failed) or an eviction |
| `queue` | the queue's state (paused, counts) |
| `reset` | what the client missed is gone: reload everything |

A client reconnecting with `Last-Event-ID` gets what it missed when the core still has it, else a
`reset` event.
"""


# --- the document -----------------------------------------------------------------------------


def build_openapi() -> Schema:
    """A fresh copy of the whole document."""
    schemas = model_schemas("#/components/schemas/{model}")
    schemas.update(_response_schemas())
    schemas["GenerateRequest"] = _generate_request(schemas["GenerationParams"])
    responses = {name: _json(_ref("Error"), description) for name, description in _ERRORS.values()}
    paths = _paths()
    _add_cross_site(paths)
    _add_body_timeout(paths)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "MobileSD core",
            "version": __version__,
            "summary": "Job queue and remote control for Stable Diffusion Forge servers.",
            "description": (
                "JSON in and out. Every /api/ route and /gallery_files/ needs the access token, "
                "as `Authorization: Bearer <token>` or the page's session cookie. Errors are "
                '`{"error": {"code", "message", "details"}}`. Responses may gain fields; '
                "clients ignore fields they do not know. Request bodies reject unknown fields."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "meta"},
            {"name": "servers", "description": "Forge servers"},
            {"name": "jobs", "description": "Generating and the job list"},
            {"name": "queue", "description": "The queue as a whole"},
            {"name": "gallery", "description": "Generated images"},
            {"name": "library", "description": "Local model folders"},
            {"name": "civitai", "description": "Civitai image import and model downloads"},
            {"name": "events", "description": "Live updates"},
        ],
        "security": [{"bearerAuth": []}, {"sessionCookie": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The core's access token.",
                },
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": "Set by the page after login.",
                },
            },
        },
    }


@functools.cache
def openapi_json() -> str:
    """The document as JSON text, built once."""
    return json.dumps(build_openapi(), ensure_ascii=False, separators=(",", ":"))


def openapi_document() -> Schema:
    """A copy of the document (callers may change it)."""
    return json.loads(openapi_json())
