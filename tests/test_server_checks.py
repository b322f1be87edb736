"""A server is checked as soon as it is added or its address changes: a job queued right
then starts without waiting for the next health round (MOBILESD_HEALTH_SECONDS, long here)."""

from __future__ import annotations

import time
from pathlib import Path

from mobilesd_core.forge.simulator import SimServer, SimulatorConfig

from .conftest import fast_settings, start_harness, stop_harness, wait_for

LONG = 60.0  # the health interval: a job that waited for a round would time out


async def test_a_job_queued_right_after_adding_a_server_starts_at_once(tmp_path: Path) -> None:
    h = await start_harness(fast_settings(tmp_path, health_interval=LONG))
    sim = SimServer(SimulatorConfig(step_ms=5, switch_ms=20, name="gpu1"))
    await sim.start()
    try:
        started = time.monotonic()
        response = await h.api.post("/api/v1/servers", json={"alias": "gpu1", "api_url": sim.url})
        assert response.status_code == 201, response.text
        job_id = await h.submit()
        job = await h.wait_status(job_id, "completed", "failed", timeout=5)
        assert job["status"] == "completed", job["result_details"]
        assert time.monotonic() - started < 2.0
    finally:
        await sim.stop()
        await stop_harness(h)


async def test_a_new_address_is_checked_at_once_even_while_the_old_one_is_being_checked(
    tmp_path: Path,
) -> None:
    h = await start_harness(fast_settings(tmp_path, health_interval=LONG))
    old = SimServer(SimulatorConfig(step_ms=5, switch_ms=20, name="old"))
    new = SimServer(
        SimulatorConfig(step_ms=5, switch_ms=20, name="new", checkpoints=["new/only.safetensors"])
    )
    await old.start()
    await new.start()
    try:
        # The first check of the old address is slow; the address changes while it runs.
        old.sim.set_fault("slow", count=1, path="/options", delay_ms=1000)
        response = await h.api.post("/api/v1/servers", json={"alias": "gpu1", "api_url": old.url})
        assert response.status_code == 201, response.text
        await wait_for(
            lambda: old.sim.request_counts.get("/sdapi/v1/options", 0) >= 1,
            what="the check of the old address to begin",
        )
        started = time.monotonic()
        response = await h.api.put("/api/v1/servers/gpu1", json={"api_url": new.url})
        assert response.status_code == 200, response.text
        job_id = await h.submit(checkpoint_name="new/only.safetensors")
        job = await h.wait_status(job_id, "completed", "failed", timeout=10)
        assert job["status"] == "completed", job["result_details"]
        # Not after the slow check (1 s), the offline re-probe (2 s) or a health round.
        assert time.monotonic() - started < 0.9
        status = (await h.api.get("/api/v1/servers/gpu1")).json()["status"]
        assert status["online"] and status["current_checkpoint"].startswith("new/only")
    finally:
        await old.stop()
        await new.stop()
        await stop_harness(h)


async def test_a_server_marked_offline_while_its_probe_runs_comes_back_with_that_probe(
    tmp_path: Path,
) -> None:
    """A job marks the server offline while a health probe is in flight; the probe then
    succeeds. The server must be online again and its waiting job dispatched at once (the
    probe judged its change against the state before it, saw online → online, and neither
    published nor woke the dispatcher: the job waited for a health round)."""
    h = await start_harness(fast_settings(tmp_path, health_interval=LONG))
    try:
        sim = await h.add_sim("gpu1")
        registry = h.core.registry
        runtime = registry.runtimes["gpu1"]
        assert (await h.api.post("/api/v1/queue/pause")).status_code == 200
        job_id = await h.submit()
        sim.sim.set_fault("slow", count=1, path="/options", delay_ms=600)
        probes = sim.sim.request_counts.get("/sdapi/v1/options", 0)
        runtime.wake.set()  # a health probe now, held 0.6 s by the server
        await wait_for(
            lambda: sim.sim.request_counts.get("/sdapi/v1/options", 0) > probes,
            what="the probe to reach the server",
        )
        registry.mark_offline(runtime, "connection refused")
        assert (await h.api.post("/api/v1/queue/resume")).status_code == 200
        assert not runtime.available
        job = await h.wait_status(job_id, "completed", "failed", timeout=5)
        assert job["status"] == "completed", job["result_details"]
        status = (await h.api.get("/api/v1/servers/gpu1")).json()["status"]
        assert status["online"], status
    finally:
        await stop_harness(h)
