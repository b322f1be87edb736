"""The Generator form loses nothing (issue 19, item 7) and sets what the API can (item 8).

A property test over the one schema (mobilesd_core.schema.GenerationParams): arbitrary valid
params, loaded the way the gallery's `g`, the Civitai import and editing load them, come back
from the form as the same params; a field the user changes comes back as typed, and only it.
First on the form's data functions (fast, many examples), then through the real widgets, then
end to end: a finished job's gallery image, `g`, ctrl+s, against a real core and simulator.
"""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from textual.app import App, ComposeResult
from textual.widgets import Button, Collapsible, Input, Static

from mobilesd_core.forge.simulator import SimulatorConfig
from mobilesd_core.schema import GenerationParams
from mobilesd_tui.app import MobileSDApp
from mobilesd_tui.formdata import SHOWN, Loaded, from_form, to_form
from mobilesd_tui.widgets.gallery import Tile
from mobilesd_tui.widgets.generator import GeneratorPane

from .conftest import Harness, wait_for
from .helpers.schema_fuzz import SchemaStrategies
from .helpers.tui import harness, set_input, tui, until

__all__ = ["harness"]  # the fixture, from tests/helpers/tui.py

SCHEMA = GenerationParams.model_json_schema()
STRATEGIES = SchemaStrategies(SCHEMA.get("$defs", {}))
FAST = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def canonical(params: Any) -> dict[str, Any]:
    """What the core stores for `params` (it validates, then dumps as JSON)."""
    return GenerationParams.model_validate(params).model_dump(mode="json")


def _nudge(raw: dict[str, Any]) -> dict[str, Any]:
    """Fix what JSON Schema cannot say (multiples of 8, a non-blank prompt, pairs of fields), so
    most drawn examples are valid; the rest are rejected by `valid_params`."""
    out = dict(raw)
    out["prompt"] = "p" + str(out.get("prompt", ""))
    for key in ("width", "height"):
        if isinstance(out.get(key), int):
            out[key] = max(64, out[key] - out[key] % 8)
    if out.get("refiner_switch_at") is not None:
        out["refiner_checkpoint"] = out.get("refiner_checkpoint") or "refiner"
        if not 0 < out["refiner_switch_at"] < 1:
            out["refiner_switch_at"] = 0.5
    if isinstance(out.get("modules"), list):
        out["modules"] = list(
            dict.fromkeys(m.replace("/", "_").replace("\\", "_") + "m" for m in out["modules"])
        )
    for unit in out.get("controlnet") or []:
        unit["guidance_end"] = max(unit.get("guidance_end", 1.0), unit.get("guidance_start", 0.0))
        unit.setdefault("model", "cn-model")
        if unit["model"] == "None":
            unit["model"] = "cn-model"
    for unit in out.get("adetailer") or []:
        unit["model"] = "ad-" + str(unit.get("model", ""))
    for lora in out.get("loras") or []:
        lora["name"] = "l" + "".join(c for c in str(lora.get("name", "")) if c not in "<>:\n")
    return out


