"""One shape for a job, whoever shows it or moves it.

Every `job` event on the real event stream (the store's changes, the dispatcher's progress, a
pin) carries the same fields as GET /api/v1/queue/jobs/{id}; every failure carries the same
failure fields whichever path failed the job; each transition writes the fields its type names.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from httpx_sse import aconnect_sse

from mobilesd_core.forge.simulator import SimulatorConfig
from mobilesd_core.jobs import transitions
from mobilesd_core.jobs.transitions import Claimed, Ended, Requeued, RequeuedFirst
from mobilesd_core.jobs.types import JobFailure, JobView
from mobilesd_core.schema import GenerationParams, new_job

from .conftest import Harness, fast_settings, start_harness, stop_harness, wait_for
from .helpers.events import Reader, connected
from .helpers.jobs import leave_job_processing

TERMINAL = {"completed", "failed", "cancelled"}


async def _follow_jobs(
    reader: Reader, job_ids: set[str], events: dict[str, list[dict[str, Any]]]
) -> None:
    """Collect the `job` events of `job_ids` until each of them ended."""
    ended: set[str] = set()
    while ended != job_ids:
        sse = await reader.next(timeout=15)
        if sse.event != "job":
            continue
        data = sse.json()
        if data["mobilesd_job_id"] in job_ids:
            events[data["mobilesd_job_id"]].append(data)
            if data["status"] in TERMINAL:
                ended.add(data["mobilesd_job_id"])


async def test_every_job_event_has_the_fields_of_get(harness: Harness) -> None:
    """Submit -> pending -> processing -> progress -> completed, a Forge failure, a cancel of a
    running job and one of a pending job: each `job` event seen on the stream has exactly the
    key set GET returns for that job (the dispatcher's progress events included)."""
    async with aconnect_sse(harness.api, "GET", "/api/v1/events") as source:
        reader = Reader(source)
        await connected(harness.core.bus, 0)
        await harness.add_sim("gpu1", SimulatorConfig(step_ms=20, switch_ms=0, name="gpu1"))
        bad = await harness.add_sim("bad")
        bad.sim.set_fault("422", path="txt2img")
        done = await harness.submit(steps=15, target="gpu1")
        failed = await harness.submit(target="bad")
        running = await harness.submit(steps=150, target="gpu1")
        events: dict[str, list[dict[str, Any]]] = {j: [] for j in (done, failed, running)}
        follow = asyncio.create_task(_follow_jobs(reader, {done, failed, running}, events))

        def progress_of(job_id: str) -> bool:
            return any(e["status"] == "processing" and e["progress"] for e in events[job_id])

        await wait_for(lambda: progress_of(running) or follow.done(), what="running's progress")
        assert (await harness.api.post(f"/api/v1/queue/jobs/{running}/cancel")).status_code == 200
        await follow
        await harness.api.post("/api/v1/queue/pause")
        waiting = await harness.submit()
        pinned = harness.api.post(f"/api/v1/queue/jobs/{waiting}/pin")
        assert (await pinned).status_code == 200
        assert (await harness.api.post(f"/api/v1/queue/jobs/{waiting}/cancel")).status_code == 200
        events[waiting] = []
        await _follow_jobs(reader, {waiting}, events)

    assert progress_of(done), "the dispatcher's progress events were not seen"
    assert [e["status"] for e in events[failed]][-1] == "failed"
    assert [e["status"] for e in events[running]][-1] == "cancelled"
    view_keys = set(JobView.__required_keys__)
    for job_id, seen in events.items():
        served = set(await harness.job(job_id))
        assert view_keys <= served
        assert seen, f"no events for {job_id}"
        for event in seen:
            assert set(event) == served, (
                f"{event['status']} event of {job_id}: missing {sorted(served - set(event))}, "
                f"extra {sorted(set(event) - served)}"
            )
    # What the service added reaches every event, the dispatcher's too.
    assert all(e["pinned"] is False for e in events[done])
    assert events[waiting][-1]["pinned"] is True
    assert all(e["waiting_reason"] is None for e in events[done] if e["status"] != "pending")


async def test_every_failure_has_the_same_failure_fields(tmp_path: Path) -> None:
    """A Forge error, a lost server that exhausts the retries, plain retry exhaustion, a
    checkpoint no server lists and a job that kept stopping the core: one failure shape."""
    settings = fast_settings(tmp_path, max_interruptions=0)
    stopped = await leave_job_processing(settings)
    harness = await start_harness(settings)
    try:
        rejected = await harness.add_sim("rejects")
        rejected.sim.set_fault("422", path="txt2img")
        lost = await harness.add_sim("lost")
        lost.sim.set_fault("reset", path="txt2img")
        erring = await harness.add_sim("errs")
        erring.sim.set_fault("500", path="txt2img")
        ids = {
            "forge error": await harness.submit(target="rejects"),
            "lost server": await harness.submit(target="lost"),
            "retries used up": await harness.submit(target="errs"),
            "unknown checkpoint": await harness.submit(checkpoint_name="no/such_model"),
            "core kept stopping": stopped,
        }
        jobs = {why: await harness.wait_status(j, "failed", "completed") for why, j in ids.items()}
    finally:
        await stop_harness(harness)

    failure_keys = set(JobFailure.__annotations__)
    shapes = {why: set(job) for why, job in jobs.items()}
    assert len({frozenset(s) for s in shapes.values()}) == 1, shapes
    for why, job in jobs.items():
        assert job["status"] == "failed", (why, job["result_details"])
        assert set(job["result_details"]) == failure_keys, why
        assert job["completion_timestamp"] and job["progress"] is None, why
        assert job["result_details"]["errors"] == job["errors"], why
    assert jobs["forge error"]["result_details"]["server"] == "rejects"
    assert jobs["lost server"]["result_details"]["server"] == "lost"
    assert jobs["retries used up"]["result_details"]["server"] == "errs"
    assert len(jobs["retries used up"]["errors"]) == settings.max_attempts
    assert jobs["unknown checkpoint"]["result_details"]["server"] is None
    assert jobs["core kept stopping"]["result_details"]["server"] is None


def _job(**fields: Any) -> Any:
    job = new_job(GenerationParams(prompt="x"), source="api")
    return {**job, **fields}


@pytest.mark.parametrize("status", ["pending", "processing"])
def test_each_transition_writes_the_fields_of_its_type(status: str) -> None:
    job = _job(status=status, attempts=1, assigned_server_alias="gpu1")
    errors = transitions.with_attempt_error(job, "gpu1", "boom")
    result = {"images": [], "info": {}, "timings": {}}
    written = {
        "claim": (transitions.claim(job, "gpu1").changes, Claimed),
        "retry_later": (transitions.retry_later(job, errors, 1.0).changes, Requeued),
        "requeue_interrupted": (transitions.requeue_interrupted(job, 0), RequeuedFirst),
        "complete": (transitions.complete(job, result).changes, Ended),  # type: ignore[arg-type]
        "fail": (transitions.fail(job, "x").changes, Ended),
        "fail with errors": (transitions.fail(job, "x", errors=errors).changes, Ended),
        "cancel": (transitions.cancel(job).changes, Ended),
    }
    for name, (changes, kind) in written.items():
        assert set(changes) == kind.__required_keys__, name
    fail = transitions.fail(job, "x", errors=errors)
    cancel = transitions.cancel(job)
    for ending in (fail, cancel):
        assert set(ending.changes["result_details"]) == set(JobFailure.__annotations__)
    assert fail.expect == {status}
    assert cancel.expect == {"pending", "processing"}
    assert transitions.claim(job, "gpu1").expect == {"pending"}
    assert transitions.claim(job, "gpu1").changes["attempts"] == 2


async def test_retry_of_a_job_and_of_its_batch_make_the_same_job(harness: Harness) -> None:
    """One code path: both retries keep the batch, the target, the origin and the webhook."""
    bad = await harness.add_sim("bad")
    bad.sim.set_fault("422", path="txt2img")
    response = await harness.api.post(
        "/api/v1/generate",
        json={
            "generation_params": {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64},
            "target_server_alias": "bad",
            "webhook_url": "http://127.0.0.1:9/hook",
        },
    )
    assert response.status_code == 202, response.text
    original, batch_id = response.json()["mobilesd_job_id"], response.json()["batch_id"]
    await harness.wait_status(original, "failed")
    await harness.api.post("/api/v1/queue/pause")  # the retries stay pending, as made
    by_batch = await harness.api.post(f"/api/v1/queue/batches/{batch_id}/retry")
    (from_batch,) = by_batch.json()["mobilesd_job_ids"]
    by_job = await harness.api.post(f"/api/v1/queue/jobs/{original}/retry")
    from_job = by_job.json()["mobilesd_job_id"]
    retries = [await harness.job(from_batch), await harness.job(from_job)]
    assert set(retries[0]) == set(retries[1])
    for job in retries:
        assert job["retry_of"] == original
        assert job["batch_id"] == batch_id
        assert job["target_server_alias"] == "bad"
        assert job["webhook_url"] == "http://127.0.0.1:9/hook"
