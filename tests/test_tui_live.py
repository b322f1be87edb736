"""The TUI against a real core and Forge simulators, driven with keys and clicks (Pilot).

Nothing is faked here: the app talks HTTP and SSE to a core on a loopback socket, which runs jobs
on simulated Forge servers. Waits poll with deadlines; no sleep is a synchronisation.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp.test_utils import TestServer
from textual.notifications import Notification
from textual.widgets import Input, Select, Static

from mobilesd_core.api.app import create_app
from mobilesd_tui.api_client import ApiError, CoreClient, Unreachable
from mobilesd_tui.app import MobileSDApp, make_app
from mobilesd_tui.errors import error_text
from mobilesd_tui.thumbs import halfcell_widget
from mobilesd_tui.widgets.gallery import Tile

from .conftest import TOKEN, Harness, fast_settings, start_harness, stop_harness
from .helpers.net import closed_port
from .helpers.tui import cell, harness, set_input, tui, type_text, until

__all__ = ["harness"]  # the fixture, from tests/helpers/tui.py


def status_of(app: MobileSDApp, job_id: str) -> str | None:
    job = app.queue.jobs.get(job_id)
    return job["status"] if job else None


async def test_submit_runs_to_completion_and_lands_in_the_gallery(
    harness: Harness, tmp_path: Path
) -> None:
    app = tui(harness, tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.loaded and app.connection == "online", "first load")
        await pilot.click("#prompt")
        await type_text(pilot, "a red fox")
        for selector, value in (("#width", "64"), ("#height", "64"), ("#steps", "4")):
            await set_input(pilot, selector, value)
        await pilot.press("ctrl+s")
        job_id = await until(
            pilot,
            lambda: next(
                (
                    i
                    for i, j in app.queue.jobs.items()
                    if j["generation_params"]["prompt"] == "a red fox"
                ),
                None,
            ),
            "the new job in the queue",
        )
        status = app.query_one("#submit-status", Static)
        assert job_id[-8:] in str(status.render())
        await until(pilot, lambda: status_of(app, job_id) == "completed", "completion")
        await pilot.press("f2")
        assert "done" in cell(app, job_id, "status")
        assert "1 image" in cell(app, job_id, "progress")
        await pilot.press("f3")
        tile = await until(
            pilot,
            lambda: next(
                (t for t in app.query(Tile) if t.entry["mobilesd_job_id"] == job_id), None
            ),
            "the image in the gallery",
        )
        await until(pilot, lambda: tile.loaded, "its thumbnail")
        # The form is remembered, and the token is not in it.
        saved = (tmp_path / "config" / "tui.json").read_text()
        assert json.loads(saved)["generator"]["prompt"] == "a red fox"
        assert TOKEN not in saved


async def test_validation_error_shows_next_to_its_field(harness: Harness, tmp_path: Path) -> None:
    app = tui(harness, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "first load")
        await pilot.click("#prompt")
        await type_text(pilot, "fox")
        await set_input(pilot, "#steps", "500")
        await pilot.press("ctrl+s")
        row_error = app.query_one("#err-row-size", Static)
        await until(pilot, lambda: row_error.has_class("shown"), "the steps error")
        assert "Steps" in str(row_error.render()) and "150" in str(row_error.render())
        assert app.query_one("#steps").parent.has_class("invalid")
        assert app.focused is app.query_one("#steps")
        assert harness.core.store.count()["pending"] == 0
        # Fixed, it goes through and the error is gone.
        await set_input(pilot, "#steps", "4")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not row_error.has_class("shown"), "the error to clear")


async def test_cancel_and_move_from_the_queue(harness: Harness, tmp_path: Path) -> None:
    await harness.api.post("/api/v1/queue/pause")
    ids = [await harness.submit(prompt=f"job {n}") for n in range(3)]
    app = tui(harness, tmp_path, tab="queue")
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: all(i in app.queue.jobs for i in ids), "the jobs")
        table = app.queue.table
        await until(pilot, lambda: table.get_row_index(ids[2]) == 2, "run order")
        table.move_cursor(row=2)
        await pilot.press("t")  # to the top
        await until(
            pilot, lambda: table.get_row_index(ids[2]) == 0, "the moved job on top of the table"
        )
        assert app.queue.selected_id() == ids[2]  # the cursor followed it
        pending = [j["mobilesd_job_id"] for j in harness.core.store.pending_in_order()]
        assert pending == [ids[2], ids[0], ids[1]]
        await pilot.press("d")  # and one down
        await until(pilot, lambda: table.get_row_index(ids[2]) == 1, "one down")
        # Cancel the one under the cursor, with a click on its row first.
        await pilot.click("#jobs", offset=(5, 1 + table.get_row_index(ids[1])))
        assert app.queue.selected_id() == ids[1]
        await pilot.press("c")
        await until(pilot, lambda: status_of(app, ids[1]) == "cancelled", "the cancel")
        assert (await harness.job(ids[1]))["status"] == "cancelled"
        assert "cancelled" in cell(app, ids[1], "status")
        # Resume with p; the other two run to completion.
        await pilot.press("p")
        for job_id in (ids[0], ids[2]):
            await until(pilot, lambda j=job_id: status_of(app, j) == "completed", "completion")


async def test_paused_state_and_filter_redraw_from_their_values(
    harness: Harness, tmp_path: Path
) -> None:
    """The top bar and the Queue summary follow the paused state, whoever changes it (a key
    here, the API elsewhere); the filter key and the filter Select show the same rows."""
    await harness.api.post("/api/v1/queue/pause")
    ids = [await harness.submit(prompt=f"job {n}") for n in range(2)]
    app = tui(harness, tmp_path, tab="queue")
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: all(i in app.queue.jobs for i in ids), "the jobs")
        top = app.query_one("#queue-state", Static)
        summary = app.query_one("#queue-summary", Static)
        await until(pilot, lambda: "0 running · 2 pending · paused" in str(top.render()), "top")
        assert "2 pending" in str(summary.render()) and "PAUSED" in str(summary.render())
        # The filter: `f` shows only pending jobs, and the Select says so.
        await pilot.press("f")
        select = app.query_one("#queue-filter", Select)
        assert (app.queue.filter, select.value) == ("pending", "pending")
        assert app.queue.table.row_count == 2
        # Resumed elsewhere: the `queue` event unpauses both lines; the jobs run and leave
        # the pending filter's rows.
        await harness.api.post("/api/v1/queue/resume")
        await until(pilot, lambda: "paused" not in str(top.render()), "the top bar resumed")
        assert "PAUSED" not in str(summary.render())
        await until(pilot, lambda: all(status_of(app, i) == "completed" for i in ids), "runs")
        await until(pilot, lambda: app.queue.table.row_count == 0, "no pending rows")
        assert "0 running · 0 pending" in str(top.render())
        # The Select changes the filter as the key does.
        select.value = "completed"
        await until(pilot, lambda: app.queue.table.row_count == 2, "the completed rows")
        assert app.queue.filter == "completed"
        # `p` pauses through the core; both lines say so.
        await pilot.press("p")
        await until(pilot, lambda: "paused" in str(top.render()), "paused again")
        assert "PAUSED" in str(summary.render())
        assert (await harness.api.get("/api/v1/queue")).json()["paused"] is True


async def test_add_and_edit_a_server(harness: Harness, tmp_path: Path) -> None:
    from mobilesd_core.forge.simulator import SimServer, SimulatorConfig

    sim = SimServer(SimulatorConfig(step_ms=5, switch_ms=20, name="gpu2"))
    await sim.start()
    harness.sims["gpu2"] = sim
    app = tui(harness, tmp_path, tab="servers")
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.loaded, "first load")
        await pilot.press("a")
        await until(pilot, lambda: app.screen.query("#server-alias"), "the server form")
        await type_text(pilot, "gpu2")
        await pilot.press("tab")
        await type_text(pilot, sim.url)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "gpu2" in harness.core.registry.runtimes, "the new server")
        await until(
            pilot,
            lambda: (app.servers_pane.servers.get("gpu2", {}).get("status") or {}).get("online"),
            "gpu2 online in the table",
        )
        # It gets a password (through the API): an edit moving it to another port must
        # repeat it.
        response = await harness.api.put(
            "/api/v1/servers/gpu2", json={"username": "forge", "password": "pw-2"}
        )
        assert response.status_code == 200, response.text
        # Edit it: concurrency 2, and a bad URL first (its error shows by the field).
        table = app.servers_pane.query_one("#servers-table")
        table.move_cursor(row=1)
        await pilot.press("e")
        await until(pilot, lambda: app.screen.query("#server-max_concurrent"), "the edit form")
        form = app.screen
        form.query_one("#server-max_concurrent", Input).value = ""
        await pilot.click("#server-max_concurrent")
        await type_text(pilot, "2")
        form.query_one("#server-api_url", Input).value = ""
        await pilot.click("#server-api_url")
        await type_text(pilot, "ftp://nowhere")
        await pilot.press("ctrl+s")
        error = form.query_one("#err-server-api_url", Static)
        await until(pilot, lambda: error.has_class("shown"), "the URL error")
        form.query_one("#server-api_url", Input).value = "http://127.0.0.1:9"
        await pilot.press("ctrl+s")
        error = form.query_one("#err-server-password", Static)
        await until(pilot, lambda: error.has_class("shown"), "the password error")
        assert "re-enter the password" in str(error.render())
        form.query_one("#server-api_url", Input).value = ""
        await pilot.click("#server-api_url")
        await type_text(pilot, sim.url)
        await pilot.press("ctrl+s")
        await until(
            pilot,
            lambda: harness.core.registry.runtimes["gpu2"].config.max_concurrent == 2,
            "the change saved",
        )
        await until(pilot, lambda: "2" in str(table.get_cell("gpu2", "busy")), "the table")
        saved = harness.core.registry.runtimes["gpu2"].config
        assert (saved.api_url.rstrip("/"), saved.max_concurrent) == (sim.url.rstrip("/"), 2)

        # Model sync folders: a relative one is refused by its field; then saved, and shown.
        await pilot.press("e")
        await until(pilot, lambda: app.screen.query("#server-checkpoint_dir"), "the edit form")
        form = app.screen
        form.query_one("#server-checkpoint_dir", Input).value = "models/Stable-diffusion"
        await pilot.press("ctrl+s")
        error = form.query_one("#err-server-checkpoint_dir", Static)
        await until(pilot, lambda: error.has_class("shown"), "the folder error")
        assert "absolute path" in str(error.render())
        folder = tmp_path / "forge2-models"
        folder.mkdir()
        form.query_one("#server-checkpoint_dir", Input).value = str(folder)
        form.query_one("#server-sync_cap_gb", Input).value = "12.5"
        await pilot.press("ctrl+s")
        runtime = harness.core.registry.runtimes["gpu2"]
        await until(pilot, lambda: runtime.config.checkpoint_dir == str(folder), "sync saved")
        assert (runtime.config.lora_dir, runtime.config.sync_cap_gb) == (None, 12.5)
        assert runtime.config.max_concurrent == 2  # an edit sends only what changed
        detail = app.servers_pane.query_one("#server-detail", Static)
        await until(
            pilot,
            lambda: f"model sync: checkpoints → {folder} (up to 12.5 GB)" in str(detail.render()),
            "the sync line in the detail",
        )


async def test_survives_the_core_restarting(tmp_path: Path) -> None:
    """The core goes away and comes back on the same port: the indicator says so, what was typed
    stays, and the queue is reloaded from the new core."""
    settings = fast_settings(tmp_path)
    first = await start_harness(settings)
    port = first.server.port
    app = tui(first, tmp_path)
    second: Harness | None = None
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.connection == "online", "online")
            await pilot.click("#prompt")
            await type_text(pilot, "kept while away")
            await first.api.aclose()
            await first.server.close()
            await until(pilot, lambda: app.connection == "offline", "offline", timeout=30)
            assert "unreachable" in str(app.query_one("#connection", Static).render())
            server = TestServer(create_app(settings), host="127.0.0.1", port=port)
            await server.start_server()
            second = Harness(settings=settings, server=server, api=first.api)
            second.api = type(first.api)(
                base_url=str(server.make_url("")).rstrip("/"),
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30,
            )
            job_id = await second.submit(prompt="queued while the TUI was away")
            await until(pilot, lambda: app.connection == "online", "online again", timeout=30)
            await until(pilot, lambda: job_id in app.queue.jobs, "the reloaded queue")
            assert app.query_one("#prompt").text == "kept while away"
    finally:
        if second is not None:
            await stop_harness(second)


def error_toasts(app: MobileSDApp) -> list[Notification]:
    return [n for n in app._notifications if n.severity == "error"]


async def test_core_refusals_toast_alike_at_every_call_site(
    harness: Harness, tmp_path: Path
) -> None:
    """Two call sites, two real 422s over HTTP (a move, a Civitai download): each is one toast,
    `Cannot …` over the core's own message, which names the field, through the one handler."""
    await harness.api.post("/api/v1/queue/pause")
    job_id = await harness.submit(prompt="stays put")
    app = tui(harness, tmp_path, tab="queue")
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.loaded and job_id in app.queue.jobs, "first load")
        app.move_job(job_id, "sideways")
        await until(pilot, lambda: len(error_toasts(app)) == 1, "the move's toast")
        app.start_download(0)
        await until(pilot, lambda: len(error_toasts(app)) == 2, "the download's toast")
        moved, download = error_toasts(app)
        assert app.is_running
    # The same requests straight to the core: the toasts carry its words.
    answers = [
        await harness.api.post(f"/api/v1/queue/jobs/{job_id}/move", json={"to": "sideways"}),
        await harness.api.post("/api/v1/civitai/download-model", json={"model_version_id": 0}),
    ]
    for toast, answer, title, field in zip(
        (moved, download),
        answers,
        ("Cannot move this job", "Cannot download"),
        ("to", "model_version_id"),
        strict=True,
    ):
        assert answer.status_code == 422
        error = answer.json()["error"]
        assert error["details"][0]["path"] == field
        assert toast.title == title
        assert toast.message == error["message"]
        assert toast.message.startswith(f"invalid fields: {field}: ")
    assert (await harness.job(job_id))["status"] == "pending"


