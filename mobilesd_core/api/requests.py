"""The small request bodies of the queue routes, as pydantic models: the routes validate with
them and the OpenAPI document shows their generated schemas, so the two cannot disagree.

(The job request is schema.GenerateRequest and the job file shapes; servers and Civitai bodies have
their models in schema.py and civitai/schema.py.)
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
