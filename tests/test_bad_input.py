"""Bad input, generated: job params, YAML job files, and every route of the HTTP API.

Property-based (Hypothesis) with bounded examples and no deadline, so the whole file stays well
under a minute:

* `parse_params` either returns GenerationParams or raises InvalidInput whose every problem has
  a path and a message; whatever it accepts is within the contract's ranges;
* `parse_job_text` never raises, on any text or on YAML documents built from job-like data, and
  every problem it reports has a message (and a path, except for whole-file problems);
* the API, fuzzed from its own OpenAPI document: for every operation, bodies from the request
  schema (valid, and "wild": one field of any type, unknown keys, a required key dropped, any JSON
  at all), random path parameters and query strings. No 500, no crash, every 4xx is the error
  shape with a message, every 422 lists each field, and a job is created only from input the
  schema and the model both accept.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from mobilesd_core.api.openapi import openapi_document
from mobilesd_core.jobfiles import parse_job_text
from mobilesd_core.schema import GenerationParams, InvalidInput, parse_params

from .conftest import TOKEN, fast_settings, start_harness, stop_harness
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


# --- the HTTP API, from its OpenAPI document ----------------------------------------------------


class CoreThread:
    """The real core on a loopback socket, in a thread with its own event loop, so that
    Hypothesis (synchronous) can drive it with a plain httpx.Client."""

    def __init__(self, root: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # Civitai on a closed loopback port: hermetic, and "Civitai unreachable" is a path too.
        settings = fast_settings(
            root,
            civitai_base_url="http://127.0.0.1:9",
            civitai_retry_backoff=0.01,
            civitai_retry_backoff_max=0.02,
            civitai_max_retries=1,
        )
        self.harness = self.call(start_harness(settings))
        self.url = str(self.harness.api.base_url)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def job_count(self) -> int:
        async def count() -> int:
            return len(self.harness.core.store.live_jobs()) + sum(
                self.harness.core.store.count()[s] for s in ("completed", "failed", "cancelled")
            )

        return self.call(count())

    def close(self) -> None:
        self.call(stop_harness(self.harness))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreThread]:
    thread = CoreThread(tmp_path_factory.mktemp("fuzz"))
    try:
        with httpx.Client(
            base_url=thread.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        ) as client:
            client.post("/api/v1/queue/pause").raise_for_status()  # nothing is dispatched
        yield thread
    finally:
        thread.close()


DOC = openapi_document()
SCHEMAS = SchemaStrategies(DOC["components"]["schemas"])
REGISTRY = Registry().with_resource(
    "urn:openapi", Resource(contents=DOC, specification=DRAFT202012)
)
OPERATIONS = [
    (method.upper(), path, op)
    for path, ops in DOC["paths"].items()
    for method, op in ops.items()
    if method in ("get", "post", "put", "delete") and path != "/api/v1/events"
]
PATH_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["..", "../../etc/passwd", "%2e%2e%2fdata", "x.png", "a" * 300, "01JD3", "gpu1", ""]
    ),
)
QUERY_VALUE = st.one_of(
    st.text(max_size=20), st.integers(-(10**12), 10**12).map(str), st.sampled_from(["", "-1"])
)


def body_validator(op: dict[str, Any]) -> Draft202012Validator | None:
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    if "schema" not in schema:
        return None
    return Draft202012Validator(
        {"$ref": "urn:openapi#/components/schemas/" + schema["schema"]["$ref"].rsplit("/", 1)[-1]},
        registry=REGISTRY,
    )


def request_strategy(method: str, path: str, op: dict[str, Any]) -> st.SearchStrategy[Any]:
    names = re.findall(r"\{([^}]+)\}", path)
    path_values = st.fixed_dictionaries({name: PATH_TEXT for name in names})
    query = st.fixed_dictionaries(
        {},
        optional={
            p["name"]: QUERY_VALUE for p in op.get("parameters", []) if p.get("in") == "query"
        },
    )
    content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    if "schema" in content:
        body = st.one_of(
            SCHEMAS.for_schema(content["schema"], wild=False).map(json.dumps),
            SCHEMAS.for_schema(content["schema"], wild=True).map(json.dumps),
            st.sampled_from(["", "{", "null", "[]", '"x"', "1e999", "{" * 500 + "}" * 500]),
            st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
        )
    else:
        body = st.none()
    return st.tuples(path_values, query, body)


def quote(value: str) -> str:
    return urllib.parse.quote(value, safe="", errors="surrogatepass") or "%20"


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("method", "path", "op"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
def test_api_fuzz_from_the_openapi_document(
    core: CoreThread, method: str, path: str, op: dict[str, Any]
) -> None:
    validator = body_validator(op)
    seen: Counter[int] = Counter()
    client = httpx.Client(
        base_url=core.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )

    @settings(
        max_examples=60 if "requestBody" in op else 25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(request_strategy(method, path, op))
    def one(request: tuple[dict[str, str], dict[str, str], str | None]) -> None:
        path_values, query, body = request
        url = path
        for name, value in path_values.items():
            url = url.replace("{" + name + "}", quote(value))
        before = core.job_count() if path == "/api/v1/generate" else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        response = client.request(
            method,
            url,
            params=query,
            content=body.encode("utf-8", "surrogatepass") if body is not None else None,
            headers=headers,
        )
        seen[response.status_code] += 1
        upstream_down = path.startswith("/api/v1/civitai/") and response.status_code == 502
        assert response.status_code < 500 or upstream_down, (method, url, body, response.text)
        if response.status_code >= 400 and response.headers.get("content-type", "").startswith(
            "application/json"
        ):
            error = response.json()["error"]
            assert error["code"] and error["message"].strip(), error
            if response.status_code == 422:
                assert error["details"], error
                for item in error["details"]:
                    assert item["message"].strip(), item
                    assert "path" in item, item
        if before is not None:
            created = core.job_count() - before
            if response.status_code == 202:
                data = json.loads(body or "null")
                # Accepted only what the documented body allows, and every job it defines.
                assert validator is not None and validator.is_valid(data), body
                assert created == len(response.json()["mobilesd_job_ids"]) >= 1
            else:
                assert created == 0, (response.status_code, body)

    try:
        one()
    finally:
        client.close()
    print(f"{method} {path}: {dict(sorted(seen.items()))}")
    if path == "/api/v1/generate":
        assert seen[202] and seen[422] and seen[400], seen  # valid and invalid both reached it
