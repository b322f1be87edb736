"""Run in a fresh process by bench/tui_start.py: time from interpreter start to the TUI's first
screen with the core's data on it (imports, app build, first load over HTTP, first paint).

Headless (Textual's test driver): the same work as in a terminal, minus the terminal's own
drawing, which depends on the terminal emulator rather than on us.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: they are part of a cold start

import asyncio  # noqa: E402
import sys  # noqa: E402


async def main(url: str, token: str) -> None:
    from mobilesd_tui.api_client import CoreClient
    from mobilesd_tui.app import make_app
    from mobilesd_tui.thumbs import halfcell_widget

    app = make_app(
        CoreClient(url, token), image_widget=halfcell_widget(), animations=False, age_refresh=None
    )
    async with app.run_test(size=(100, 32)) as pilot:
        while not app.loaded:
            await pilot.pause(0.005)
        await pilot.pause()  # the frame with the data on it
        print(f"{time.perf_counter() - STARTED:.4f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
