"""The phone's generator form carries every GenerationParams field (issue 19 items 7 and 8), and
its queue shows the live preview, the job id, why a job waits, a status filter and pause/resume
(items 6 and 8). Real Chromium on a phone viewport, a real core, simulated Forge servers."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

from PIL import Image
from playwright.async_api import expect

from mobilesd_core.forge.simulator import SimulatorConfig

from .conftest import Harness, wait_for
from .helpers.browser import Phone, browser, phone

__all__ = ["browser", "phone"]  # fixtures, from tests/helpers/browser.py


def _tiny_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# Varied parameter sets: every field the form shows in a folded section, and fields it does not
# show at all (refiner, extra, the units' hidden fields, a control image).
PARAM_SETS: list[dict[str, Any]] = [
    {
        "prompt": "a lighthouse, hires",
        "seed": 77,
        "hires": {"upscaler": "Latent", "scale": 1.5, "steps": 3, "denoising_strength": 0.55},
        "styles": ["watercolor", "cinematic"],
        "clip_skip": 2,
        "batch_size": 2,
        "n_iter": 2,
        "loras": [{"name": "film_grain", "weight": 0.6}],
    },
    {
        "prompt": "a heron, variations",
        "seed": 1234,
        "subseed": 999,
        "subseed_strength": 0.35,
        "distilled_cfg_scale": 3.5,
        "cfg_scale": 1.0,
        "modules": ["ae.safetensors", "clip_l.safetensors"],
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "extra": {"tiling": False, "override_settings": {"eta_noise_seed_delta": 31337}},
    },
    {
        "prompt": "a portrait, detailers",
        "negative_prompt": "blurry",
        "seed": 5,
        "checkpoint_name": "sdxl/juggernautXL_v9.safetensors",
        "refiner_checkpoint": "sd15/dreamshaper_8.safetensors",
        "refiner_switch_at": 0.8,
        "adetailer": [
            {"model": "face_yolov8n.pt", "prompt": "detailed face", "confidence": 0.4},
            {"model": "face_yolov8s.pt", "mask_blur": 9, "inpaint_only_masked": False},
        ],
        "controlnet": [
            {
                "module": "canny",
                "model": "control_v11p_sd15_canny [d14c016b]",
                "weight": 0.8,
                "guidance_end": 0.7,
                "image": _tiny_png(),
                "pixel_perfect": True,
            }
        ],
    },
]


async def _submit(harness: Harness, params: dict[str, Any]) -> dict[str, Any]:
    body = {"generation_params": {"steps": 2, "width": 64, "height": 64, **params}}
    response = await harness.api.post("/api/v1/generate", json=body)
    assert response.status_code == 202, response.text
    return await harness.wait_status(response.json()["mobilesd_job_id"], "completed")


async def test_use_these_settings_sends_the_same_generation_params(
    harness: Harness, phone: Phone
) -> None:
    """Gallery image -> "Use these settings" -> Add to queue: the new job's generation_params
    are the original's, field for field."""
    await harness.add_sim("gpu1", SimulatorConfig(step_ms=2, switch_ms=5, adetailer=True))
    originals = [await _submit(harness, params) for params in PARAM_SETS]
    page = phone.page
    await phone.login()
    for original in originals:
        await phone.tab("gallery")
        name = original["result_details"]["images"][-1]
        await page.locator(f'#gallery-grid li[data-name="{name}"] button').click()
        await page.get_by_role("button", name="Use these settings").click()
        await expect(page.locator("#f-prompt")).to_have_value(
            original["generation_params"]["prompt"]
        )
        before = {
            j["mobilesd_job_id"]
            for j in (await harness.api.get("/api/v1/queue/jobs")).json()["jobs"]
        }
        await page.locator("#gen-submit").click()
        await expect(page.locator("#gen-ok")).to_contain_text("Added to the queue")
        jobs = (await harness.api.get("/api/v1/queue/jobs")).json()["jobs"]
        (rerun,) = [j for j in jobs if j["mobilesd_job_id"] not in before]
        assert rerun["generation_params"] == original["generation_params"]
    # What the form has no field for is said, not hidden.
    await expect(page.locator("#gen-carried")).to_contain_text("+ 2 more settings")
    phone.assert_clean()


async def test_running_card_shows_the_live_preview_without_downloading_it_twice(
    harness: Harness, phone: Phone
) -> None:
    # A new preview every 20 steps of 30 ms; progress events come about 4 times a second, so
    # most of them find the preview unchanged.
    await harness.add_sim(
        "gpu1", SimulatorConfig(step_ms=30, switch_ms=20, preview_every_n_steps=20, name="gpu1")
    )
    page = phone.page
    answers: list[tuple[int, str]] = []
    page.on(
        "response",
        lambda r: (
            answers.append((r.status, r.headers.get("etag", "")))
            if r.url.endswith("/preview")
            else None
        ),
    )
    await phone.login()
    await phone.tab("queue")
    job_id = await harness.submit(prompt="a koi pond, previewed", steps=150)
    card = phone.card("a koi pond, previewed")
    await expect(card.locator(".pill")).to_have_text("processing")
    await expect(card.locator("img.preview")).to_be_visible()
    await expect(card.locator("img.preview")).to_have_attribute("src", re.compile(r"^blob:"))

    def seen(status: int) -> int:
        return sum(1 for s, _ in answers if s == status)

    await wait_for(lambda: seen(304) >= 1 and seen(200) >= 2, what="a 304 and a new preview")
    downloaded = [etag for status, etag in answers if status == 200]
    assert len(downloaded) == len(set(downloaded)), answers  # no bytes fetched twice
    await page.wait_for_function(
        "() => document.querySelector('.job[data-status=processing] img.preview').naturalWidth > 0"
    )
    await harness.api.post(f"/api/v1/queue/jobs/{job_id}/cancel")
    await expect(card.locator(".pill")).to_have_text("cancelled")
    await expect(card.locator("img.preview")).to_be_hidden()
    phone.assert_clean()


