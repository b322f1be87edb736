"""The phone page's Civitai import in real headless Chromium: paste a link, the form fills, a
missing LoRA downloads with live progress, the job queues with the imported parameters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import expect

from fakes.civitai import FakeCivitaiServer, autov3, safetensors_bytes

from .conftest import Harness
from .helpers.browser import PHONE, Phone, browser  # noqa: F401 - fixtures
from .helpers.civitai import civitai_fixture, core_fixture  # noqa: F401 - fixtures


@pytest.fixture
async def phone(browser: Any, core: Harness) -> AsyncIterator[Phone]:  # noqa: F811
    context = await browser.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = await context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield Phone(page, str(core.server.make_url("")).rstrip("/"))
    finally:
        await context.close()


async def test_paste_a_civitai_link_and_the_form_fills(
    core: Harness, civitai: FakeCivitaiServer, phone: Phone
) -> None:
    fake = civitai.fake
    remote = safetensors_bytes(2_500_000, seed=21)
    fake.add_model("Ink Wash <b>Painting</b>", files=[("inkwash_v2.safetensors", remote)])
    image_id = fake.add_image(
        {
            "prompt": "a lighthouse at dusk, oil painting, <lora:inkwash_v2:0.8>",
            "negativePrompt": "blurry, text",
            "seed": "1234567890",
            "steps": "30",
            "cfgScale": "6.5",
            "sampler": "DPM++ 2M Karras",
            "clipSkip": "2",
            "Size": "832x1216",
            "hashes": {"lora:inkwash_v2": autov3(remote)[:12]},  # type: ignore[index]
        }
    )
    await core.add_sim("gpu1")
    page = phone.page
    await phone.login()

    await page.locator("#civitai-url").fill(f"https://civitai.com/images/{image_id}")
    await page.locator("#civitai-import").click()
    await expect(page.locator("#civitai-status")).to_contain_text(f"image {image_id} loaded")
    await expect(page.locator("#f-prompt")).to_have_value("a lighthouse at dusk, oil painting")
    await expect(page.locator("#f-negative_prompt")).to_have_value("blurry, text")
    await expect(page.locator("#f-steps")).to_have_value("30")
    await expect(page.locator("#f-cfg_scale")).to_have_value("6.5")
    await expect(page.locator("#f-seed")).to_have_value("1234567890")
    await expect(page.locator("#f-width")).to_have_value("832")
    await expect(page.locator("#f-height")).to_have_value("1216")
    await expect(page.locator("#f-sampler_name")).to_have_value("DPM++ 2M")
    await expect(page.locator("#f-scheduler")).to_have_value("Karras")
    await expect(page.locator(".lora-name")).to_have_text("inkwash_v2")
    await expect(page.locator("#civitai-kept")).to_contain_text("clip skip 2")

    # The missing LoRA: listed (its name as text, never as markup), downloaded live.
    missing = page.locator("#civitai-missing-list li")
    await expect(missing).to_have_count(1)
    await expect(missing.locator(".what")).to_contain_text("LoRA: Ink Wash <b>Painting</b>")
    await missing.get_by_role("button", name="Download").click()
    item = page.locator("#download-list li").first
    await expect(item).to_have_attribute("data-status", "completed")
    await expect(item.locator(".state")).to_have_text("done: inkwash_v2.safetensors")
    await expect(missing.get_by_role("button")).to_have_text("Downloaded")
    await page.evaluate("() => window.scrollTo(0, 0)")
    await phone.screenshot("civitai-import")

    await page.locator("#gen-submit").click()
    await expect(page.locator("#gen-ok")).to_contain_text("Added to the queue")
    jobs = (await core.api.get("/api/v1/queue/jobs")).json()["jobs"]
    params = jobs[0]["generation_params"]
    assert params["prompt"] == "a lighthouse at dusk, oil painting"
    assert params["loras"] == [{"name": "inkwash_v2", "weight": 0.8}]
    assert (params["sampler_name"], params["scheduler"], params["clip_skip"]) == (
        "DPM++ 2M",
        "Karras",
        2,
    )
    assert (params["width"], params["height"], params["seed"]) == (832, 1216, 1234567890)
    phone.assert_clean()


async def test_a_bad_link_says_what_is_wrong(core: Harness, phone: Phone) -> None:
    page = phone.page
    await phone.login()
    await page.locator("#civitai-url").fill("https://example.com/images/1")
    await page.locator("#civitai-import").click()
    await expect(page.locator("#civitai-error")).to_contain_text("not Civitai")
    phone.assert_clean()


async def test_cancel_a_running_download_from_the_list(
    core: Harness, civitai: FakeCivitaiServer, phone: Phone
) -> None:
    fake = civitai.fake
    version = fake.add_model("Slow", files=[("slow.safetensors", safetensors_bytes(3_000_000))])
    fake.add_fault("hold", path="/storage/", after_bytes=1_500_000)
    page = phone.page
    await phone.login()
    # Started elsewhere: the page learns of it from the event stream.
    response = await core.api.post(
        "/api/v1/civitai/download-model", json={"model_version_id": version.id}
    )
    download_id = response.json()["download_id"]
    item = page.locator(f'#download-list li[data-id="{download_id}"]')
    await expect(item).to_have_attribute("data-status", "downloading")
    await item.get_by_role("button", name="Cancel").click()
    await expect(item).to_have_attribute("data-status", "cancelled")
    await expect(item.get_by_role("button", name="Cancel")).to_have_count(0)
    listed = (await core.api.get("/api/v1/civitai/downloads")).json()["downloads"]
    assert [d["status"] for d in listed] == ["cancelled"]
    assert core.settings.lora_path is not None
    assert not (core.settings.lora_path / "slow.safetensors.part").exists()
    phone.assert_clean()
