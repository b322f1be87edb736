"""The phone page in Debian's Chromium (Playwright): the browser and a phone-sized page."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright, expect

from ..conftest import TOKEN, Harness

# Assertions poll until this deadline: generous, so a loaded CI machine is slower, not red.
expect.set_options(timeout=15_000)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


PHONE = {"width": 360, "height": 740}


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            await browser.close()


class Phone:
    """A page on the phone viewport that records dialogs, script errors and CSP reports."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.dialogs: list[str] = []
        self.problems: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    def _console(self, message: Any) -> None:
        # An HTTP error answer (a 422 the page shows) is logged by Chromium too: not a problem.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.problems.append(f"console: {message.text}")

    async def login(self) -> None:
        await self.page.goto(f"{self.base}/login?token={TOKEN}")
        await expect(self.page).to_have_url(re.compile(r"/#generate$"))
        await expect(self.page.locator("#live")).to_have_text("live")

    async def tab(self, view: str) -> None:
        await self.page.locator(f'#tabs button[data-view="{view}"]').click()
        await expect(self.page.locator(f"#view-{view}")).to_be_visible()

    def card(self, text: str) -> Any:
        return self.page.locator("#queue-list .job").filter(has_text=text)

    async def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.evaluate("document.activeElement && document.activeElement.blur()")
        await self.page.screenshot(
            path=str(SCREENSHOTS / f"phone-{name}.png"), animations="disabled", caret="hide"
        )

    def assert_clean(self) -> None:
        assert self.dialogs == [], self.dialogs
        assert self.problems == [], self.problems


@pytest.fixture(params=["dark"])
async def phone(browser: Any, harness: Harness, request: Any) -> AsyncIterator[Phone]:
    context = await browser.new_context(
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        color_scheme=request.param,
    )
    page = await context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield Phone(page, str(harness.server.make_url("")).rstrip("/"))
    finally:
        await context.close()
