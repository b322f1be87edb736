"""Bad input, generated: job params, YAML job files, and every route of the HTTP API.

Property-based (Hypothesis) with bounded examples and no deadline, so the whole file stays well
under a minute:

* `parse_params` either returns GenerationParams or raises InvalidInput whose every problem has
  a path and a message; whatever it accepts is within the contract's ranges;
* `parse_job_text` never raises, on any text or on YAML documents built from job-like data, and
  every problem it reports has a message (and a path, except for whole-file problems);

The HTTP API is fuzzed from its served OpenAPI document by Schemathesis (test_schemathesis.py).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobilesd_core.jobfiles import parse_job_text
from mobilesd_core.schema import GenerationParams, InvalidInput, parse_params

from .helpers.schema_fuzz import JSON_VALUES, SchemaStrategies

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
PARAMS_SCHEMA = GenerationParams.model_json_schema()
PARAM_STRATEGIES = SchemaStrategies(PARAMS_SCHEMA.get("$defs", {}))


# --- job params ---------------------------------------------------------------------------------


@FAST
@given(PARAM_STRATEGIES.for_schema(PARAMS_SCHEMA, wild=True))
def test_parse_params_accepts_or_names_every_problem(data: Any) -> None:
    try:
        params = parse_params(data)
    except InvalidInput as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.path.startswith("generation_params"), problem
            assert problem.message.strip(), problem
        return
    assert params.prompt.strip()
    assert 64 <= params.width <= 4096 and params.width % 8 == 0
    assert 64 <= params.height <= 4096 and params.height % 8 == 0
    assert 1 <= params.steps <= 150 and 1 <= params.batch_size <= 8
    assert params.seed == -1 or 0 <= params.seed <= 4294967295
    assert math.isfinite(params.cfg_scale) and 0 <= params.cfg_scale <= 30
    assert all(-5 <= lora.weight <= 5 for lora in params.loras)
    # What was accepted survives a round trip unchanged (API -> store -> API).
    assert parse_params(json.loads(params.model_dump_json())) == params


@FAST
@given(st.text(max_size=300))
def test_parse_job_text_never_raises_on_any_text(text: str) -> None:
    check_job_file_result(text)


@FAST
@given(st.binary(max_size=200))
def test_parse_job_text_never_raises_on_any_bytes(data: bytes) -> None:
    check_job_file_result(data)


JOB_LIKE = PARAM_STRATEGIES.for_schema(PARAMS_SCHEMA, wild=True)
FILE_SHAPES = st.one_of(
    JOB_LIKE,
    st.lists(JOB_LIKE, max_size=3),
    st.fixed_dictionaries(
        {"jobs": st.lists(JOB_LIKE, max_size=3)}, optional={"defaults": JOB_LIKE}
    ),
    st.builds(
        lambda job, matrix: {**job, "matrix": matrix} if isinstance(job, dict) else job,
        JOB_LIKE,
        st.dictionaries(
            st.sampled_from(["seed", "steps", "cfg_scale", "style", "width"]),
            st.lists(JSON_VALUES, max_size=3),
            max_size=2,
        ),
    ),
)


@FAST
@given(FILE_SHAPES)
def test_parse_job_text_never_raises_on_job_like_yaml(data: Any) -> None:
    check_job_file_result(yaml.safe_dump(data, allow_unicode=True))


def check_job_file_result(text: str | bytes) -> None:
    result = parse_job_text(text, name="fuzz.yaml")
    for problem in result.problems:
        assert problem.message.strip(), problem
        assert isinstance(problem.path, str)
        rendered = problem.render_in("fuzz.yaml")
        assert rendered.startswith("fuzz.yaml") and problem.message in rendered
    if not result.problems:
        assert result.jobs, "no problem and no job"
        for spec in result.jobs:
            assert isinstance(spec.params, GenerationParams)


@pytest.mark.parametrize(
    "text",
    [
        "a: &a [*a]",  # a recursive alias
        "x: " + "[" * 200 + "]" * 200,  # deep nesting
        "prompt: !!python/object/apply:os.system ['true']",  # a constructor tag
        "- " * 2000,
        "prompt: x\nmatrix: {seed: " + str(list(range(1001))) + "}",  # over 1,000 jobs
        "\ufeffprompt: a BOM is fine",
        "prompt: 'unterminated",
    ],
    ids=["recursive alias", "deep flow", "python tag", "deep block", "too many", "bom", "quote"],
)
def test_hostile_yaml_is_a_problem_not_a_crash(text: str) -> None:
    check_job_file_result(text)
    assert parse_job_text(text).problems or text.startswith("\ufeff")
