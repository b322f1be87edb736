"""The OpenAPI 3.1 document of the core's HTTP API: the reference beside docs/http-api.md.

Every schema is generated from pydantic models: request bodies from the models the routes validate
with (schema.py, civitai/schema.py, api/requests.py), responses from api/responses.py. What is
written here is the path table: per operation its summary, body, answers and errors.
tests/test_openapi.py keeps it honest: every registered route must be documented (and every
documented one registered), and real responses must validate against it.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from .. import __version__
from ..civitai.schema import DownloadRequest, ImageInfoRequest
from ..events import EVENT_NAMES
from ..jobfile_schema import model_schemas
from ..schema import ALL_STATUSES
from . import requests, responses
from .auth import SESSION_COOKIE
from .requests import generate_request_schema, one_of_schema

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"


def _response_models() -> list[type[BaseModel]]:
    """The models api/responses.py declares (not pydantic's parametrised generics)."""
    found: list[type[BaseModel]] = []
    for name, value in vars(responses).items():
        if (
            isinstance(value, type)
            and issubclass(value, BaseModel)
            and value.__module__ == responses.__name__
            and value.__name__ == name
            and value is not responses.Response
        ):
            found.append(value)
    return found


# Models whose schemas are components (with the models they use).
MODELS: tuple[type[BaseModel], ...] = (
    requests.JobEdit,
    requests.MoveRequest,
    requests.ClearRequest,
    requests.UpscaleRequest,
    *_response_models(),
)

# Event name -> schema of its data.
EVENT_DATA: dict[str, str] = {name: m.__name__ for name, m in responses.EVENT_DATA.items()}


class _Untitled(GenerateJsonSchema):
    """Pydantic's schemas without the titles it derives from field names."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def component_schemas() -> dict[str, Schema]:
    """components/schemas: the request models (with the rules their validators add) and the
    response models."""
    schemas = model_schemas(REF)
    _, top = models_json_schema(
        [(m, "validation") for m in MODELS], ref_template=REF, schema_generator=_Untitled
    )
    for name, schema in top["$defs"].items():
        if name.startswith("RootModel_"):
            continue  # the parent of an event's RootModel: nothing refers to it
        schema.pop("title", None)
        if "description" in schema:  # a docstring: one paragraph
            schema["description"] = " ".join(schema["description"].split())
        schemas.setdefault(name, schema)  # a request model keeps its rules
    schemas["CivitaiImageInfoRequest"] = one_of_schema(ImageInfoRequest, "url", "image_id")
    schemas["CivitaiDownloadRequest"] = one_of_schema(DownloadRequest, "url", "model_version_id")
    schemas["GenerateRequest"] = generate_request_schema(schemas["GenerationParams"], REF)
    return schemas


# --- the path table ---------------------------------------------------------------------------

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

_STRING: Schema = {"type": "string"}
# gallery.check_name: a bare, visible .png name (any other name is answered 400 bad_filename).
_IMAGE_NAME: Schema = {
    "type": "string",
    "pattern": r"^[^./\\:\x00-\x1f\x7f\s][^/\\:\x00-\x1f\x7f]*\.[Pp][Nn][Gg]$",
    "maxLength": 255,
}
PATH_PARAMETERS: dict[str, tuple[str, Schema]] = {
    "alias": ("The server's alias.", _STRING),
    "job_id": ("The job's mobilesd_job_id.", _STRING),
    "filename": ("A gallery image's file name (.png).", _IMAGE_NAME),
    "batch_id": ("A batch_id (jobs created together).", _STRING),
    "download_id": ("A Civitai download's download_id.", _STRING),
    "sha256": ("An upload's SHA-256.", _STRING),
}

# An answer: (schema or model name, description) for JSON; a description alone for no body; or a
# whole response object.
Answer = tuple[str | Schema, str] | str | Schema


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _binary(description: str, *media: str) -> Schema:
    content = {m: {"schema": {"type": "string", "format": "binary"}} for m in media}
    return {"description": description, "content": content}


def _answer(answer: Answer) -> Schema:
    if isinstance(answer, str):
        return {"description": answer}
    if isinstance(answer, tuple):
        schema, description = answer
        return _json(_ref(schema) if isinstance(schema, str) else schema, description)
    return answer


def _error(status: int | str) -> Schema:
    return {"$ref": f"#/components/responses/{_ERRORS[str(status)][0]}"}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _page(limit_default: int) -> list[Schema]:
    limit = {"type": "integer", "minimum": 1, "maximum": 1000, "default": limit_default}
    return [
        _query("limit", limit, "Page size."),
        _query(
            "offset",
            {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0},
            "Entries to skip.",
        ),
    ]


def _op(
    operation_id: str,
    tag: str,
    summary: str,
    answers: dict[str, Answer],
    errors: str = "",
    body: str | None = None,
    body_required: bool = True,
    public: bool = False,
    extensions: Schema | None = None,
    **extra: Any,
) -> Schema:
    """One operation. Protected ones also answer 401 and 429 (the access check), 403 when they
    change state (the cross-site check), and 408 with a body (its deadline). `errors`: the
    other error statuses, space-separated."""
    codes = {int(code) for code in errors.split()}
    if not public:
        codes |= {401, 429}
    if body is not None:
        codes.add(408)
        extra["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    out: Schema = {"operationId": operation_id, "tags": [tag], "summary": summary, **extra}
    out.update(extensions or {})
    if public:
        out["security"] = []
    out["responses"] = {s: _answer(a) for s, a in answers.items()} | {
        str(s): _error(s) for s in codes
    }
    return out


def _paths() -> dict[str, Schema]:
    job_ok: Answer = ("Job", "The job after the change.")
    accepted: Answer = ("JobAccepted", "Queued.")
    batch_ok: Answer = ("BatchResult", "What was done.")
    library: Answer = ("Library", "The scan, or why there is none.")
    return {
        "/healthz": {
            "get": _op(
                "healthz",
                "meta",
                "Liveness; needs no token.",
                {"200": ("Health", "The core is up.")},
                public=True,
            ),
        },
        "/api/v1/openapi.json": {
            "get": _op(
                "openapi",
                "meta",
                "This document.",
                {"200": ({"type": "object"}, "The OpenAPI document.")},
            ),
        },
        "/api/v1/servers": {
            "get": _op(
                "list_servers",
                "servers",
                "List servers (passwords never returned).",
                {"200": ({"type": "array", "items": _ref("Server")}, "By alias.")},
            ),
            "post": _op(
                "add_server",
                "servers",
                "Add a server.",
                {"201": ("Server", "Added.")},
                "400 409 413 422",
                body="ServerConfig",
            ),
        },
        "/api/v1/servers/{alias}": {
            "get": _op(
                "get_server", "servers", "One server.", {"200": ("Server", "The server.")}, "404"
            ),
            "put": _op(
                "update_server",
                "servers",
                "Change any field, the alias too (pending jobs aimed at it follow a rename). "
                "A new scheme, host or port for a server with a password needs `password` in "
                "the same request (422 naming it otherwise; null for none).",
                {"200": ("Server", "Changed.")},
                "400 404 409 413 422",
                body="ServerUpdate",
            ),
            "delete": _op(
                "delete_server",
                "servers",
                "Remove a server; pending jobs targeting it stay pending, flagged.",
                {"204": "Removed."},
                "404",
            ),
        },
        "/api/v1/servers/{alias}/status": {
            "get": _op(
                "server_status",
                "servers",
                "Probe the server now.",
                {"200": ("ServerStatus", "Its status.")},
                "404",
            ),
        },
        "/api/v1/servers/{alias}/models": {
            "get": _op(
                "server_models",
                "servers",
                "The server's checkpoints, LoRAs, samplers, schedulers, upscalers, styles and "
                "VAE/text-encoder modules "
                "(cached; `refresh=1` rescans), the library models it lacks (`library_only`) "
                "and its model sync state.",
                {"200": ("ServerModels", "What it offers.")},
                "404 502",
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
                {"202": accepted},
                "400 413 422",
                body="GenerateRequest",
                parameters=[
                    {
                        "name": "X-MobileSD-Source",
                        "in": "header",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "examples": ["tui", "web", "api", "cli"],
                            "default": "api",
                        },
                        "description": "The job's `source`: tui, web, api or cli; anything else "
                        "counts as api.",
                    }
                ],
            ),
        },
        "/api/v1/queue": {
            "get": _op(
                "queue_state",
                "queue",
                "Whether the queue is paused, and jobs per status.",
                {"200": ("QueueState", "The queue's state.")},
            ),
        },
        "/api/v1/queue/jobs": {
            "get": _op(
                "list_jobs",
                "jobs",
                "Jobs, pending in run order first.",
                {"200": ("JobList", "A page of jobs.")},
                "422",
                parameters=[
                    _query(
                        "status",
                        {
                            "type": "string",
                            "pattern": f"^\\s*{_STATUS}?\\s*(,\\s*{_STATUS}?\\s*)*$",
                            "examples": ["pending,processing"],
                        },
                        f"Comma-separated statuses ({', '.join(ALL_STATUSES)}).",
                    ),
                    *_page(100),
                    _query(
                        "q",
                        {"type": "string"},
                        "Words that must all occur (prompt, checkpoint, ...).",
                    ),
                    _query("batch_id", {"type": "string"}, "Only the jobs of this batch."),
                    _query(
                        "archived",
                        {
                            "type": "string",
                            "enum": ["0", "1", "only", "false", "true", "no", "yes"],
                            "default": "0",
                        },
                        "Finished jobs older than RETENTION_ARCHIVE_DAYS are archived: 0 leaves "
                        "them out, 1 lists them too (the whole history, `q` included), only "
                        "lists them alone.",
                    ),
                ],
            ),
        },
        "/api/v1/queue/jobs/{job_id}": {
            "get": _op("get_job", "jobs", "One job.", {"200": ("Job", "The job.")}, "404"),
            "delete": _op(
                "delete_job",
                "jobs",
                "Remove a finished job from the list (its images stay).",
                {"204": "Removed."},
                "404 409",
            ),
            "patch": _op(
                "edit_job",
                "jobs",
                "Edit a pending job (params merged, then validated whole); 409 once it left "
                "pending.",
                {"200": job_ok},
                "400 404 409 413 422",
                body="JobEdit",
            ),
        },
        "/api/v1/queue/jobs/{job_id}/status": {
            "get": _op(
                "job_status",
                "jobs",
                "Status, progress and result only; cheap, for polling.",
                {"200": ("JobStatusView", "The job's status.")},
                "404",
            ),
        },
        "/api/v1/queue/jobs/{job_id}/preview": {
            "get": _op(
                "job_preview",
                "jobs",
                "The live preview of a running job: the image Forge sent last (PNG, JPEG or "
                "WebP), with a strong ETag of its bytes and Cache-Control no-cache; If-None-Match "
                "with that ETag answers 304 while it is unchanged. Ask when a job event's "
                "progress.preview is true. 404 no_preview: none (yet).",
                {
                    "200": _binary("The preview image.", "image/png", "image/jpeg", "image/webp"),
                    "304": "Unchanged since the ETag given in If-None-Match.",
                },
                "404",
                parameters=[
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "schema": _STRING,
                        "description": "The ETag of the preview the client has.",
                    }
                ],
            ),
        },
        "/api/v1/queue/jobs/{job_id}/cancel": {
            "post": _op(
                "cancel_job",
                "jobs",
                "Cancel a pending or processing job (a running one is interrupted).",
                {"200": job_ok},
                "404 409",
            ),
        },
        "/api/v1/queue/jobs/{job_id}/retry": {
            "post": _op(
                "retry_job",
                "jobs",
                "Queue a new job with a finished job's parameters.",
                {"202": accepted},
                "404 409 422",
            ),
        },
        "/api/v1/queue/jobs/{job_id}/move": {
            "post": _op(
                "move_job",
                "jobs",
                "Move a pending job in the run order.",
                {"200": job_ok},
                "400 404 409 413 422",
                body="MoveRequest",
            ),
        },
        "/api/v1/queue/batches/{batch_id}/cancel": {
            "post": _op(
                "cancel_batch",
                "jobs",
                "Cancel every pending or processing job of the batch.",
                {"200": batch_ok},
                "404",
            ),
        },
        "/api/v1/queue/batches/{batch_id}/retry": {
            "post": _op(
                "retry_batch",
                "jobs",
                "Queue again the batch's failed and cancelled jobs not retried yet (into the "
                "same batch).",
                {"202": ("BatchResult", "Queued.")},
                "404 422",
            ),
        },
        "/api/v1/queue/batches/{batch_id}/move": {
            "post": _op(
                "move_batch",
                "jobs",
                "Move the batch's pending jobs as one block.",
                {"200": batch_ok},
                "400 404 409 413 422",
                body="MoveRequest",
            ),
        },
        "/api/v1/queue/batches/{batch_id}": {
            "delete": _op(
                "delete_batch",
                "jobs",
                "Remove a finished batch's jobs from the list (images stay); 409 while any runs.",
                {"200": batch_ok},
                "404 409",
            ),
        },
        "/api/v1/queue/jobs/{job_id}/pin": {
            "post": _op(
                "pin_job",
                "jobs",
                "Pin a job: it is kept when finished jobs older than RETENTION_PRUNE_DAYS are "
                "pruned (deleting it by hand still works).",
                {"200": job_ok},
                "404",
            ),
        },
        "/api/v1/queue/jobs/{job_id}/unpin": {
            "post": _op(
                "unpin_job",
                "jobs",
                "Unpin a job: it is pruned with the others once old enough.",
                {"200": job_ok},
                "404",
            ),
        },
        "/api/v1/notifications": {
            "get": _op(
                "notifications",
                "meta",
                "Notification targets and webhook deliveries: counts and last errors (no URL "
                "or secret is ever shown), and the retention settings.",
                {"200": ("NotificationStatus", "The status.")},
            ),
        },
        "/api/v1/sessions": {
            "get": _op(
                "list_sessions",
                "meta",
                "The page's signed-in browsers (sessions made by /login).",
                {"200": ("SessionList", "The sessions.")},
            ),
            "delete": _op(
                "sign_out_everywhere",
                "meta",
                "Sign out everywhere: end every session (the Bearer token is unaffected). A "
                "browser calling it with its cookie is signed out too.",
                {"200": ("SignedOut", "How many ended.")},
            ),
        },
        "/api/v1/queue/clear": {
            "post": _op(
                "clear_jobs",
                "queue",
                "Remove finished jobs of the given statuses (their images stay).",
                {"200": ("ClearResult", "How many went.")},
                "400 413 422",
                body="ClearRequest",
                body_required=False,
            ),
        },
        "/api/v1/queue/pause": {
            "post": _op(
                "pause",
                "queue",
                "Stop dispatching new jobs (running ones finish).",
                {"200": ("QueueState", "The queue's state.")},
            ),
        },
        "/api/v1/queue/resume": {
            "post": _op(
                "resume",
                "queue",
                "Dispatch jobs again.",
                {"200": ("QueueState", "The queue's state.")},
            ),
        },
        "/api/v1/gallery/images": {
            "get": _op(
                "list_images",
                "gallery",
                "Gallery images, newest first.",
                {"200": ("GalleryList", "A page of images.")},
                "422",
                parameters=[
                    *_page(50),
                    _query(
                        "q",
                        {"type": "string"},
                        "Words that must all occur (prompt, checkpoint, file name).",
                    ),
                    _query("job_id", {"type": "string"}, "Only this job's images."),
                    _query(
                        "jobs",
                        {
                            "type": "string",
                            # empty: no filter
                            "pattern": "^([0-9A-HJKMNP-TV-Z]{26}(\\.\\.[0-9A-HJKMNP-TV-Z]{26})?)?$",
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
                "A zip of the images (and JSON sidecars, without webhook URLs) of a batch or "
                "of jobs, streamed. A client that takes nothing for 60 s is dropped.",
                {
                    "200": _binary(
                        "application/zip, stored entries under one folder.", "application/zip"
                    )
                },
                "404 422",
                parameters=[
                    _query("batch_id", {"type": "string"}, "Every image of this batch's jobs."),
                    _query(
                        "job_ids", {"type": "string"}, "Or: comma-separated job ids (at most 1000)."
                    ),
                ],
            ),
        },
        "/api/v1/uploads": {
            "post": _op(
                "upload_image",
                "uploads",
                "Store an image for img2img, inpaint or upscale jobs: the raw body (PNG, JPEG, "
                "WebP ...; at most 32 MiB, 64 M pixels), EXIF orientation applied, kept as a PNG "
                "under its SHA-256. Refer to it as `upload:<sha256>`; kept while a job needs it, "
                "removed an hour after the last one ended.",
                {"201": ("UploadStored", "Stored.")},
                "400 408 413 422",
                requestBody={
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                        "image/*": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
            ),
        },
        "/api/v1/uploads/{sha256}/thumbnail": {
            "get": _op(
                "upload_thumbnail",
                "uploads",
                "A JPEG thumbnail (256 px) of an upload.",
                {"200": _binary("The thumbnail.", "image/jpeg")},
                "404",
            ),
        },
        "/api/v1/gallery/upscale": {
            "post": _op(
                "upscale_images",
                "gallery",
                "Upscale gallery images: one upscale job per name (Forge's Extras, or a hires "
                "rerun), all in one batch; each job's prompt is its image's.",
                {"202": ("UpscaleQueued", "Queued.")},
                "400 413 422",
                body="UpscaleRequest",
            ),
        },
        "/api/v1/gallery/images/{filename}": {
            "delete": _op(
                "delete_image",
                "gallery",
                "Delete an image, its sidecar and its thumbnail.",
                {"204": "Deleted."},
                "400 404",
            ),
        },
        "/gallery_files/{filename}": {
            "get": _op(
                "gallery_file",
                "gallery",
                "The image itself, or its JPEG thumbnail (the entry's thumb_url). An image "
                "over 8192x8192 pixels, or one that cannot be decoded, has no thumbnail: "
                "404 no_thumbnail.",
                {
                    "200": _binary(
                        "The PNG, or with thumb=1 a JPEG thumbnail.", "image/png", "image/jpeg"
                    )
                },
                "400 404",
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
                {"200": library},
            ),
        },
        "/api/v1/loras": {
            "get": _op(
                "list_library_loras",
                "library",
                "LoRA files under LORA_PATH (.safetensors, .ckpt, .pt).",
                {"200": library},
            ),
        },
        "/api/v1/civitai/image-info": {
            "post": _op(
                "civitai_image_info",
                "civitai",
                "A Civitai image's generation data as generation_params, its resources matched "
                "to the local library (by hash, then name), and what is missing locally.",
                {"200": ("CivitaiImageInfo", "The parameters to review.")},
                "400 404 413 422 502",
                body="CivitaiImageInfoRequest",
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
                {"202": ("CivitaiDownloadAccepted", "Queued (or already under way).")},
                "400 404 409 413 422 502",
                body="CivitaiDownloadRequest",
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
                {"200": ("CivitaiDownloadList", "Newest first.")},
            ),
        },
        "/api/v1/civitai/downloads/{download_id}/cancel": {
            "post": _op(
                "civitai_cancel_download",
                "civitai",
                "Cancel a queued or running download: it stops, its partial file is deleted, and "
                "it does not resume when the core restarts.",
                {"200": ("CivitaiDownload", "The download, now cancelled.")},
                "404 409",
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
                    }
                },
                "400",
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
                        {"type": "string", "pattern": f"^({_NAMES})(,({_NAMES}))*$"},
                        "Only these event names, comma-separated (`reset` always comes).",
                    ),
                ],
                extensions={"x-event-data": {name: _ref(m) for name, m in EVENT_DATA.items()}},
            ),
        },
    }


# Where a created job's id leads (OpenAPI links: clients and Schemathesis's stateful tests follow
# them; the servers' `alias` and the batches' `batch_id` it finds by name).
_JOB_OPERATIONS = (
    "get_job",
    "job_status",
    "edit_job",
    "cancel_job",
    "retry_job",
    "move_job",
    "pin_job",
    "unpin_job",
    "delete_job",
)
_JOB_LINKS = {
    name: {"operationId": name, "parameters": {"job_id": "$response.body#/mobilesd_job_id"}}
    for name in _JOB_OPERATIONS
}
LINKS = {
    ("/api/v1/generate", "post", "202"): _JOB_LINKS,
    ("/api/v1/queue/jobs/{job_id}/retry", "post", "202"): _JOB_LINKS,
}


def _with_derived_parts(paths: dict[str, Schema]) -> dict[str, Schema]:
    """Path parameters from the templates; 403 on protected changes (the cross-site check);
    the links."""
    for (path, method, status), links in LINKS.items():
        paths[path][method]["responses"][status]["links"] = links
    for path, item in paths.items():
        names = re.findall(r"\{([^}]+)\}", path)
        if names:
            params = [
                {
                    "name": n,
                    "in": "path",
                    "required": True,
                    "schema": PATH_PARAMETERS[n][1],
                    "description": PATH_PARAMETERS[n][0],
                }
                for n in names
            ]
            paths[path] = {"parameters": params, **item}
        for method, op in item.items():
            if method in ("post", "put", "patch", "delete") and "401" in op["responses"]:
                op["responses"]["403"] = _error(403)
            op["responses"] = dict(sorted(op["responses"].items()))
    return paths


_NAMES = "|".join(EVENT_NAMES)
_STATUS = f"({'|'.join(ALL_STATUSES)})"
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
    responses_ = {name: _json(_ref("Error"), description) for name, description in _ERRORS.values()}
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
            {"name": "uploads", "description": "Images for img2img, inpaint and upscale jobs"},
            {"name": "library", "description": "Local model folders"},
            {"name": "civitai", "description": "Civitai image import and model downloads"},
            {"name": "events", "description": "Live updates"},
        ],
        "security": [{"bearerAuth": []}, {"sessionCookie": []}],
        "paths": _with_derived_parts(_paths()),
        "components": {
            "schemas": component_schemas(),
            "responses": responses_,
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
