"""The TUI gallery beyond its first page, against a real core (Pilot): older pages load at the
end of the grid, while images come and go on the core without the TUI hearing of it at once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from textual.widgets import Static

from mobilesd_core.schema import new_job_id
from mobilesd_tui.app import MobileSDApp
from mobilesd_tui.widgets.gallery import GalleryPane, Tile

from .conftest import Harness
from .helpers.tui import harness, tui, until
from .helpers.tui_fakes import picture

__all__ = ["harness"]  # the fixture, shared with test_tui_live

PAGE = 10


async def save_image(harness: Harness, seed: int) -> str:
    """One image straight into the core's gallery: no job run, and no event."""
    job = {
        "mobilesd_job_id": new_job_id(),
        "creation_timestamp": datetime.now(UTC).isoformat(),
        "generation_params": {"prompt": f"a paged image {seed}", "seed": seed},
    }
    (saved,) = await harness.core.gallery.save_job_images(
        job, [picture(seed, (32, 32))], {"seed": seed}, server_alias="gpu1"
    )
    return saved.filename


async def server_names(harness: Harness) -> list[str]:
    answer = (await harness.api.get("/api/v1/gallery/images", params={"limit": 1000})).json()
    assert answer["total"] == len(answer["images"])
    return [e["filename"] for e in answer["images"]]


def shown(app: MobileSDApp) -> list[str] | None:
    """The listed file names; None while tiles are still being mounted for them."""
    names = [e["filename"] for e in app.gallery.entries]
    assert len(names) == len(set(names)), "an image is listed twice"
    return names if [t.entry["filename"] for t in app.query(Tile)] == names else None


async def settled(pilot: Any, app: MobileSDApp) -> list[str]:
    return await until(pilot, lambda: shown(app), "a tile for each entry")


def summary(app: MobileSDApp) -> str:
    return str(app.query_one("#gallery-summary", Static).render())


async def test_older_pages_load_at_the_end_without_gaps_or_twins(
    harness: Harness, tmp_path: Path
) -> None:
    for seed in range(25):
        await save_image(harness, seed)
    original = await server_names(harness)
    app = tui(harness, tmp_path, tab="gallery", gallery_page=PAGE)
    async with app.run_test(size=(80, 24)) as pilot:
        gallery = app.query_one(GalleryPane)
        await until(pilot, lambda: app.loaded and app.connection == "online", "first load")
        await until(pilot, lambda: any(t.loaded for t in app.query(Tile)), "thumbnails")
        await until(pilot, lambda: isinstance(app.focused, Tile), "a focused tile")
        await pilot.pause()
        # The end of the first page is below the window: nothing more is asked for yet.
        assert await settled(pilot, app) == original[:PAGE]
        assert summary(app) == f"{PAGE} of 25 images, newest first; older ones load at the end"

        # Two shown images go before their events arrive: the core's list moves up by two, so a
        # page asked at offset 10 would pass over two images nobody has seen.
        gone = [await harness.core.gallery.delete_image(original[i]) for i in (3, 6)]
        await pilot.press("end")
        await until(pilot, lambda: len(gallery.entries) > PAGE, "the second page")
        listed = await settled(pilot, app)
        assert listed[: PAGE + 2] == original[: PAGE + 2]

        # Three new images before their events: the core's list moves down by three, so the
        # next page starts with images already shown.
        new = [await save_image(harness, seed) for seed in (100, 101, 102)]
        pages = 0
        while gallery.has_more:
            pages += 1
            assert pages < 10, "paging does not end"
            await pilot.press("end")
            # The core counts the three, so one last page may bring only images already shown.
            await until(pilot, lambda: not gallery._more_pending, "an older page")
        assert await settled(pilot, app) == original  # all, once each, in the core's order

        # The events arrive: new ones at the top, deleted ones go; still each image once.
        names = await server_names(harness)
        for name in reversed([n for n in names if n in new]):  # oldest first: newest on top
            harness.core.bus.publish("image", {"added": await harness.core.gallery.get_entry(name)})
        for entry in gone:
            harness.core.bus.publish("image", {"removed": entry})
        await until(pilot, lambda: shown(app) == names, "the gallery to match the core")
        assert summary(app) == f"{len(names)} images, newest first"
        assert not gallery.has_more


async def test_arrow_keys_move_past_the_first_page(harness: Harness, tmp_path: Path) -> None:
    """Down at the last row asks for the next page and lands the focus in it."""
    for seed in range(2 * PAGE):
        await save_image(harness, seed)
    original = await server_names(harness)
    app = tui(harness, tmp_path, tab="gallery", gallery_page=PAGE)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded and app.connection == "online", "first load")
        await until(pilot, lambda: isinstance(app.focused, Tile), "a focused tile")
        columns = app.gallery._columns()
        downs = PAGE // columns + 1  # the last one goes past the first page's last row
        for _ in range(downs):
            await pilot.press("down")
        target = original[downs * columns]
        await until(
            pilot,
            lambda: isinstance(app.focused, Tile) and app.focused.entry["filename"] == target,
            "the focus on a tile of the second page",
        )
        await until(pilot, lambda: shown(app) == original, "both pages")
        assert "newest first" in summary(app) and " of " not in summary(app)
