"""The OpenAPI document is the machine-readable copy of the contract: it must be valid OpenAPI 3.1,
cover exactly the routes the app registers, and describe what the running core really answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from mobilesd_core.api.app import create_app
from mobilesd_core.api.openapi import EVENT_DATA, openapi_document
from mobilesd_core.events import EVENT_NAMES
from mobilesd_core.forge.simulator import SimServer, SimulatorConfig
from mobilesd_core.schema import ALL_STATUSES, GenerationParams

from .conftest import TOKEN, Harness, fast_settings, wait_for
from .helpers.openapi import DOC_URI, ResponseChecker

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
# The page's routes (HTML, login/logout, assets): not part of the API document.
PAGE_PATHS = {"/", "/login", "/logout"}
PAGE_PREFIXES = ("/static/",)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi_document()


# --- (a) a valid OpenAPI 3.1 document, served by the core --------------------------------------


def test_document_is_valid_openapi_31(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    validate_openapi(doc)


async def test_core_serves_the_document_behind_the_token(
    harness: Harness, doc: dict[str, Any]
) -> None:
    response = await harness.api.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    served = response.json()
    assert served == doc
    validate_openapi(served)
    async with httpx.AsyncClient(base_url=str(harness.api.base_url)) as anonymous:
        assert (await anonymous.get("/api/v1/openapi.json")).status_code == 401


def test_every_event_name_is_documented(doc: dict[str, Any]) -> None:
    events = doc["paths"]["/api/v1/events"]["get"]
    assert set(events["x-event-data"]) == set(EVENT_NAMES) == set(EVENT_DATA)
    for name in EVENT_NAMES:
        assert f"`{name}`" in events["description"]
    header = [p for p in events["parameters"] if p["in"] == "header"]
    assert [p["name"] for p in header] == ["Last-Event-ID"]


def test_request_schemas_are_the_models(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert set(schemas["GenerationParams"]["properties"]) == set(GenerationParams.model_fields)
    assert schemas["GenerationParams"]["additionalProperties"] is False
    assert schemas["GenerationParams"]["properties"]["width"]["multipleOf"] == 8
    body = doc["paths"]["/api/v1/generate"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GenerateRequest"
    }


async def test_a_wrong_method_is_told_the_allowed_ones(harness: Harness) -> None:
    """405 names the methods the route has (RFC 9110), in the one error shape."""
    response = await harness.api.request("TRACE", "/api/v1/servers")
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}
    assert response.json()["error"]["code"] == "method_not_allowed"


# --- (b) documented routes == registered routes -------------------------------------------------


def _registered(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method == "HEAD" or isinstance(route.resource, web.StaticResource):
            continue
        if path in PAGE_PATHS or path.startswith(PAGE_PREFIXES):
            continue
        out.add((route.method.lower(), path))
    return out


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_every_route_is_documented_and_every_documented_route_exists(
    tmp_path: Path, doc: dict[str, Any]
) -> None:
    app = create_app(fast_settings(tmp_path))
    registered = _registered(app)
    documented = _documented(doc)
    undocumented = sorted(registered - documented)
    assert not undocumented, (
        f"routes missing from mobilesd_core/api/openapi.py: {undocumented} (a page route, not "
        "API, goes in PAGE_PATHS of tests/test_openapi.py instead)"
    )
    missing = sorted(documented - registered)
    assert not missing, f"documented but not registered by create_app: {missing}"
    assert ("get", "/healthz") in registered
    assert ("get", "/api/v1/openapi.json") in registered


def test_every_api_operation_names_its_errors(doc: dict[str, Any]) -> None:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            codes = set(op["responses"])
            if path == "/healthz":
                assert op["security"] == []
                continue
            assert {"401", "429"} <= codes, (method, path)
            if method != "get":
                assert "403" in codes, (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= codes, (method, path)
            if "{" in path and path != "/api/v1/events":
                assert "404" in codes, (method, path)
            assert any(c.startswith("2") for c in codes), (method, path)


# --- (c) real responses validate against the document -------------------------------------------


def test_checker_catches_an_undocumented_field(doc: dict[str, Any]) -> None:
    check = ResponseChecker(doc)
    request = httpx.Request("GET", "http://core/api/v1/queue")
    good = {"paused": False, "counts": dict.fromkeys(ALL_STATUSES, 0)}
    check(httpx.Response(200, json=good, request=request))
    with pytest.raises(AssertionError, match="surprise"):
        check(httpx.Response(200, json={**good, "surprise": 1}, request=request))
    with pytest.raises(AssertionError, match="paused"):
        check(httpx.Response(200, json={"counts": good["counts"]}, request=request))
    with pytest.raises(AssertionError, match="answered 418"):
        check(httpx.Response(418, json=good, request=request))


async def test_real_responses_match_the_document(harness: Harness, doc: dict[str, Any]) -> None:
    check = ResponseChecker(doc)
    api = harness.api

    async with httpx.AsyncClient(base_url=str(api.base_url)) as anonymous:
        check(await anonymous.get("/healthz"))
        check(await anonymous.get("/api/v1/servers"))  # 401

    assert check(await api.get("/api/v1/servers")) == []
    sim = SimServer(SimulatorConfig(step_ms=30, switch_ms=20, name="gpu1"))
    await sim.start()
    harness.sims["gpu1"] = sim
    added = check(
        await api.post(
            "/api/v1/servers",
            json={"alias": "gpu1", "api_url": sim.url, "username": "u", "password": "p"},
        )
    )
    assert added["has_password"] is True and "password" not in added
    check(await api.post("/api/v1/servers", json={"alias": "gpu1", "api_url": sim.url}))  # 409
    check(await api.post("/api/v1/servers", json={"alias": "bad alias!", "api_url": "ftp://x"}))
    check(await api.put("/api/v1/servers/gpu1", json={"username": None, "password": None}))
    await wait_for(lambda: harness.core.registry.runtimes["gpu1"].online, what="gpu1 online")
    check(await api.get("/api/v1/servers"))
    check(await api.get("/api/v1/servers/gpu1"))
    check(await api.get("/api/v1/servers/gpu1/status"))
    check(await api.get("/api/v1/servers/gpu1/models"))
    check(await api.get("/api/v1/servers/nope"))  # 404

    # A job through its whole life: pending, processing with progress, completed.
    accepted = check(
        await api.post(
            "/api/v1/generate",
            json={
                "generation_params": {
                    "prompt": "a lighthouse at dusk",
                    "steps": 12,
                    "width": 64,
                    "height": 64,
                    "loras": [{"name": "add_detail", "weight": 0.5}],
                    "hires": {"scale": 1.5},
                },
                "target_server_alias": "gpu1",
            },
        )
    )
    job_id = accepted["mobilesd_job_id"]
    check(await api.get(f"/api/v1/queue/jobs/{job_id}"))

    async def running_with_progress() -> bool:
        job = check(await api.get(f"/api/v1/queue/jobs/{job_id}"))
        check(await api.get(f"/api/v1/queue/jobs/{job_id}/status"))
        return bool(job["progress"] and job["progress"].get("step", 0) >= 2)

    await wait_for(running_with_progress, what="progress")
    done = await harness.wait_status(job_id, "completed")
    assert check(await api.get(f"/api/v1/queue/jobs/{job_id}")) == done
    check(await api.get(f"/api/v1/queue/jobs/{job_id}/status"))
    listed = check(await api.get("/api/v1/queue/jobs", params={"status": "completed"}))
    assert listed["total"] == 1
    check(await api.get("/api/v1/queue/jobs", params={"status": "bogus"}))  # 422
    gallery = check(await api.get("/api/v1/gallery/images", params={"job_id": job_id}))
    assert gallery["total"] == len(done["result_details"]["images"]) >= 1
    image = gallery["images"][0]
    check(await api.get(image["url"]))
    check(await api.get(image["thumb_url"]))
    check(await api.get("/gallery_files/nope.png"))  # 404
    check(await api.get("/gallery_files/.hidden.png"))  # 400

    # Errors: 400, 404, 409, 413, 422.
    check(await api.post("/api/v1/generate", content=b"{not json"))
    check(await api.get("/api/v1/queue/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV"))
    conflict = check(await api.post(f"/api/v1/queue/jobs/{job_id}/cancel"))
    assert conflict["error"]["details"] == {"status": "completed"}
    check(await api.post("/api/v1/generate", content=b'{"x":"' + b"a" * 1_100_000 + b'"}'))
    invalid = check(
        await api.post(
            "/api/v1/generate",
            json={"generation_params": {"prompt": "x", "steps": 0, "width": 513, "stpes": 3}},
        )
    )
    assert {p["path"] for p in invalid["error"]["details"]} == {
        "generation_params.steps",
        "generation_params.width",
        "generation_params.stpes",
    }

    # Queue operations.
    paused = check(await api.post("/api/v1/queue/pause"))
    assert paused["paused"] is True
    retried = check(await api.post(f"/api/v1/queue/jobs/{job_id}/retry"))
    other = check(await api.post("/api/v1/generate", json={"generation_params": {"prompt": "b"}}))
    moved = check(
        await api.post(f"/api/v1/queue/jobs/{other['mobilesd_job_id']}/move", json={"to": "top"})
    )
    assert moved["waiting_reason"] == "queue paused"
    check(await api.post(f"/api/v1/queue/jobs/{job_id}/move", json={"to": "top"}))  # 409
    check(await api.post(f"/api/v1/queue/jobs/{job_id}/move", json={"to": "top", "before": "x"}))
    check(await api.get("/api/v1/queue"))
    check(await api.post(f"/api/v1/queue/jobs/{retried['mobilesd_job_id']}/cancel"))
    check(await api.delete(f"/api/v1/queue/jobs/{other['mobilesd_job_id']}"))  # 409, pending
    check(await api.delete(f"/api/v1/queue/jobs/{retried['mobilesd_job_id']}"))  # 204
    check(await api.post("/api/v1/queue/clear", json={"status": ["completed"]}))
    check(await api.post("/api/v1/queue/clear", json={"status": ["pending"]}))  # 422
    check(await api.post("/api/v1/queue/resume"))
    check(await api.delete(f"/api/v1/gallery/images/{image['filename']}"))  # 204
    check(await api.delete(f"/api/v1/gallery/images/{image['filename']}"))  # 404
    check(await api.delete("/api/v1/servers/gpu1"))  # 204
    check(await api.get("/api/v1/openapi.json"))

    # Sessions: a browser signs in; it is listed; sign out everywhere ends it.
    async with httpx.AsyncClient(base_url=str(api.base_url)) as browser:
        assert (await browser.get("/login", params={"token": TOKEN})).status_code == 303
        listed = check(await browser.get("/api/v1/sessions"))
        assert [s["current"] for s in listed["sessions"]] == [True]
    assert check(await api.delete("/api/v1/sessions")) == {"revoked": 1}
    assert check(await api.get("/api/v1/sessions")) == {"sessions": []}

    seen = {status for _, _, status in check.checked}
    assert {"201", "202", "204", "400", "401", "404", "409", "413", "422"} <= seen


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"generation_params": {"prompt": "a fox"}}, True),
        ({"generation_params": {"prompt": "a fox", "width": 832, "extra": {"x": 1}}}, True),
        ({"generation_params": {"prompt": "a fox", "hires": {"scale": 2}}}, True),
        ({"generation_params": {"prompt": "a fox", "steps": 0}}, False),
        ({"generation_params": {"prompt": "a fox", "width": 513}}, False),
        ({"generation_params": {"prompt": "   "}}, False),
        ({"generation_params": {"prompt": "a fox", "seed": True}}, False),
        ({"generation_params": {"prompt": "a fox", "loras": [{"name": "a:b"}]}}, False),
        ({"generation_params": {"prompt": "a fox"}, "target": "gpu1"}, False),
        ({"generation_params": {"prompt": "a fox", "sampler": "Euler"}}, False),
        ({}, False),
        ({"jobs": [{"prompt": "a fox"}]}, True),
        ({"defaults": {"prompt": "a fox"}, "jobs": [{}]}, True),
        ({"jobs": [{}]}, False),
        ({"jobs": [{"prompt": "a fox", "expand": "random"}], "expand": 5}, False),
        ({"defaults": {"prompt": "a", "expand": "random"}, "jobs": [{}], "expand": {}}, False),
        (
            {
                "generation_params": {"prompt": "a {b|c}"},
                "expand": {"mode": "random", "seed": None},
            },
            True,
        ),
    ],
)
async def test_request_schema_agrees_with_the_core(
    harness: Harness, doc: dict[str, Any], body: dict[str, Any], accepted: bool
) -> None:
    registry = Registry().with_resource(DOC_URI, Resource(doc, specification=DRAFT202012))
    validator = Draft202012Validator(
        {"$ref": f"{DOC_URI}#/components/schemas/GenerateRequest"}, registry=registry
    )
    assert validator.is_valid(body) is accepted
    response = await harness.api.post("/api/v1/generate", json=body)
    assert response.status_code == (202 if accepted else 422), response.text


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"enabled": False}, True),
        ({"username": None, "password": None}, True),
        ({"alias": None}, False),
        ({"api_url": None}, False),
        ({"enabled": None}, False),
        ({"max_concurrent": None}, False),
        ({"max_concurrent": 0}, False),
    ],
)
async def test_server_update_schema_agrees_with_the_core(
    harness: Harness, doc: dict[str, Any], body: dict[str, Any], accepted: bool
) -> None:
    registry = Registry().with_resource(DOC_URI, Resource(doc, specification=DRAFT202012))
    validator = Draft202012Validator(
        {"$ref": f"{DOC_URI}#/components/schemas/ServerUpdate"}, registry=registry
    )
    assert validator.is_valid(body) is accepted
    added = await harness.api.post(
        "/api/v1/servers", json={"alias": "gpu1", "api_url": "http://127.0.0.1:9"}
    )
    assert added.status_code == 201, added.text
    response = await harness.api.put("/api/v1/servers/gpu1", json=body)
    assert response.status_code == (200 if accepted else 422), response.text
