"""The Queue tab with 10,000 jobs: what the faster table draws is still right.

JobTable (mobilesd_tui/widgets/queue.py) skips DataTable's per-cell measuring and keeps cell
renderings by what they show; these tests read the lines it paints (the same `render_line` a
frame uses) against a real core on loopback holding 10,000 pending jobs (dispatching paused, so
nothing moves unless a test moves it). How fast it is lives in `./dev bench --only tui`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.widgets import Static

from mobilesd_core.schema import GenerationParams
from mobilesd_tui.app import MobileSDApp

from .conftest import Harness, fast_settings, start_harness, stop_harness
from .helpers.tui import tui, until

JOBS = 10_000


def prompt(n: int) -> str:
    return f"job {n:05d}"


@pytest.fixture
async def big(tmp_path: Path) -> AsyncIterator[tuple[Harness, list[str]]]:
    """A core with 10,000 pending jobs, `job 00000` first in run order; their ids in order."""
    h = await start_harness(fast_settings(tmp_path))
    try:
        service = h.core.service
        await service.set_paused(True)
        jobs = await service.submit(
            [GenerationParams(prompt=prompt(n), steps=4) for n in range(JOBS)], source="api"
        )
        yield h, [job["mobilesd_job_id"] for job in jobs]
    finally:
        await stop_harness(h)


def painted(app: MobileSDApp) -> list[str]:
    """The table's data lines as a frame paints them (the header line left out)."""
    table = app.queue.table
    return [table.render_line(y).text for y in range(1, table.size.height)]


def assert_window(app: MobileSDApp, first: int) -> None:
    """The painted lines are jobs first, first+1, ... in run order, each with its own prompt."""
    lines = painted(app)
    assert lines, "nothing painted"
    for offset, line in enumerate(lines):
        assert prompt(first + offset) in line, (first + offset, line)
        assert "○ pending" in line, line


def assert_cursor_agrees(app: MobileSDApp, ids: list[str]) -> None:
    table = app.queue.table
    job_id = ids[table.cursor_row]
    assert app.queue.selected_id() == job_id
    detail = str(app.queue.query_one("#job-detail-text", Static).content)
    assert detail.startswith(job_id)
    assert prompt(table.cursor_row) in detail


async def loaded_queue(app: MobileSDApp, pilot: object) -> None:
    await until(pilot, lambda: app.queue.table.row_count == JOBS, "10,000 rows", timeout=60)
    app.queue.table.focus()
    await pilot.pause()  # type: ignore[attr-defined]


async def test_paging_through_10000_jobs_shows_each_job_in_order(
    big: tuple[Harness, list[str]], tmp_path: Path
) -> None:
    harness, ids = big
    app = tui(harness, tmp_path, tab="queue")
    async with app.run_test(size=(100, 32)) as pilot:
        await loaded_queue(app, pilot)
        table = app.queue.table
        assert [row.key.value for row in table.ordered_rows] == ids  # the core's run order
        assert_window(app, 0)
        assert_cursor_agrees(app, ids)
        for _ in range(3):
            await pilot.press("pagedown")
        assert table.cursor_row > 0
        assert_window(app, int(table.scroll_y))
        assert_cursor_agrees(app, ids)
        await pilot.press("ctrl+end")
        assert table.cursor_row == JOBS - 1
        assert_window(app, JOBS - len(painted(app)))
        assert prompt(JOBS - 1) in painted(app)[-1]
        assert_cursor_agrees(app, ids)
        await pilot.press("pageup")
        assert_window(app, int(table.scroll_y))
        assert_cursor_agrees(app, ids)
        # A click finds its row through the row/column meta each painted cell carries.
        top = int(table.scroll_y)
        await pilot.click("#jobs", offset=(60, 5))  # line 5: the header, then rows top..top+3
        assert table.cursor_row == top + 4
        assert_cursor_agrees(app, ids)
        await pilot.press("ctrl+home")
        assert table.cursor_row == 0
        assert_window(app, 0)


async def test_a_job_changed_by_an_event_repaints_its_row_while_scrolled(
    big: tuple[Harness, list[str]], tmp_path: Path
) -> None:
    harness, ids = big
    app = tui(harness, tmp_path, tab="queue")
    async with app.run_test(size=(100, 32)) as pilot:
        await loaded_queue(app, pilot)
        table = app.queue.table
        table.move_cursor(row=7000)
        await pilot.pause()
        top = int(table.scroll_y)
        assert top > 6000
        assert_window(app, top)
        # Two jobs on screen change through the core: one in place (an edit), one that
        # leaves the pending run order (a cancel), so the rows below it move up by one.
        edited, cancelled = top + 2, top + 5
        await harness.core.service.edit(ids[edited], {"prompt": "an edited prompt"})
        await harness.core.service.cancel(ids[cancelled])
        await until(
            pilot,
            lambda: (
                any("an edited prompt" in line for line in painted(app))
                and not any(prompt(cancelled) in line for line in painted(app))
            ),
            "the edit and the cancel painted",
        )
        lines = painted(app)
        for row, line in enumerate(lines, start=int(table.scroll_y)):
            n = row if row < cancelled else row + 1  # the rows below the cancelled one moved up
            if n == edited:
                assert "an edited prompt" in line and prompt(n) not in line, line
            else:
                assert prompt(n) in line, (n, line)
        # The cancelled job went to the finished part, at the very end, drawn as cancelled.
        assert [row.key.value for row in table.ordered_rows][-1] == ids[cancelled]
        await pilot.press("ctrl+end")
        last = painted(app)[-1]
        assert prompt(cancelled) in last and "cancelled" in last, last


async def test_a_filter_applies_to_all_10000_jobs_not_the_window(
    big: tuple[Harness, list[str]], tmp_path: Path
) -> None:
    harness, ids = big
    far = (3, 5000, JOBS - 2)  # one on the first screen, two never painted before
    for n in far:
        await harness.core.service.cancel(ids[n])
    app = tui(harness, tmp_path, tab="queue")
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.queue.table.row_count == JOBS, "10,000 rows", timeout=60)
        app.queue.table.focus()
        while app.queue.filter != "cancelled":
            await pilot.press("f")
        table = app.queue.table
        await until(pilot, lambda: table.row_count == len(far), "the cancelled jobs alone")
        assert {row.key.value for row in table.ordered_rows} == {ids[n] for n in far}
        lines = [line for line in painted(app) if line.strip()]
        assert len(lines) == len(far)
        assert all("cancelled" in line for line in lines)
        assert {n for n in far if any(prompt(n) in line for line in lines)} == set(far)
        while app.queue.filter != "pending":
            await pilot.press("f")
        await until(pilot, lambda: table.row_count == JOBS - len(far), "every pending job")
        await pilot.press("ctrl+end")
        assert prompt(JOBS - 1) in painted(app)[-1]
