"""The TUI's Civitai import: paste a link, the Generator fills, a missing LoRA is downloaded;
and cancelling a download from the Servers tab.

A real core (loopback socket) is pointed at the fake Civitai; the app talks to the core only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.widgets import Input, Static

from fakes.civitai import FakeCivitaiServer, autov3, safetensors_bytes
from mobilesd_tui.screens.civitai_import import CivitaiImport, MissingModels
from mobilesd_tui.screens.confirm import Confirm

from .conftest import Harness
from .helpers.civitai import (
    REAL_META_TEMPLATE,
    civitai_fixture,  # noqa: F401 - fixture
    core_fixture,  # noqa: F401 - fixture
    download_view,
    start_download,
)
from .helpers.tui import tui, type_text, until


def _value(app: Any, selector: str) -> str:
    return app.query_one(selector, Input).value


async def test_paste_a_link_fill_the_form_and_download_what_is_missing(
    core: Harness, civitai: FakeCivitaiServer, tmp_path: Path
) -> None:
    fake = civitai.fake
    lora = safetensors_bytes(30_000, seed=5)
    fake.add_model("Inkwash", type="LORA", files=[("inkwash_v2.safetensors", lora)])
    meta = {
        **REAL_META_TEMPLATE,
        "prompt": "a lighthouse at dusk, [bold red]oil[/] painting <lora:inkwash_v2:0.8>",
        "hashes": {"lora:inkwash_v2": (autov3(lora) or "")[:12]},
    }
    meta.pop("Model hash", None)
    image_id = fake.add_image(meta)
    app = tui(core, tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.loaded, "first load")
        await pilot.press("f5")
        await until(pilot, lambda: isinstance(app.screen, CivitaiImport), "the import dialog")
        await type_text(pilot, "not a link")
        await pilot.press("enter")
        error = app.screen.query_one("#civitai-error", Static)
        await until(pilot, lambda: "link" in str(error.render()).lower(), "the link error")
        app.screen.query_one("#civitai-link", Input).value = ""
        await type_text(pilot, f"https://civitai.com/images/{image_id}")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, MissingModels), "the missing list")
        listed = " ".join(str(w.render()) for w in app.screen.query(Static))
        assert "Inkwash" in listed
        await pilot.press("d")
        await until(pilot, lambda: not isinstance(app.screen, MissingModels), "the dialog gone")
        # The form holds the image's settings; the prompt is text, never markup.
        prompt = app.query_one("#prompt").text  # type: ignore[attr-defined]
        assert prompt == "a lighthouse at dusk, [bold red]oil[/] painting"
        assert (_value(app, "#steps"), _value(app, "#width"), _value(app, "#height")) == (
            "30",
            "832",
            "1216",
        )
        # The download runs in the core; the Servers tab follows its events.
        await pilot.press("f4")
        panel = app.query_one("#downloads", Static)
        await until(
            pilot, lambda: "completed" in str(panel.render()), "the download to complete", 30
        )
        assert "inkwash_v2.safetensors" in str(panel.render())
    assert core.settings.lora_path is not None
    assert (core.settings.lora_path / "inkwash_v2.safetensors").read_bytes() == lora


def _marked(panel: Static) -> str:
    """The panel's line marked ▸ (the download `c` cancels), or ''."""
    lines = [line for line in str(panel.render()).splitlines() if line.startswith("▸")]
    return lines[0] if lines else ""


async def test_cancel_the_marked_download_in_the_servers_tab(
    core: Harness, civitai: FakeCivitaiServer, tmp_path: Path
) -> None:
    fake = civitai.fake
    names = ["first.safetensors", "second.safetensors"]
    ids = []
    app = tui(core, tmp_path, tab="servers")
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.loaded, "first load")
        for name in names:
            fake.add_fault("hold", path="/storage/", after_bytes=10_000)
            version = fake.add_model(name, files=[(name, safetensors_bytes(60_000))])
            ids.append(await start_download(core, model_version_id=version.id))
        panel = app.query_one("#downloads", Static)
        await until(
            pilot,
            lambda: str(panel.render()).count("downloading") == 2,
            "both downloads under way",
        )
        # One download is marked; d moves the mark to the other, c cancels it after a yes.
        marked = _marked(panel)
        other = next(n for n in names if n not in marked)
        await pilot.press("d")
        assert other in _marked(panel)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the confirmation")
        await pilot.press("y")
        await until(
            pilot,
            lambda: any(
                other in line and "cancelled" in line for line in str(panel.render()).splitlines()
            ),
            "the cancelled line",
        )
        cancelled = ids[names.index(other)]
        assert (await download_view(core, cancelled))["status"] == "cancelled"
        kept = ids[1 - names.index(other)]
        assert (await download_view(core, kept))["status"] == "downloading"
        fake.release_holds()
        await until(pilot, lambda: "completed" in str(panel.render()), "the other to complete")
        # Nothing left to cancel: c does nothing.
        await pilot.press("c")
        await pilot.pause()
        assert not isinstance(app.screen, Confirm)
    assert core.settings.lora_path is not None
    assert not (core.settings.lora_path / f"{other}.part").exists()
    assert not (core.settings.lora_path / other).exists()
