"""A Forge that is not MobileSD's alone, and what the conformance run against the real Forge found.

A person uses the same Forge (its web UI, or its API from another program) while MobileSD has
jobs queued: their generation holds Forge's lock, `/sdapi/v1/progress` shows theirs, and an
interrupt would stop theirs. MobileSD must not show their progress as its job's, and neither a
stall nor a cancel may interrupt them. Also: the previous generation's step count lingers in
Forge's progress until the sampler starts; a Forge that has just started 404s its LoRA routes
for a moment. Every case runs against the simulator, which behaves as the real Forge did in
`docs/forge-conformance.md`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from mobilesd_core.forge.simulator import SimServer, SimulatorConfig

from .conftest import Harness, fast_settings, start_harness, stop_harness, wait_for

PERSON_STEPS = 9  # the person's requests; MobileSD's jobs never use this step count


ProgressLog = dict[str, list[dict[str, Any]]]


@pytest.fixture
def progress_log(harness: Harness) -> ProgressLog:
    """Every live progress the core publishes, by job: what clients were shown."""
    log: ProgressLog = {}

    def record(name: str, data: Any) -> None:
        if name == "job" and isinstance(data, dict) and isinstance(data.get("progress"), dict):
            log.setdefault(data["mobilesd_job_id"], []).append(dict(data["progress"]))

    harness.core.bus.add_listener(record)
    return log


async def person_txt2img(sim: SimServer, *, seed: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=60) as http:
        response = await http.post(
            "/sdapi/v1/txt2img",
            json={"prompt": "mine", "steps": PERSON_STEPS, "width": 64, "height": 64, "seed": seed},
        )
    assert response.status_code == 200, response.text
    return response.json()


async def person_in_web_ui(sim: SimServer, *, seed: int) -> dict[str, Any]:
    """Generate pressed in Forge's web UI: the Gradio queue, as the browser drives it."""
    async with httpx.AsyncClient(base_url=sim.url, timeout=60) as http:
        config = (await http.get("/config")).json()
        props = {c["id"]: c["props"] for c in config["components"]}
        dependency = next(d for d in config["dependencies"] if d["api_name"] == "txt2img")
        fields = {"Prompt": "mine", "Sampling steps": PERSON_STEPS, "Seed": seed}
        fields |= {"Width": 64, "Height": 64}
        data = [
            fields.get(props[i].get("label"), props[i].get("value")) for i in dependency["inputs"]
        ]
        data[0] = f"task({secrets.token_hex(4)})"
        session = secrets.token_hex(4)
        join = await http.post(
            "/queue/join",
            json={"data": data, "fn_index": dependency["id"], "session_hash": session},
        )
        assert join.status_code == 200, join.text
        async with http.stream("GET", "/queue/data", params={"session_hash": session}) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:") and '"process_completed"' in line:
                    return dict(json.loads(line[5:]))
    raise AssertionError("no process_completed")


async def forge_busy(sim: SimServer) -> bool:
    return sim.sim.state.job_count != 0


@pytest.mark.parametrize("webui", [False, True], ids=["nowebui", "webui"])
async def test_a_persons_generation_is_never_shown_as_a_jobs_progress(
    harness: Harness, progress_log: ProgressLog, webui: bool
) -> None:
    sim = await harness.add_sim(
        # A person's generation (9 steps) outlasts the core's 0.25 s progress throttle.
        "gpu1",
        SimulatorConfig(step_ms=60, switch_ms=0, webui=webui, name="gpu1"),
    )
    sim.sim.set_fault("hang", count=1, path="txt2img")  # holds the first job mid-way
    jobs = [await harness.submit(steps=4, seed=100 + i) for i in range(3)]
    await harness.wait_status(jobs[0], "processing")
    await wait_for(lambda: forge_busy(sim), what="Forge to run the first job")
    people = [asyncio.create_task(person_txt2img(sim, seed=901))]
    if webui:
        people.append(asyncio.create_task(person_in_web_ui(sim, seed=902)))
    # Both wait for Forge's lock before the first job ends: MobileSD's next jobs queue behind.
    await wait_for(lambda: len(sim.sim.pending_tasks) == len(people), what="people queued")
    sim.sim.clear_faults()
    answers = await asyncio.gather(*people)
    for job_id in jobs:
        done = await harness.wait_status(job_id, "completed", "failed", timeout=30)
        assert done["status"] == "completed", done["result_details"]
    assert len(answers[0]["images"]) == 1
    if webui:
        assert answers[1]["success"] and len(answers[1]["output"]["data"][0]) == 1
    assert sim.sim.interrupt_count == 0
    person_runs = [g for g in sim.sim.generations if g.steps == PERSON_STEPS]
    assert len(person_runs) == len(people) and not any(g.interrupted for g in person_runs)
    for job_id in jobs:
        shown = progress_log.get(job_id, [])
        assert shown, f"no progress for {job_id}"
        assert all(p.get("steps") in (None, 4) for p in shown), (jobs.index(job_id), shown)


