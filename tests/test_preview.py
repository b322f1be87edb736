"""The live preview route: a running job's latest preview image, over a real socket, with the
simulator's previews; an unchanged image is answered 304 to the ETag the client has."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from mobilesd_core.forge.simulator import SimulatorConfig

from .conftest import Harness, wait_for


async def test_running_job_serves_its_preview_with_etag_and_304(harness: Harness) -> None:
    # A preview every 20 steps of 40 ms: each one stays for most of a second.
    await harness.add_sim(
        "gpu", SimulatorConfig(step_ms=40, switch_ms=20, preview_every_n_steps=20, name="gpu")
    )
    pending = await harness.submit(steps=150)  # runs; the next waits behind it
    waiting = await harness.submit(steps=4)
    base = "/api/v1/queue/jobs"

    async def with_preview() -> dict[str, Any] | None:
        job = await harness.job(pending)
        return job if (job.get("progress") or {}).get("preview") else None

    await wait_for(with_preview, what="a progress event that says a preview exists")

    first = await harness.api.get(f"{base}/{pending}/preview")
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/png"
    assert first.content.startswith(b"\x89PNG")
    assert first.headers["cache-control"] == "no-cache"
    etag = first.headers["etag"]
    assert etag == f'"{hashlib.sha256(first.content).hexdigest()[:32]}"'  # strong, of the bytes

    # The preview changes while the job runs: a 200 brings new bytes under a new ETag, and the
    # ETag of the bytes the client has answers 304 without a body.
    async def not_modified() -> httpx.Response | None:
        nonlocal etag
        again = await harness.api.get(f"{base}/{pending}/preview", headers={"If-None-Match": etag})
        if again.status_code == 304:
            return again
        assert again.status_code == 200
        assert again.headers["etag"] != etag
        assert again.headers["etag"] == f'"{hashlib.sha256(again.content).hexdigest()[:32]}"'
        etag = again.headers["etag"]
        return None

    unchanged = await wait_for(not_modified, what="a 304 for the unchanged preview")
    assert unchanged.content == b"" and unchanged.headers["etag"] == etag
    assert unchanged.headers["cache-control"] == "no-cache"

    # A job without a preview, and no job at all, are told apart.
    none = await harness.api.get(f"{base}/{waiting}/preview")
    assert none.status_code == 404 and none.json()["error"]["code"] == "no_preview"
    unknown = await harness.api.get(f"{base}/nope/preview")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"
    # The token is needed like everywhere else.
    async with httpx.AsyncClient(base_url=str(harness.api.base_url)) as anonymous:
        assert (await anonymous.get(f"{base}/{pending}/preview")).status_code == 401

    # Once the job ends, its preview is gone.
    await harness.api.post(f"{base}/{pending}/cancel")
    await harness.wait_status(pending, "cancelled")
    gone = await harness.api.get(f"{base}/{pending}/preview")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "no_preview"
