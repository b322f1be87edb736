"""Soak: many jobs over three simulated servers with random faults and random cancels, the core
restarted a few times on the same folders. Everything accounted for, nothing leaked.

The core runs in this process (so its tasks and file descriptors can be counted); a restart
stops the aiohttp app and its Core and starts a new one on the same data, gallery and servers.
At the end every accepted job is terminal exactly as expected (completed with its images on
disk, failed with a message, or cancelled because the test asked), and the RSS, the open file
descriptors and the asyncio tasks are back where they were (printed, with timings).

The default run does a short version (150 jobs, one restart); `./dev test -m slow` runs
2,000 jobs with three restarts, and 2,000 jobs on each of three seeds with cancels aimed at the
job being claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web_app

from mobilesd_core.forge.simulator import SimServer, SimulatorConfig
from mobilesd_core.forge.simulator.server import free_port

from .conftest import Harness, fast_settings, start_harness, wait_for
from .helpers.processes import rss_mib

TERMINAL = {"completed", "failed", "cancelled"}
TRANSIENT = ["500", "502", "503", "drop", "truncated", "nonjson", "reset"]


def loop_at(task: asyncio.Task[Any] | None) -> str:
    """Where a task waits: its frames, innermost last (for a stuck run's report)."""
    if task is None or task.done():
        return "not running"
    frames = task.get_stack(limit=20)
    return " > ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames)


def plan_report(harness: Harness) -> str:
    """What the scheduler would do now with the jobs the dispatcher is offered."""
    from mobilesd_core.scheduler import ServerSlot

    d = harness.core.dispatcher
    routed = d.router.candidates(harness.core.store.pending_in_order())
    cands = [r.candidate for r in routed if r.problem is None]
    slots = [
        ServerSlot(r.alias, r.free_slots, r.loaded, r.available)
        for r in harness.core.registry.runtimes.values()
    ]
    shown = [(c.job_id, c.group, c.titles, c.job.get("retry_at")) for c in cands]
    plan = d.scheduler.plan(cands, slots, time.time())
    return f"{shown}; slots {slots}; plan {[(c.job_id, s.alias) for c, s in plan]}"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def stop_core(harness: Harness) -> None:
    """Stop the core and its HTTP face; the simulators live on (they are not in `sims`)."""
    await harness.api.aclose()
    await harness.server.close()
    forget_closed_apps()


def forget_closed_apps() -> None:
    """aiohttp caches each app's middleware chain (lru_cache, 1,024 entries) keyed by the app,
    which keeps every closed app, and its Core with all its jobs, alive. A real process builds
    one app; this one builds one per restart, so without this the RSS figures would measure
    aiohttp's cache (about 20 KB a job) instead of the core."""
    cache_clear = getattr(web_app, "_cached_build_middleware", None)
    if cache_clear is not None:
        cache_clear.cache_clear()


async def list_all(harness: Harness) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    while True:
        response = await harness.api.get(
            "/api/v1/queue/jobs", params={"limit": 1000, "offset": len(jobs)}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        jobs.extend(page["jobs"])
        if len(jobs) >= page["total"] or not page["jobs"]:
            return jobs


async def soak(
    tmp_path: Path,
    *,
    jobs: int,
    restarts: int,
    seed: int,
    head_cancels: float = 0.0,
    stuck_after: float | None = None,
) -> dict[str, Any]:
    """`head_cancels`: the chance, after each burst, of also cancelling the job at the head of
    the queue, the one a freed server is claiming right then. `stuck_after`: seconds without a
    job ending after which the run counts as stuck (default: a bound from the job count)."""
    rng = random.Random(seed)
    gc.collect()
    tasks_before = len(asyncio.all_tasks())
    fds_before = open_fds()
    rss_start = rss_mib()
    started = time.monotonic()

    settings = fast_settings(tmp_path, max_attempts=4, stall_timeout=1.0)
    sims = [
        SimServer(SimulatorConfig(step_ms=1, switch_ms=2, name=f"gpu{i}"), port=free_port())
        for i in range(3)
    ]
    for sim in sims:
        await sim.start()
    harness = await start_harness(settings)
    for i, sim in enumerate(sims):
        response = await harness.api.post(
            "/api/v1/servers", json={"alias": f"gpu{i}", "api_url": sim.url}
        )
        assert response.status_code == 201, response.text

    accepted: list[str] = []
    cancelled: set[str] = set()
    faults = Counter[str]()
    restart_at = sorted(rng.sample(range(jobs // 4, jobs), restarts)) if restarts else []
    rss_peak = rss_start
    try:
        while len(accepted) < jobs:
            burst = min(rng.randint(1, 12), jobs - len(accepted))
            for _ in range(burst):
                params = {
                    "prompt": f"soak {len(accepted)}",
                    "steps": rng.randint(2, 6),
                    "width": 64,
                    "height": 64,
                    "n_iter": rng.choice([1, 1, 1, 2]),
                    "seed": len(accepted),
                }
                body: dict[str, Any] = {"generation_params": params}
                if rng.random() < 0.1:
                    body["target_server_alias"] = f"gpu{rng.randrange(3)}"
                response = await harness.api.post("/api/v1/generate", json=body)
                assert response.status_code == 202, response.text
                accepted.append(response.json()["mobilesd_job_id"])
            # Random faults on the servers, mostly transient, now and then a permanent one.
            for _ in range(rng.randint(0, 2)):
                kind = rng.choice([*TRANSIENT, *TRANSIENT, "422"])
                rng.choice(sims).sim.set_fault(kind, count=1, path="txt2img")
                faults[kind] += 1
            # Random cancels of pending or running jobs, and of the job being claimed now.
            victims = [rng.choice(accepted[-30:])] if rng.random() < 0.3 else []
            if rng.random() < head_cancels:
                head = await harness.api.get(
                    "/api/v1/queue/jobs", params={"status": "pending", "limit": 1}
                )
                victims += [j["mobilesd_job_id"] for j in head.json()["jobs"]]
            for victim in victims:
                response = await harness.api.post(f"/api/v1/queue/jobs/{victim}/cancel")
                if response.status_code == 200:
                    cancelled.add(victim)
                else:
                    assert response.status_code == 409, response.text
            if restart_at and len(accepted) >= restart_at[0]:
                restart_at.pop(0)
                await stop_core(harness)
                harness = await start_harness(settings)
            await asyncio.sleep(rng.uniform(0, 0.03))
            rss_peak = max(rss_peak, rss_mib())

        patience = 30 + jobs * 0.02 if stuck_after is None else stuck_after
        deadline = time.monotonic() + patience
        ended = -1
        while True:
            listed = await list_all(harness)
            if all(j["status"] in TERMINAL for j in listed) and len(listed) >= len(accepted):
                break
            now_ended = sum(j["status"] in TERMINAL for j in listed)
            if stuck_after is not None and now_ended > ended:
                ended, deadline = now_ended, time.monotonic() + patience  # still moving
            if time.monotonic() > deadline:
                stuck = [
                    {
                        k: j.get(k)
                        for k in (
                            "mobilesd_job_id",
                            "status",
                            "attempts",
                            "retry_at",
                            "target_server_alias",
                            "waiting_reason",
                            "errors",
                        )
                    }
                    for j in listed
                    if j["status"] not in TERMINAL
                ]
                runtimes = {
                    r.alias: (r.online, r.available, r.active, r.free_slots)
                    for r in harness.core.registry.runtimes.values()
                }
                offered = harness.core.store.pending_in_order()
                d = harness.core.dispatcher
                claims_before = d._claims
                try:
                    await d._assign()
                    assigned = f"a pass now claims {d._claims - claims_before}"
                except Exception as exc:  # a diagnostic: the report goes on
                    assigned = f"a pass now raises {exc!r}"
                raise AssertionError(
                    f"{Counter(j['status'] for j in listed)}; stuck {stuck}; servers {runtimes}; "
                    f"runs {list(harness.core.dispatcher._runs)}; "
                    f"paused {harness.core.dispatcher.paused}; "
                    f"offered to the dispatcher {[j['mobilesd_job_id'] for j in offered]}; "
                    f"retry timer {harness.core.dispatcher._timer}; now {time.time()}; "
                    f"dispatcher at {loop_at(harness.core.dispatcher._loop_task)}; "
                    f"plan {plan_report(harness)}; {assigned}"
                )
            await asyncio.sleep(0.1)
        # Nothing runs and nothing can start: a run whose slot was never given back keeps this
        # from ever being true (and would keep that server from taking any job).
        await harness.core.run_until_idle(timeout=30 if stuck_after is None else stuck_after)

        # Every accepted job, once, terminal, and for a reason the test knows.
        by_id = {j["mobilesd_job_id"]: j for j in listed}
        assert len(by_id) == len(listed) == len(accepted)
        assert set(by_id) == set(accepted)
        statuses = Counter(j["status"] for j in listed)
        for job_id, job in by_id.items():
            if job["status"] == "cancelled":
                assert job_id in cancelled
            elif job["status"] == "failed":
                error = job["result_details"]["error"]
                assert "rejected the request" in error or "gave up after" in error, error
            else:
                images = job["result_details"]["images"]
                assert len(images) == job["generation_params"]["n_iter"]
                for name in images:
                    assert (settings.gallery_path / name).is_file()
        pngs = list(settings.gallery_path.glob("*.png"))
        completed_images = sum(
            len(j["result_details"]["images"]) for j in listed if j["status"] == "completed"
        )
        recorded = {
            n for j in listed if j["status"] == "completed" for n in j["result_details"]["images"]
        }
        strays = {p.name: by_id[p.name.split("_")[1]]["status"] for p in pngs} if pngs else {}
        strays = {name: status for name, status in strays.items() if name not in recorded}
        assert not strays and len(pngs) == completed_images, strays
        for runtime in harness.core.registry.runtimes.values():
            assert runtime.active == 0
    finally:
        await stop_core(harness)
        for sim in sims:
            await sim.stop()
        forget_closed_apps()  # the simulators' apps too

    elapsed = time.monotonic() - started
    gc.collect()
    # Closed sockets and finished tasks are reaped by the loop: give it until they are (bounded;
    # what is left then is measured, and the checks judge it).
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: len(asyncio.all_tasks()) <= tasks_before, timeout=5)
    figures = {
        "jobs": len(accepted),
        "restarts": restarts,
        "statuses": dict(statuses),
        "faults": dict(faults),
        "seconds": round(elapsed, 1),
        "jobs_per_s": round(len(accepted) / elapsed, 1),
        "rss_start_mib": round(rss_start, 1),
        "rss_peak_mib": round(rss_peak, 1),
        "rss_end_mib": round(rss_mib(), 1),
        "fds_before": fds_before,
        "fds_after": open_fds(),
        "tasks_before": tasks_before,
        "tasks_after": len(asyncio.all_tasks()),
    }
    print(f"\nsoak: {figures}")
    return figures


def check_no_leaks(figures: dict[str, Any], *, rss_growth_mib: float) -> None:
    assert figures["fds_after"] <= figures["fds_before"] + 2, figures
    assert figures["tasks_after"] <= figures["tasks_before"], figures
    assert figures["rss_end_mib"] - figures["rss_start_mib"] < rss_growth_mib, figures


async def test_soak_short(tmp_path: Path) -> None:
    figures = await soak(tmp_path, jobs=150, restarts=1, seed=7, head_cancels=0.5)
    assert figures["jobs"] == 150 and sum(figures["statuses"].values()) == 150, figures
    check_no_leaks(figures, rss_growth_mib=80)


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_soak_2000_jobs(tmp_path: Path) -> None:
    jobs = int(os.environ.get("SOAK_JOBS", "2000"))
    figures = await soak(tmp_path, jobs=jobs, restarts=3, seed=11)
    assert figures["jobs"] == jobs and sum(figures["statuses"].values()) == jobs, figures
    check_no_leaks(figures, rss_growth_mib=80)


@pytest.fixture
def fast_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a RAM disk where there is one: fsync costs nothing there, as on a fast SSD
    with a write cache."""
    shm = "/dev/shm"
    with tempfile.TemporaryDirectory(dir=shm if os.path.isdir(shm) else tmp_path) as root:
        yield Path(root)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_soak_cancels_racing_claims(fast_disk: Path, seed: int) -> None:
    """The early 2,000-job soak once left 5 jobs pending for good. The cause: a cancel whose
    write completed in the same loop turn as the job's claim cancelled the new run before its
    first step, so the run never gave its server slot back; that server took no job again
    (test_dispatch.py has the exact interleaving). This soak makes such cancels common: after
    every burst it also cancels the job at the head of the queue, the one a freed server is
    claiming right then, with the same faults as before, on a disk whose fsync is free (both
    writes then complete within one loop turn more often). A run that stops moving for 10 s
    counts as stuck. Without the fix, 6 of 9 runs of these seeds got stuck (one with exactly 5
    jobs pending); it is a race, so a seed fixes what is asked, not the interleaving."""
    jobs = int(os.environ.get("SOAK_JOBS", "2000"))
    figures = await soak(
        fast_disk, jobs=jobs, restarts=1, seed=seed, head_cancels=1.0, stuck_after=10
    )
    assert figures["jobs"] == jobs and sum(figures["statuses"].values()) == jobs, figures
    assert figures["statuses"]["cancelled"] > jobs // 40, figures  # the cancels did happen


async def test_a_stopped_core_is_freed(tmp_path: Path) -> None:
    """Nothing global holds a stopped core (a registry, a callback, a task): a process that
    restarts its core, or a test run that builds hundreds, does not keep the old ones' jobs."""
    settings = fast_settings(tmp_path)
    sim = SimServer(SimulatorConfig(step_ms=1, switch_ms=0), port=free_port())
    await sim.start()
    try:
        harness = await start_harness(settings)
        response = await harness.api.post(
            "/api/v1/servers", json={"alias": "gpu1", "api_url": sim.url}
        )
        assert response.status_code == 201, response.text
        ids = [await harness.submit(prompt=f"job {i}") for i in range(5)]
        for job_id in ids:
            assert (await harness.wait_status(job_id, "completed"))["status"] == "completed"
        async with harness.api.stream("GET", "/api/v1/events") as stream:
            await anext(stream.aiter_lines())  # an event stream was open too
        core = weakref.ref(harness.core)
        await stop_core(harness)
        del harness
    finally:
        await sim.stop()
    gc.collect()
    assert core() is None, [type(r).__name__ for r in gc.get_referrers(core())]
