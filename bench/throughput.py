"""Per-job overhead: the core against a direct httpx loop, same simulator, zero step time.

Direct loop: one httpx client posts the core's own txt2img body (built by
`build_txt2img_payload`) N times in a row and base64-decodes the images, nothing else.
Core: N jobs queued in one submit, one server with one slot, timed from the submit to the
dispatcher going idle. The core's time includes all its per-job durable work: the claim and the
finish written to the store (fsynced; the finish also appended to the archive) and the image
saved to the gallery as PNG + JSON sidecar (fsynced). Rounds alternate which side goes first;
the figures are the medians over rounds.
"""

from __future__ import annotations

from pathlib import Path

from .harness import direct_loop, params, run_jobs, running_core, txt2img_payload
from .report import Row, median, ms, percent, say
from .simproc import start_simulator

AIM = 0.85  # core throughput / direct-loop throughput
# The aim is judged at the contract's default job size. Smaller images are shown to expose the
# core's fixed per-job cost (store and gallery fsyncs), which no generation can hide at 64x64.
AIM_SIZE = 512
STEPS = 20


async def run(
    root: Path, *, jobs: int, rounds: int, sizes: list[int], inline_sim: bool
) -> list[Row]:
    say(f"throughput: {jobs} jobs x {rounds} rounds per side, step time 0, sizes {sizes}")
    sim = await start_simulator(step_ms=0, inline=inline_sim)
    rows: list[Row] = []
    try:
        async with running_core(root / "throughput", sim.url) as core:
            for size in sizes:
                p = params(size, STEPS)
                payload = txt2img_payload(p)
                await run_jobs(core, p, 3)  # connection, catalog, first gallery folder
                direct_s: list[float] = []
                core_s: list[float] = []
                for round_no in range(rounds):
                    order = ("direct", "core") if round_no % 2 == 0 else ("core", "direct")
                    for side in order:
                        if side == "direct":
                            direct_s.append(await direct_loop(sim.url, payload, jobs) / jobs)
                        else:
                            core_s.append(await run_jobs(core, p, jobs) / jobs)
                    say(
                        f"  {size}x{size} round {round_no + 1}: direct {ms(direct_s[-1])}/job, "
                        f"core {ms(core_s[-1])}/job"
                    )
                rows += _rows(size, median(direct_s), median(core_s))
    finally:
        await sim.stop()
    return rows


def _rows(size: int, direct: float, core: float) -> list[Row]:
    ratio = direct / core  # = core jobs/s over direct jobs/s
    overhead = core - direct
    # Overhead that would still meet the aim: core <= direct / AIM.
    budget = direct / AIM - direct
    label = f"{size}x{size}"
    judged = size == AIM_SIZE
    return [
        Row(f"throughput {label}, direct httpx loop", f"{1 / direct:.0f} jobs/s", ratio="peer"),
        Row(
            f"throughput {label}, core",
            f"{1 / core:.0f} jobs/s",
            aim=f">= {percent(AIM)} of direct" if judged else "(information)",
            ratio=f"{percent(ratio)} of direct",
            ok=ratio >= AIM if judged else None,
        ),
        Row(
            f"per-job overhead {label} (core - direct)",
            ms(overhead),
            aim=f"<= {ms(budget)} (the {percent(AIM)} aim)" if judged else "(information)",
            ratio=f"{overhead / budget:.1f}× budget" if budget > 0 else "",
            ok=overhead <= budget if judged else None,
        ),
    ]