async def test_queue_shows_job_id_waiting_reason_filter_and_pause(
    harness: Harness, phone: Phone
) -> None:
    await harness.add_sim("gpu1")
    done = await harness.submit(prompt="a finished fox")
    await harness.wait_status(done, "completed")
    page = phone.page
    await phone.login()
    await phone.tab("queue")
    await page.get_by_role("button", name="Pause queue").click()
    await expect(page.locator("#queue-pause")).to_have_text("Resume queue")
    await expect(page.locator("#queue-counts")).to_contain_text("paused")
    assert (await harness.api.get("/api/v1/queue")).json()["paused"] is True
    waiting = await harness.submit(prompt="a waiting heron")
    heron = phone.card("a waiting heron")
    await expect(heron.locator(".pill")).to_have_text("pending")
    await expect(heron.locator(".detail")).to_have_text("queue paused")
    await expect(heron.locator(".jid")).to_have_text(waiting[-8:])
    await expect(heron.locator(".jid")).to_have_attribute("title", waiting)

    await page.locator("#queue-filter").select_option("pending")
    await expect(page.locator("#queue-list .job")).to_have_count(1)
    await expect(phone.card("a finished fox")).to_have_count(0)
    await page.locator("#queue-filter").select_option("completed")
    await expect(page.locator("#queue-list .job")).to_have_count(1)
    await expect(phone.card("a finished fox")).to_have_count(1)
    await page.locator("#queue-filter").select_option("")
    await expect(page.locator("#queue-list .job")).to_have_count(2)
    no_overflow = "() => document.documentElement.scrollWidth <= window.innerWidth"
    assert await page.evaluate(no_overflow)

    await page.get_by_role("button", name="Resume queue").click()
    await expect(page.locator("#queue-pause")).to_have_text("Pause queue")
    await expect(heron.locator(".pill")).to_have_text("completed")
    assert (await harness.api.get("/api/v1/queue")).json()["paused"] is False
    phone.assert_clean()


async def test_folded_sections_set_what_the_api_can_and_errors_sit_at_their_field(
    harness: Harness, phone: Phone
) -> None:
    """The first screen stays simple (every advanced section folded); unfolded, they set hires,
    clip skip, batch size, variation seed, distilled CFG, styles, modules and ADetailer passes
    from the server's lists, a 422 opens the fold of its field, and nothing overflows 360 px."""
    await harness.add_sim("gpu1", SimulatorConfig(step_ms=2, switch_ms=5, adetailer=True))
    page = phone.page
    await phone.login()
    folds = page.locator("#gen-form details.fold")
    await expect(folds).to_have_count(4)
    for i in range(4):
        await expect(folds.nth(i)).not_to_have_attribute("open", "")
    await expect(page.locator("#f-batch_size")).to_be_hidden()
    await expect(page.locator("#f-styles-add option")).to_have_count(3)  # from gpu1's lists

    await page.locator("#f-prompt").fill("a harbour, every advanced field")
    for i in range(4):
        await folds.nth(i).locator("summary").click()
    await page.locator("#f-batch_size").fill("2")
    await page.locator("#f-clip_skip").fill("20")  # out of range: refused at its field
    await page.locator("#f-distilled_cfg_scale").fill("3.5")
    await page.locator("#f-subseed").fill("42")
    await page.locator("#f-subseed_strength").fill("0.25")
    await page.locator("#f-styles-add").select_option("cinematic")
    await page.locator("#f-modules-add").select_option("ae.safetensors")
    await page.locator("#f-hires").check()
    await page.locator("#f-hr-scale").fill("1.5")
    await page.locator("#f-hr-steps").fill("2")
    await page.locator("#adetailer-add").click()
    unit = page.locator("#adetailer-list .unit")
    await expect(unit.locator("select")).to_have_value("face_yolov8n.pt")
    await unit.get_by_label("Prompt").fill("sharp eyes")
    no_overflow = "() => document.documentElement.scrollWidth <= window.innerWidth"
    assert await page.evaluate(no_overflow)

    await folds.nth(0).locator("summary").click()  # folded again: the error must still show
    await page.locator("#gen-submit").click()
    clip_error = page.locator('.err[data-for="clip_skip"]')
    await expect(clip_error).to_contain_text("less than or equal to 12")
    await expect(page.locator("#f-clip_skip")).to_be_visible()
    assert (await harness.api.get("/api/v1/queue/jobs")).json()["total"] == 0

    await page.locator("#f-clip_skip").fill("2")
    await page.locator("#gen-submit").click()
    await expect(page.locator("#gen-ok")).to_contain_text("Added to the queue (2 images)")
    params = (await harness.api.get("/api/v1/queue/jobs")).json()["jobs"][0]["generation_params"]
    assert (params["batch_size"], params["clip_skip"], params["distilled_cfg_scale"]) == (2, 2, 3.5)
    assert (params["subseed"], params["subseed_strength"]) == (42, 0.25)
    assert (params["styles"], params["modules"]) == (["cinematic"], ["ae.safetensors"])
    assert params["hires"] == {
        "upscaler": "Latent",
        "scale": 1.5,
        "steps": 2,
        "denoising_strength": 0.7,
    }
    assert params["adetailer"][0]["model"] == "face_yolov8n.pt"
    assert params["adetailer"][0]["prompt"] == "sharp eyes"
    phone.assert_clean()
