"""YAML job files: one job, a list, `defaults` + `jobs`, or a `matrix` sweep -> GenerationParams.

Parsing is defensive (size cap, safe loader, node and alias caps against "billion laughs") and
every problem is collected with its field path and line number, so one report lists them all.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .schema import FieldProblem, GenerationParams, InvalidInput, parse_params

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 50_000
MAX_DEPTH = 20
MAX_JOBS = 1000
JOB_KEYS = set(GenerationParams.model_fields) | {"server"}


@dataclass
class JobSpec:
    params: GenerationParams
    server: str | None
    path: str = ""  # where in the file the job came from, e.g. "jobs[2]"
    server_line: int | None = None


@dataclass
class JobFileResult:
    jobs: list[JobSpec] = field(default_factory=list)
    problems: list[FieldProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.jobs)


class _Lines:
    """Line numbers (1-based) of every key and value in the composed YAML document."""

    def __init__(self) -> None:
        self.by_path: dict[str, int] = {}
        self.nodes = 0

    def walk(self, node: yaml.Node, path: str, depth: int = 0) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooBig(f"more than {MAX_NODES} YAML nodes (aliases included)")
        if depth > MAX_DEPTH:
            raise _TooBig(f"nested deeper than {MAX_DEPTH} levels")
        self.by_path.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                child = f"{path}.{name}" if path else str(name)
                self.by_path.setdefault(child, key.start_mark.line + 1)
                self.walk(value, child, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, f"{path}[{i}]", depth + 1)

    def line(self, *paths: str) -> int | None:
        for path in paths:
            probe = path
            while probe:
                if probe in self.by_path:
                    return self.by_path[probe]
                cut = max(probe.rfind("."), probe.rfind("["))
                probe = probe[:cut] if cut > 0 else ""
        return None


class _TooBig(Exception):
    pass


def _problem(path: str, message: str, lines: _Lines | None, *alt: str) -> FieldProblem:
    return FieldProblem(path=path, message=message, line=lines.line(path, *alt) if lines else None)


def parse_job_text(text: str | bytes, *, name: str = "<text>") -> JobFileResult:
    """Parse and validate a job file's content. Never raises on bad input."""
    result = JobFileResult()
    if isinstance(text, bytes):
        if len(text) > MAX_FILE_BYTES:
            result.problems.append(
                FieldProblem(path="", message=f"file is larger than {MAX_FILE_BYTES} bytes")
            )
            return result
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            result.problems.append(
                FieldProblem(path="", message=f"not UTF-8 text (byte {exc.start})")
            )
            return result
    if not text.strip():
        result.problems.append(FieldProblem(path="", message="file is empty; expected a job"))
        return result
    lines = _Lines()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            result.problems.append(
                FieldProblem(
                    path="", message="file is empty (nothing but comments); expected a job"
                )
            )
            return result
        lines.walk(node, "")
        loader = yaml.SafeLoader(text)
        try:
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except _TooBig as exc:
        result.problems.append(FieldProblem(path="", message=f"file is too complex: {exc}"))
        return result
    except RecursionError:
        # PyYAML's parser recurses once per nesting level, before our own depth cap can look.
        result.problems.append(
            FieldProblem(path="", message="file is too complex: nested too deeply")
        )
        return result
    except yaml.constructor.ConstructorError as exc:
        # PyYAML's message for `!!python/object...` names the tag's URI, not what went wrong.
        tag = exc.problem.split("tag ", 1)[-1] if exc.problem else "a tag"
        tag = tag.strip("'").replace("tag:yaml.org,2002:", "!!")
        mark = exc.problem_mark
        result.problems.append(
            FieldProblem(
                path="",
                message=f"YAML tag {tag} is not allowed: job files hold plain values only "
                "(text, numbers, lists, mappings)",
                line=mark.line + 1 if mark else None,
            )
        )
        return result
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"not valid YAML: {exc.problem or exc.context}"
        result.problems.append(
            FieldProblem(path="", message=message, line=mark.line + 1 if mark else None)
        )
        return result
    except yaml.YAMLError as exc:
        result.problems.append(FieldProblem(path="", message=f"not valid YAML: {exc}"))
        return result
    _expand(data, lines, result)
    if not result.problems and not result.jobs:
        result.problems.append(FieldProblem(path="", message="file defines no jobs"))
    if len(result.jobs) > MAX_JOBS:
        result.problems.append(
            FieldProblem(path="", message=f"file makes {len(result.jobs)} jobs; at most {MAX_JOBS}")
        )
        result.jobs = []
    if result.problems:
        result.jobs = []
    return result


def load_job_file(path: Path) -> JobFileResult:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return JobFileResult(
                problems=[
                    FieldProblem(path="", message=f"file is larger than {MAX_FILE_BYTES} bytes")
                ]
            )
        raw = path.read_bytes()
    except OSError as exc:
        return JobFileResult(
            problems=[FieldProblem(path="", message=f"cannot read: {exc.strerror}")]
        )
    return parse_job_text(raw, name=path.name)


