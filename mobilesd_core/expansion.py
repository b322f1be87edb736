"""One job document -> jobs: a single job, a list, `defaults` + `jobs`, or a `matrix` sweep, and
prompt templates expanded with `expand`.

The one implementation behind YAML job files (jobfiles.py adds parsing and line numbers) and
`POST /api/v1/generate` (which maps its body onto the same document shape), so a sweep queued
from the API equals the same sweep from a file, job for job.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from .prompt_variants import ExpandSpec, PromptExpander, parse_expand
from .schema import FieldProblem, GenerationParams, InvalidInput, parse_params

MAX_JOBS = 1000
JOB_KEYS = set(GenerationParams.model_fields) | {"server", "expand"}
# A text holding matrix placeholders, before and after they are filled in: the longest text a
# job field takes (prompt, negative_prompt). Checked before the text is built, so a value of
# `{b}{b}...` repeated a thousand times is refused instead of asking for gigabytes.
MAX_FILLED_TEXT = 20_000
# All texts of one job that hold placeholders, together (extra may hold many).
MAX_FILLED_JOB = 50_000
# The text (keys and strings) of all jobs of one document together, YAML aliases and matrix
# copies counted each time they occur: a 1 MB file must not become a gigabyte of job store.
MAX_DOCUMENT_TEXT = 16_000_000


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
    too_many: bool = False  # a limit was hit: stop making jobs (the problem is noted)
    text: int = 0  # characters of the jobs made so far (MAX_DOCUMENT_TEXT)
    sizes: _Sizes = field(default_factory=lambda: _Sizes())

    def problem(self, path: str, message: str, *alt: str) -> FieldProblem:
        return FieldProblem(path=path, message=message, line=self.lines.line(path, *alt))

    def add(self, spec: JobSpec, size: int = 0) -> None:
        """Keep a job; `size`: the characters of text it holds (see _Sizes)."""
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

    def fits(self, raw: dict[str, Any], path: str, size: int) -> bool:
        """Whether a job of `size` characters still fits the document's budget; notes the
        problem (once, at the job's biggest field) and stops the expansion if not."""
        if self.too_many:
            return False
        if self.text + size <= MAX_DOCUMENT_TEXT:
            self.text += size
            return True
        self.too_many = True
        biggest = max(raw, key=lambda k: self.sizes.of(raw[k]) + len(str(k)), default="")
        where = f"{path}.{biggest}" if path and biggest else path or str(biggest)
        self.result.problems.append(
            self.problem(
                where,
                f"the jobs would hold more than {MAX_DOCUMENT_TEXT:,} characters of text "
                "together (each YAML alias and each matrix copy counts); make it smaller",
            )
        )
        return False


class _Sizes:
    """Characters of text (keys and strings) in a value, counting a shared object each time it
    is referenced (YAML aliases, defaults and matrix bases), without walking it again: memo by
    object identity, holding the objects so an id is never reused meanwhile."""

    def __init__(self) -> None:
        self._memo: dict[int, tuple[Any, int]] = {}

    def of(self, value: Any) -> int:
        if not isinstance(value, dict | list):
            return self._leaf(value)
        known = self._memo.get(id(value))
        if known is not None:
            return known[1]
        size = self.fields(value) if isinstance(value, dict) else 0
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, dict | list):
                known = self._memo.get(id(child))
                if known is None:
                    return self._deep(value)
                size += known[1]
            else:
                size += self._leaf(child)
        self._memo[id(value)] = (value, size)
        return size

    def job(self, raw: dict[str, Any]) -> int:
        """The size of one job's fields (the mapping itself is not kept: it is new each time)."""
        size = 0
        for key, value in raw.items():
            size += len(key) if isinstance(key, str) else len(str(key))
            if isinstance(value, str):
                size += len(value)
            elif isinstance(value, dict | list):
                size += self.of(value)
            else:
                size += 1
        return size

    @staticmethod
    def fields(value: dict[Any, Any]) -> int:
        return sum(len(str(k)) for k in value)

    def _deep(self, value: Any) -> int:
        # Without recursion: an API body may nest a thousand levels deep.
        stack: list[tuple[Any, bool]] = [(value, False)]
        open_: set[int] = set()  # being measured (a cycle counts as nothing more)
        while stack:
            node, children_done = stack.pop()
            if id(node) in self._memo:
                continue
            children = list(node.values()) if isinstance(node, dict) else node
            if not children_done:
                open_.add(id(node))
                stack.append((node, True))
                stack.extend(
                    (c, False)
                    for c in children
                    if isinstance(c, dict | list) and id(c) not in self._memo and id(c) not in open_
                )
                continue
            size = self.fields(node) if isinstance(node, dict) else 0
            for child in children:
                if isinstance(child, dict | list):
                    size += self._memo[id(child)][1] if id(child) in self._memo else 0
                else:
                    size += self._leaf(child)
            self._memo[id(node)] = (node, size)
            open_.discard(id(node))
        return self._memo[id(value)][1]

    @staticmethod
    def _leaf(value: Any) -> int:
        # A number, bool or null: at least one character (the sizes are lower bounds).
        return len(value) if isinstance(value, str) else 1


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
    size = ctx.sizes.job(raw)
    server_line = ctx.lines.line(server_path)
    if spec is None:
        if ctx.fits(raw, path, size):
            ctx.add(JobSpec(job_params, server, path, server_line))
    elif ctx.expander is None:
        if ctx.fits(raw, path, size):
            ctx.add(JobSpec(job_params, server, path, server_line, expand=spec))
    else:
        _variants(job_params, spec, server, path, server_line, ctx, raw, size)


