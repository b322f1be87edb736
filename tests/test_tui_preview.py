"""The TUI's job detail shows a running job's live preview, asked for again on each progress
event with If-None-Match: a real core, a simulator making previews, the real HTTP client."""

from __future__ import annotations

from pathlib import Path

from mobilesd_core.forge.simulator import SimulatorConfig
from mobilesd_tui.api_client import CoreClient
from mobilesd_tui.app import make_app
from mobilesd_tui.thumbs import halfcell_widget

from .conftest import TOKEN, Harness
from .helpers.tui import harness, until

__all__ = ["harness"]  # the fixture, from tests/helpers/tui.py


class CountingClient(CoreClient):
    """The real client, noting what each preview request got: an ETag (200) or "304"."""

    answers: list[str]

    async def job_preview(self, job_id: str, etag: str | None) -> tuple[bytes, str] | None:
        got = await super().job_preview(job_id, etag)
        self.answers.append("304" if got is None else got[1])
        return got


async def test_job_detail_shows_the_live_preview_and_skips_unchanged_bytes(
    harness: Harness, tmp_path: Path
) -> None:
    # A new preview every 20 steps of 30 ms; progress events come about 4 times a second.
    await harness.add_sim(
        "slow", SimulatorConfig(step_ms=30, switch_ms=20, preview_every_n_steps=20, name="slow")
    )
    client = CountingClient(str(harness.server.make_url("")).rstrip("/"), TOKEN)
    client.answers = []
    app = make_app(
        client,
        prefs_path=tmp_path / "config" / "tui.json",
        initial_tab="queue",
        image_widget=halfcell_widget(),
        animations=False,
        age_refresh=None,
    )
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.loaded, "first load")
        job_id = await harness.submit("slow", prompt="a koi pond, previewed", steps=150)
        await until(pilot, lambda: job_id in app.queue.jobs, "the job's row")
        app.queue.select(job_id)
        await until(pilot, lambda: app.queue.selected_id() == job_id, "the job selected")
        await until(pilot, lambda: app.query("#job-preview"), "the preview in the detail pane")
        downloads = lambda: [a for a in client.answers if a != "304"]  # noqa: E731
        await until(
            pilot,
            lambda: "304" in client.answers and len(downloads()) >= 2,
            "an unchanged preview (304) and a new one",
        )
        assert len(downloads()) == len(set(downloads())), client.answers  # none fetched twice
        await harness.api.post(f"/api/v1/queue/jobs/{job_id}/cancel")
        await until(pilot, lambda: not app.query("#job-preview"), "the preview gone")
