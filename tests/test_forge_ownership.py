"""Whose generation a Forge progress sample shows (mobilesd_core/forge/ownership.py), rule by rule.

Samples are built with the formula of Forge's `progressapi` (progress = 0.01 + job_no/job_count +
step/steps/job_count; eta_relative = elapsed/progress - elapsed), so the start of a generation
follows from them as it does from the real server's answers.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from mobilesd_core.forge.ownership import (
    SAME_START_SECONDS,
    UNKNOWN_TASK_POLLS,
    ProgressOwner,
    started_seconds_ago,
)


def sample(
    *,
    elapsed: float,
    job_count: int = 1,
    job_no: int = 0,
    step: int = 0,
    steps: int = 4,
    stamp: str = "20260101120000",
    job: str = "scripts_txt2img",
) -> dict[str, Any]:
    state = {
        "job": job,
        "job_count": job_count,
        "job_no": job_no,
        "job_timestamp": stamp,
        "sampling_step": step,
        "sampling_steps": steps,
        "interrupted": False,
    }
    if job_count == 0:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state}
    progress = 0.01
    if job_count > 0:
        progress += job_no / job_count
    if steps > 0:
        progress += 1 / job_count * step / steps
    return {
        "progress": min(progress, 1),
        "eta_relative": elapsed / progress - elapsed,
        "state": state,
    }


def owner(sent_ago: float = 1.0, **kwargs: Any) -> ProgressOwner:
    base: dict[str, Any] = {"task_id": "task(mobilesd-x-1)", "job_count": 1, "steps": 4}
    return ProgressOwner(**{**base, **kwargs}, sent_at=time.monotonic() - sent_ago)


def test_a_generations_start_follows_from_forges_progress_and_eta() -> None:
    assert started_seconds_ago(sample(elapsed=3.0, job_count=-1)) == pytest.approx(3.0)
    assert started_seconds_ago(sample(elapsed=2.5, step=2)) == pytest.approx(2.5)
    assert started_seconds_ago(sample(elapsed=2.0, job_count=0)) is None
    assert started_seconds_ago({"progress": 1, "eta_relative": -0.1, "state": {}}) is None


def test_web_ui_answers_for_the_task_id() -> None:
    mine = owner()
    running = sample(elapsed=0.5, step=1)
    assert mine.classify(running, {"queued": True, "active": False}) == "queued"
    assert mine.classify(running, {"active": True}) == "ours"
    assert mine.classify(running, {"active": False, "completed": True}) == "idle"
    # A generation that began before sending, the task not registered yet: someone else's.
    other = owner(sent_ago=0.1)
    assert other.classify(sample(elapsed=5.0, step=2), {"active": False}) == "other"


def test_a_server_that_ignores_the_task_id_is_judged_without_it() -> None:
    mine = owner(sent_ago=2.0)
    ours = sample(elapsed=1.0, step=1)
    for _ in range(UNKNOWN_TASK_POLLS - 1):
        assert mine.classify(ours, {"active": False}) == "idle"
    assert mine.classify(ours, {"active": False}) == "ours"
    assert not mine.use_internal


def test_without_web_ui_what_began_before_sending_is_someone_elses() -> None:
    assert owner(sent_ago=1.0).classify(sample(elapsed=1.5, step=2), None) == "other"
    assert owner(sent_ago=1.0).classify(sample(elapsed=0.5, step=2), None) == "ours"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"job": "task(abc123)"}, "other"),  # a web UI task
        ({"job_count": 2}, "other"),  # a different batch count
        ({"steps": 9}, "other"),  # a sampler running a step count the job does not have
        ({"step": 0}, "idle"),  # before the first step, sampling_steps may be stale
        ({"job_count": -1, "step": 0}, "ours"),  # a checkpoint load: shown, not relied on
        ({"job": "Batch 1 out of 1"}, "ours"),  # Forge renames API jobs with batches
    ],
)
def test_without_web_ui_the_rules(changes: dict[str, Any], expected: str) -> None:
    fields: dict[str, Any] = {"elapsed": 0.4, "step": 2, **changes}
    assert owner(sent_ago=1.0).classify(sample(**fields), None) == expected


def test_hires_second_pass_steps_count_as_the_jobs() -> None:
    mine = owner(job_count=2, hires_steps=6)
    assert (
        mine.classify(sample(elapsed=0.4, job_count=2, job_no=1, step=3, steps=6), None) == "ours"
    )


def test_once_recognised_what_follows_it_is_someone_elses() -> None:
    mine = owner(sent_ago=2.0)
    assert mine.classify(sample(elapsed=1.0, step=2), None) == "ours"
    assert mine.classify(sample(elapsed=1.2, step=3), None) == "ours"
    # Same second (job_timestamp has one-second steps), but it began later: not ours.
    later = sample(elapsed=1.2 - SAME_START_SECONDS - 0.3, step=3)
    assert mine.classify(later, None) == "other"
    # Progress went back: a new generation began; ours is over for good.
    assert mine.classify(sample(elapsed=0.05, step=1), None) == "other"
    assert mine.classify(sample(elapsed=1.5, step=3), None) == "other"


def test_a_new_job_timestamp_or_an_idle_forge_ends_it() -> None:
    mine = owner(sent_ago=2.0)
    assert mine.classify(sample(elapsed=1.0, step=2), None) == "ours"
    assert mine.classify(sample(elapsed=1.0, step=2, stamp="20260101120001"), None) == "other"
    assert mine.classify(sample(elapsed=0.0, job_count=0), None) == "idle"
    assert mine.classify(sample(elapsed=1.1, step=3), None) == "other"


def test_step_counts_are_shown_once_they_are_this_generations() -> None:
    mine = owner(steps=2)
    loading = sample(elapsed=1, job_count=-1, steps=3)["state"]
    assert mine.shown_steps(loading) is None
    stale = sample(elapsed=1, step=0, steps=3)["state"]  # the last job's 3 steps
    assert mine.shown_steps(stale) is None
    assert mine.shown_steps(sample(elapsed=1, step=0, steps=2)["state"]) == 2
    other = owner(steps=2)
    assert other.shown_steps(sample(elapsed=1, step=1, steps=5)["state"]) == 5  # a hires pass
