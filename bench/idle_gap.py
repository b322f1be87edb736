"""The idle gap of a server between two queued jobs, read from the simulator's own clock.

A gap is `started_at` of a generation minus `finished_at` of the one before, both taken by the
simulator (`GenerationRecord`). `started_at` is when sampling begins: after the request was parsed,
the generation lock taken, the options applied and the checkpoint loaded (no switch here).
`finished_at` is when the last image is rendered and PNG/base64-encoded, before the answer is
serialised, gzipped and sent. So a gap is the time the "GPU" has nothing to do: the answer going
out, the core reading it, claiming the next job (an fsynced store write) and sending it, and the
simulator taking it in. The same simulator fed by a direct httpx loop gives the floor (peer).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from .harness import direct_loop, params, run_jobs, running_core, txt2img_payload
from .report import Row, median, ms, percentile, say, times
from .simproc import Simulator, Span, start_simulator

AIM_S = 0.010
STEPS = 4


def gaps(spans: list[Span]) -> list[float]:
    return [b.started_at - a.finished_at for a, b in itertools.pairwise(spans)]


async def _measured(sim: Simulator, before: int, n: int) -> list[float]:
    spans = (await sim.spans())[before:]
    if len(spans) != n:
        raise RuntimeError(f"expected {n} generations on the simulator, found {len(spans)}")
    return gaps(spans)


async def run(
    root: Path, *, jobs: int, step_ms: float, sizes: list[int], inline_sim: bool
) -> list[Row]:
    say(f"idle gap: {jobs} queued jobs of {STEPS} steps x {step_ms:g} ms, sizes {sizes}")
    sim = await start_simulator(step_ms=step_ms, inline=inline_sim)
    rows: list[Row] = []
    try:
        async with running_core(root / "idle_gap", sim.url) as core:
            for size in sizes:
                p = params(size, STEPS)
                await run_jobs(core, p, 3)
                before = len(await sim.spans())
                await run_jobs(core, p, jobs)
                core_gaps = await _measured(sim, before, jobs)
                before = len(await sim.spans())
                await direct_loop(sim.url, txt2img_payload(p), jobs, warmup=0)
                direct_gaps = await _measured(sim, before, jobs)
                say(
                    f"  {size}x{size}: core median {ms(median(core_gaps))} "
                    f"p99 {ms(percentile(core_gaps, 99))}, direct median "
                    f"{ms(median(direct_gaps))} p99 {ms(percentile(direct_gaps, 99))}"
                )
                rows += _rows(size, core_gaps, direct_gaps)
    finally:
        await sim.stop()
    return rows


def _rows(size: int, core: list[float], direct: list[float]) -> list[Row]:
    label = f"{size}x{size}"
    core_median, core_p99 = median(core), percentile(core, 99)
    direct_median, direct_p99 = median(direct), percentile(direct, 99)
    return [
        Row(
            f"idle gap {label}, core, median",
            ms(core_median),
            aim=f"< {ms(AIM_S)}",
            ratio=f"{times(core_median / AIM_S)} aim; {times(core_median / direct_median)} direct",
            ok=core_median < AIM_S,
        ),
        Row(
            f"idle gap {label}, core, p99",
            ms(core_p99),
            ratio=f"{times(core_p99 / AIM_S)} 10 ms; {times(core_p99 / direct_p99)} direct",
        ),
        Row(f"idle gap {label}, direct loop, median", ms(direct_median), ratio="peer"),
        Row(f"idle gap {label}, direct loop, p99", ms(direct_p99), ratio="peer"),
    ]
