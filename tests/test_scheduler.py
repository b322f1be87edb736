"""Checkpoint-aware scheduling: the pure scheduler, then routing and affinity with real servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import sched_model
from mobilesd_core import lookahead
from mobilesd_core.forge.simulator import SimulatorConfig
from mobilesd_core.scheduler import Candidate, Scheduler, ServerSlot, SwitchCost

from .conftest import Harness, fast_settings, start_harness, stop_harness, wait_for

NOW = 1_800_000_000.0
SERVERS = ("a", "b", "c")


def job(
    n: int, model: str | None, *, target: str | None = None, on: tuple[str, ...] = SERVERS
) -> Candidate:
    record: dict[str, Any] = {
        "mobilesd_job_id": f"J{n:03d}",
        "target_server_alias": target,
        "retry_at": None,
    }
    return Candidate(record, model, {alias: model for alias in on}, created=NOW - 10)


def ids(plan: list[tuple[Candidate, ServerSlot]]) -> list[tuple[str, str]]:
    return [(cand.job_id, slot.alias) for cand, slot in plan]


def test_a_free_server_takes_the_oldest_job_of_its_loaded_checkpoint() -> None:
    queue = [job(1, "x"), job(2, "y"), job(3, "x"), job(4, "y")]
    plan = Scheduler().plan(queue, [ServerSlot("a", 1, "y")], NOW)
    assert ids(plan) == [("J002", "a")]


def test_a_job_goes_to_the_free_server_that_has_its_checkpoint() -> None:
    queue = [job(1, "x"), job(2, "y")]
    plan = Scheduler().plan(queue, [ServerSlot("a", 1, "y"), ServerSlot("b", 1, "x")], NOW)
    assert sorted(ids(plan)) == [("J001", "b"), ("J002", "a")]


def test_jobs_of_one_checkpoint_keep_their_order_across_slots() -> None:
    queue = [job(1, "x"), job(2, "y"), job(3, "x"), job(4, "x")]
    plan = Scheduler().plan(queue, [ServerSlot("a", 3, "x")], NOW)
    assert ids(plan) == [("J001", "a"), ("J003", "a"), ("J004", "a")]


def test_a_job_without_checkpoint_runs_on_whatever_is_loaded() -> None:
    queue = [job(1, "x"), job(2, None)]
    plan = Scheduler().plan(queue, [ServerSlot("a", 1, "y")], NOW)
    assert ids(plan) == [("J002", "a")]


def test_a_server_with_nothing_of_its_own_switches_to_the_oldest_uncovered_checkpoint() -> None:
    queue = [job(1, "x"), job(2, "y"), job(3, "z")]
    slots = [ServerSlot("a", 0, "x"), ServerSlot("b", 1, "w")]  # a is busy with x
    plan = Scheduler().plan(queue, slots, NOW)
    assert ids(plan) == [("J002", "b")]  # x is covered by a; y is the oldest uncovered


def test_a_covered_backlog_is_joined_only_when_it_outweighs_the_switch() -> None:
    cost = SwitchCost(job_seconds=1.0, switch_seconds=4.0)  # switching costs four jobs
    few = [job(n, "x") for n in range(1, 5)]  # 4 jobs: a finishes them before b could load x
    slots = [ServerSlot("a", 0, "x"), ServerSlot("b", 1, "w")]
    assert Scheduler(cost=cost).plan(few, slots, NOW) == []
    many = [job(n, "x") for n in range(1, 12)]  # 11 jobs: b loading x pays off
    slots = [ServerSlot("a", 0, "x"), ServerSlot("b", 1, "w")]
    assert ids(Scheduler(cost=cost).plan(many, slots, NOW)) == [("J001", "b")]


def test_fifo_takes_the_queue_in_order() -> None:
    queue = [job(1, "x"), job(2, "y"), job(3, "x")]
    plan = Scheduler(policy="fifo").plan(queue, [ServerSlot("a", 2, "y")], NOW)
    assert ids(plan) == [("J001", "a"), ("J002", "a")]


def test_targets_and_routes_are_respected() -> None:
    queue = [job(1, "y", target="b"), job(2, "y", on=("b",)), job(3, "y")]
    plan = Scheduler().plan(queue, [ServerSlot("a", 3, "y")], NOW)
    assert ids(plan) == [("J003", "a")]


def test_retry_backoff_is_respected() -> None:
    waiting = job(1, "y")
    waiting.job["retry_at"] = NOW + 5
    plan = Scheduler().plan([waiting, job(2, "y")], [ServerSlot("a", 2, "y")], NOW)
    assert ids(plan) == [("J002", "a")]


def test_a_job_overtaken_too_often_runs_next_whatever_it_costs() -> None:
    scheduler = Scheduler(max_overtakes=3)
    lonely = job(0, "x")
    queue = [lonely, *(job(n, "y") for n in range(1, 10))]
    taken = []
    for _ in range(5):  # one slot at a time, as jobs finish
        plan = scheduler.plan(queue, [ServerSlot("a", 1, "y")], NOW)
        (cand, _slot), *_ = plan
        taken.append(cand.job_id)
        queue.remove(cand)
    assert taken == ["J001", "J002", "J003", "J000", "J004"]


def test_a_job_waiting_too_long_runs_next() -> None:
    old = job(0, "x")
    old.created = NOW - 100
    plan = Scheduler(max_wait_seconds=60).plan([old, job(1, "y")], [ServerSlot("a", 1, "y")], NOW)
    assert ids(plan) == [("J000", "a")]


def test_unavailable_servers_get_nothing() -> None:
    queue = [job(1, "y")]
    plan = Scheduler().plan(queue, [ServerSlot("a", 1, "y", available=False)], NOW)
    assert plan == []


def test_the_switch_cost_estimate_learns_from_finished_jobs() -> None:
    cost = SwitchCost()
    assert cost.ratio == 1.0  # no data yet
    for _ in range(20):
        cost.observe(2.0, switched=False)
        cost.observe(10.0, switched=True)
    assert cost.ratio == pytest.approx(4.0, rel=0.05)


# -- with real servers --------------------------------------------------------------------------

CKPTS = ["idle/base.safetensors", "m/alpha.safetensors", "m/beta.safetensors"]


def sim_config(name: str, checkpoints: list[str] = CKPTS, **extra: Any) -> SimulatorConfig:
    return SimulatorConfig(
        checkpoints=checkpoints,
        initial_checkpoint=checkpoints[0],
        step_ms=5,
        switch_ms=60,
        name=name,
        unhashed=None,
        **extra,
    )


async def test_one_server_groups_jobs_by_checkpoint(harness: Harness) -> None:
    sim = await harness.add_sim("gpu1", sim_config("gpu1"))
    await harness.api.post("/api/v1/queue/pause")
    models = ["m/alpha", "m/beta"] * 5
    for model in models:
        await harness.submit(checkpoint_name=model, steps=2)
    await harness.api.post("/api/v1/queue/resume")
    await harness.core.run_until_idle()
    ran = [g.checkpoint for g in sim.sim.generations]
    assert len(ran) == 10
    # Alternating submissions, but two loads: each model's jobs run together, in order.
    assert sum(g.switched for g in sim.sim.generations) == 2
    assert ran == sorted(ran, key=lambda title: ran.index(title))


async def test_fifo_policy_switches_on_every_change(tmp_path: Path) -> None:
    h = await start_harness(fast_settings(tmp_path, scheduler="fifo"))
    try:
        sim = await h.add_sim("gpu1", sim_config("gpu1"))
        await h.api.post("/api/v1/queue/pause")
        for model in ["m/alpha", "m/beta"] * 3:
            await h.submit(checkpoint_name=model, steps=2)
        await h.api.post("/api/v1/queue/resume")
        await h.core.run_until_idle()
        assert sum(g.switched for g in sim.sim.generations) == 6
    finally:
        await stop_harness(h)


async def test_a_job_goes_only_to_servers_that_list_its_checkpoint(harness: Harness) -> None:
    only_b = "m/gamma.safetensors"
    sim_a = await harness.add_sim("gpu-a", sim_config("gpu-a"))
    sim_b = await harness.add_sim("gpu-b", sim_config("gpu-b", [*CKPTS, only_b]))
    await wait_for(
        lambda: all(r.checkpoints is not None for r in harness.core.registry.runtimes.values()),
        what="the model lists",
    )
    job_ids = [await harness.submit(checkpoint_name="m/gamma", steps=2) for _ in range(4)]
    for job_id in job_ids:
        done = await harness.wait_status(job_id, "completed", "failed")
        assert done["status"] == "completed" and done["assigned_server_alias"] == "gpu-b"
    assert sim_a.sim.generations == []
    assert len(sim_b.sim.generations) == 4


async def test_a_job_whose_model_is_only_on_a_disabled_server_waits_with_a_reason(
    harness: Harness,
) -> None:
    await harness.add_sim("gpu-a", sim_config("gpu-a"))
    await harness.add_sim("gpu-b", sim_config("gpu-b", [*CKPTS, "m/gamma.safetensors"]))
    await wait_for(
        lambda: all(r.checkpoints is not None for r in harness.core.registry.runtimes.values()),
        what="the model lists",
    )
    response = await harness.api.put("/api/v1/servers/gpu-b", json={"enabled": False})
    assert response.status_code == 200, response.text
    job_id = await harness.submit(checkpoint_name="m/gamma", steps=2)
    job = await wait_for(lambda: _waiting(harness, job_id), what="the job to show why it waits")
    assert job["waiting_reason"] == "checkpoint 'm/gamma' is only on 'gpu-b' (disabled)"
    assert job["status"] == "pending"
    response = await harness.api.put("/api/v1/servers/gpu-b", json={"enabled": True})
    assert response.status_code == 200
    done = await harness.wait_status(job_id, "completed")
    assert done["assigned_server_alias"] == "gpu-b"


async def _waiting(h: Harness, job_id: str) -> dict[str, Any] | None:
    job = await h.job(job_id)
    return job if job.get("waiting_reason") else None


async def test_pending_jobs_flow_to_the_other_server_when_one_goes_offline(
    harness: Harness,
) -> None:
    sim_a = await harness.add_sim("gpu-a", sim_config("gpu-a"))
    await harness.add_sim("gpu-b", sim_config("gpu-b"))
    await harness.api.post("/api/v1/queue/pause")
    job_ids = [await harness.submit(checkpoint_name="m/alpha", steps=2) for _ in range(6)]
    await sim_a.stop()
    await wait_for(lambda: not harness.core.registry.runtimes["gpu-a"].online, what="gpu-a offline")
    await harness.api.post("/api/v1/queue/resume")
    for job_id in job_ids:
        done = await harness.wait_status(job_id, "completed", "failed")
        assert (done["status"], done["assigned_server_alias"]) == ("completed", "gpu-b")


# -- lookahead: moves played forward ---------------------------------------------------------


def measured(ratio: float) -> Scheduler:
    """A scheduler that has measured jobs of 1 s and switches of `ratio` s."""
    return Scheduler(cost=SwitchCost(job_seconds=1.0, switch_seconds=ratio))


def test_a_free_server_joins_a_backlog_when_sharing_it_ends_the_queue_sooner() -> None:
    # a has just started loading x for the first of five x jobs (busy for 5 more job lengths);
    # b is free. Alone, a ends at 5 + 4 = 9; with b joining (4 to load, then 1 a job) both
    # end by 7. A single greedy rule (backlog 4 is not more than 1 server x ratio 4) waited.
    queue = [job(n, "x") for n in range(4)]
    slots = [ServerSlot("a", 0, "x", busy_for=5.0), ServerSlot("b", 1, "y")]
    plan = measured(4.0).plan(queue, slots, NOW)
    assert ids(plan) == [("J000", "b")]


def test_a_free_server_waits_when_its_peer_ends_the_backlog_sooner_alone() -> None:
    queue = [job(n, "x") for n in range(2)]
    slots = [ServerSlot("a", 0, "x", busy_for=0.2), ServerSlot("b", 1, "y")]
    assert measured(4.0).plan(queue, slots, NOW) == []


def test_a_deep_queue_is_planned_by_the_rules_alone() -> None:
    # Past `lookahead_jobs` the forecast is skipped: the same case as above then waits.
    queue = [job(n, "x") for n in range(4)]
    slots = [ServerSlot("a", 0, "x", busy_for=5.0), ServerSlot("b", 1, "y")]
    scheduler = measured(4.0)
    scheduler.lookahead_jobs = 3
    assert scheduler.plan(queue, slots, NOW) == []


def test_forecast_counts_loads_and_jobs() -> None:
    servers = [lookahead.Server("a", "x", 0.0), lookahead.Server("b", None, 0.0)]
    anywhere = frozenset({"a", "b"})
    # a keeps x (3 jobs); b loads y (2 + its 2 jobs): both end at 4... b at 4, a at 3.
    end = lookahead.forecast(servers, {"x": 3, "y": 2}, {"x": anywhere, "y": anywhere}, 2.0)
    assert end == 4.0
    # Nobody may run z: the queue never ends.
    assert lookahead.forecast(servers, {"z": 1}, {"z": frozenset()}, 2.0) == float("inf")


@pytest.mark.parametrize("seed", range(20))
def test_small_queues_end_as_soon_as_the_best_schedule(seed: int) -> None:
    # 2 servers, 12 jobs over 3 checkpoints, a load costing 4 jobs, on the model clock of
    # bench/sched_model.py (the real Scheduler deciding whenever a server frees up), against
    # an exhaustive search over every split of every checkpoint's jobs.
    order = sched_model.mix(12, 3, seed)
    run = sched_model.simulate(order, 2, 4.0, Scheduler())
    assert run.makespan == sched_model.best_makespan(order, 2, 4.0)
