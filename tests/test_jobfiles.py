"""YAML job files: the three forms, every example, and errors with line numbers."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from mobilesd_core.expansion import MAX_DOCUMENT_TEXT, MAX_FILLED_TEXT, expand_document
from mobilesd_core.jobfiles import MAX_JOBS, load_job_file, parse_job_text

from .helpers.jobfiles import nested_matrix_yaml

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "jobs").glob("*.yaml"))


def test_examples_exist_for_each_form() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"single", "batch", "sweep"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    result = load_job_file(path)
    assert result.problems == []
    assert result.jobs


def test_defaults_and_jobs() -> None:
    result = parse_job_text(
        "defaults: {steps: 25, server: gpu1}\n"
        "jobs:\n"
        "  - prompt: a fox\n"
        "  - prompt: a heron\n"
        "    seed: 42\n"
        "    server: gpu2\n"
    )
    assert [(j.params.prompt, j.params.steps, j.params.seed, j.server) for j in result.jobs] == [
        ("a fox", 25, -1, "gpu1"),
        ("a heron", 25, 42, "gpu2"),
    ]


def test_matrix_expands_fields_and_placeholders() -> None:
    result = parse_job_text(
        'prompt: "sailor, {style}"\nmatrix:\n  seed: [1, 2]\n  style: [charcoal, oil]\n'
    )
    combos = sorted((j.params.seed, j.params.prompt) for j in result.jobs)
    assert combos == [
        (1, "sailor, charcoal"),
        (1, "sailor, oil"),
        (2, "sailor, charcoal"),
        (2, "sailor, oil"),
    ]


def test_errors_name_field_line_and_hint() -> None:
    result = parse_job_text(
        "defaults:\n  steps: 250\njobs:\n  - prompt: ok\n  - promt: typo\n    width: 513\n"
    )
    assert result.jobs == []
    rendered = {p.render() for p in result.problems}
    assert (
        "line 2: defaults.steps: Input should be less than or equal to 150 (found 250)" in rendered
    )
    assert "line 5: jobs[1].promt: unknown field; did you mean 'prompt'?" in rendered
    assert any(p.path == "jobs[1].width" and p.line == 6 for p in result.problems)
    assert any(p.path == "jobs[1].prompt" and "required" in p.message for p in result.problems)
    # The bad default is reported once, not once per job.
    assert sum(p.path == "defaults.steps" for p in result.problems) == 1


def test_matrix_error_points_at_matrix_line() -> None:
    result = parse_job_text("prompt: x\nmatrix:\n  cfg_scale: [4, 70]\n")
    assert [(p.path, p.line) for p in result.problems] == [("matrix.cfg_scale", 3)]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"", "empty"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"prompt: [unclosed\n", "not valid YAML"),
        (
            b"!!python/object/apply:os.system ['echo hi']\n",
            "YAML tag !!python/object/apply:os.system is not allowed",
        ),
        (b"- 1\n- 2\n", "must be a mapping"),
        (b"just a string\n", "expected a job"),
    ],
)
def test_bad_files_are_reported_not_raised(text: bytes, fragment: str) -> None:
    result = parse_job_text(text)
    assert result.jobs == []
    assert any(fragment in p.message for p in result.problems), result.problems


def test_alias_bomb_is_refused_before_expansion() -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    result = parse_job_text("\n".join(lines) + "\nprompt: x\n")
    assert result.jobs == []
    assert "too complex" in result.problems[0].message


def test_too_many_jobs() -> None:
    result = parse_job_text("prompt: x\nmatrix:\n  seed: " + str(list(range(MAX_JOBS + 1))) + "\n")
    assert result.jobs == [] and "at most" in result.problems[0].message


def _peak_mib(run: Any) -> tuple[Any, float]:
    tracemalloc.start()
    try:
        value = run()
        return value, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_placeholders_are_filled_in_one_pass() -> None:
    # A value put in is text: its own `{b}` is not filled in again.
    result = parse_job_text('prompt: "a {a} {b}"\nmatrix:\n  a: ["{b}"]\n  b: [B]\n')
    assert [j.params.prompt for j in result.jobs] == ["a {b} B"]
    # Names that are a prefix of one another, and values that are not strings, as before.
    result = parse_job_text(
        'prompt: "{ab}-{a}-{x}"\nmatrix:\n  a: ["1"]\n  ab: ["2"]\n  x: [[1, 2], 3.5]\n'
    )
    assert [j.params.prompt for j in result.jobs] == ["2-1-[1, 2]", "2-1-3.5"]


def test_a_nested_matrix_is_refused_before_it_is_built() -> None:
    text = nested_matrix_yaml()
    assert 8_000 < len(text) < 10_000
    result, peak = _peak_mib(lambda: parse_job_text(text, name="nested.yaml"))
    assert result.jobs == []
    assert [(p.path, p.line) for p in result.problems] == [("prompt", 1)]
    assert f"at most {MAX_FILLED_TEXT:,}" in result.problems[0].message
    assert "3,000,000 characters" in result.problems[0].message
    assert peak < 8, f"{peak:.1f} MiB"


def test_a_placeholder_value_made_of_aliases_is_measured_not_printed() -> None:
    # 4,000 references to one 20,000-character string: 80 MB once printed into the prompt.
    text = f's: &s "{"y" * 20_000}"\nprompt: "a {{a}}"\nmatrix:\n  a:\n    - ['
    text += ", ".join(["*s"] * 4_000) + "]\n"
    data = yaml.safe_load(text)
    del data["s"]
    result, peak = _peak_mib(lambda: expand_document(data))
    assert result.jobs == []
    (problem,) = result.problems
    assert problem.path == "prompt" and f"at most {MAX_FILLED_TEXT:,}" in problem.message
    assert peak < 8, f"{peak:.1f} MiB"


@pytest.mark.parametrize("document", ["aliases", "copies"])
def test_the_text_of_all_jobs_together_is_bounded(document: str) -> None:
    if document == "aliases":
        # 2,000 YAML references to one 20,000-character string: 40 MB of job once stored (at
        # 1 MB a file, 50,000 references to a 900 KB string: 45 GB).
        text = 'prompt: a\nextra:\n  s: &s "' + "z" * 20_000 + '"\n  l: ['
        text += ", ".join(["*s"] * 2_000) + "]\n"
        assert parse_job_text(text).problems[0].path == "extra"
        data = yaml.safe_load(text)
    else:
        # 1,000 copies of a 900 KB field, one per seed: 900 MB of job store from 1 MB of input.
        data = {"prompt": "a", "extra": {"big": "z" * 900_000}, "matrix": {"seed": [*range(1000)]}}
    result, peak = _peak_mib(lambda: expand_document(data))
    assert result.jobs == []
    (problem,) = result.problems
    assert problem.path == "extra"
    assert f"more than {MAX_DOCUMENT_TEXT:,} characters" in problem.message
    assert peak < 32, f"{peak:.1f} MiB"
