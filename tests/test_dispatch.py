"""A job's path end to end: API -> store -> dispatcher -> simulated Forge -> gallery.

Every test runs the real core on a loopback socket against real SimServer instances.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mobilesd_core.forge.infotext import parse_infotext
from mobilesd_core.forge.simulator import SimulatorConfig

from .conftest import Harness, wait_for
from .helpers.jobs import leave_job_processing


async def test_job_runs_to_completion_with_metadata(harness: Harness) -> None:
    sim = await harness.add_sim("gpu1")
    sub, _ = harness.core.bus.subscribe()
    job_id = await harness.submit(
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        checkpoint_name="sdxl/juggernautXL_v9",
        loras=[{"name": "add_detail", "weight": 0.6}],
        seed=1234,
        steps=6,
        width=128,
        height=96,
        n_iter=2,
    )
    job = await harness.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]

    statuses = []
    while not sub.queue.empty():
        event = sub.queue.get_nowait()
        if event and event.name == "job" and event.data["mobilesd_job_id"] == job_id:
            statuses.append(event.data["status"])
    sub.close()
    # Progress events repeat "processing"; the transitions are what matter.
    transitions = [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]
    assert transitions == ["pending", "processing", "completed"]

    # The simulator ran the checkpoint the job named, by its exact title, with the LoRA.
    (record,) = sim.sim.generations
    assert record.checkpoint == "sdxl/juggernautXL_v9.safetensors [" + record.checkpoint[-11:]
    assert record.checkpoint.startswith("sdxl/juggernautXL_v9.safetensors [")
    assert record.loras == ["add_detail"]
    assert record.steps == 6 and record.seeds == [1234, 1235]

    images = job["result_details"]["images"]
    assert len(images) == 2
    assert job["result_details"]["info"]["all_seeds"] == [1234, 1235]
    for index, name in enumerate(images):
        path = harness.settings.gallery_path / name
        with Image.open(path) as img:
            assert img.size == (128, 96)
            parsed = parse_infotext(img.info["parameters"])
        assert parsed["prompt"] == "a lighthouse at dusk <lora:add_detail:0.6>"
        assert parsed["negative_prompt"] == "blurry"
        assert parsed["Seed"] == str(1234 + index)
        assert parsed["Steps"] == "6"
        assert parsed["Size"] == "128x96"
        assert parsed["Model"] == "juggernautXL_v9"
        assert "add_detail" in parsed["Lora hashes"]
        assert (path.with_suffix(".json")).exists()

    listing = (await harness.api.get(f"/api/v1/gallery/images?job_id={job_id}")).json()
    assert listing["total"] == 2
    image = await harness.api.get(listing["images"][0]["url"])
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    thumb = await harness.api.get(listing["images"][0]["thumb_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


async def test_progress_is_published_while_running(harness: Harness) -> None:
    await harness.add_sim("gpu1", SimulatorConfig(step_ms=40, switch_ms=0))
    job_id = await harness.submit(steps=20)

    async def seen_progress() -> dict | None:
        job = await harness.job(job_id)
        progress = job.get("progress")
        return progress if progress and progress.get("step", 0) >= 3 else None

    progress = await wait_for(seen_progress, what="progress with steps")
    assert progress["steps"] == 20
    assert 0 < progress["fraction"] < 1
    assert progress["phase"] == "sampling"
    done = await harness.wait_status(job_id, "completed")
    assert done["progress"] is None
    # Progress never reaches the job file.
    assert '"fraction"' not in (harness.settings.data_path / "jobs.json").read_text()


async def test_unknown_checkpoint_refreshes_once_then_fails_naming_closest(
    harness: Harness,
) -> None:
    sim = await harness.add_sim("gpu1")
    job_id = await harness.submit(checkpoint_name="sdxl/juggernautXL_v8")
    job = await harness.wait_status(job_id, "failed", "completed")
    assert job["status"] == "failed"
    error = job["result_details"]["error"]
    assert "checkpoint 'sdxl/juggernautXL_v8' is not on any server" in error
    assert "closest: sdxl/juggernautXL_v9.safetensors" in error
    assert sim.sim.request_counts.get("/sdapi/v1/refresh-checkpoints") == 1
    assert sim.sim.generations == []
    assert job["attempts"] == 0  # never sent to a server that cannot run it


async def test_model_added_on_server_is_found_after_refresh(harness: Harness) -> None:
    sim = await harness.add_sim("gpu1")
    await harness.submit()  # warms the core's model cache
    await harness.core.run_until_idle()
    sim.sim.add_model("new/fresh_model.safetensors", pending=True)
    job_id = await harness.submit(checkpoint_name="fresh_model")
    job = await harness.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    assert sim.sim.generations[-1].checkpoint.startswith("new/fresh_model.safetensors")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("sampler_name", "Eulr", "sampler 'Eulr' is not offered by server 'gpu1'"),
        ("scheduler", "Karas", "scheduler 'Karas' is not offered"),
        ("loras", [{"name": "add_detial", "weight": 1}], "LoRA not found on server 'gpu1'"),
    ],
)
async def test_unknown_names_fail_with_suggestions(
    harness: Harness, field: str, value: object, fragment: str
) -> None:
    sim = await harness.add_sim("gpu1")
    job_id = await harness.submit(**{field: value})
    job = await harness.wait_status(job_id, "failed", "completed")
    assert job["status"] == "failed"
    assert fragment in job["result_details"]["error"]
    assert sim.sim.generations == []


@pytest.mark.parametrize("kind", ["500", "502", "503", "drop", "truncated", "nonjson", "reset"])
async def test_transient_fault_is_retried_and_completes(harness: Harness, kind: str) -> None:
    sim = await harness.add_sim("gpu1")
    sim.sim.set_fault(kind, count=1, path="txt2img")
    job_id = await harness.submit()
    job = await harness.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    assert job["attempts"] == 2
    assert len(job["errors"]) == 1 and job["errors"][0]["server"] == "gpu1"
    assert len(job["result_details"]["images"]) == 1
    # An image is saved once even when the first attempt produced one the core never got.
    assert len(list(harness.settings.gallery_path.glob(f"*{job_id}*.png"))) == 1


async def test_transient_faults_give_up_after_the_limit(harness: Harness) -> None:
    sim = await harness.add_sim("gpu1")
    sim.sim.set_fault("500", path="txt2img")
    job_id = await harness.submit()
    job = await harness.wait_status(job_id, "failed", "completed")
    assert job["status"] == "failed"
    assert job["attempts"] == 3
    assert job["result_details"]["error"].startswith("gave up after 3 attempts")
    assert len(job["result_details"]["errors"]) == 3


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("422", "rejected the request"),
        ("401", "wrong or missing username/password"),
        ("404", "start Forge with --api"),
    ],
)
async def test_permanent_fault_fails_at_once(harness: Harness, kind: str, fragment: str) -> None:
    sim = await harness.add_sim("gpu1")
    sim.sim.set_fault(kind, path="txt2img")
    job_id = await harness.submit()
    job = await harness.wait_status(job_id, "failed", "completed")
    assert job["status"] == "failed"
    assert job["attempts"] == 1
    assert fragment in job["result_details"]["error"]


async def test_wrong_password_fails_with_clear_message(harness: Harness) -> None:
    config = SimulatorConfig(step_ms=5, switch_ms=0, auth=("forge", "s3cret"))
    sim = await harness.add_sim("gpu1", config, username="forge", password="s3cret")
    job_id = await harness.submit()
    assert (await harness.wait_status(job_id, "completed"))["status"] == "completed"

    response = await harness.api.put("/api/v1/servers/gpu1", json={"password": "wrong"})
    assert response.status_code == 200
    assert "password" not in response.json() and response.json()["has_password"] is True
    await wait_for(lambda: not harness.core.registry.runtimes["gpu1"].online, what="offline")
    status = (await harness.api.get("/api/v1/servers/gpu1/status")).json()
    assert "wrong or missing username/password" in status["error"]
    assert sim.sim.generations and len(sim.sim.generations) == 1


async def test_stalled_job_is_interrupted_and_retried(harness: Harness) -> None:
    sim = await harness.add_sim("gpu1", SimulatorConfig(step_ms=10, switch_ms=0))
    sim.sim.set_fault("hang", count=1, path="txt2img")
    job_id = await harness.submit(steps=10)
    job = await harness.wait_status(job_id, "completed", "failed", timeout=30)
    assert job["status"] == "completed", job["result_details"]
    assert sim.sim.interrupt_count >= 1
    assert job["attempts"] == 2
    assert "made no progress" in job["errors"][0]["error"]


async def test_cancel_interrupts_running_job(harness: Harness) -> None:
    sim = await harness.add_sim("gpu1", SimulatorConfig(step_ms=50, switch_ms=0))
    job_id = await harness.submit(steps=100)

    async def running() -> bool:
        job = await harness.job(job_id)
        return job["status"] == "processing" and (job.get("progress") or {}).get("step", 0) > 1

    await wait_for(running, what="job to be sampling")
    response = await harness.api.post(f"/api/v1/queue/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    await wait_for(lambda: sim.sim.interrupt_count == 1, what="interrupt on the server")
    await harness.core.run_until_idle()
    job = await harness.job(job_id)
    assert job["status"] == "cancelled"
    assert list(harness.settings.gallery_path.glob("*.png")) == []
    again = await harness.api.post(f"/api/v1/queue/jobs/{job_id}/cancel")
    assert again.status_code == 409


async def test_two_servers_run_jobs_in_parallel(harness: Harness) -> None:
    sims = [
        await harness.add_sim(alias, SimulatorConfig(step_ms=30, switch_ms=0, name=alias))
        for alias in ("gpu1", "gpu2")
    ]
    ids = [await harness.submit(steps=10) for _ in range(4)]

    async def both_busy() -> bool:
        jobs = [await harness.job(i) for i in ids]
        running = {j["assigned_server_alias"] for j in jobs if j["status"] == "processing"}
        return running == {"gpu1", "gpu2"}

    await wait_for(both_busy, what="both servers running a job at once")
    for job_id in ids:
        assert (await harness.wait_status(job_id, "completed"))["status"] == "completed"
    assert all(len(s.sim.generations) >= 1 for s in sims)
    assert sum(len(s.sim.generations) for s in sims) == 4


async def test_targeted_job_waits_for_offline_server(harness: Harness) -> None:
    await harness.add_sim("gpu1")
    gpu2 = await harness.add_sim("gpu2")
    await gpu2.stop()
    await wait_for(lambda: not harness.core.registry.runtimes["gpu2"].online, what="offline")

    targeted = await harness.submit(target="gpu2")
    anywhere = await harness.submit()
    assert (await harness.wait_status(anywhere, "completed"))["assigned_server_alias"] == "gpu1"
    job = await harness.job(targeted)
    assert job["status"] == "pending"
    assert job["waiting_reason"] == "target server 'gpu2' is offline"

    await gpu2.start()
    job = await harness.wait_status(targeted, "completed")
    assert job["assigned_server_alias"] == "gpu2"
    assert len(gpu2.sim.generations) == 1


async def test_server_going_offline_mid_job_retries_elsewhere(harness: Harness) -> None:
    gpu1 = await harness.add_sim("gpu1", SimulatorConfig(step_ms=40, switch_ms=0, name="gpu1"))
    job_id = await harness.submit(steps=50, target=None)
    await wait_for(
        lambda: harness.core.store.get_live(job_id)["status"] == "processing", what="processing"
    )
    await harness.add_sim("gpu2")
    await gpu1.stop()
    job = await harness.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    assert job["assigned_server_alias"] == "gpu2"
    assert "gpu1" in job["errors"][0]["error"]


async def test_restarted_server_mid_job_is_retried(harness: Harness) -> None:
    sim = await harness.add_sim("gpu1", SimulatorConfig(step_ms=30, switch_ms=0))
    job_id = await harness.submit(steps=40)

    async def sampling() -> bool:
        return ((await harness.job(job_id)).get("progress") or {}).get("step", 0) > 2

    await wait_for(sampling, what="sampling")
    await sim.restart()
    job = await harness.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    assert job["attempts"] == 2


async def test_queue_survives_core_restart(tmp_path: Path) -> None:
    from .conftest import fast_settings, start_harness, stop_harness

    settings = fast_settings(tmp_path)
    first = await start_harness(settings)
    await first.api.post("/api/v1/queue/pause")
    ids = [await first.submit(prompt=f"job {i}") for i in range(3)]
    await stop_harness(first)

    second = await start_harness(settings)
    try:
        state = (await second.api.get("/api/v1/queue")).json()
        assert state["paused"] is True
        listed = (await second.api.get("/api/v1/queue/jobs")).json()
        assert [j["mobilesd_job_id"] for j in listed["jobs"]] == ids
        await second.add_sim("gpu1")
        await second.api.post("/api/v1/queue/resume")
        for job_id in ids:
            assert (await second.wait_status(job_id, "completed"))["status"] == "completed"
    finally:
        await stop_harness(second)


async def test_editing_a_server_while_it_runs_a_job(harness: Harness) -> None:
    await harness.add_sim("gpu1", SimulatorConfig(step_ms=20, switch_ms=0))
    first = await harness.submit(steps=30)
    await wait_for(
        lambda: harness.core.store.get_live(first)["status"] == "processing", what="processing"
    )
    response = await harness.api.put(
        "/api/v1/servers/gpu1", json={"alias": "renamed", "max_concurrent": 1}
    )
    assert response.status_code == 200
    done = await harness.wait_status(first, "completed", "failed")
    assert done["status"] == "completed", done["result_details"]
    # The slot was released on the renamed server: the next job runs there.
    second = await harness.submit(target="renamed")
    assert (await harness.wait_status(second, "completed"))["assigned_server_alias"] == "renamed"
    assert harness.core.registry.runtimes["renamed"].active == 0


async def test_core_restarts_do_not_use_up_the_retry_budget(tmp_path: Path) -> None:
    from .conftest import fast_settings, start_harness, stop_harness

    settings = fast_settings(tmp_path)
    job_id = await leave_job_processing(settings)
    harness = await start_harness(settings)
    try:
        await harness.api.post("/api/v1/queue/pause")
        sim = await harness.add_sim("gpu1")
        sim.sim.set_fault("500", count=2, path="txt2img")
        await harness.api.post("/api/v1/queue/resume")
        job = await harness.wait_status(job_id, "completed", "failed")
        # attempt 1 was cut by the core stopping; attempts 2 and 3 hit the faults; 4 works.
        assert job["status"] == "completed", job["result_details"]
        assert job["attempts"] == 4 and job["interruptions"] == 1
    finally:
        await stop_harness(harness)


async def test_job_that_keeps_stopping_the_core_is_failed(tmp_path: Path) -> None:
    from .conftest import fast_settings, start_harness, stop_harness

    settings = fast_settings(tmp_path, max_interruptions=3)
    job_id = await leave_job_processing(settings, interruptions=3)
    harness = await start_harness(settings)
    try:
        job = await harness.job(job_id)
        assert job["status"] == "failed"
        assert (
            "the core stopped 4 times while this job was running" in job["result_details"]["error"]
        )
    finally:
        await stop_harness(harness)


async def test_server_is_handed_to_the_next_job_once_it_answers(tmp_path: Path) -> None:
    """Forge frees its generation lock before it sends the answer, so the next job is sent
    while the last answer downloads. Seen here: the first answer breaks off mid-body, and with
    no retry backoff the first job would run again at once, were the second not already sent."""
    from .conftest import fast_settings, start_harness, stop_harness

    harness = await start_harness(fast_settings(tmp_path, retry_backoff=0.0))
    try:
        sim = await harness.add_sim("gpu1")
        await harness.api.post("/api/v1/queue/pause")
        sim.sim.set_fault("drop", count=1, path="txt2img")
        first = await harness.submit(prompt="first")
        second = await harness.submit(prompt="second")
        await harness.api.post("/api/v1/queue/resume")
        for job_id in (first, second):
            assert (await harness.wait_status(job_id, "completed"))["status"] == "completed"
        assert [g.prompt for g in sim.sim.generations] == ["first", "second", "first"]
        assert (await harness.job(first))["attempts"] == 2
        assert (await harness.job(second))["attempts"] == 1
    finally:
        await stop_harness(harness)


async def test_server_events_follow_its_slots_taken_and_freed(harness: Harness) -> None:
    """Clients show a server busy or idle from `server` events: one must come when a job takes
    the slot and one when it frees it, not only at the next health check."""
    await harness.add_sim("gpu1", SimulatorConfig(step_ms=20, switch_ms=0))
    sub, _ = harness.core.bus.subscribe()
    job_id = await harness.submit(steps=10)
    await harness.wait_status(job_id, "completed")
    seen: list[int] = []

    def slots() -> list[int]:
        while not sub.queue.empty():
            event = sub.queue.get_nowait()
            if event is not None and event.name == "server" and event.data.get("alias") == "gpu1":
                seen.append(event.data["active_jobs"])
        return seen

    await wait_for(lambda: slots() and slots()[-1] == 0, what="gpu1 idle again")
    assert 1 in seen and seen.index(1) < len(seen) - 1, seen  # busy, then idle
    status = (await harness.api.get("/api/v1/servers/gpu1")).json()["status"]
    assert (status["busy"], status["active_jobs"]) == (False, 0)


@pytest.mark.parametrize("cancel_resumes", ["after the pass", "before the pass"])
async def test_a_cancel_written_with_the_claim_frees_the_server(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, cancel_resumes: str
) -> None:
    """A claim's write and a cancel's write of the same job can complete in one turn of the
    event loop (a busy loop, a fast disk). Then whichever resumes first decides: the pass
    creates the job's run, the cancel interrupts it. A run task cancelled before its first step
    never runs its body: its server slot stayed taken for good, and jobs for that server were
    left pending (the soak's "5 jobs left pending"). A cancel that comes before the run exists
    must keep it from sending the job at all.

    The store's writes are real; the wrapper below only holds the pass until the cancel's
    write is done and orders the two resumptions as the loop would (no timing involved)."""
    sim = await harness.add_sim("gpu1", SimulatorConfig(step_ms=1, switch_ms=0))
    core = harness.core
    store = core.store
    original = store.update
    cancel_written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cancels: list[asyncio.Future[Any]] = []

    async def update(job_id: str, changes: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        job = store.get_live(job_id)
        victim = job is not None and job["generation_params"]["prompt"] == "cancelled"
        if victim and changes.get("status") == "processing" and not cancels:
            claimed = await original(job_id, changes, **kwargs)
            cancels.append(asyncio.ensure_future(core.service.cancel(job_id)))  # the user
            await cancel_written  # the pass resumes once the cancel's write is done too
            return claimed
        if victim and changes.get("status") == "cancelled":
            cancelled = await original(job_id, changes, **kwargs)
            cancel_written.set_result(None)  # the pass is now due to resume...
            if cancel_resumes == "after the pass":
                await asyncio.sleep(0)  # ...and this cancel right after it, in the same turn
            return cancelled
        return await original(job_id, changes, **kwargs)

    monkeypatch.setattr(store, "update", update)
    victim = await harness.submit(target="gpu1", prompt="cancelled")
    await wait_for(lambda: cancels and cancels[0].done(), what="the cancel")
    assert cancels[0].result()["status"] == "cancelled"
    after = await harness.submit(target="gpu1", prompt="next")
    job = await harness.wait_status(after, "completed", "failed", timeout=10)
    assert job["status"] == "completed", job
    await harness.core.run_until_idle()
    assert (await harness.job(victim))["status"] == "cancelled"
    assert [g.prompt for g in sim.sim.generations] == ["next"]  # the victim never went out
    assert core.registry.runtimes["gpu1"].active == 0 and not core.dispatcher._runs


async def test_a_runnable_job_no_wake_up_announced_starts_at_the_periodic_check(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Every change that makes a job runnable wakes the dispatcher; if one is ever missed (a
    soak under load once left a job pending for good with every server free), the periodic
    check starts it and logs the missed wake-up."""
    await harness.add_sim("gpu1")
    # Its lists read: their arrival wakes the dispatcher, which would hide the missed wake-up.
    await wait_for(lambda: harness.core.registry.runtimes["gpu1"].catalog is not None)
    dispatcher = harness.core.dispatcher
    dispatcher.recheck_seconds = 0.3
    dispatcher.set_paused(True)
    job_id = await harness.submit()
    await harness.core.run_until_idle()
    dispatcher.paused = False  # runnable now, with no wake-up (set_paused would wake it)
    job = await harness.wait_status(job_id, "completed", "failed", timeout=5)
    assert job["status"] == "completed", job["result_details"]
    assert any("no wake-up had announced" in r.getMessage() for r in caplog.records)
