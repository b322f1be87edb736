"""The TUI's queue power features against a real core (Pilot): edit a pending job in the
generator form, queue "every checkpoint" in one step, and see the batch in the queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from textual.widgets import Checkbox, Static

from .conftest import Harness
from .helpers.tui import cell, harness, set_input, tui, type_text, until

__all__ = ["harness"]  # the fixture, shared with test_tui_live


async def test_edit_a_pending_job_in_the_generator(harness: Harness, tmp_path: Path) -> None:
    await harness.api.post("/api/v1/queue/pause")
    job_id = await harness.submit(prompt="a grey heron", steps=4)
    app = tui(harness, tmp_path, tab="queue")
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: job_id in app.queue.jobs, "the job in the queue")
        app.queue.select(job_id)
        await until(pilot, lambda: app.queue.selected_id() == job_id, "the cursor on it")
        await pilot.press("e")
        generator = app.generator
        await until(pilot, lambda: generator.editing == job_id, "the form to edit the job")
        assert app.query_one("#prompt").text == "a grey heron"
        assert app.query_one("#steps").value == "4"
        await set_input(pilot, "#steps", "9")
        await pilot.press("ctrl+s")
        await until(
            pilot,
            lambda: harness.core.store.get_live(job_id)["generation_params"]["steps"] == 9,
            "the PATCH to reach the core",
        )
        await until(pilot, lambda: generator.editing is None, "the form back to new jobs")
        assert "saved" in str(app.query_one("#submit-status", Static).render())
        # Still one job: an edit is not a new job.
        assert harness.core.store.count()["pending"] == 1
        assert app.queue.jobs[job_id]["generation_params"]["steps"] == 9


async def test_every_checkpoint_queues_one_batch(harness: Harness, tmp_path: Path) -> None:
    await harness.api.post("/api/v1/queue/pause")
    models = (await harness.api.get("/api/v1/servers/gpu1/models")).json()
    titles = [c["title"] for c in models["checkpoints"]]
    assert len(titles) > 1
    app = tui(harness, tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.loaded and app.connection == "online", "first load")
        await pilot.click("#prompt")
        await type_text(pilot, "a lighthouse")
        app.query_one("#every-checkpoint", Checkbox).value = True
        await pilot.press("ctrl+s")
        await until(
            pilot,
            lambda: harness.core.store.count()["pending"] == len(titles),
            "a job per checkpoint",
        )
        jobs = harness.core.store.pending_in_order()
        assert [j["generation_params"]["checkpoint_name"] for j in jobs] == titles
        assert len({j["batch_id"] for j in jobs}) == 1
        status = str(app.query_one("#submit-status", Static).render())
        assert f"queued {len(titles)} jobs" in status
        # The queue groups them: one batch label on every row.
        await pilot.press("f2")
        await until(
            pilot, lambda: all(j["mobilesd_job_id"] in app.queue.jobs for j in jobs), "rows"
        )
        labels = {cell(app, j["mobilesd_job_id"], "batch") for j in jobs}
        assert labels == {jobs[0]["batch_id"][-4:]}


async def test_the_detail_pane_ages_with_the_age_column(harness: Harness, tmp_path: Path) -> None:
    await harness.api.post("/api/v1/queue/pause")
    job_id = await harness.submit(prompt="a slow snail")
    app = tui(harness, tmp_path, tab="queue")
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: job_id in app.queue.jobs, "the job in the queue")
        app.queue.select(job_id)
        await until(pilot, lambda: app.queue.selected_id() == job_id, "the cursor on it")
        detail = app.query_one("#job-detail-text", Static)
        await until(pilot, lambda: " ago" in str(detail.render()), "the detail pane")
        later = datetime.now(UTC) + timedelta(minutes=5)
        app.queue.clock = lambda: later
        app.queue.refresh_ages()  # what the app's age timer calls
        await pilot.pause()
        assert cell(app, job_id, "age") == "5m"
        assert ", 5m ago" in str(detail.render())