async def test_no_stale_step_count_while_the_checkpoint_loads(
    harness: Harness, progress_log: ProgressLog
) -> None:
    """Forge keeps the last generation's `sampling_steps` until the sampler starts: while the
    next job's checkpoint loads, that number is not the job's."""
    sim = await harness.add_sim("gpu1", SimulatorConfig(step_ms=10, switch_ms=600, name="gpu1"))
    titles = [c.title for c in sim.sim.checkpoints]
    first = await harness.submit(steps=7, checkpoint_name=titles[0])
    await harness.wait_status(first, "completed")
    second = await harness.submit(steps=3, checkpoint_name=titles[1])
    await harness.wait_status(second, "completed")
    shown = progress_log.get(second, [])
    loading = [p for p in shown if p.get("phase") == "loading model"]
    assert loading, shown
    assert all(p["steps"] is None and p["step"] is None for p in loading), loading
    assert all(p.get("steps") in (None, 3) for p in shown), shown


async def test_cancel_while_waiting_behind_a_person_leaves_them_alone(harness: Harness) -> None:
    sim = await harness.add_sim(
        "gpu1", SimulatorConfig(step_ms=40, switch_ms=0, webui=True, name="gpu1")
    )
    person = asyncio.create_task(person_txt2img(sim, seed=901))
    await wait_for(lambda: forge_busy(sim), what="the person's generation")
    job_id = await harness.submit(steps=50)
    await wait_for(lambda: sim.sim.pending_tasks, what="the job to wait for Forge's lock")

    async def waiting() -> bool:
        progress = (await harness.job(job_id)).get("progress") or {}
        return progress.get("phase") == "waiting for server"

    await wait_for(waiting, what="the job to show it waits")
    response = await harness.api.post(f"/api/v1/queue/jobs/{job_id}/cancel")
    assert response.status_code == 200
    answer = await person
    assert len(answer["images"]) == 1
    (theirs,) = [g for g in sim.sim.generations if g.steps == PERSON_STEPS]
    assert not theirs.interrupted
    # The job itself is stopped as soon as it gets the lock, and keeps no image.
    await wait_for(lambda: len(sim.sim.generations) == 2, what="the job's own (stopped) run")
    await harness.core.run_until_idle()
    ours = sim.sim.generations[1]
    assert ours.interrupted and ours.steps == 50
    assert (await harness.job(job_id))["status"] == "cancelled"
    assert list(harness.settings.gallery_path.glob("*.png")) == []


async def test_a_stall_behind_a_persons_frozen_generation_does_not_interrupt_it(
    harness: Harness,
) -> None:
    sim = await harness.add_sim("gpu1", SimulatorConfig(step_ms=20, switch_ms=0, name="gpu1"))
    sim.sim.set_fault("hang", count=1, path="txt2img")  # the person's request freezes
    person = asyncio.create_task(person_txt2img(sim, seed=901))
    await wait_for(lambda: forge_busy(sim), what="the person's generation")
    job_id = await harness.submit(steps=4)

    async def stalled() -> bool:
        return bool((await harness.job(job_id)).get("errors"))

    await wait_for(stalled, timeout=20, what="the job to give up waiting once")
    assert "made no progress" in (await harness.job(job_id))["errors"][0]["error"]
    assert sim.sim.interrupt_count == 0
    sim.sim.clear_faults()  # the person's generation resumes and ends normally
    answer = await person
    assert len(answer["images"]) == 1
    assert not sim.sim.generations[0].interrupted