async def test_an_unreachable_core_toasts_alike_at_every_call_site(tmp_path: Path) -> None:
    """No core at all (a closed port): a queue action and a server action each say which
    action failed in the title and why in the same words."""
    url = f"http://127.0.0.1:{closed_port()}"
    app = make_app(
        CoreClient(url, TOKEN),
        image_widget=halfcell_widget(),
        follow_events=False,
        animations=False,
        age_refresh=None,
    )
    async with app.run_test(size=(80, 24)) as pilot:
        app.delete_job("01JD3NOSUCHJOB0000000000")
        await until(pilot, lambda: len(error_toasts(app)) == 1, "the queue action's toast")
        app.remove_server("gpu1")
        await until(pilot, lambda: len(error_toasts(app)) == 2, "the server action's toast")
        deleted, removed = error_toasts(app)
    why = f"cannot reach the core at {url}: connection refused or host unreachable"
    assert (deleted.title, deleted.message) == ("Cannot delete this job", why)
    assert (removed.title, removed.message) == ("Cannot remove gpu1", why)


def test_error_text_names_a_field_the_message_leaves_out() -> None:
    """A core that words a 422 without the field still gets the field named in the toast."""
    terse = ApiError(422, "invalid_fields", "invalid input", [{"path": "to", "message": "bad"}])
    assert error_text(terse) == "invalid input (to: bad)"
    full = ApiError(422, "invalid_fields", "invalid fields: to: bad", [{"path": "to"}])
    assert error_text(full) == "invalid fields: to: bad"
    assert error_text(Unreachable("cannot reach the core")) == "cannot reach the core"
