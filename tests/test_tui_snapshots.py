"""SVG snapshots of every tab at 100x32 and at 80x24 (a small SSH window), from fixed data.

The app is built by the same factory as the CLI, with a fake core (tests/helpers/tui_fakes.py), a
fixed clock, no animations, no cursor blink and forced half-block images. Review the SVGs before
accepting a change: `./dev test tests/test_tui_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

from typing import Any

import pytest

from .helpers.tui_fakes import FakeApi, fake_app, settle

SIZES = [(100, 32), (80, 24)]
TABS = ["generator", "queue", "gallery", "servers"]


@pytest.fixture(autouse=True)
def _no_blink(monkeypatch: pytest.MonkeyPatch) -> None:
    from textual.widgets import Input, TextArea

    monkeypatch.setattr(Input, "cursor_blink", False, raising=False)
    monkeypatch.setattr(TextArea, "cursor_blink", False, raising=False)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("tab", TABS)
def test_tab(snap_compare: Any, tab: str, size: tuple[int, int]) -> None:
    assert snap_compare(fake_app(tab), terminal_size=size, run_before=settle)


def test_field_error_next_to_its_field(snap_compare: Any) -> None:
    """A 422 from the core puts each message under its field (here: steps and width)."""
    api = FakeApi()
    api.fail_submit = [
        {"path": "generation_params.steps", "message": "must be at most 150 (found 500)"},
        {"path": "generation_params.width", "message": "must be a multiple of 8 (nearest: 512)"},
    ]

    async def run_before(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("f", "o", "x", "ctrl+s")
        await settle(pilot)

    assert snap_compare(fake_app("generator", api), terminal_size=(80, 24), run_before=run_before)


def test_image_preview(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(fake_app("gallery"), terminal_size=(100, 32), run_before=run_before)
