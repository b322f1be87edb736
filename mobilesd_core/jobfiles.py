"""YAML job files: one job, a list, `defaults` + `jobs`, or a `matrix` sweep -> GenerationParams.

Parsing is defensive (size cap, safe loader, node and alias caps against "billion laughs") and
every problem is collected with its field path and line number, so one report lists them all.
The forms themselves are expanded by expansion.py, which the API shares.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .expansion import JOB_KEYS, MAX_JOBS, JobFileResult, JobSpec, expand_document
from .prompt_variants import PromptExpander
from .schema import FieldProblem

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 50_000
MAX_DEPTH = 20

__all__ = ["JOB_KEYS", "MAX_JOBS", "JobFileResult", "JobSpec", "load_job_file", "parse_job_text"]


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


def parse_job_text(
    text: str | bytes,
    *,
    name: str = "<text>",
    expander: PromptExpander | None = None,
    expand_prompts: bool = True,
) -> JobFileResult:
    """Parse and validate a job file's content. Never raises on bad input.

    Prompt templates (`expand`) are expanded with `expander` (wildcards from its folder; none
    given: no wildcard files); `expand_prompts=False` keeps them, with their `expand`, for a core
    to expand (`mobilesd submit`, which has no access to the core's WILDCARDS_PATH).
    """
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
    if expand_prompts and expander is None:
        expander = PromptExpander(None)
    return expand_document(data, lines=lines, expander=expander if expand_prompts else None)


def load_job_file(
    path: Path, *, expander: PromptExpander | None = None, expand_prompts: bool = True
) -> JobFileResult:
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
    return parse_job_text(raw, name=path.name, expander=expander, expand_prompts=expand_prompts)