def _variants(
    params: GenerationParams,
    spec: ExpandSpec,
    server: str | None,
    path: str,
    server_line: int | None,
    ctx: _Context,
    raw: dict[str, Any],
    size: int,
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
        if not ctx.fits(raw, path, size - len(params.prompt) + len(prompt)):
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


class _TooLong(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class _Texts:
    """The text each placeholder token stands for in one combination.

    A list or mapping value goes in as its Python text (as it always did); one whose strings
    alone are past MAX_FILLED_TEXT is refused before that text is made (YAML aliases can make
    it gigabytes). Texts are made once per value, on first use, for all combinations."""

    def __init__(self, values: dict[str, Any], sizes: _Sizes, made: dict[int, Any]) -> None:
        self._values = values  # token -> value
        self._sizes = sizes
        self._made = made  # id(value) -> (value, its text), shared by all combinations

    def length(self, token: str, path: str) -> int:
        value = self._values[token]
        if isinstance(value, dict | list) and self._sizes.of(value) > MAX_FILLED_TEXT:
            raise _TooLong(
                path,
                f"would be more than {MAX_FILLED_TEXT:,} characters with the matrix value of "
                f"{token} filled in; at most {MAX_FILLED_TEXT:,}",
            )
        return len(self.text(token))

    def text(self, token: str) -> str:
        value = self._values[token]
        if isinstance(value, str):
            return value
        made = self._made.get(id(value))
        if made is None:
            made = self._made[id(value)] = (value, str(value))
        return made[1]


class _Placeholders:
    """Fills a matrix's `{name}` placeholders into a job's strings, in one pass.

    A value put in is never scanned again: `{b}` inside the value of `a` stays text. (Replacing
    one name after the other expanded it again, so nested values grew as n^k.) Every string's
    length is worked out from its placeholder counts before it is built, and refused past
    MAX_FILLED_TEXT, as is a job whose filled strings pass MAX_FILLED_JOB together.
    """

    def __init__(self, names: list[str], sizes: _Sizes) -> None:
        self._sizes = sizes
        # Longest first: where one name's token starts another's, the longer one is meant.
        tokens = sorted({"{" + name + "}" for name in names}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, tokens))) if tokens else None
        self._counts: dict[str, tuple[int, Counter[str]]] = {}
        self._made: dict[int, Any] = {}

    def _count(self, text: str) -> tuple[int, Counter[str]]:
        """Characters outside placeholders, and how often each placeholder token occurs."""
        known = self._counts.get(text)
        if known is None:
            assert self._pattern is not None
            tokens = Counter(m.group() for m in self._pattern.finditer(text))
            known = (len(text) - sum(len(t) * n for t, n in tokens.items()), tokens)
            self._counts[text] = known
        return known

    def fill(self, job: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """`job` with every placeholder filled in; raises _TooLong (naming the field) before
        building anything too long. Unchanged parts are the same objects as in `job`."""
        if self._pattern is None:
            return job
        tokens = {"{" + name + "}": value for name, value in values.items()}
        texts = _Texts(tokens, self._sizes, self._made)
        budget = [MAX_FILLED_JOB]
        filled = {}
        for key, value in job.items():
            if isinstance(value, str):
                filled[key] = self._fill_text(value, str(key), texts, budget)
            elif isinstance(value, dict | list):
                filled[key] = self._fill(value, str(key), texts, budget)
            else:
                filled[key] = value
        return filled

    def _fill(self, value: Any, path: str, texts: _Texts, budget: list[int]) -> Any:
        if isinstance(value, str):
            return self._fill_text(value, path, texts, budget)
        if isinstance(value, list):
            items = [self._fill(v, f"{path}[{i}]", texts, budget) for i, v in enumerate(value)]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if isinstance(value, dict):
            filled = {k: self._fill(v, f"{path}.{k}", texts, budget) for k, v in value.items()}
            return value if all(filled[k] is v for k, v in value.items()) else filled
        return value

    def _fill_text(self, value: str, path: str, texts: _Texts, budget: list[int]) -> str:
        literal, tokens = self._count(value)
        if not tokens:
            return value
        length = 0
        for token, count in tokens.items():
            length += texts.length(token, path) * count
        length += literal
        longest = max(length, len(value))
        if longest > MAX_FILLED_TEXT:
            what = (
                f"would be {length:,} characters with the matrix values filled in"
                if length >= len(value)
                else f"holds matrix placeholders and is {len(value):,} characters long"
            )
            raise _TooLong(path, f"{what}; at most {MAX_FILLED_TEXT:,}")
        budget[0] -= longest
        if budget[0] < 0:
            raise _TooLong(
                path,
                "with the matrix values filled in, the job's texts would be more than "
                f"{MAX_FILLED_JOB:,} characters together; at most {MAX_FILLED_JOB:,}",
            )
        assert self._pattern is not None
        return self._pattern.sub(lambda m: texts.text(m.group()), value)


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
    filler = _Placeholders([name for name, _ in axes if name not in JOB_KEYS], ctx.sizes)
    for combo in itertools.product(*(values for _, values in axes)):
        chosen = dict(zip((n for n, _ in axes), combo, strict=True))
        fields_set = {k: v for k, v in chosen.items() if k in JOB_KEYS}
        placeholders = {k: v for k, v in chosen.items() if k not in JOB_KEYS}
        try:
            job = filler.fill({**base, **fields_set}, placeholders)
        except _TooLong as exc:
            # Once: the other combinations would only repeat it, with other numbers.
            head = exc.path.split(".")[0].split("[")[0]
            where = f"matrix.{exc.path}" if head in fields_set else exc.path
            result.problems.append(ctx.problem(where, exc.message))
            return
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
