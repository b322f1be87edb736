"""The TUI against a real core: the app, and pilot helpers that wait with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from mobilesd_tui.api_client import CoreClient
from mobilesd_tui.app import MobileSDApp, make_app
from mobilesd_tui.thumbs import halfcell_widget

from ..conftest import TOKEN, Harness, fast_settings, start_harness, stop_harness


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = await start_harness(fast_settings(tmp_path))
    try:
        await h.add_sim("gpu1")
        yield h
    finally:
        await stop_harness(h)


def tui(harness: Harness, tmp_path: Path, tab: str = "generator", **options: Any) -> MobileSDApp:
    url = str(harness.server.make_url("")).rstrip("/")
    return make_app(
        CoreClient(url, TOKEN),
        prefs_path=tmp_path / "config" / "tui.json",
        initial_tab=tab,
        image_widget=halfcell_widget(),
        animations=False,
        age_refresh=None,
        **options,
    )


async def until(pilot: Any, check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.02)


async def type_text(pilot: Any, text: str) -> None:
    await pilot.press(*["space" if c == " " else c for c in text])


async def set_input(pilot: Any, selector: str, text: str) -> None:
    await pilot.click(selector)
    app = pilot.app
    app.query_one(selector, Input).value = ""  # select-all differs between terminals
    await type_text(pilot, text)


def cell(app: MobileSDApp, job_id: str, column: str) -> str:
    return str(app.queue.table.get_cell(job_id, column))
