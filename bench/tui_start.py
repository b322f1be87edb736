"""The TUI: cold start to first screen, and a queue of 10,000 jobs loaded and scrolled.

A real core on loopback HTTP with 10,000 pending jobs (dispatching paused, so the queue holds
still). Cold start runs `bench/tui_probe.py` in fresh interpreters (imports included). Load and
scroll run the app headless in this process: the time from start until the table holds every
job, then page-down through all of it, one key at a time: each timed from the key sent until
the app has handled it (the cursor on the new row, the detail panel showing that job) and the
frame is composed. Not `Pilot.press`: it sleeps twice 20 ms per key to see the app idle, a
floor that would hide the table's own cost.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from mobilesd_core.api.app import create_app
from mobilesd_core.api.keys import CORE
from mobilesd_core.config import Settings
from mobilesd_core.schema import GenerationParams

from .report import Row, median, ms, percentile, say

TOKEN = "bench-token-0123456789"
START_AIM = 2.0  # seconds to a usable first screen over SSH: our choice
FULL_START_AIM = 1.0  # seconds to the first screen with 10,000 jobs queued (issue 20)
LOAD_AIM = 3.0  # seconds to load 10,000 jobs: our choice
PAGE_AIM = 0.030  # seconds per page-down through 10,000 jobs (issue 20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _cold_start(url: str, rounds: int) -> list[float]:
    probe = Path(__file__).with_name("tui_probe.py")
    out = []
    for _ in range(rounds):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(probe),
            url,
            TOKEN,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"tui probe failed: {stderr.decode()[-2000:]}")
        out.append(float(stdout.decode().strip().splitlines()[-1]))
    return out


async def _page_down(app: Any, pilot: Any) -> float:
    """One page-down: key sent, handled (cursor moved, detail shows its job), frame composed."""
    from textual import events
    from textual.widgets import Static

    table = app.queue.table
    detail = app.queue.query_one("#job-detail-text", Static)
    before = table.cursor_row
    started = time.perf_counter()
    app._driver.send_message(events.Key("pagedown", None))
    deadline = started + 10
    while True:
        await asyncio.sleep(0)
        if table.cursor_row != before:
            selected = app.queue.selected_id()
            if selected and str(detail.content).startswith(selected):
                break
        if time.perf_counter() > deadline:
            raise RuntimeError("page-down not handled within 10 s")
    app.screen._on_timer_update()  # the frame Textual's clock would compose next (Pilot's way)
    return time.perf_counter() - started


async def _load_and_scroll(url: str, jobs: int) -> tuple[float, list[float], list[float]]:
    from mobilesd_tui.api_client import CoreClient
    from mobilesd_tui.app import make_app
    from mobilesd_tui.thumbs import halfcell_widget

    app = make_app(
        CoreClient(url, TOKEN),
        initial_tab="queue",
        image_widget=halfcell_widget(),
        animations=False,
        age_refresh=None,
    )
    started = time.perf_counter()
    async with app.run_test(size=(100, 32)) as pilot:
        table = app.queue.table
        while table.row_count < jobs:
            await pilot.pause(0.005)
        await pilot.pause()
        loaded = time.perf_counter() - started
        table.focus()
        await pilot.pause()
        walls: list[float] = []
        cpus: list[float] = []
        while table.cursor_row < table.row_count - 1:
            cpu = time.process_time()
            walls.append(await _page_down(app, pilot))
            cpus.append(time.process_time() - cpu)
            await pilot.pause(0)  # whatever the page left behind runs here, outside the timing
    return loaded, walls, cpus


async def run(root: Path, *, jobs: int = 10_000, rounds: int = 3) -> list[Row]:
    settings = Settings(
        data_path=root / "tui-data",
        gallery_path=root / "tui-outputs",
        inbox_path=root / "tui-inbox",
        token=TOKEN,
        port=_free_port(),
    )
    for path in (settings.data_path, settings.gallery_path):
        path.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        service = app[CORE].service
        await service.set_paused(True)
        empty = await _cold_start(url, rounds)
        say(f"tui: cold start (empty queue) {[f'{t:.2f}' for t in empty]} s")
        params = [
            GenerationParams(prompt=f"a lighthouse at dusk, variation {n}", steps=20)
            for n in range(jobs)
        ]
        await service.submit(params, source="api")
        full = await _cold_start(url, rounds)
        say(f"tui: cold start ({jobs} jobs) {[f'{t:.2f}' for t in full]} s")
        loaded, walls, cpus = await _load_and_scroll(url, jobs)
        pages = len(walls)
        per_page = median(walls)
        say(
            f"tui: {jobs} jobs loaded in {loaded:.2f} s; {pages} pages, median "
            f"{ms(per_page)} (p90 {ms(percentile(walls, 90))}, CPU {ms(median(cpus))}) each"
        )
    finally:
        await runner.cleanup()
    start = median(empty)
    return [
        Row(
            "tui: cold start to first screen",
            f"{start:.2f} s",
            f"< {START_AIM:.0f} s",
            ok=start < START_AIM,
        ),
        Row(
            f"tui: cold start with {jobs:,} jobs queued",
            f"{median(full):.2f} s",
            f"≤ {FULL_START_AIM:.0f} s",
            ok=median(full) <= FULL_START_AIM,
        ),
        Row(
            f"tui: load {jobs:,} jobs into the queue tab",
            f"{loaded:.2f} s",
            f"< {LOAD_AIM:.0f} s",
            ok=loaded < LOAD_AIM,
        ),
        Row(
            f"tui: page-down through {jobs:,} jobs ({pages} pages), median",
            f"{ms(per_page)} / page",
            f"≤ {PAGE_AIM * 1000:.0f} ms",
            ok=per_page <= PAGE_AIM,
        ),
    ]
