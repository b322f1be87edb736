"""One job document -> jobs: a single job, a list, `defaults` + `jobs`, or a `matrix` sweep, and
prompt templates expanded with `expand`.

The one implementation behind YAML job files (jobfiles.py adds parsing and line numbers) and
`POST /api/v1/generate` (which maps its body onto the same document shape), so a sweep queued
from the API equals the same sweep from a file, job for job.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Protocol

from .prompt_variants import ExpandSpec, PromptExpander, parse_expand
from .schema import FieldProblem, GenerationParams, InvalidInput, parse_params

MAX_JOBS = 1000
JOB_KEYS = set(GenerationParams.model_fields) | {"server", "expand"}


class LineLookup(Protocol):
    def line(self, *paths: str) -> int | None: ...


class _NoLines:
    def line(self, *paths: str) -> int | None:
        return None


@dataclass
class JobSpec:
    params: GenerationParams
    server: str | None
    path: str = ""  # where in the document the job came from, e.g. "jobs[2]"
    server_line: int | None = None
    prompt_template: str | None = None  # set when the prompt was expanded from a template
    prompt_expand: dict[str, Any] | None = None  # how: {"mode", "count", "seed"}
    expand: ExpandSpec | None = None  # not yet expanded (expand_prompts=False)

    def request_job(self, server: str | None = None) -> dict[str, Any]:
        """This job as an entry of POST /api/v1/generate's `jobs` (defaults left out, so a
        1,000-job file stays a small request); the core expands any template itself."""
        out = self.params.model_dump(mode="json", exclude_defaults=True)
        out["prompt"] = self.params.prompt
        if server or self.server:
            out["server"] = server or self.server
        if self.expand is not None:
            out["expand"] = self.expand.request()
        return out

    def job_fields(self) -> dict[str, Any]:
        """Fields of the job record beyond new_job's: where its prompt came from."""
        if self.prompt_template is None:
            return {}
        return {"prompt_template": self.prompt_template, "prompt_expand": self.prompt_expand}


@dataclass
class JobFileResult:
    jobs: list[JobSpec] = field(default_factory=list)
    problems: list[FieldProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.jobs)


@dataclass
class _Context:
    lines: LineLookup
    result: JobFileResult
    expander: PromptExpander | None  # None: keep templates (and their `expand`) for the core
    too_many: bool = False

    def problem(self, path: str, message: str, *alt: str) -> FieldProblem:
        return FieldProblem(path=path, message=message, line=self.lines.line(path, *alt))

    def add(self, spec: JobSpec) -> None:
        if self.too_many:
            return
        if len(self.result.jobs) >= MAX_JOBS:
            # Stop here: a template under a matrix could otherwise build millions of jobs first.
            self.too_many = True
            self.result.problems.append(
                FieldProblem(
                    path="", message=f"makes more than {MAX_JOBS} jobs; at most {MAX_JOBS}"
                )
            )
            return
        self.result.jobs.append(spec)


def expand_document(
    data: Any,
    *,
    lines: LineLookup | None = None,
    expander: PromptExpander | None = None,
) -> JobFileResult:
    """Every job `data` defines, or every problem found (then no jobs). Never raises on bad
    input. Blocking when templates are expanded (wildcard files): call it from a thread."""
    ctx = _Context(lines or _NoLines(), JobFileResult(), expander)
    _expand(data, ctx)
    result = ctx.result
    if not result.problems and not result.jobs:
        result.problems.append(FieldProblem(path="", message="defines no jobs"))
    if result.problems:
        result.jobs = []
    return result


def _job(raw: Any, path: str, ctx: _Context) -> None:
    result = ctx.result
    if not isinstance(raw, dict):
        result.problems.append(ctx.problem(path, "must be a mapping of job fields"))
        return
    server = raw.get("server")
    params = {k: v for k, v in raw.items() if k not in ("server", "expand")}
    server_path = f"{path}.server" if path else "server"
    expand_path = f"{path}.expand" if path else "expand"
    if server is not None and not isinstance(server, str):
        result.problems.append(ctx.problem(server_path, "must be a string"))
    spec, expand_problems = parse_expand(raw.get("expand"), expand_path)
    for p in expand_problems:
        p.line = ctx.lines.line(p.path)
    result.problems.extend(expand_problems)
    try:
        job_params = parse_params(params, prefix=path)
    except InvalidInput as exc:
        for p in exc.problems:
            p.line = ctx.lines.line(p.path)
            result.problems.append(p)
        return
    if expand_problems:
        return
    server_line = ctx.lines.line(server_path)
    if spec is None:
        ctx.add(JobSpec(job_params, server, path, server_line))
    elif ctx.expander is None:
        ctx.add(JobSpec(job_params, server, path, server_line, expand=spec))
    else:
        _variants(job_params, spec, server, path, server_line, ctx)