async def test_a_forge_that_has_not_registered_its_lora_routes_yet(harness: Harness) -> None:
    """Forge with its web UI answers /options before its LoRA extension adds /sdapi/v1/loras:
    a job must not fail for that, and one with a LoRA runs once the route is there."""
    sim = SimServer(SimulatorConfig(step_ms=5, switch_ms=0, name="gpu1"))
    sim.sim.set_fault("404", path="/sdapi/v1/loras")
    sim.sim.set_fault("404", path="/sdapi/v1/refresh-loras")
    await sim.start()
    harness.sims["gpu1"] = sim
    response = await harness.api.post("/api/v1/servers", json={"alias": "gpu1", "api_url": sim.url})
    assert response.status_code == 201
    plain = await harness.submit(steps=2)
    with_lora = await harness.submit(steps=2, loras=[{"name": "add_detail", "weight": 0.5}])
    assert (await harness.wait_status(plain, "completed", "failed"))["status"] == "completed"

    async def retried() -> bool:
        return bool((await harness.job(with_lora)).get("errors"))

    await wait_for(retried, what="the LoRA job to wait for the list")
    assert "no LoRA list yet" in (await harness.job(with_lora))["errors"][0]["error"]
    sim.sim.clear_faults()
    done = await harness.wait_status(with_lora, "completed", "failed")
    assert done["status"] == "completed", done["result_details"]
    models = (await harness.api.get("/api/v1/servers/gpu1/models")).json()
    assert "add_detail" in models["loras"]


async def test_models_list_styles_without_dividers_and_the_vae_modules(
    harness: Harness, tmp_path: Path
) -> None:
    styles = tmp_path / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nnoir,"{prompt}, film noir",color\n')
    integrated = tmp_path / "styles_integrated.csv"
    integrated.write_text("name,prompt,negative_prompt\nNo text (NO),,text\n")
    vaes = tmp_path / "VAE"
    (vaes / "sub").mkdir(parents=True)
    (vaes / "sdxl_vae.safetensors").write_bytes(b"x")
    (vaes / "sub" / "ae.gguf").write_bytes(b"x")
    (vaes / "notes.txt").write_text("not a model")
    files = [str(styles), str(integrated)]
    config = SimulatorConfig(name="gpu1", styles_files=files, vae_dir=str(vaes))
    await harness.add_sim("gpu1", config)
    models = (await harness.api.get("/api/v1/servers/gpu1/models")).json()
    # Forge lists "---------------- STYLES ----------------" (no prompt) before each file's rows.
    assert models["styles"] == ["noir", "No text (NO)"]
    assert sorted(models["modules"]) == ["ae.gguf", "sdxl_vae.safetensors"]


async def test_cancel_before_the_first_look_at_forge_leaves_a_person_alone(tmp_path: Path) -> None:
    """Cancelled before the core has polled Forge even once: what runs may be a person's, so
    nothing is interrupted until the job's own generation shows."""
    harness = await start_harness(fast_settings(tmp_path, progress_interval=1.0))
    try:
        sim = await harness.add_sim(
            "gpu1", SimulatorConfig(step_ms=40, switch_ms=0, webui=True, name="gpu1")
        )
        person = asyncio.create_task(person_txt2img(sim, seed=901))
        await wait_for(lambda: forge_busy(sim), what="the person's generation")
        job_id = await harness.submit(steps=50)
        await wait_for(lambda: sim.sim.pending_tasks, what="the job to wait for Forge's lock")
        response = await harness.api.post(f"/api/v1/queue/jobs/{job_id}/cancel")
        assert response.status_code == 200
        assert len((await person)["images"]) == 1
        assert not sim.sim.generations[0].interrupted
        await wait_for(lambda: len(sim.sim.generations) == 2, what="the job's own (stopped) run")
        assert sim.sim.generations[1].interrupted
    finally:
        await stop_harness(harness)
