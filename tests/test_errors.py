"""The error family: each error the API answers has its status, code and words, served in the
one error shape. The bodies are pinned here exactly as they were before the family existed."""

from __future__ import annotations

from typing import Any

import pytest

import mobilesd_core.api.app  # noqa: F401  (imports every module that defines an error)
from mobilesd_core.errors import MobileSDError, StorageUnavailable
from mobilesd_core.jobs.store import StoreWriteError

from .conftest import Harness


def _family(cls: type[MobileSDError]) -> list[type[MobileSDError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _family(sub))]


def test_every_error_of_the_family_has_its_own_code() -> None:
    members = _family(MobileSDError)[1:]
    assert len(members) >= 14, members
    per_instance = {"ApiError", "CivitaiError"}  # given with each error raised
    assert sorted(c.__name__ for c in members if c.code == "internal") == sorted(per_instance)
    # Still an OSError: callers that retry on I/O errors keep doing so.
    assert issubclass(StoreWriteError, StorageUnavailable) and issubclass(StoreWriteError, OSError)


async def _answer(harness: Harness, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await harness.api.request(method, path, **kwargs)
    return response.status_code, response.json()


def _error(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", "/api/v1/queue/jobs/nope", 404, _error("job_not_found", "no job with id 'nope'")),
        (
            "POST",
            "/api/v1/queue/batches/nope/cancel",
            404,
            _error("batch_not_found", "no job has batch_id 'nope'"),
        ),
        ("GET", "/api/v1/servers/nope", 404, _error("server_not_found", "no server named 'nope'")),
        (
            "POST",
            "/api/v1/civitai/downloads/nope/cancel",
            404,
            _error("download_not_found", "no download with id 'nope'"),
        ),
        (
            "DELETE",
            "/api/v1/gallery/images/missing.png",
            404,
            _error("image_not_found", "no such image in the gallery"),
        ),
        (
            "DELETE",
            "/api/v1/gallery/images/.hidden.png",
            400,
            _error("bad_filename", "not a gallery file name"),
        ),
    ],
)
async def test_not_found_and_bad_names_answer_as_before(
    harness: Harness, method: str, path: str, status: int, body: dict[str, Any]
) -> None:
    assert await _answer(harness, method, path) == (status, body)


async def test_conflicts_and_invalid_fields_answer_as_before(harness: Harness) -> None:
    server = {"alias": "gpu1", "api_url": "http://127.0.0.1:9"}
    assert (await harness.api.post("/api/v1/servers", json=server)).status_code == 201
    assert await _answer(harness, "POST", "/api/v1/servers", json=server) == (
        409,
        _error("server_exists", "a server named 'gpu1' exists"),
    )
    job_id = await harness.submit(target="gpu1")  # offline: it stays pending
    assert (await harness.api.post(f"/api/v1/queue/jobs/{job_id}/cancel")).status_code == 200
    assert await _answer(harness, "POST", f"/api/v1/queue/jobs/{job_id}/cancel") == (
        409,
        _error("wrong_state", "job is already cancelled", {"status": "cancelled"}),
    )
    bad = {"generation_params": {"prompt": "x", "width": "wide"}}
    wide = "Input should be a valid integer (found 'wide')"
    assert await _answer(harness, "POST", "/api/v1/generate", json=bad) == (
        422,
        _error(
            "invalid_fields",
            f"invalid fields: generation_params.width: {wide}",
            [{"path": "generation_params.width", "message": wide}],
        ),
    )
