"""The scheduler on a model clock, and the best schedule a search finds, for makespan figures.

The real mix (`scheduling.py`) runs the dispatcher against simulated servers, which takes
seconds a mix; judging a policy needs many seeded mixes and an exact optimum to compare with.
Here the real `Scheduler` plans on a discrete-event clock instead: every job takes one unit,
a checkpoint switch `switch` units, each server starts on a checkpoint no job uses, and the
scheduler is asked again whenever a server frees up, as the dispatcher does after each job.

The best schedule: jobs are independent and equally long, so only how many jobs of each
checkpoint each server runs matters (a server runs its share of a checkpoint back to back,
paying one load for it). `best_makespan` searches those splits exhaustively with a bound.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections import Counter
from dataclasses import dataclass

from mobilesd_core.scheduler import Candidate, Scheduler, ServerSlot

IDLE = "idle"


@dataclass
class ModelRun:
    makespan: float
    switches: int


def mix(jobs: int, groups: int, seed: int) -> list[str]:
    """A seeded queue: each job's checkpoint drawn at random, every checkpoint used."""
    rng = random.Random(seed)
    order = [f"m{i}" for i in range(groups)]
    order += [f"m{rng.randrange(groups)}" for _ in range(jobs - groups)]
    rng.shuffle(order)
    return order


def lower_bound(order: list[str], servers: int, switch: float) -> float:
    """Every job once and every checkpoint loaded at least once, spread evenly."""
    return (len(order) + len(set(order)) * switch) / servers


def simulate(order: list[str], servers: int, switch: float, scheduler: Scheduler) -> ModelRun:
    aliases = [f"gpu{i}" for i in range(servers)]
    loaded = dict.fromkeys(aliases, IDLE)
    busy_until = dict.fromkeys(aliases, 0.0)
    pending = [
        Candidate(
            job={"mobilesd_job_id": f"{i:05d}"},
            group=name,
            titles=dict.fromkeys(aliases, name),
            created=float(i + 1),
        )
        for i, name in enumerate(order)
    ]
    ends: list[tuple[float, str]] = []
    now = 0.0
    switches = 0
    free = set(aliases)
    while pending or ends:
        slots = [
            ServerSlot(a, 1 if a in free else 0, loaded[a], busy_for=busy_until[a] - now)
            for a in aliases
        ]
        for cand, slot in scheduler.plan(pending, slots, now):
            pending.remove(cand)
            switched = loaded[slot.alias] != cand.group
            took = 1.0 + (switch if switched else 0.0)
            switches += switched
            loaded[slot.alias] = cand.group or loaded[slot.alias]
            busy_until[slot.alias] = now + took
            free.discard(slot.alias)
            heapq.heappush(ends, (now + took, slot.alias))
            scheduler.cost.observe(took, switched=switched)
        if not ends:
            raise RuntimeError("the scheduler left jobs waiting with every server free")
        now, alias = heapq.heappop(ends)
        free.add(alias)
        # Servers that end at the same instant are all free before the next plan.
        while ends and ends[0][0] == now:
            free.add(heapq.heappop(ends)[1])
    return ModelRun(max(busy_until.values()), switches)


def best_makespan(
    order: list[str], servers: int, switch: float, *, known: float = float("inf")
) -> float:
    """The shortest makespan over every split of every checkpoint's jobs among the servers.

    `known`: the makespan of a schedule already found, to prune with from the start.
    """
    counts = sorted(Counter(order).values(), reverse=True)
    best = known
    floor = lower_bound(order, servers, switch)
    if switch == int(switch):
        floor = float(math.ceil(floor))  # whole job lengths: no makespan lies in between

    def splits(n: int) -> list[tuple[int, ...]]:
        return [s for s in itertools.product(range(n + 1), repeat=servers) if sum(s) == n]

    options = [splits(n) for n in counts]
    # Work still to place after each group, with its one unavoidable load.
    rest = [sum(n + switch for n in counts[i:]) for i in range(len(counts) + 1)]

    def search(index: int, loads: list[float]) -> None:
        nonlocal best
        if best <= floor:
            return
        if index == len(counts):
            best = max(loads)
            return
        seen: set[tuple[float, ...]] = set()
        for split in options[index]:
            nxt = [load + (switch + k if k else 0.0) for load, k in zip(loads, split, strict=True)]
            key = tuple(sorted(nxt))  # servers are alike: one of each shape is enough
            if key in seen or max(nxt) >= best:
                continue
            if (sum(nxt) + rest[index + 1]) / servers >= best:
                continue
            seen.add(key)
            search(index + 1, nxt)

    search(0, [0.0] * servers)
    return best


def ratios(
    *,
    servers: int,
    jobs: int,
    groups: int,
    switch: float,
    seeds: range,
    exact: bool,
    lookahead_jobs: int | None = None,
) -> tuple[list[float], list[float]]:
    """Per seed: makespan over the lower bound, and (if `exact`) over the best schedule."""
    to_bound, to_best = [], []
    for seed in seeds:
        order = mix(jobs, groups, seed)
        scheduler = Scheduler()
        if lookahead_jobs is not None:
            scheduler.lookahead_jobs = lookahead_jobs
        run = simulate(order, servers, switch, scheduler)
        to_bound.append(run.makespan / lower_bound(order, servers, switch))
        if exact:
            best = best_makespan(order, servers, switch, known=run.makespan)
            to_best.append(run.makespan / best)
    return to_bound, to_best


if __name__ == "__main__":  # python -m bench.sched_model: the model's figures alone
    big, bigb = ratios(servers=3, jobs=60, groups=4, switch=4.0, seeds=range(50), exact=True)
    print(f"3x60/4 ckpts: median {statistics.median(big):.3f} max {max(big):.3f} x bound")
    print(f"3x60/4 ckpts: median {statistics.median(bigb):.3f} max {max(bigb):.3f} x best")
    small_b, small = ratios(servers=2, jobs=12, groups=3, switch=4.0, seeds=range(50), exact=True)
    print(
        f"2x12/3 ckpts: median {statistics.median(small):.3f} max {max(small):.3f} x best; "
        f"bound median {statistics.median(small_b):.3f}"
    )
