"""Retention over the API: old finished jobs leave the default list and are found with
`?archived=`, older ones are pruned unless pinned, and their images stay. Time moves with an
injected clock, not by waiting days."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mobilesd_core.core import Core
from mobilesd_core.jobs.store import JobStore
from mobilesd_core.schema import GenerationParams, new_job

from .conftest import Harness, fast_settings, start_harness, stop_harness, wait_for

DAY = 86400.0


class Clock:
    """Unix time that tests move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, days: float) -> None:
        self.offset += days * DAY


async def listed(harness: Harness, **query: Any) -> tuple[list[str], int, list[dict[str, Any]]]:
    response = await harness.api.get("/api/v1/queue/jobs", params=query)
    assert response.status_code == 200, response.text
    body = response.json()
    return [j["mobilesd_job_id"] for j in body["jobs"]], body["total"], body["jobs"]


async def test_archive_query_pins_and_pruning(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, retention_archive_days=1, retention_prune_days=7)
    clock = Clock()
    harness = await start_harness(settings, core=Core(settings, clock=clock))
    try:
        await harness.add_sim("gpu1")
        ids = [await harness.submit(prompt=f"harbour number {i}") for i in range(3)]
        for job_id in ids:
            await harness.wait_status(job_id, "completed")
        old, pinned, other = ids
        images = {
            j: (await harness.job(j))["result_details"]["images"] for j in ids
        }  # gallery file names

        # Fresh: in the default list, not archived, not pinned.
        shown, total, jobs = await listed(harness)
        assert set(shown) == set(ids) and total == 3
        assert all(j["archived"] is False and j["pinned"] is False for j in jobs)
        assert await listed(harness, archived="only") == ([], 0, [])

        response = await harness.api.post(f"/api/v1/queue/jobs/{pinned}/pin")
        assert response.status_code == 200 and response.json()["pinned"] is True
        assert (await harness.api.post("/api/v1/queue/jobs/nope/pin")).status_code == 404

        # Two days on: archived out of the default list, found with the archive query.
        clock.advance(2)
        assert (await listed(harness))[:2] == ([], 0)
        shown, total, jobs = await listed(harness, archived="1")
        assert shown == list(reversed(ids)) and total == 3  # newest first
        assert all(j["archived"] is True for j in jobs)
        assert (await listed(harness, archived="only"))[:2] == (shown, 3)
        assert (await listed(harness, archived="1", q="number 1"))[:2] == ([pinned], 1)
        assert (await listed(harness, q="number 1"))[:2] == ([], 0)
        assert (await listed(harness, archived="1", status="failed"))[:2] == ([], 0)
        assert (await harness.job(old))["archived"] is True  # still reachable by id
        bad = await harness.api.get("/api/v1/queue/jobs", params={"archived": "maybe"})
        assert bad.status_code == 422
        assert bad.json()["error"]["details"][0]["path"] == "archived"

        # A week and more: pruned, except the pinned one; every image stays.
        clock.advance(6)
        pruned = await harness.core.retention.prune()
        assert sorted(pruned) == sorted([old, other])
        for job_id in (old, other):
            assert (await harness.api.get(f"/api/v1/queue/jobs/{job_id}")).status_code == 404
        assert (await harness.job(pinned))["pinned"] is True
        assert (await listed(harness, archived="1"))[:2] == ([pinned], 1)
        gallery = (await harness.api.get("/api/v1/gallery/images", params={"limit": 100})).json()
        assert {i["filename"] for i in gallery["images"]} == {
            name for names in images.values() for name in names
        }
        for names in images.values():
            for name in names:
                assert (settings.gallery_path / name).exists()
        status = (await harness.api.get("/api/v1/notifications")).json()["retention"]
        assert status == {"archive_days": 1, "prune_days": 7, "pinned": 1, "pruned": 2}
    finally:
        await stop_harness(harness)

    # Pins are kept across a restart; unpinned, the job goes with the next sweep.
    harness = await start_harness(settings, core=Core(settings, clock=clock))
    try:
        assert (await harness.job(pinned))["pinned"] is True
        response = await harness.api.post(f"/api/v1/queue/jobs/{pinned}/unpin")
        assert response.status_code == 200 and response.json()["pinned"] is False
        assert await harness.core.retention.prune() == [pinned]
        assert (await harness.api.get(f"/api/v1/queue/jobs/{pinned}")).status_code == 404
        assert all((settings.gallery_path / n).exists() for n in images[pinned])
    finally:
        await stop_harness(harness)


