"""The phone page in real headless Chromium (Debian's `chromium`), driven by Playwright.

A real core on loopback with simulated Forge servers, a 360×740 phone viewport, nothing mocked.
Waiting is Playwright's auto-wait (`expect`, `wait_for_function`), never a fixed sleep. The run
saves a screenshot of each view to docs/screenshots/.
"""

from __future__ import annotations

import gzip
import re

import httpx
import pytest
from playwright.async_api import expect

from mobilesd_core.api import routes_page
from mobilesd_core.forge.simulator import SimServer, SimulatorConfig

from .conftest import TOKEN, Harness
from .helpers.browser import Phone, browser, phone

__all__ = ["browser", "phone"]  # fixtures, from tests/helpers/browser.py

XSS = "<img src=x onerror=alert(1)>"


async def slow_sim(harness: Harness, alias: str = "gpu1") -> SimServer:
    return await harness.add_sim(alias, SimulatorConfig(step_ms=30, switch_ms=60, name=alias))


async def test_phone_flow(harness: Harness, phone: Phone) -> None:
    """Log in by link, queue, watch it run live, gallery, cancel, delete, servers."""
    await slow_sim(harness)
    # A few finished images so the gallery has something to show besides ours.
    for prompt, seed in [("a blue heron at dawn", 7), ("a lighthouse, oil painting", 8)]:
        await harness.wait_status(
            await harness.submit(prompt=prompt, seed=seed, width=256, height=256), "completed"
        )
    page = phone.page

    await phone.login()
    assert TOKEN not in page.url
    await page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    # Generate: the pickers come from gpu1's model list.
    await expect(page.locator("#f-checkpoint_name option")).to_have_count(4)
    await expect(page.locator("#f-sampler_name")).to_have_value("Euler")
    await page.locator("#f-prompt").fill("a red fox in fresh snow, golden hour")
    await page.locator("#f-negative_prompt").fill("blurry, watermark")
    await page.locator("#f-checkpoint_name").select_option(
        label="sdxl/juggernautXL_v9", timeout=5000
    )
    await page.locator("#f-lora-add").select_option("add_detail")
    await expect(page.locator(".lora-name")).to_have_text("add_detail")
    await page.locator("#f-size").select_option("512x768")
    await expect(page.locator("#f-width")).to_have_value("512")
    await expect(page.locator("#f-height")).to_have_value("768")
    await page.locator("#f-steps").fill("30")
    await page.locator("#f-n_iter").fill("2")
    await page.locator("#f-seed").fill("1234")
    await page.evaluate("() => window.scrollTo(0, 0)")
    await phone.screenshot("generate")
    await page.locator("#gen-submit").click()
    await expect(page.locator("#gen-ok")).to_contain_text("Added to the queue")

    # Queue: it runs and completes live, without a reload.
    await phone.tab("queue")
    fox = phone.card("a red fox in fresh snow")
    await expect(fox.locator(".pill")).to_have_text("processing", timeout=10_000)
    await page.wait_for_function(
        """() => {
            const card = [...document.querySelectorAll('#queue-list .job')]
                .find(c => c.textContent.includes('a red fox'));
            const f = card && Number(card.dataset.fraction);
            const bar = card && card.querySelector('.fill');
            return f > 0 && f < 1 && bar && parseFloat(bar.style.width) > 0;
        }""",
        polling="raf",
    )
    await expect(fox.locator(".pill")).to_have_text("completed", timeout=20_000)
    await expect(fox.locator(".thumbs img")).to_have_count(2)
    await expect(fox.locator(".detail")).to_have_text("Seed 1234")
    job = (await harness.api.get("/api/v1/queue/jobs?status=completed&q=fox")).json()["jobs"][0]
    assert job["source"] == "web"
    params = job["generation_params"]
    assert params["loras"] == [{"name": "add_detail", "weight": 1.0}]
    assert (params["width"], params["height"], params["steps"], params["n_iter"]) == (
        512,
        768,
        30,
        2,
    )
    assert params["checkpoint_name"].startswith("sdxl/juggernautXL_v9")

    # Cancel a running job; the next one starts and shows its progress.
    long = {"steps": 150, "n_iter": 20, "width": 512, "height": 512}
    await harness.submit(prompt="a castle on a cliff, long exposure", **long)
    await harness.submit(prompt="a koi pond in autumn rain", **long)
    await harness.submit(prompt="a street market at night, neon", **long)
    castle = phone.card("a castle on a cliff")
    await expect(castle.locator(".pill")).to_have_text("processing", timeout=10_000)
    await castle.get_by_role("button", name="Cancel").click()
    await expect(castle.locator(".pill")).to_have_text("cancelled")
    await expect(castle.locator(".detail")).to_have_text("cancelled by user")
    koi = phone.card("a koi pond")
    await expect(koi.locator(".pill")).to_have_text("processing", timeout=10_000)
    await page.wait_for_function(
        "() => Number(document.querySelector('.job[data-status=processing]')"
        "?.dataset.fraction) > 0.15",
        timeout=30_000,
    )
    await expect(phone.card("a street market").locator(".pill")).to_have_text("pending")
    await expect(page.locator("#queue-badge")).to_have_text("2")
    await phone.screenshot("queue")
    await page.locator("#view-queue").evaluate("() => window.scrollTo(0, 0)")

    # Gallery: newest first, full view with prompt and seed, delete with confirmation.
    await phone.tab("gallery")
    tiles = page.locator("#gallery-grid li")
    await expect(tiles).to_have_count(4)
    await expect(page.locator("#gallery-grid img").first).to_have_attribute(
        "src", re.compile(r"\?thumb=1$")
    )
    await phone.screenshot("gallery")
    await tiles.first.click()
    dialog = page.locator("#image-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator("#img-meta")).to_contain_text("a red fox in fresh snow")
    await expect(dialog.locator("#img-meta")).to_contain_text(re.compile(r"Seed\s*123[45]"))
    await expect(dialog.locator("#img-download")).to_have_attribute(
        "href", re.compile(r"^/gallery_files/.+\.png$")
    )
    await page.wait_for_function("() => document.querySelector('#img-full').naturalWidth > 0")
    await phone.screenshot("image")
    await dialog.get_by_role("button", name="Delete").click()
    confirm = page.locator("#confirm-dialog")
    await expect(confirm).to_be_visible()
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(confirm).to_be_hidden()
    await expect(tiles).to_have_count(4)  # cancelled: nothing deleted
    await dialog.get_by_role("button", name="Delete").click()
    await confirm.get_by_role("button", name="Delete").click()
    await expect(dialog).to_be_hidden()
    await expect(tiles).to_have_count(3)
    assert (await harness.api.get("/api/v1/gallery/images")).json()["total"] == 3

    # "Use these settings" refills Generate from the image's job.
    await tiles.first.click()
    await dialog.get_by_role("button", name="Use these settings").click()
    await expect(page.locator("#view-generate")).to_be_visible()
    await expect(page.locator("#f-prompt")).to_have_value("a red fox in fresh snow, golden hour")
    await expect(page.locator("#f-seed")).to_have_value(re.compile(r"^123[45]$"))
    await expect(page.locator("#f-height")).to_have_value("768")

    # Servers: status of each; add one through the form (a bad address is shown at its field).
    second = SimServer(SimulatorConfig(step_ms=30, switch_ms=60, name="gpu2"))
    await second.start()
    harness.sims["gpu2"] = second  # stopped by the harness
    await phone.tab("servers")
    await expect(page.locator('.server[data-alias="gpu1"] .dot.on')).to_be_visible()
    form = page.locator("#server-form")
    await form.locator("#s-alias").fill("gpu2")
    await form.locator("#s-api_url").fill("not a url")
    await form.get_by_role("button", name="Add server").click()
    await expect(form.locator('.err[data-for="api_url"]')).not_to_be_empty()
    await form.locator("#s-api_url").fill(second.url)
    await form.locator("#s-password").fill("hunter2")
    await form.locator("#s-username").fill("forge")
    await form.get_by_role("button", name="Add server").click()
    await expect(page.locator('.server[data-alias="gpu2"] .dot.on')).to_be_visible()
    await expect(page.locator('.server[data-alias="gpu2"]')).to_contain_text("password set")
    await page.locator('.server[data-alias="gpu2"]').get_by_role("button", name="Edit").click()
    await expect(form.locator("#s-password")).to_have_value("")  # never prefilled
    await expect(form.locator("#s-password-hint")).to_contain_text("password is set")
    # Another address without the password typed again: refused at the password field.
    await form.locator("#s-api_url").fill("http://127.0.0.1:9")
    await form.get_by_role("button", name="Save").click()
    await expect(form.locator('.err[data-for="password"]')).to_contain_text("re-enter")
    await form.locator("#s-api_url").fill(second.url)
    # Model sync folders: a relative path is refused at its field, even with the section folded.
    sync = form.locator("#s-sync")
    await sync.locator("summary").click()
    await form.locator("#s-checkpoint_dir").fill("models/Stable-diffusion")
    await sync.locator("summary").click()  # folded again before saving
    await form.get_by_role("button", name="Save").click()
    await expect(form.locator('.err[data-for="checkpoint_dir"]')).to_contain_text("absolute path")
    await expect(form.locator("#s-checkpoint_dir")).to_be_visible()  # unfolded to show it
    folder = harness.settings.data_path.parent / "forge2-models"
    folder.mkdir()
    await form.locator("#s-checkpoint_dir").fill(str(folder))
    await form.locator("#s-sync_cap_gb").fill("50")
    await form.get_by_role("button", name="Save").click()
    card = page.locator('.server[data-alias="gpu2"]')
    await expect(card).to_contain_text("Model sync: checkpoints, up to 50 GB")
    stored = (await harness.api.get("/api/v1/servers/gpu2")).json()
    assert (stored["checkpoint_dir"], stored["lora_dir"], stored["sync_cap_gb"]) == (
        str(folder),
        None,
        50,
    )
    assert stored["has_password"]  # the edit kept the password it did not show
    await card.get_by_role("button", name="Edit").click()
    await expect(form.locator("#s-checkpoint_dir")).to_have_value(str(folder))
    await form.get_by_role("button", name="Cancel").click()
    await page.evaluate("() => window.scrollTo(0, 0)")
    await phone.screenshot("servers")

    assert await page.evaluate("window.__sameDocument") is True
    phone.assert_clean()


@pytest.mark.parametrize("phone", ["light"], indirect=True)
async def test_user_text_is_text_and_errors_sit_at_their_field(
    harness: Harness, phone: Phone
) -> None:
    await harness.add_sim("gpu1")
    page = phone.page
    await phone.login()

    # A 422 lands next to the field that caused it.
    await page.locator("#f-prompt").fill("a quiet harbour")
    await page.locator("#f-steps").fill("0")
    await page.locator("#gen-submit").click()
    steps_error = page.locator('.err[data-for="steps"]')
    await expect(steps_error).to_contain_text("greater than or equal to 1")
    await expect(page.locator("#f-steps")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator('.err[data-for="prompt"]')).to_be_empty()
    assert (await harness.api.get("/api/v1/queue/jobs")).json()["total"] == 0

    # Markup in a prompt is shown as the literal text, everywhere.
    await page.locator("#f-steps").fill("4")
    await page.locator("#f-prompt").fill(XSS)
    await page.locator("#f-negative_prompt").fill("<b>bold</b>")
    await page.locator("#gen-submit").click()
    await expect(steps_error).to_be_empty()
    await expect(page.locator("#gen-ok")).to_contain_text("Added")
    await phone.tab("queue")
    card = phone.card(XSS)
    await expect(card.locator(".prompt")).to_have_text(XSS)
    await expect(card.locator(".pill")).to_have_text("completed")
    await phone.tab("gallery")
    await page.locator("#gallery-grid li").first.click()
    meta = page.locator("#img-meta")
    await expect(meta).to_contain_text(XSS)
    await expect(meta).to_contain_text("<b>bold</b>")
    assert await page.locator("img[src='x'], main b, dialog b").count() == 0
    await page.locator("#img-close").click()
    await phone.tab("queue")
    await phone.screenshot("queue-light")
    phone.assert_clean()  # no alert, no script error


async def test_signed_out_page_offers_sign_in(harness: Harness, phone: Phone) -> None:
    page = phone.page
    await page.goto(phone.base + "/")
    await expect(page.locator("#view-login")).to_be_visible()
    await expect(page.locator("#tabs")).to_be_hidden()
    await page.locator('input[name="token"]').fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#view-generate")).to_be_visible()
    await expect(page.locator("#live")).to_have_text("live")


async def test_sign_out_and_sign_out_everywhere(harness: Harness, phone: Phone) -> None:
    """Issue 15 item 13: the session cookie is revocable. The Servers view shows how many
    browsers are signed in; "Sign out" ends this one, "Sign out everywhere" all of them."""
    page = phone.page
    await phone.login()
    async with httpx.AsyncClient(base_url=phone.base) as laptop:
        signed_in = await laptop.get("/login", params={"token": TOKEN})
        assert signed_in.status_code == 303
        await phone.tab("servers")
        await expect(page.locator("#sessions-text")).to_have_text(
            "This browser and 1 other are signed in."
        )
        await page.get_by_role("button", name="Sign out everywhere").click()
        await page.locator("#confirm-yes").click()
        await expect(page.locator("#view-login")).to_be_visible()
        assert (await laptop.get("/api/v1/servers")).status_code == 401

    await phone.login()
    await phone.tab("servers")
    await expect(page.locator("#sessions-text")).to_have_text("Only this browser is signed in.")
    await page.get_by_role("button", name="Sign out", exact=True).click()
    await expect(page.locator("#view-login")).to_be_visible()
    assert (await harness.api.get("/api/v1/sessions")).json() == {"sessions": []}
    await page.reload()
    await expect(page.locator("#view-login")).to_be_visible()  # the cookie is gone for good
    phone.assert_clean()


async def test_batch_link_from_a_notice_shows_only_that_batch(
    harness: Harness, phone: Phone
) -> None:
    """`#gallery?jobs=<first>..<last>` (the link in a batch-finished notice) shows the images of
    those jobs only; "Show all images" goes back to the whole gallery."""
    await harness.add_sim("gpu1")
    ids = [await harness.submit(prompt=f"batch image {i}") for i in range(3)]
    for job_id in ids:
        await harness.wait_status(job_id, "completed")
    await phone.login()
    await phone.page.goto(f"{phone.base}/#gallery?jobs={ids[1]}..{ids[2]}")
    tiles = phone.page.locator("#gallery-grid li")
    await expect(tiles).to_have_count(2)
    await expect(phone.page.locator("#gallery-count")).to_have_text("Batch: 2 images")
    await expect(phone.page).to_have_url(re.compile(rf"#gallery\?jobs={ids[1]}\.\.{ids[2]}$"))
    await phone.page.locator("#gallery-all").click()
    await expect(tiles).to_have_count(3)
    await expect(phone.page.locator("#gallery-all")).to_be_hidden()
    await expect(phone.page).to_have_url(re.compile(r"#gallery$"))
    phone.assert_clean()


# -- the page's HTTP side (no browser) --------------------------------------------------------


async def test_page_routes_cache_and_compress(harness: Harness) -> None:
    async with httpx.AsyncClient(base_url=str(harness.api.base_url)) as client:
        index = await client.get("/", headers={"Accept-Encoding": "gzip"})
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert index.headers["content-encoding"] == "gzip"
        assert index.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in index.headers["content-security-policy"]
        again = await client.get("/", headers={"If-None-Match": index.headers["etag"]})
        assert again.status_code == 304
        assets = re.findall(r'"(/static/[^"?]+\?v=[0-9a-f]+)"', index.text)
        assert {a.split("?")[0] for a in assets} >= {"/static/app.js", "/static/app.css"}
        for url in assets:
            asset = await client.get(url, headers={"Accept-Encoding": "gzip"})
            assert asset.status_code == 200
            assert "immutable" in asset.headers["cache-control"]
        plain = await client.get("/static/app.js")
        assert plain.headers["cache-control"] == "no-cache"
        assert plain.headers["content-type"].startswith("text/javascript")
        for bad in ("/static/routes_page.py", "/static/..%2Fapp.py", "/static/", "/static/x.js"):
            assert (await client.get(bad)).status_code == 404, bad


def test_first_load_is_small() -> None:
    """index.html + app.css + app.js, gzipped, stay under 60 KB."""
    total = sum(
        len(gzip.compress((routes_page.STATIC_DIR / name).read_bytes(), 9))
        for name in ("index.html", "app.css", "app.js", "icon.svg")
    )
    assert total < 60 * 1024, total


async def test_gallery_files_are_immutable(harness: Harness) -> None:
    await harness.add_sim("gpu1")
    await harness.wait_status(await harness.submit(), "completed")
    entry = (await harness.api.get("/api/v1/gallery/images")).json()["images"][0]
    for url in (entry["url"], entry["thumb_url"]):
        response = await harness.api.get(url)
        assert response.status_code == 200
        assert "immutable" in response.headers["cache-control"]