def _variants(
    params: GenerationParams,
    spec: ExpandSpec,
    server: str | None,
    path: str,
    server_line: int | None,
    ctx: _Context,
) -> None:
    assert ctx.expander is not None
    prompt_path = f"{path}.prompt" if path else "prompt"
    prompts, record, problems = ctx.expander.expand(
        params.prompt, spec, job_seed=params.seed, path=prompt_path
    )
    for p in problems:
        p.line = ctx.lines.line(p.path)
    if problems:
        ctx.result.problems.extend(problems)
        return
    for prompt in prompts:
        try:
            variant = parse_params(
                {**params.model_dump(mode="json"), "prompt": prompt}, prefix=path
            )
        except InvalidInput as exc:  # e.g. a wildcard value longer than a prompt may be
            ctx.result.problems.extend(exc.problems)
            return
        ctx.add(JobSpec(variant, server, path, server_line, params.prompt, record))


def _expand(data: Any, ctx: _Context) -> None:
    listed = data.get("jobs") if isinstance(data, dict) else data
    if isinstance(listed, list) and len(listed) > MAX_JOBS:
        ctx.result.problems.append(
            FieldProblem(path="", message=f"makes {len(listed)} jobs; at most {MAX_JOBS}")
        )
        return
    if isinstance(data, list):
        for i, item in enumerate(data):
            _job(item, f"[{i}]", ctx)
        return
    if not isinstance(data, dict):
        ctx.result.problems.append(
            ctx.problem("", "expected a job (mapping), a list of jobs, or defaults + jobs")
        )
        return
    if "jobs" in data or "defaults" in data:
        _expand_defaults(data, ctx)
    elif "matrix" in data:
        _expand_matrix(data, ctx)
    else:
        _job(data, "", ctx)


def _expand_defaults(data: dict[str, Any], ctx: _Context) -> None:
    result = ctx.result
    for key in data:
        if key not in ("defaults", "jobs"):
            hint = " (put job fields under defaults or in each job)" if key in JOB_KEYS else ""
            result.problems.append(ctx.problem(str(key), f"unknown top-level key{hint}"))
    defaults = data.get("defaults") or {}
    jobs = data.get("jobs")
    if not isinstance(defaults, dict):
        result.problems.append(ctx.problem("defaults", "must be a mapping of job fields"))
        return
    if not isinstance(jobs, list) or not jobs:
        result.problems.append(ctx.problem("jobs", "must be a non-empty list of jobs"))
        return
    for i, item in enumerate(jobs):
        if not isinstance(item, dict):
            result.problems.append(ctx.problem(f"jobs[{i}]", "must be a mapping of job fields"))
            continue
        before = len(result.problems)
        _job({**defaults, **item}, f"jobs[{i}]", ctx)
        # A bad default shows up once per job; report it once, at the defaults line.
        _dedupe_defaults(ctx, before, f"jobs[{i}]", item, defaults)


def _dedupe_defaults(
    ctx: _Context, start: int, path: str, item: dict[str, Any], defaults: dict[str, Any]
) -> None:
    problems = ctx.result.problems
    seen = {(p.path, p.message) for p in problems[:start]}
    kept = problems[:start]
    for p in problems[start:]:
        field_name = p.path[len(path) + 1 :].split(".")[0].split("[")[0]
        if field_name and field_name not in item and field_name in defaults:
            moved = "defaults" + p.path[len(path) :]
            p = FieldProblem(path=moved, message=p.message, line=ctx.lines.line(moved))
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            kept.append(p)
    problems[:] = kept


def _substitute(value: Any, names: dict[str, Any]) -> Any:
    if isinstance(value, str):
        for name, replacement in names.items():
            value = value.replace("{" + name + "}", str(replacement))
        return value
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    return value


def _expand_matrix(data: dict[str, Any], ctx: _Context) -> None:
    result = ctx.result
    matrix = data["matrix"]
    base = {k: v for k, v in data.items() if k != "matrix"}
    if not isinstance(matrix, dict) or not matrix:
        result.problems.append(ctx.problem("matrix", "must be a mapping of name: [values]"))
        return
    axes: list[tuple[str, list[Any]]] = []
    for name, values in matrix.items():
        if not isinstance(values, list) or not values:
            result.problems.append(
                ctx.problem(f"matrix.{name}", "must be a non-empty list of values")
            )
            continue
        axes.append((str(name), values))
    if result.problems:
        return
    total = 1
    for _, values in axes:
        total *= len(values)
    if total > MAX_JOBS:
        result.problems.append(ctx.problem("matrix", f"makes {total} jobs; at most {MAX_JOBS}"))
        return
    seen: set[tuple[str, str]] = set()
    for combo in itertools.product(*(values for _, values in axes)):
        chosen = dict(zip((n for n, _ in axes), combo, strict=True))
        fields_set = {k: v for k, v in chosen.items() if k in JOB_KEYS}
        placeholders = {k: v for k, v in chosen.items() if k not in JOB_KEYS}
        job = _substitute({**base, **fields_set}, placeholders)
        before = len(result.problems)
        _job(job, "", ctx)
        fresh = []
        for p in result.problems[before:]:
            key = (p.path, p.message)
            if key in seen:
                continue
            seen.add(key)
            if p.path.split(".")[0].split("[")[0] in fields_set:
                p.path = f"matrix.{p.path}"
                p.line = ctx.lines.line(p.path) or p.line
            fresh.append(p)
        result.problems[before:] = fresh
        if ctx.too_many:
            return