async def test_the_prune_sweep_runs_at_start(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, retention_archive_days=1, retention_prune_days=2)
    clock = Clock()
    harness = await start_harness(settings, core=Core(settings, clock=clock))
    try:
        await harness.add_sim("gpu1")
        job_id = await harness.submit()
        await harness.wait_status(job_id, "completed")
    finally:
        await stop_harness(harness)
    clock.advance(3)
    harness = await start_harness(settings, core=Core(settings, clock=clock))
    try:

        async def gone() -> bool:
            response = await harness.api.get(f"/api/v1/queue/jobs/{job_id}")
            return response.status_code == 404

        await wait_for(gone, what="the start-up sweep")
        listed = await harness.api.get("/api/v1/queue/jobs", params={"archived": "1"})
        assert job_id not in {j["mobilesd_job_id"] for j in listed.json()["jobs"]}
    finally:
        await stop_harness(harness)


async def test_archiving_off_lists_the_whole_history(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, retention_archive_days=0)
    clock = Clock()
    harness = await start_harness(settings, core=Core(settings, clock=clock))
    try:
        await harness.add_sim("gpu1")
        job_id = await harness.submit()
        await harness.wait_status(job_id, "completed")
        clock.advance(10_000)
        assert (await listed(harness))[:2] == ([job_id], 1)
        assert (await listed(harness, archived="only"))[:2] == ([], 0)
        assert (await harness.job(job_id))["archived"] is False
    finally:
        await stop_harness(harness)


# --- the store's completion-time index -----------------------------------------------------------


def _stamp(days_ago: float) -> str:
    moment = datetime.now(UTC) - timedelta(days=days_ago)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_finish_index_handles_out_of_order_finishes_removals_and_reopen(
    tmp_path: Path,
) -> None:
    store = JobStore(tmp_path)
    await store.open()
    params = GenerationParams(prompt="x")
    jobs = await store.add([new_job(params, source="api") for _ in range(5)])
    ids = [j["mobilesd_job_id"] for j in jobs]
    # Finished out of order (e.g. re-archived after a crash): ages 1, 5, 3, 9, 0.5 days.
    ages = dict(zip(ids, (1, 5, 3, 9, 0.5), strict=True))
    for job_id, age in ages.items():
        await store.update(job_id, {"status": "completed", "completion_timestamp": _stamp(age)})

    async def recent(days: float) -> list[str]:
        page, total = await store.list_jobs(finished_after=time.time() - days * DAY)
        assert total == len(page)
        return [j["mobilesd_job_id"] for j in page]

    async def archived(days: float) -> list[str]:
        page, total = await store.list_jobs(finished_before=time.time() - days * DAY)
        assert total == len(page)
        return [j["mobilesd_job_id"] for j in page]

    by_age = sorted(ids, key=lambda j: ages[j])
    assert await recent(4) == [j for j in by_age if ages[j] < 4]  # newest first
    assert sorted(await archived(4)) == sorted(j for j in ids if ages[j] > 4)
    assert store.finished_before(time.time() - 2 * DAY) == [
        j for j in reversed(by_age) if ages[j] > 2
    ]  # oldest first
    await store.remove_finished([by_age[0]])
    assert await recent(4) == [j for j in by_age[1:] if ages[j] < 4]
    await store.close()

    reopened = JobStore(tmp_path)
    await reopened.open()
    try:
        page, total = await reopened.list_jobs(finished_after=time.time() - 4 * DAY)
        assert [j["mobilesd_job_id"] for j in page] == [j for j in by_age[1:] if ages[j] < 4]
        assert total == 2
    finally:
        await reopened.close()


def test_retention_settings_are_checked() -> None:
    from mobilesd_core.config import ConfigError, settings_from_env

    settings = settings_from_env({"RETENTION_ARCHIVE_DAYS": "7", "RETENTION_PRUNE_DAYS": "90"})
    assert (settings.retention_archive_days, settings.retention_prune_days) == (7, 90)
    for env, fragment in (
        ({"RETENTION_ARCHIVE_DAYS": "30", "RETENTION_PRUNE_DAYS": "7"}, "at least"),
        ({"RETENTION_PRUNE_DAYS": "-1"}, "RETENTION_PRUNE_DAYS must be 0"),
        ({"RETENTION_ARCHIVE_DAYS": "soon"}, "expected a number"),
        ({"PUBLIC_URL": "sd.example.net"}, "PUBLIC_URL must be"),
    ):
        try:
            settings_from_env(env)
        except ConfigError as exc:
            assert fragment in str(exc), (env, str(exc))
        else:
            raise AssertionError(f"{env} was accepted")
