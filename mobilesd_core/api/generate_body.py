"""The body of POST /api/v1/generate mapped onto a job document (the YAML file shapes), so the
API and job files share one expansion (expansion.py), rules and limits included.

    {generation_params, expand?}                 one job (or its prompt variants)
    {generation_params, matrix, expand?}         a sweep, `{placeholders}` as in YAML
    {defaults?, jobs, expand?}                   several jobs sharing defaults

`target_server_alias` may go with any of them; a job's own `server` (defaults+jobs) wins.
"""

from __future__ import annotations

from typing import Any

from ..expansion import JobFileResult, expand_document
from ..prompt_variants import PromptExpander, parse_expand
from ..schema import FieldProblem, GenerationParams, InvalidInput

# `webhook_url` is checked by the route; it applies to every job the body makes.
_SINGLE_KEYS = {"target_server_alias", "generation_params", "matrix", "expand", "webhook_url"}
_LIST_KEYS = {"target_server_alias", "defaults", "jobs", "expand", "webhook_url"}
_PARAM_FIELDS = set(GenerationParams.model_fields)


def _document(body: dict[str, Any]) -> tuple[Any, bool, list[FieldProblem]]:
    """The job document (None if there is none), whether it is the generation_params form, and
    the problems of the body itself (reported together with those of the jobs)."""
    listed = "jobs" in body or "defaults" in body
    allowed = _LIST_KEYS if listed else _SINGLE_KEYS
    problems = []
    for key in body:
        if key not in allowed:
            hint = ""
            if listed and key in ("generation_params", "matrix"):
                hint = " (give either generation_params [+ matrix] or defaults + jobs)"
            problems.append(FieldProblem(path=key, message=f"unknown field{hint}"))
    target = body.get("target_server_alias")
    if target is not None and not isinstance(target, str):
        problems.append(FieldProblem(path="target_server_alias", message="must be a string"))
    if listed:
        defaults = body.get("defaults") or {}
        if "expand" in body:
            # Checked here: where defaults or every job have their own, it would go unread.
            bad = parse_expand(body["expand"])[1]
            problems.extend(bad)
            if isinstance(defaults, dict) and not bad:
                defaults = {"expand": body["expand"], **defaults}
        return {"defaults": defaults, "jobs": body.get("jobs")}, False, problems
    params = body.get("generation_params")
    if "generation_params" not in body:
        problems.append(FieldProblem(path="generation_params", message="is required"))
        return None, True, problems
    if not isinstance(params, dict):
        problems.append(FieldProblem(path="generation_params", message="must be an object"))
        return None, True, problems
    else:
        # `server` and `expand` are document keys, not parameters: refuse them here as the
        # schema would, instead of letting them act.
        problems.extend(
            FieldProblem(path=f"generation_params.{key}", message="unknown field")
            for key in params
            if key in ("server", "expand", "matrix") and key not in _PARAM_FIELDS
        )
    doc = dict(params)
    for key in ("matrix", "expand"):
        if key in body:
            doc[key] = body[key]
    return doc, True, problems


def _api_path(path: str) -> str:
    """A document path as the request names it: `prompt` -> `generation_params.prompt`."""
    head = path.split(".")[0].split("[")[0]
    if not path or head in ("matrix", "expand"):
        return path
    return f"generation_params.{path}"


def expand_body(body: dict[str, Any], expander: PromptExpander) -> JobFileResult:
    """Every job the body defines; raises InvalidInput naming each field otherwise.

    Blocking (wildcard files): call it from a thread.
    """
    doc, single, problems = _document(body)
    if doc is None:
        raise InvalidInput(problems)
    result = expand_document(doc, expander=expander)
    for p in result.problems:
        problems.append(FieldProblem(path=_api_path(p.path), message=p.message) if single else p)
    if problems:
        raise InvalidInput(problems)
    return result
