"""The phone page's queue power features in real Chromium: edit a pending job in the generator,
queue "every checkpoint" in one step, and see the batch on the cards."""

from __future__ import annotations

import io
import zipfile

from playwright.async_api import expect

from .conftest import Harness
from .helpers.browser import Phone, browser, phone

__all__ = ["browser", "phone"]  # fixtures, from tests/helpers/browser.py


async def test_edit_a_pending_job_and_queue_every_checkpoint(
    harness: Harness, phone: Phone
) -> None:
    await harness.add_sim("gpu1")
    await harness.api.post("/api/v1/queue/pause")
    job_id = await harness.submit(prompt="a grey heron in reeds", steps=4)
    page = phone.page
    await phone.login()

    # Edit: the card's Edit opens the job in the generator; saving PATCHes it.
    await phone.tab("queue")
    heron = phone.card("a grey heron in reeds")
    await heron.get_by_role("button", name="Edit").click()
    await expect(page.locator("#view-generate")).to_be_visible()
    await expect(page.locator("#f-prompt")).to_have_value("a grey heron in reeds")
    await expect(page.locator("#gen-submit")).to_have_text("Save changes")
    await page.locator("#f-prompt").fill("a grey heron in reeds at dawn")
    await page.locator("#f-steps").fill("9")
    await page.locator("#gen-submit").click()
    await expect(page.locator("#gen-ok")).to_have_text("Changes saved.")
    await expect(page.locator("#gen-submit")).to_have_text("Add to queue")
    job = await harness.job(job_id)
    assert job["generation_params"]["prompt"] == "a grey heron in reeds at dawn"
    assert job["generation_params"]["steps"] == 9
    assert harness.core.store.count()["pending"] == 1  # edited, not added

    # Every checkpoint: one job per checkpoint of the server, one batch.
    models = (await harness.api.get("/api/v1/servers/gpu1/models")).json()
    titles = [c["title"] for c in models["checkpoints"]]
    await expect(page.locator("#f-checkpoint_name option")).to_have_count(len(titles) + 1)
    await page.locator("#f-prompt").fill("a lighthouse, every model")
    await page.locator("#f-steps").fill("4")
    await page.locator("#f-every-checkpoint").check()
    await page.locator("#gen-submit").click()
    await expect(page.locator("#gen-ok")).to_have_text(
        f"Added {len(titles)} jobs to the queue as one batch."
    )
    jobs = (await harness.api.get("/api/v1/queue/jobs", params={"q": "every model"})).json()["jobs"]
    assert sorted(j["generation_params"]["checkpoint_name"] for j in jobs) == sorted(titles)
    (batch,) = {j["batch_id"] for j in jobs}
    assert {j["source"] for j in jobs} == {"web"}

    # The cards show their batch.
    await phone.tab("queue")
    cards = page.locator(f'#queue-list .job[data-batch="{batch}"]')
    await expect(cards).to_have_count(len(titles))
    await expect(cards.first.locator(".job-meta")).to_contain_text(f"batch {batch[-4:]}")
    phone.assert_clean()


async def test_a_finished_batch_downloads_as_one_zip(harness: Harness, phone: Phone) -> None:
    """The batch's topmost completed card links its zip; the link, fetched by the page with its
    session cookie, brings every image of the batch and no other."""
    await harness.add_sim("gpu1")
    lone = await harness.submit(prompt="a lone gull")  # one image: its own Download is enough
    page = phone.page
    await phone.login()
    await phone.tab("queue")

    # Queued while the page is open: the link appears live, once images exist.
    answer = await harness.api.post(
        "/api/v1/generate",
        json={
            "generation_params": {
                "prompt": "a tide pool, {style}",
                "steps": 4,
                "width": 64,
                "height": 64,
            },
            "matrix": {"style": ["ink", "chalk", "oil"]},
        },
    )
    assert answer.status_code == 202, answer.text
    batch, ids = answer.json()["batch_id"], answer.json()["mobilesd_job_ids"]
    for job_id in ids:
        await harness.wait_status(job_id, "completed")
    cards = page.locator(f'#queue-list .job[data-batch="{batch}"]')
    await expect(cards).to_have_count(3)
    link = page.locator(f'#queue-list .job[data-batch="{batch}"] a.zip:visible')
    await expect(link).to_have_count(1)
    await expect(link).to_have_text("Zip · 3")
    await expect(link).to_have_accessible_name(f"Zip · 3 images of batch {batch[-4:]}")
    await expect(cards.first.locator("a.zip")).to_be_visible()  # on the group's top card
    await expect(link).to_have_attribute("download", f"mobilesd-{batch}.zip")
    lone_job = await harness.wait_status(lone, "completed")
    await expect(phone.card("a lone gull").locator("a.zip")).to_be_hidden()

    href = await link.get_attribute("href")
    assert href == f"/api/v1/gallery/archive?batch_id={batch}"
    fetched = await page.evaluate(
        """async (href) => {
            const r = await fetch(href);
            const bytes = new Uint8Array(await r.arrayBuffer());
            return { status: r.status, type: r.headers.get("content-type"),
                     bytes: Array.from(bytes) };
        }""",
        href,
    )
    assert fetched["status"] == 200
    assert fetched["type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(bytes(fetched["bytes"]))) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
    images = [n for job_id in ids for n in (await harness.job(job_id))["result_details"]["images"]]
    assert len(images) == 3
    assert sorted(n for n in names if n.endswith(".png")) == sorted(
        f"mobilesd-{batch}/{name}" for name in images
    )
    assert not any(lone_job["result_details"]["images"][0] in n for n in names)

    await page.evaluate("() => window.scrollTo(0, 0)")
    await phone.screenshot("queue-zip")
    phone.assert_clean()