def _job(raw: Any, path: str, lines: _Lines, result: JobFileResult) -> None:
    if not isinstance(raw, dict):
        result.problems.append(_problem(path, "must be a mapping of job fields", lines))
        return
    server = raw.get("server")
    params = {k: v for k, v in raw.items() if k != "server"}
    server_path = f"{path}.server" if path else "server"
    if server is not None and not isinstance(server, str):
        result.problems.append(_problem(server_path, "must be a string", lines))
    try:
        spec_params = parse_params(params, prefix=path)
    except InvalidInput as exc:
        for p in exc.problems:
            p.line = lines.line(p.path)
            result.problems.append(p)
        return
    result.jobs.append(JobSpec(spec_params, server, path, lines.line(server_path)))


def _expand(data: Any, lines: _Lines, result: JobFileResult) -> None:
    if isinstance(data, list):
        for i, item in enumerate(data):
            _job(item, f"[{i}]", lines, result)
        return
    if not isinstance(data, dict):
        result.problems.append(
            _problem("", "expected a job (mapping), a list of jobs, or defaults + jobs", lines)
        )
        return
    if "jobs" in data or "defaults" in data:
        _expand_defaults(data, lines, result)
    elif "matrix" in data:
        _expand_matrix(data, lines, result)
    else:
        _job(data, "", lines, result)


def _expand_defaults(data: dict[str, Any], lines: _Lines, result: JobFileResult) -> None:
    for key in data:
        if key not in ("defaults", "jobs"):
            hint = " (put job fields under defaults or in each job)" if key in JOB_KEYS else ""
            result.problems.append(_problem(str(key), f"unknown top-level key{hint}", lines))
    defaults = data.get("defaults") or {}
    jobs = data.get("jobs")
    if not isinstance(defaults, dict):
        result.problems.append(_problem("defaults", "must be a mapping of job fields", lines))
        return
    if not isinstance(jobs, list) or not jobs:
        result.problems.append(_problem("jobs", "must be a non-empty list of jobs", lines))
        return
    for i, item in enumerate(jobs):
        if not isinstance(item, dict):
            result.problems.append(_problem(f"jobs[{i}]", "must be a mapping of job fields", lines))
            continue
        before = len(result.problems)
        _job({**defaults, **item}, f"jobs[{i}]", lines, result)
        # A bad default shows up once per job; report it once, at the defaults line.
        _dedupe_defaults(result, before, f"jobs[{i}]", item, defaults, lines)


def _dedupe_defaults(
    result: JobFileResult,
    start: int,
    path: str,
    item: dict[str, Any],
    defaults: dict[str, Any],
    lines: _Lines,
) -> None:
    seen = {(p.path, p.message) for p in result.problems[:start]}
    kept = result.problems[:start]
    for p in result.problems[start:]:
        field_name = p.path[len(path) + 1 :].split(".")[0].split("[")[0]
        if field_name and field_name not in item and field_name in defaults:
            moved = "defaults" + p.path[len(path) :]
            p = FieldProblem(path=moved, message=p.message, line=lines.line(moved))
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            kept.append(p)
    result.problems[:] = kept


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


def _expand_matrix(data: dict[str, Any], lines: _Lines, result: JobFileResult) -> None:
    matrix = data["matrix"]
    base = {k: v for k, v in data.items() if k != "matrix"}
    if not isinstance(matrix, dict) or not matrix:
        result.problems.append(_problem("matrix", "must be a mapping of name: [values]", lines))
        return
    axes: list[tuple[str, list[Any]]] = []
    for name, values in matrix.items():
        if not isinstance(values, list) or not values:
            result.problems.append(
                _problem(f"matrix.{name}", "must be a non-empty list of values", lines)
            )
            continue
        axes.append((str(name), values))
    if result.problems:
        return
    total = 1
    for _, values in axes:
        total *= len(values)
    if total > MAX_JOBS:
        result.problems.append(
            _problem("matrix", f"makes {total} jobs; at most {MAX_JOBS} per file", lines)
        )
        return
    seen: set[tuple[str, str]] = set()
    for combo in itertools.product(*(values for _, values in axes)):
        chosen = dict(zip((n for n, _ in axes), combo, strict=True))
        fields_set = {k: v for k, v in chosen.items() if k in JOB_KEYS}
        placeholders = {k: v for k, v in chosen.items() if k not in JOB_KEYS}
        job = _substitute({**base, **fields_set}, placeholders)
        before = len(result.problems)
        _job(job, "", lines, result)
        fresh = []
        for p in result.problems[before:]:
            key = (p.path, p.message)
            if key in seen:
                continue
            seen.add(key)
            if p.path.split(".")[0].split("[")[0] in fields_set:
                p.path = f"matrix.{p.path}"
                p.line = lines.line(p.path) or p.line
            fresh.append(p)
        result.problems[before:] = fresh
