"""The phone page's queue power features in real Chromium: edit a pending job in the generator,
queue "every checkpoint" in one step, and see the batch on the cards."""

from __future__ import annotations

from playwright.async_api import expect

from .conftest import Harness
from .test_page_browser import Phone, browser, phone

__all__ = ["browser", "phone"]  # fixtures, shared with test_page_browser


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
