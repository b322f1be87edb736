"""The JSON Schema of job files: committed, generated from the models, and in agreement with the
job file parser on good and bad files alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from mobilesd_core.jobfile_schema import SCHEMA_FILE, job_file_schema, main, render
from mobilesd_core.jobfiles import parse_job_text
from mobilesd_core.schema import GenerationParams

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "jobs").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _leaves(errors: list[ValidationError]) -> list[ValidationError]:
    """The innermost errors (anyOf branches report theirs as `context`)."""
    out = []
    for error in errors:
        out.extend(_leaves(error.context) if error.context else [error])
    return out


def _problems(validator: Draft7Validator, data: Any) -> list[tuple[str, str]]:
    """(field path, failed keyword) of every innermost error."""
    return [
        (".".join(str(p) for p in e.absolute_path), str(e.validator))
        for e in _leaves(list(validator.iter_errors(data)))
    ]


def test_committed_schema_is_what_the_code_generates() -> None:
    assert SCHEMA_FILE == ROOT / "schemas" / "mobilesd-job.schema.json"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render(job_file_schema()), (
        "schemas/mobilesd-job.schema.json is stale; run: python -m mobilesd_core.jobfile_schema"
    )
    assert main(["--check"]) == 0


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "schema.json"
    stale.write_text("{}\n")
    assert main(["--check", str(stale)]) == 1
    assert main([str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0


def test_schema_knows_every_job_field(validator: Draft7Validator) -> None:
    fields = validator.schema["definitions"]["JobFields"]["properties"]
    assert set(fields) == set(GenerationParams.model_fields) | {"server", "expand"}
    for name, field in fields.items():
        assert field.get("description"), f"{name} has no description"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(validator: Draft7Validator, path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert _problems(validator, data) == []
    assert parse_job_text(path.read_bytes()).ok


def test_there_is_an_example_of_each_kind() -> None:
    assert {p.name for p in EXAMPLES} >= {"single.yaml", "batch.yaml", "sweep.yaml"}


@pytest.mark.parametrize(
    ("text", "where", "keyword"),
    [
        ("prompt: a fox\nstpes: 20\n", "", "additionalProperties"),
        ("prompt: a fox\nsteps: 0\n", "steps", "minimum"),
        ("prompt: a fox\nwidth: 513\n", "width", "multipleOf"),
        ("prompt: a fox\nheight: 8192\n", "height", "maximum"),
        ("prompt: '   '\n", "prompt", "pattern"),
        ("prompt: a fox\nseed: true\n", "seed", "type"),
        ("prompt: a fox\nloras: [{name: add_detail, weight: 9}]\n", "loras.0.weight", "maximum"),
        ("defaults: {steps: 20}\njobs:\n  - prompt: a\n    width: 100\n", "jobs.0.width", ""),
        ("- prompt: a\n- prompt: b\n  cfg_scale: 31\n", "1.cfg_scale", "maximum"),
        ("prompt: a\nmatrix: {steps: [10, 0]}\n", "matrix.steps.1", "minimum"),
    ],
)
def test_broken_files_fail_at_the_right_field(
    validator: Draft7Validator, text: str, where: str, keyword: str
) -> None:
    problems = _problems(validator, yaml.safe_load(text))
    assert problems, "expected the schema to reject this file"
    assert any(path == where and (not keyword or kw == keyword) for path, kw in problems), problems
    assert not parse_job_text(text).ok


# Schema and parser must agree on what a valid file is.
AGREEMENT = [
    "prompt: a fox\n",
    "prompt: a fox\nserver: gpu1\nextra: {anything: [1, 2]}\n",
    "prompt: a fox\nhires: {upscaler: Latent, scale: 1.5, steps: 10, denoising_strength: 0.5}\n",
    "prompt: a fox\nhires: {factor: 2}\n",
    "prompt: a fox\nserver: 3\n",
    "prompt: a fox\ncfg_scale: 7\n",
    "prompt: a fox\nsteps: '20'\n",
    "prompt: a fox\nloras: [{name: 'bad:name'}]\n",
    "prompt: a fox\nclip_skip: 13\n",
    "prompt: a fox\ncheckpoint_name: null\nscheduler: null\n",
    "prompt: a fox\nstyles: [one, two]\n",
    "prompt: a fox\nmatrix: {seed: [1, 2]}\n",
    "{}\n",
    "[]\n",
    "- prompt: a\n- {seed: 3}\n",
    "- prompt: a\n- not a job\n",
    "defaults: {prompt: a fox}\njobs: [{seed: 1}, {seed: 2}]\n",
    "defaults:\njobs: [{prompt: a}]\n",
    "defaults: {steps: 20}\njobs: [{prompt: a}, {prompt: b}]\n",
    "defaults: {steps: 20}\njobs: [{prompt: a}, {seed: 2}]\n",
    "defaults: {prompt: a}\n",
    "jobs: []\n",
    "jobs: [{prompt: a}]\nsteps: 20\n",
    "defaults: {prompt: a, matrix: {seed: [1]}}\njobs: [{}]\n",
    "matrix: {prompt: [a, b], steps: [10, 20]}\n",
    "prompt: 'a {x}'\nmatrix: {x: [cat, dog], seed: [1, 2]}\n",
    "matrix: {seed: [1, 2]}\n",
    "prompt: a\nmatrix: {}\n",
    "prompt: a\nmatrix: {seed: []}\n",
    "prompt: a\nmatrix: {seed: 3}\n",
    "prompt: a\nmatrix: {width: [512, 513]}\n",
    "prompt: a\nmatrix: {server: [gpu1, gpu2]}\n",
    "prompt: a\nstpes: 2\nmatrix: {seed: [1]}\n",
    "just a string\n",
    "42\n",
    "prompt: 'a {red|blue} fox'\nexpand: combinatorial\n",
    "prompt: 'a {red|blue} fox'\nexpand: {mode: random, count: 3, seed: 7}\n",
    "prompt: 'a {red|blue} fox'\nexpand: {mode: random}\n",
    "prompt: 'a {red|blue} fox'\nexpand: sideways\n",
    "prompt: 'a {red|blue} fox'\nexpand: {mode: combinatorial, count: 2}\n",
    "prompt: 'a {red|blue} fox'\nexpand: {mode: random, count: 0}\n",
    "prompt: 'a {red|blue} fox'\nexpand: {mode: random, colour: red}\n",
    "defaults: {prompt: 'a {x|y}', expand: combinatorial}\njobs: [{seed: 1}, {seed: 2}]\n",
]


@pytest.mark.parametrize("text", AGREEMENT)
def test_schema_and_parser_agree(validator: Draft7Validator, text: str) -> None:
    by_schema = validator.is_valid(yaml.safe_load(text))
    result = parse_job_text(text)
    assert by_schema == result.ok, [p.render() for p in result.problems] or "parser accepts it"
