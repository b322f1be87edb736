"""The small request bodies of the queue routes, as pydantic models: the routes validate with
them and the OpenAPI document shows their generated schemas, so the two cannot disagree.

The job request is schema.GenerateRequest and the job file shapes (generate_request_schema
describes them); servers and Civitai bodies have their models in schema.py and civitai/schema.py
(one_of_schema adds the rule their validators keep).
"""

from __future__ import annotations

import copy
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..jobfile_schema import SERVER_DESCRIPTION, JSONSchema, expand_schema
from ..jobfiles import MAX_JOBS
from ..schema import FieldProblem, InvalidInput, problems_from_error
from .responses import absent

JOB_ID_PATTERN = "^[0-9A-HJKMNP-TV-Z]{26}$"
Finished = Literal["completed", "failed", "cancelled"]

Body = TypeVar("Body", bound=BaseModel)


class _Body(BaseModel):
    # strict: `"to": 1` or `"status": "failed"` is an error naming the field, not a conversion.
    model_config = ConfigDict(extra="forbid", strict=True)


class JobEdit(_Body):
    """A change of a pending job."""

    generation_params: dict[str, Any] | None = Field(
        default=None,
        description="Any generation_params fields; merged onto the job's, then the whole is "
        "validated like a new job's.",
    )
    target_server_alias: str | None = None


class MoveRequest(_Body):
    """Where to move pending jobs: `to` a place, or `before` another pending job (one of them)."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["to"]}, {"required": ["before"]}]}
    )

    to: Literal["top", "bottom", "up", "down"] = absent()
    before: str = absent("A pending job to move in front of.")


class ClearRequest(_Body):
    status: list[Finished] = Field(
        default_factory=lambda: list(get_args(Finished)),
        json_schema_extra={"default": list(get_args(Finished))},
    )


class UpscaleRequest(_Body):
    """Gallery images to upscale: one job per name, all in one batch; each job's prompt is its
    image's."""

    names: list[str] = Field(min_length=1, max_length=100, description="Gallery image names.")
    upscaler: str = Field(min_length=1, max_length=128, description="As /upscalers lists it.")
    scale: float = Field(default=2.0, ge=1, le=8)
    mode: Literal["extras", "hires"] = Field(
        default="extras",
        description="extras: the picture through the upscaler (Forge's Extras); hires: the "
        "image's own job again, one image at its seed, with the hires fix (scale at most 4).",
    )
    denoising_strength: float = absent("Only with mode hires.", ge=0, le=1)
    target_server_alias: str | None = None


def parse_body(model: type[Body], data: dict[str, Any]) -> Body:
    """`data` validated into `model`, or InvalidInput naming each field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(problems_from_error(exc)) from None


def parse_move(data: dict[str, Any]) -> MoveRequest:
    body = parse_body(MoveRequest, data)
    if len(body.model_fields_set & {"to", "before"}) != 1:
        raise InvalidInput(
            [FieldProblem(path="to", message="give exactly one of 'to' or 'before'")]
        )
    return body


# --- request schemas the models alone do not give ------------------------------------------


def one_of_schema(model: type[BaseModel], *one_of: str) -> JSONSchema:
    """A request body from its pydantic model, with the exactly-one-of rule its validator adds."""
    schema = model.model_json_schema()
    schema.pop("title", None)
    # Present and not null: a null counts as not given.
    schema["oneOf"] = [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in one_of
    ]
    return schema


def generate_request_schema(params: JSONSchema, ref: str) -> JSONSchema:
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
            "generation_params": {"$ref": ref.format(model="GenerationParams")},
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
                # Each job's prompt comes from `defaults` or from the job itself.
                "anyOf": [
                    {
                        "required": ["defaults"],
                        "properties": {"defaults": {"required": ["prompt"]}},
                    },
                    {"properties": {"jobs": {"items": {"required": ["prompt"]}}}},
                ],
            },
        ],
        "description": "One job, a sweep (generation_params + matrix) or defaults + jobs.",
    }
