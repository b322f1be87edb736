"""The Forge fault matrix: every fault the simulator (or the network) can produce, and its outcome.

One parametrized test runs each case against the real core and real simulated Forge servers. Each
case states the documented outcome (README, "What happens when things go wrong"): retried where
and how often, or failed with which message. Beyond that, every case checks the same three
things:

* every job ends terminal, and the event bus announced that terminal state exactly once;
* no worker hangs: once the jobs are done, no run is left in the dispatcher and no server slot
  stays taken;
* the service goes on: a fresh job on a healthy server completes afterwards.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mobilesd_core.forge.simulator import SimServer, SimulatorConfig
from mobilesd_core.forge.simulator.faults import FAULT_KINDS

from .conftest import Harness, fast_settings, start_harness, stop_harness, wait_for
from .helpers.net import full_accept_queue, short_connect_timeout

__all__ = ["short_connect_timeout"]  # the fixture, from tests/helpers/net.py

TERMINAL = {"completed", "failed", "cancelled"}


class Tally:
    """Counts the terminal `job` events of each job id seen on the event bus."""

    def __init__(self, harness: Harness) -> None:
        self.sub, _ = harness.core.bus.subscribe(queue_size=1_000_000)
        self.terminal: Counter[str] = Counter()

    def drain(self) -> Counter[str]:
        while not self.sub.queue.empty():
            event = self.sub.queue.get_nowait()
            if event is not None and event.name == "job" and event.data["status"] in TERMINAL:
                self.terminal[event.data["mobilesd_job_id"]] += 1
        return self.terminal


@dataclass
class Ctx:
    harness: Harness

    @property
    def h(self) -> Harness:
        return self.harness

    async def sim(self, alias: str, **config: Any) -> SimServer:
        config.setdefault("step_ms", 5)
        config.setdefault("switch_ms", 10)
        return await self.h.add_sim(alias, SimulatorConfig(name=alias, **config))

    async def finished(self, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
        return await self.h.wait_status(job_id, *TERMINAL, timeout=timeout)

    async def waiting(self, job_id: str, reason: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            job = await self.h.job(job_id)
            return job if job["status"] == "pending" and job.get("waiting_reason") else None

        job = await wait_for(check, what=f"job {job_id} to wait")
        assert reason in job["waiting_reason"], job["waiting_reason"]
        return job

    async def offline(self, alias: str, error: str) -> None:
        runtime = self.h.core.registry.runtimes[alias]
        await wait_for(
            lambda: runtime.checked and not runtime.online and runtime.error, what="offline"
        )
        status = (await self.h.api.get(f"/api/v1/servers/{alias}/status")).json()
        assert status["online"] is False
        assert error in status["error"], status["error"]


Scenario = Callable[[Ctx], Awaitable[list[str]]]


def expect_retried(job: dict[str, Any], fragment: str, *, attempts: int = 2) -> None:
    """Completed after `attempts - 1` transient failures, each one kept with its message."""
    assert job["status"] == "completed", job["result_details"]
    assert job["attempts"] == attempts, job
    assert len(job["errors"]) == attempts - 1
    assert fragment in job["errors"][0]["error"], job["errors"]
    assert len(job["result_details"]["images"]) == 1


def expect_failed(job: dict[str, Any], fragment: str, *, attempts: int) -> None:
    assert job["status"] == "failed", job
    assert job["attempts"] == attempts, job
    assert fragment in job["result_details"]["error"], job["result_details"]["error"]


# --- the network: the server cannot be reached ------------------------------------------------


async def connection_refused(ctx: Ctx) -> list[str]:
    gpu1 = await ctx.sim("gpu1")
    await ctx.sim("gpu2")
    await gpu1.stop()
    await ctx.offline("gpu1", "is unreachable (connection refused)")
    targeted = await ctx.h.submit(target="gpu1")
    anywhere = await ctx.h.submit()
    assert (await ctx.finished(anywhere))["assigned_server_alias"] == "gpu2"
    await ctx.waiting(targeted, "target server 'gpu1' is offline")
    await gpu1.start()  # back on the same port: the job waiting for it runs
    job = await ctx.finished(targeted)
    assert job["status"] == "completed" and job["attempts"] == 1, job
    return [targeted, anywhere]


async def dns_failure(ctx: Ctx) -> list[str]:
    await ctx.sim("gpu2")
    response = await ctx.h.api.post(
        "/api/v1/servers",
        json={"alias": "gpu1", "api_url": "http://forge.mobilesd-test.invalid:7860"},
    )
    assert response.status_code == 201, response.text
    # Never answered as Forge: one coarse reason (the log has "host name not found"), so
    # server URLs cannot be used to map the network; see test_url_reasons.py.
    await ctx.offline("gpu1", "has not answered as Forge at this address yet")
    targeted = await ctx.h.submit(target="gpu1")
    anywhere = await ctx.h.submit()
    assert (await ctx.finished(anywhere))["assigned_server_alias"] == "gpu2"
    await ctx.waiting(targeted, "target server 'gpu1' is offline")
    cancelled = await ctx.h.api.post(f"/api/v1/queue/jobs/{targeted}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    return [targeted, anywhere]


async def connect_timeout(ctx: Ctx) -> list[str]:
    gpu1 = await ctx.sim("gpu1")  # answered as Forge: its failures are shown as they are
    await ctx.sim("gpu2")
    await gpu1.stop()
    # On its port now, a listener whose accept queue is full: the kernel drops further SYNs,
    # connect() hangs.
    with full_accept_queue(httpx.URL(gpu1.url).port or 80):
        await ctx.offline("gpu1", "did not answer (connect timeout)")
        targeted = await ctx.h.submit(target="gpu1")
        anywhere = await ctx.h.submit()
        assert (await ctx.finished(anywhere))["assigned_server_alias"] == "gpu2"
        await ctx.waiting(targeted, "target server 'gpu1' is offline")
        await ctx.h.api.post(f"/api/v1/queue/jobs/{targeted}/cancel")
        await ctx.h.api.delete("/api/v1/servers/gpu1")
    return [targeted, anywhere]


# --- faults on txt2img: retried, or failed at once ----------------------------------------------


def txt2img_fault(kind: str, check: Callable[[dict[str, Any]], None], **fault: Any) -> Scenario:
    async def scenario(ctx: Ctx) -> list[str]:
        sim = await ctx.sim("gpu1")
        sim.sim.set_fault(kind, path="txt2img", **fault)
        job_id = await ctx.h.submit()
        check(await ctx.finished(job_id))
        sim.sim.clear_faults()
        return [job_id]

    return scenario


async def read_timeout_mid_generation(ctx: Ctx) -> list[str]:
    sim = await ctx.sim("gpu1", step_ms=10, switch_ms=0)
    sim.sim.set_fault("hang", count=1, path="txt2img")
    job_id = await ctx.h.submit(steps=10)
    expect_retried(await ctx.finished(job_id), "made no progress for 1.5 s; interrupted")
    assert sim.sim.interrupt_count >= 1
    return [job_id]


async def old_server_without_schedulers(ctx: Ctx) -> list[str]:
    sim = SimServer(SimulatorConfig(step_ms=5, switch_ms=0, name="gpu1"))
    sim.sim.set_fault("404", path="/sdapi/v1/schedulers")  # A1111 before 1.9
    sim.sim.set_fault("404", path="/sdapi/v1/latent-upscale-modes")
    await sim.start()
    ctx.h.sims["gpu1"] = sim
    response = await ctx.h.api.post("/api/v1/servers", json={"alias": "gpu1", "api_url": sim.url})
    assert response.status_code == 201
    job_id = await ctx.h.submit(scheduler="Karras")
    job = await ctx.finished(job_id)
    assert job["status"] == "completed" and job["attempts"] == 1, job
    assert sim.sim.request_counts["/sdapi/v1/schedulers"] >= 1
    return [job_id]


async def stall_answer_never_ends(ctx: Ctx) -> list[str]:
    sim = await ctx.sim("gpu1")
    sim.sim.set_fault("stall", count=1, path="txt2img")
    job_id = await ctx.h.submit()
    expect_retried(await ctx.finished(job_id), "stopped sending its answer to /txt2img")
    sim.sim.clear_faults()  # lets the held connection go
    return [job_id]


async def restart_mid_job(ctx: Ctx) -> list[str]:
    sim = await ctx.sim("gpu1", step_ms=30, switch_ms=0)
    job_id = await ctx.h.submit(steps=40)

    async def sampling() -> bool:
        return ((await ctx.h.job(job_id)).get("progress") or {}).get("step", 0) > 2

    await wait_for(sampling, what="sampling")
    await sim.restart()  # progress resets to idle on the server
    expect_retried(await ctx.finished(job_id), "closed the connection during /txt2img")
    return [job_id]


async def model_disappears(ctx: Ctx) -> list[str]:
    sim = await ctx.sim("gpu1")
    warm = await ctx.h.submit(checkpoint_name="sdxl/juggernautXL_v9")
    assert (await ctx.finished(warm))["status"] == "completed"
    await ctx.h.submit()  # back on the default model, so the next job has to switch
    await ctx.h.core.run_until_idle()
    sim.sim.forget_model("sdxl/juggernautXL_v9.safetensors")  # deleted; the core's list is old
    job_id = await ctx.h.submit(checkpoint_name="sdxl/juggernautXL_v9")
    job = await ctx.finished(job_id)
    expect_failed(job, "checkpoint 'sdxl/juggernautXL_v9' is not on any server", attempts=1)
    assert "disappeared from server 'gpu1'" in job["errors"][0]["error"]
    # Its images (made on the wrong model) were dropped.
    assert not list(ctx.h.settings.gallery_path.glob(f"*{job_id}*.png"))
    return [warm, job_id]


@dataclass(frozen=True)
class Case:
    fault: str
    scenario: Scenario


CASES = [
    Case("connection refused", connection_refused),
    Case("DNS failure", dns_failure),
    Case("connect timeout", connect_timeout),
    Case("read timeout mid-generation", read_timeout_mid_generation),
    Case(
        "500 once",
        txt2img_fault(
            "500",
            lambda job: expect_retried(job, "answered 500: CUDA error: an illegal memory access"),
            count=1,
        ),
    ),
    Case(
        "500 every time",
        txt2img_fault(
            "500",
            lambda job: expect_failed(
                job, "gave up after 3 attempts; last error: server 'gpu1' answered 500", attempts=3
            ),
        ),
    ),
    Case(
        "502 from a proxy",
        txt2img_fault("502", lambda job: expect_retried(job, "answered 502: Bad Gateway"), count=1),
    ),
    Case(
        "503 from a proxy",
        txt2img_fault(
            "503", lambda job: expect_retried(job, "answered 503: Service Unavailable"), count=1
        ),
    ),
    Case(
        "401",
        txt2img_fault(
            "401",
            lambda job: expect_failed(
                job, "refused the login: wrong or missing username/password", attempts=1
            ),
        ),
    ),
    Case(
        "404 on txt2img",
        txt2img_fault(
            "404",
            lambda job: expect_failed(
                job, "has no /sdapi/v1/txt2img: start Forge with --api", attempts=1
            ),
        ),
    ),
    Case("404 on an endpoint an old version lacks", old_server_without_schedulers),
    Case(
        "422 with Forge's error body",
        txt2img_fault(
            "422",
            lambda job: expect_failed(
                job, "rejected the request: Value error, simulated", attempts=1
            ),
        ),
    ),
    Case(
        "non-JSON body",
        txt2img_fault(
            "nonjson",
            lambda job: expect_retried(job, "sent an unreadable answer to /txt2img"),
            count=1,
        ),
    ),
    Case(
        "truncated body",
        txt2img_fault(
            "truncated",
            lambda job: expect_retried(job, "sent an unreadable answer to /txt2img"),
            count=1,
        ),
    ),
    Case(
        "connection dropped mid-body",
        txt2img_fault(
            "drop",
            lambda job: expect_retried(job, "closed the connection during /txt2img"),
            count=1,
        ),
    ),
    Case("answer that never ends", stall_answer_never_ends),
    Case(
        "connection reset, job goes on",
        txt2img_fault(
            "reset",
            lambda job: expect_retried(job, "closed the connection during /txt2img"),
            count=1,
        ),
    ),
    Case(
        "slow answer",
        txt2img_fault(
            "slow",
            lambda job: (
                (job["status"], job["attempts"]) == ("completed", 1) or pytest.fail(str(job))
            ),
            count=1,
            delay_ms=300,
        ),
    ),
    Case("server restarts mid-job", restart_mid_job),
    Case("model disappears", model_disappears),
]


def test_the_matrix_covers_every_fault_kind() -> None:
    covered = {
        "500",
        "502",
        "503",
        "401",
        "404",
        "422",
        "nonjson",
        "truncated",
        "drop",
        "stall",
        "reset",
        "slow",
        "hang",
    }
    assert covered == set(FAULT_KINDS)


@pytest.mark.parametrize("case", CASES, ids=[c.fault for c in CASES])
async def test_fault_outcome(tmp_path: Path, case: Case, short_connect_timeout: None) -> None:
    harness = await start_harness(fast_settings(tmp_path))
    try:
        tally = Tally(harness)
        ctx = Ctx(harness)
        job_ids = await asyncio.wait_for(case.scenario(ctx), 45)
        for job_id in job_ids:
            assert (await ctx.finished(job_id))["status"] in TERMINAL
        await harness.core.run_until_idle()
        # Terminal exactly once, on the bus (published as each write returns: nothing to wait).
        terminal = tally.drain()
        assert {j: terminal[j] for j in job_ids} == dict.fromkeys(job_ids, 1), terminal
        # No worker hangs: nothing left running, no slot held.
        dispatcher = harness.core.dispatcher
        assert not dispatcher._runs, dispatcher._runs
        for runtime in harness.core.registry.runtimes.values():
            assert runtime.active == 0, runtime.alias
        # The service goes on: a fresh job completes on a healthy server.
        for sim in harness.sims.values():
            sim.sim.clear_faults()
            if not sim.running:
                await sim.start()
        healthy = await ctx.sim("after")
        after = await harness.submit(target="after")
        assert (await ctx.finished(after))["status"] == "completed"
        assert len(healthy.sim.generations) == 1
        assert tally.drain()[after] == 1
    finally:
        await stop_harness(harness)
