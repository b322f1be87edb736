"""Scheduling: checkpoint affinity against FIFO, and how the core scales with servers.

Mix: 3 simulated servers (their own process), 60 jobs over 4 checkpoints in a seeded random
order, a checkpoint switch costing 4x a job (the clock is scaled: 200 ms jobs, 800 ms loads, so
it runs in seconds). Each server starts on a fifth model, so every checkpoint must be loaded at
least once. Makespan is from the queue's release to the dispatcher going idle. The lower bound is
(total job time + one load per checkpoint) / servers, with the job time measured in the same
run; fairness is the longest wait of any job (claim minus creation) against FIFO's.

Scale: 1, 4, 16 and 32 simulated servers (all in one process of their own) and short jobs of
one model: the share of time each server spends generating while jobs are pending, and the
core's CPU time per job (this process, all threads).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from mobilesd_core.config import Settings
from mobilesd_core.core import Core
from mobilesd_core.schema import GenerationParams

from . import sched_model
from .report import Row, percent, say, times
from .simproc import start_simulators

MODELS = ["m/alpha", "m/beta", "m/gamma", "m/delta"]
IDLE_MODEL = "idle/base.safetensors"
STEPS = 10
STEP_MS = 20.0
SWITCH_MS = 4 * STEPS * STEP_MS  # a load costs four jobs


@dataclass
class MixResult:
    makespan: float
    switches: int
    worst_wait: float
    job_seconds: float  # summed generation time (sampling + encoding) of all jobs


def _configs(
    n: int, *, step_ms: float, switch_ms: float, models: list[str]
) -> list[dict[str, Any]]:
    checkpoints = [IDLE_MODEL, *(f"{m}.safetensors" for m in models)]
    return [
        {
            "checkpoints": checkpoints,
            "initial_checkpoint": IDLE_MODEL,
            "step_ms": step_ms,
            "switch_ms": switch_ms,
            "name": f"gpu{i}",
            "unhashed": None,
            "preview_every_n_steps": -1,
        }
        for i in range(n)
    ]


async def _core(root: Path, urls: list[str], policy: str) -> Core:
    settings = Settings(
        data_path=root / "data",
        gallery_path=root / "outputs",
        inbox_path=root / "inbox",
        token="bench-token-0123456789",
        scheduler=policy,
        health_interval=30.0,
    )
    for path in (settings.data_path, settings.gallery_path, settings.inbox_path):
        path.mkdir(parents=True, exist_ok=True)
    core = Core(settings)
    await core.start()
    await core.service.set_paused(True)
    for i, url in enumerate(urls):
        await core.service.add_server({"alias": f"gpu{i}", "api_url": url})
    deadline = time.monotonic() + 30
    while not all(r.online and r.checkpoints is not None for r in core.registry.runtimes.values()):
        if time.monotonic() > deadline:
            raise RuntimeError("the simulated servers did not come online")
        await asyncio.sleep(0.01)
    return core


async def _generations(urls: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for url in urls:
            response = await client.get(f"{url}/_sim/state")
            response.raise_for_status()
            out += [{**g, "server": url} for g in response.json()["generations"]]
    return out


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def _mix_round(root: Path, policy: str, order: list[str]) -> MixResult:
    urls, sims = await start_simulators(
        _configs(3, step_ms=STEP_MS, switch_ms=SWITCH_MS, models=MODELS)
    )
    try:
        core = await _core(root, urls, policy)
        try:
            params = [
                GenerationParams(
                    prompt="a lighthouse", checkpoint_name=m, steps=STEPS, width=64, height=64
                )
                for m in order
            ]
            # One submit per job: each has its own creation time, like a queue filled by hand.
            for p in params:
                await core.service.submit([p], source="api")
            started = time.perf_counter()
            await core.service.set_paused(False)
            await core.run_until_idle(timeout=300)
            makespan = time.perf_counter() - started
            jobs, _ = await core.store.list_jobs(limit=len(order) + 10)
        finally:
            await core.stop()
        gens = await _generations(urls)
    finally:
        await sims.stop()
    waits = [_epoch(j["started_timestamp"]) - _epoch(j["creation_timestamp"]) for j in jobs]
    return MixResult(
        makespan=makespan,
        switches=sum(1 for g in gens if g["switched"]),
        worst_wait=max(waits),
        job_seconds=sum(g["finished_at"] - g["started_at"] for g in gens),
    )


async def run_mix(root: Path, *, jobs: int = 60, seed: int = 7) -> list[Row]:
    rng = random.Random(seed)
    order = [MODELS[i % len(MODELS)] for i in range(jobs)]
    rng.shuffle(order)
    say(f"scheduling: 3 servers, {jobs} jobs over {len(MODELS)} checkpoints, switch = 4 jobs")
    fifo = await _mix_round(root / "fifo", "fifo", order)
    say(f"  fifo: {fifo.makespan:.2f} s, {fifo.switches} switches")
    ours = await _mix_round(root / "checkpoint", "checkpoint", order)
    say(f"  checkpoint-aware: {ours.makespan:.2f} s, {ours.switches} switches")
    bound = (ours.job_seconds + len(MODELS) * SWITCH_MS / 1000) / 3
    to_bound = ours.makespan / bound
    to_fifo = ours.makespan / fifo.makespan
    return [
        Row(
            "scheduling 3×60 jobs, 4 models: makespan, checkpoint-aware",
            f"{ours.makespan:.2f} s, {ours.switches} switches",
            "≤ 1.15× bound",
            f"{times(to_bound)} the lower bound {bound:.2f} s",
            to_bound <= 1.15,
        ),
        Row(
            "scheduling 3×60 jobs, 4 models: makespan, FIFO",
            f"{fifo.makespan:.2f} s, {fifo.switches} switches",
            "ours ≤ 45 %",
            f"ours is {percent(to_fifo)} of it",
            to_fifo <= 0.45,
        ),
        Row(
            "scheduling 3×60 jobs: longest wait of a job, ours vs FIFO",
            f"{ours.worst_wait:.2f} s vs {fifo.worst_wait:.2f} s",
            ratio=times(ours.worst_wait / fifo.worst_wait),
        ),
    ]


def model_rows(seeds: int = 50) -> list[Row]:
    """Many seeded mixes on the model clock (sched_model.py), against the bound and the best."""
    rows = []
    say(f"scheduling model: {seeds} seeded mixes, a load = 4 jobs, the real Scheduler deciding")
    cases = [("3×60 jobs, 4 models", 3, 60, 4), ("2×12 jobs, 3 models", 2, 12, 3)]
    for label, servers, jobs, groups in cases:
        to_bound, to_best = sched_model.ratios(
            servers=servers, jobs=jobs, groups=groups, switch=4.0, seeds=range(seeds), exact=True
        )
        _, greedy_best = sched_model.ratios(
            servers=servers,
            jobs=jobs,
            groups=groups,
            switch=4.0,
            seeds=range(seeds),
            exact=True,
            lookahead_jobs=0,
        )
        best_bound = [b / r for b, r in zip(to_bound, to_best, strict=True)]
        med, worst = statistics.median(to_best), max(to_best)
        say(
            f"  {label}: ours {statistics.median(to_bound):.3f}× bound (median), "
            f"{med:.3f}× best (median), {worst:.3f}× (worst); the best itself "
            f"{statistics.median(best_bound):.3f}× bound; one greedy step "
            f"{statistics.median(greedy_best):.3f}× / {max(greedy_best):.3f}× best"
        )
        rows.append(
            Row(
                f"scheduling model, {label}, {seeds} mixes: makespan vs the best schedule",
                f"median {times(med)}, worst {times(worst)} (one greedy step: "
                f"{times(statistics.median(greedy_best))}, {times(max(greedy_best))})",
                "median ≤ 1.03×",
                f"{times(statistics.median(to_bound))} the bound; the best is "
                f"{times(statistics.median(best_bound))} it",
                med <= 1.03,
            )
        )
    return rows


async def _scale_round(root: Path, servers: int, jobs: int) -> tuple[float, float, float, float]:
    urls, sims = await start_simulators(
        _configs(servers, step_ms=5.0, switch_ms=0.0, models=MODELS[:1])
    )
    try:
        core = await _core(root, urls, "checkpoint")
        try:
            p = GenerationParams(
                prompt="a lighthouse", checkpoint_name=MODELS[0], steps=4, width=64, height=64
            )
            await core.service.submit([p] * jobs, source="api")
            cpu = time.process_time()
            started = time.perf_counter()
            await core.service.set_paused(False)
            await core.run_until_idle(timeout=900)
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu
        finally:
            await core.stop()
        gens = await _generations(urls)
    finally:
        await sims.stop()
    # Jobs are pending from the release until the last one starts.
    begin = min(g["started_at"] for g in gens)
    end = max(g["started_at"] for g in gens)
    window = max(end - begin, 1e-9)
    shares = []
    for url in urls:
        busy = sum(
            max(0.0, min(g["finished_at"], end) - max(g["started_at"], begin))
            for g in gens
            if g["server"] == url
        )
        shares.append(busy / window)
    return wall, statistics.mean(shares), min(shares), cpu / jobs


async def run_scale(
    root: Path, *, jobs: int = 2000, sizes: tuple[int, ...] = (1, 4, 16, 32)
) -> list[Row]:
    rows = []
    say(f"scheduling scale: {jobs} jobs of 20 ms on {', '.join(map(str, sizes))} servers")
    for n in sizes:
        wall, mean_share, min_share, cpu_per_job = await _scale_round(root / f"scale{n}", n, jobs)
        say(
            f"  {n} servers: {wall:.1f} s, generating {percent(mean_share)} of the time "
            f"(lowest {percent(min_share)}), core CPU {cpu_per_job * 1000:.2f} ms/job"
        )
        rows.append(
            Row(
                f"scale: {n} server{'s' if n > 1 else ''}, {jobs} jobs: time generating while "
                "jobs wait; core CPU per job",
                f"{percent(mean_share)} (lowest {percent(min_share)}); {cpu_per_job * 1000:.2f} ms",
                ratio=f"{jobs / wall:.0f} jobs/s",
            )
        )
    return rows