def _valid(raw: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return canonical(raw)
    except ValueError:  # pydantic's ValidationError is one
        return None


def valid_params() -> st.SearchStrategy[dict[str, Any]]:
    """Arbitrary valid GenerationParams, as the core stores them (the shape `g` loads)."""
    raw = STRATEGIES.for_schema(SCHEMA).map(_nudge).map(_valid)
    return raw.filter(lambda p: p is not None)  # type: ignore[return-value]


def loaded(params: dict[str, Any]) -> dict[str, Any]:
    """The form's data path: load `params`, change nothing, submit."""
    values = to_form(params)
    return from_form(values, Loaded(params=params, values=values))


# ---- the form's data functions -----------------------------------------------------------


@FAST
@given(valid_params())
def test_loaded_params_come_back_unchanged(params: dict[str, Any]) -> None:
    assert canonical(loaded(params)) == params


def _typeable(value: Any) -> bool:
    """A value a user can type back exactly: list items without commas or outer spaces, names
    without outer spaces (the form strips them)."""
    if isinstance(value, list):
        return all(isinstance(v, str) and v == v.strip() and "," not in v and v for v in value)
    if isinstance(value, dict):  # hires
        return value["upscaler"] == value["upscaler"].strip()
    if isinstance(value, str):
        return value == value.strip()
    return True


@FAST
@given(
    valid_params(), valid_params(), st.sampled_from(sorted(set(SHOWN) - {"prompt", "adetailer"}))
)
def test_a_changed_field_comes_back_as_typed_and_alone(
    params: dict[str, Any], other: dict[str, Any], name: str
) -> None:
    """The user types `other`'s value of one field into the form loaded with `params`: that
    field is parsed from the text (not carried), every other field stays as loaded."""
    wanted = {**params, name: other[name]}
    assume(_typeable(other[name]) and _valid(wanted) is not None)
    assume(to_form(other)[SHOWN[name][0]] != to_form(params)[SHOWN[name][0]] or name == "hires")
    values = to_form(params)
    before = dict(values)
    for key in SHOWN[name]:
        values[key] = to_form(other)[key]
    sent = from_form(values, Loaded(params=params, values=before))
    assert canonical(sent) == canonical(wanted)


def test_adetailer_shows_its_first_unit_and_keeps_the_rest() -> None:
    units = [
        {"model": "face_yolov8n.pt", "prompt": "a smile", "mask_blur": 9, "confidence": 0.5},
        {"model": "hand_yolov8n.pt"},
    ]
    params = canonical({"prompt": "p", "adetailer": units})
    values = to_form(params)
    assert (values["ad_model"], values["ad_prompt"], values["ad_confidence"]) == (
        "face_yolov8n.pt",
        "a smile",
        "0.5",
    )
    before = dict(values)
    values["ad_model"] = "mediapipe_face_full"
    values["ad_denoising_strength"] = "0.3"
    sent = canonical(from_form(values, Loaded(params=params, values=before)))
    first, second = params["adetailer"]
    assert sent["adetailer"] == [
        {**first, "model": "mediapipe_face_full", "denoising_strength": 0.3},
        second,
    ]
    values["ad_model"] = " "  # blank: ADetailer off
    assert from_form(values, Loaded(params=params, values=before))["adetailer"] is None
    # On a fresh form, typing a model adds one unit.
    fresh = to_form({})
    fresh["ad_model"] = "face_yolov8n.pt"
    assert canonical({**from_form(fresh), "prompt": "p"})["adetailer"] == [
        canonical({"prompt": "p", "adetailer": [{"model": "face_yolov8n.pt"}]})["adetailer"][0]
    ]


# ---- through the real widgets ------------------------------------------------------------


class FormApp(App[None]):
    def compose(self) -> ComposeResult:
        yield GeneratorPane()


async def _through_widgets(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    app = FormApp()
    out = []
    async with app.run_test(size=(100, 40)) as pilot:
        pane = app.query_one(GeneratorPane)
        for params in batch:
            pane.load(params)
            await pilot.pause()
            out.append(canonical(pane.params()))
    return out


@settings(max_examples=4, deadline=None, derandomize=True)
@given(st.lists(valid_params(), min_size=15, max_size=15))
def test_widgets_give_back_what_they_were_loaded_with(batch: list[dict[str, Any]]) -> None:
    assert asyncio.run(_through_widgets(batch)) == batch


# ---- end to end: gallery image, `g`, submit -----------------------------------------------


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


FULL = {
    "prompt": "a lighthouse at dusk",
    "negative_prompt": "blurry",
    "checkpoint_name": "sd15/dreamshaper_8",
    "loras": [{"name": "film_grain", "weight": 0.55}],
    "seed": 1234,
    "subseed": 77,
    "subseed_strength": 0.25,
    "width": 64,
    "height": 64,
    "steps": 4,
    "cfg_scale": 6.5,
    "distilled_cfg_scale": 3.5,
    "sampler_name": "Euler a",
    "batch_size": 2,
    "n_iter": 1,
    "styles": ["cinematic"],
    "clip_skip": 2,
    "hires": {"upscaler": "Latent", "scale": 1.5, "steps": 2, "denoising_strength": 0.45},
    "modules": ["ae.safetensors"],
    "adetailer": [{"model": "face_yolov8n.pt", "prompt": "a smiling face"}],
    "controlnet": [
        {"module": "canny", "model": "control_v11p_sd15_canny [d14c016b]", "image": png_b64()}
    ],
    "extra": {"s_noise": 1.0},
}


async def finished_job(harness: Harness, params: dict[str, Any]) -> dict[str, Any]:
    """A job with every kind of field, run to completion on a simulator that has ADetailer."""
    await harness.add_sim(
        "det", SimulatorConfig(step_ms=2, switch_ms=5, name="det", adetailer=True)
    )
    await wait_for(
        lambda: harness.core.registry.runtimes["det"].catalog is not None, what="det's lists"
    )
    body = {"generation_params": params, "target_server_alias": "det"}
    response = await harness.api.post("/api/v1/generate", json=body)
    assert response.status_code == 202, response.text
    job = await harness.wait_status(response.json()["mobilesd_job_id"], "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    return job


async def reuse_image(pilot: Any, app: MobileSDApp, job: dict[str, Any], seed: int) -> None:
    """Focus the job's image with `seed` in the gallery and press `g`."""
    await until(pilot, lambda: app.loaded and app.connection == "online", "first load")
    await pilot.press("f3")
    tile = await until(
        pilot,
        lambda: next(
            (
                t
                for t in app.query(Tile)
                if t.entry["mobilesd_job_id"] == job["mobilesd_job_id"] and t.entry["seed"] == seed
            ),
            None,
        ),
        "the image in the gallery",
    )
    tile.focus()
    await pilot.press("g")
    await until(pilot, lambda: app.query_one("#tabs").active == "generator", "the generator")


async def new_job(pilot: Any, app: MobileSDApp, harness: Harness, old: str) -> dict[str, Any]:
    await pilot.press("ctrl+s")
    new_id = await until(
        pilot,
        lambda: next((i for i in app.queue.jobs if i != old), None),
        "the new job",
    )
    return await harness.job(new_id)


async def test_gallery_image_reused_with_g_is_the_same_job(
    harness: Harness, tmp_path: Path
) -> None:
    job = await finished_job(harness, FULL)
    app = tui(harness, tmp_path, tab="gallery")
    async with app.run_test(size=(80, 24)) as pilot:
        await reuse_image(pilot, app, job, seed=1234)
        more = app.query_one("#more-settings", Static)
        assert app.query_one("#more-line").display
        assert "2 more settings" in str(more.render())
        assert all(name in str(more.render()) for name in ("controlnet", "extra"))
        again = await new_job(pilot, app, harness, job["mobilesd_job_id"])
    assert again["generation_params"] == job["generation_params"]
    assert again["target_server_alias"] == "det"


async def test_the_second_image_brings_its_own_seed_and_folded_fields_edit(
    harness: Harness, tmp_path: Path
) -> None:
    """The batch's second image (seed 1235: no variation strength, so Forge counts the seed up
    per image); the hires scale changed in its folded section: the new job differs in exactly
    those two."""
    job = await finished_job(harness, {**FULL, "subseed_strength": 0.0})
    app = tui(harness, tmp_path, tab="gallery")
    async with app.run_test(size=(80, 24)) as pilot:
        await reuse_image(pilot, app, job, seed=1235)
        section = app.query_one("#sec-hires", Collapsible)
        assert section.collapsed
        section.collapsed = False
        scale = app.query_one("#hr_scale", Input)
        await until(pilot, lambda: scale.region.height, "the unfolded section")
        scale.scroll_visible(animate=False, immediate=True)
        await until(pilot, lambda: app.screen.region.contains_region(scale.region), "in view")
        await set_input(pilot, "#hr_scale", "2")
        again = await new_job(pilot, app, harness, job["mobilesd_job_id"])
    expected = dict(job["generation_params"])
    expected["seed"] = 1235
    expected["hires"] = {**expected["hires"], "scale": 2.0}
    assert again["generation_params"] == expected


async def test_carried_settings_can_be_dropped(harness: Harness, tmp_path: Path) -> None:
    job = await finished_job(harness, FULL)
    app = tui(harness, tmp_path, tab="gallery")
    async with app.run_test(size=(100, 40)) as pilot:
        await reuse_image(pilot, app, job, seed=1234)
        app.query_one("#drop-more", Button).press()
        await until(pilot, lambda: not app.query_one("#more-line").display, "the line to go")
        again = await new_job(pilot, app, harness, job["mobilesd_job_id"])
    expected = {**job["generation_params"], "controlnet": None, "extra": {}}
    assert again["generation_params"] == expected


async def test_an_error_in_a_folded_field_unfolds_it_next_to_the_field(
    harness: Harness, tmp_path: Path
) -> None:
    app = tui(harness, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "first load")
        app.query_one("#prompt").text = "a fox"  # type: ignore[attr-defined]
        app.query_one("#clip_skip", Input).value = "13"
        app.query_one("#styles", Input).value = "cinematik"
        await pilot.press("ctrl+s")
        error = app.query_one("#err-clip_skip", Static)
        await until(pilot, lambda: error.has_class("shown"), "the clip skip error")
        assert "12" in str(error.render())
        assert not app.query_one("#sec-model", Collapsible).collapsed
        assert app.focused is app.query_one("#clip_skip")
        assert harness.core.store.count()["pending"] == 0


async def test_adetailer_refused_by_the_core_shows_in_its_section(
    harness: Harness, tmp_path: Path
) -> None:
    """gpu1 has no ADetailer: the core's 422 names `adetailer`, shown in its unfolded section."""
    await wait_for(
        lambda: harness.core.registry.runtimes["gpu1"].catalog is not None, what="gpu1's lists"
    )
    app = tui(harness, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "first load")
        app.query_one("#prompt").text = "a fox"  # type: ignore[attr-defined]
        app.query_one("#ad_model", Input).value = "face_yolov8n.pt"
        await pilot.press("ctrl+s")
        error = app.query_one("#err-adetailer", Static)
        await until(pilot, lambda: error.has_class("shown"), "the ADetailer error")
        assert "ADetailer" in str(error.render())
        assert not app.query_one("#sec-adetailer", Collapsible).collapsed
        assert harness.core.store.count()["pending"] == 0
