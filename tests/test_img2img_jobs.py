"""img2img, inpaint and upscale jobs (issue 19, items 1 and 2): uploads, gallery images and files
beside a job file, end to end over real HTTP against the Forge simulator; upload limits."""

from __future__ import annotations

import io
import json
import os
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, PngImagePlugin

from mobilesd_core.durable import TMP_PREFIX
from mobilesd_core.forge.infotext import parse_infotext
from mobilesd_core.forge.simulator import SimulatorConfig
from mobilesd_core.gallery import SOURCE_TEXT_KEY
from mobilesd_core.inbox.outcome import REPORT_SUFFIX
from mobilesd_core.uploads import MAX_UPLOAD_BYTES

from .conftest import Harness, fast_settings, start_harness, stop_harness, wait_for

UPSCALER = "R-ESRGAN 4x+"


def png(size: tuple[int, int] = (64, 64), colour: Any = (200, 30, 30), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")
    return out.getvalue()


def left_half_mask(size: tuple[int, int] = (64, 64)) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


def uploads_dir(h: Harness) -> Path:
    return h.settings.data_path / "uploads"


def stored(h: Harness) -> set[str]:
    folder = uploads_dir(h)
    return set(os.listdir(folder)) if folder.is_dir() else set()


async def upload(h: Harness, data: bytes) -> dict[str, Any]:
    response = await h.api.post(
        "/api/v1/uploads", content=data, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def generate(h: Harness, **params: Any) -> httpx.Response:
    body = {"prompt": "a red barn", "steps": 4, "width": 64, "height": 64, "seed": 5, **params}
    return await h.api.post("/api/v1/generate", json={"generation_params": body})


async def sidecar_and_text(h: Harness, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    root = h.settings.gallery_path
    sidecar = json.loads((root / (name[:-4] + ".json")).read_text())
    with Image.open(root / name) as image:
        assert isinstance(image, PngImagePlugin.PngImageFile)
        texts = dict(image.text)
    return sidecar, texts


async def completed_images(h: Harness, job_id: str) -> list[str]:
    job = await h.wait_status(job_id, "completed", "failed", "cancelled")
    assert job["status"] == "completed", job["result_details"]
    return list(job["result_details"]["images"])


@pytest.fixture
async def sim_harness(harness: Harness) -> Harness:
    harness.settings.inbox_path.mkdir(exist_ok=True)  # the watcher waits for it to appear
    await harness.add_sim("gpu1")
    return harness


# ---- img2img and inpaint ------------------------------------------------------------------------


async def test_img2img_from_an_upload_through_the_api(sim_harness: Harness) -> None:
    h = sim_harness
    up = await upload(h, png())
    assert up["ref"] == f"upload:{up['sha256']}" and (up["width"], up["height"]) == (64, 64)
    again = await upload(h, png())  # the same picture: the same file
    assert again["sha256"] == up["sha256"] and stored(h) == {f"{up['sha256']}.png"}
    assert (uploads_dir(h) / f"{up['sha256']}.png").stat().st_mode & 0o777 == 0o600

    response = await generate(h, init={"image": up["ref"], "denoising_strength": 0.4})
    assert response.status_code == 202, response.text
    [name] = await completed_images(h, response.json()["mobilesd_job_id"])

    sidecar, texts = await sidecar_and_text(h, name)
    init = sidecar["generation_params"]["init"]
    assert init["image"] == up["ref"] and init["image_sha256"] == up["sha256"]
    assert texts[SOURCE_TEXT_KEY] == f"init: {up['ref']} sha256:{up['sha256']}"
    forge = parse_infotext(texts["parameters"])
    assert forge["Denoising strength"] == "0.4"  # Forge's img2img infotext
    # The picture derives from the red init image (denoising 0.4 keeps most of it).
    with Image.open(h.settings.gallery_path / name) as out:
        r, g, b = out.convert("RGB").resize((1, 1)).getpixel((0, 0))  # type: ignore[misc]
    assert r > g and r > b


async def test_inpaint_from_a_gallery_image_and_an_upload_mask(sim_harness: Harness) -> None:
    h = sim_harness
    first = await generate(h)
    [source] = await completed_images(h, first.json()["mobilesd_job_id"])
    mask = await upload(h, left_half_mask())
    response = await generate(
        h,
        prompt="a green tractor",
        init={
            "image": f"gallery:{source}",
            "mask": mask["ref"],
            "mask_blur": 0,
            "inpainting_fill": 1,
            "denoising_strength": 1.0,
        },
    )
    assert response.status_code == 202, response.text
    [name] = await completed_images(h, response.json()["mobilesd_job_id"])
    sidecar, texts = await sidecar_and_text(h, name)
    init = sidecar["generation_params"]["init"]
    assert init["image"] == f"gallery:{source}" and len(init["image_sha256"]) == 64
    assert init["mask_sha256"] == mask["sha256"]
    assert f"init: gallery:{source} sha256:{init['image_sha256']}" in texts[SOURCE_TEXT_KEY]
    assert f"init mask: {mask['ref']} sha256:{mask['sha256']}" in texts[SOURCE_TEXT_KEY]
    # Outside the mask (the right half) the picture is the source, pixel for pixel.
    with (
        Image.open(h.settings.gallery_path / source) as before,
        Image.open(h.settings.gallery_path / name) as after,
    ):
        box = (40, 0, 64, 64)
        assert before.convert("RGB").crop(box).tobytes() == after.convert("RGB").crop(box).tobytes()
        assert before.convert("RGB").crop((0, 0, 24, 64)).tobytes() != (
            after.convert("RGB").crop((0, 0, 24, 64)).tobytes()
        )


async def test_inpaint_job_file_with_images_beside_it(sim_harness: Harness) -> None:
    h = sim_harness
    folder = h.settings.inbox_path / "shots"
    folder.mkdir(parents=True)
    (folder / "photo.png").write_bytes(png(colour=(20, 160, 40)))
    (folder / "masks").mkdir()
    (folder / "masks" / "left.png").write_bytes(left_half_mask())
    (folder / "fix.yaml").write_text(
        "prompt: a blue door\nsteps: 4\nwidth: 64\nheight: 64\n"
        "init:\n  image: photo.png\n  mask: masks/left.png\n  inpaint_full_res: true\n"
    )
    await h.core.inbox.rescan_now()
    job = await wait_for(lambda: _only_job(h), what="the job file's job")
    [name] = await completed_images(h, job["mobilesd_job_id"])
    sidecar, texts = await sidecar_and_text(h, name)
    init = sidecar["generation_params"]["init"]
    assert init["image"] == "photo.png" and init["mask"] == "masks/left.png"
    assert "init: photo.png sha256:" in texts[SOURCE_TEXT_KEY]
    assert parse_infotext(texts["parameters"])["Inpaint area"] == "Only masked"
    # The job does not need the file any more: it was copied into the upload store.
    assert f"{init['image_sha256']}.png" in stored(h)


async def _only_job(h: Harness) -> dict[str, Any] | None:
    jobs = (await h.api.get("/api/v1/queue/jobs")).json()["jobs"]
    return jobs[0] if len(jobs) == 1 else None


async def test_a_job_file_image_must_stay_inside_the_inbox(sim_harness: Harness) -> None:
    h = sim_harness
    (h.settings.inbox_path.parent / "secret.png").write_bytes(png())
    (h.settings.inbox_path / "linked.png").symlink_to(h.settings.inbox_path.parent / "secret.png")
    (h.settings.inbox_path / "link.yaml").write_text("prompt: x\ninit:\n  image: linked.png\n")
    (h.settings.inbox_path / "escape.yaml").write_text("prompt: x\ninit:\n  image: ../secret.png\n")
    (h.settings.inbox_path / "missing.yaml").write_text("prompt: x\ninit:\n  image: nope.png\n")
    await h.core.inbox.rescan_now()
    failed = h.settings.inbox_path / "failed"

    def written() -> list[Path]:
        # Not the temporary files of the reports' atomic writes (their names end alike).
        found = failed.glob("*.yaml" + REPORT_SUFFIX) if failed.is_dir() else []
        return [p for p in found if not p.name.startswith(TMP_PREFIX)]

    await wait_for(lambda: len(written()) == 3, what="three reports")
    reports = " ".join(p.read_text() for p in written())
    assert "init.image: must not contain '..'" in reports
    assert "init.image: no file 'nope.png' in the inbox" in reports
    assert "init.image: is reached through a symbolic link; not followed" in reports
    assert stored(h) == set()


async def test_api_refuses_paths_and_bad_combinations(sim_harness: Harness) -> None:
    h = sim_harness
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"init": {"image": "photo.png"}}, "generation_params.init.image", "only in job files"),
        ({"init": {"image": "upload:" + "0" * 64}}, "generation_params.init.image", "no such"),
        (
            {"init": {"image": "gallery:x.png"}, "hires": {}},
            "generation_params.init",
            "hires",
        ),
        (
            {
                "init": {"image": "gallery:x.png"},
                "upscale": {"image": "gallery:x.png", "upscaler": "a"},
            },
            "generation_params.upscale",
            "init",
        ),
        ({"init": {"image": "gallery:a/b.png"}}, "generation_params.init.image", "gallery:"),
        (
            {"init": {"image": "gallery:x.png", "inpaint_full_res": True}},
            "generation_params.init",
            "need a mask",
        ),
    ]
    for params, path, words in cases:
        response = await generate(h, **params)
        assert response.status_code == 422, (params, response.text)
        problems = {p["path"]: p["message"] for p in response.json()["error"]["details"]}
        assert path in problems and words in problems[path], (params, problems)
    assert (await h.api.get("/api/v1/queue/jobs")).json()["total"] == 0


# ---- upscale ------------------------------------------------------------------------------------


async def test_upscale_gallery_images_in_one_batch(sim_harness: Harness) -> None:
    h = sim_harness
    first = await generate(h, n_iter=2)
    names = await completed_images(h, first.json()["mobilesd_job_id"])
    response = await h.api.post(
        "/api/v1/gallery/upscale", json={"names": names, "upscaler": UPSCALER, "scale": 2}
    )
    assert response.status_code == 202, response.text
    answer = response.json()
    assert len(answer["mobilesd_job_ids"]) == 2
    for job_id, source in zip(answer["mobilesd_job_ids"], names, strict=True):
        job = await h.job(job_id)
        assert job["batch_id"] == answer["batch_id"]
        assert job["generation_params"]["prompt"] == "a red barn"  # the source's prompt
        [name] = await completed_images(h, job_id)
        sidecar, texts = await sidecar_and_text(h, name)
        assert (sidecar["width"], sidecar["height"]) == (128, 128)
        up = sidecar["generation_params"]["upscale"]
        assert up["image"] == f"gallery:{source}"
        assert texts[SOURCE_TEXT_KEY] == f"upscale: gallery:{source} sha256:{up['image_sha256']}"
        forge = parse_infotext(texts["parameters"])
        assert forge["Postprocess upscaler"] == UPSCALER and forge["prompt"] == "a red barn"
        assert forge["Source image"] == f"gallery:{source}"
        assert forge["Source image hash"] == up["image_sha256"]


async def test_upscale_job_file_and_an_unknown_upscaler(sim_harness: Harness) -> None:
    h = sim_harness
    first = await generate(h)
    [source] = await completed_images(h, first.json()["mobilesd_job_id"])
    (h.settings.inbox_path / "up.yaml").write_text(
        "defaults:\n  prompt: bigger\njobs:\n"
        f"  - upscale: {{image: 'gallery:{source}', upscaler: '{UPSCALER}', scale: 3}}\n"
        f"  - upscale: {{image: 'gallery:{source}', upscaler: 'R-ESRGAN 5x'}}\n"
    )
    await h.core.inbox.rescan_now()

    async def inbox_jobs() -> list[dict[str, Any]] | None:
        jobs = (await h.api.get("/api/v1/queue/jobs?q=bigger")).json()["jobs"]
        return jobs if len(jobs) == 2 else None

    jobs = sorted(await wait_for(inbox_jobs), key=lambda j: j["mobilesd_job_id"])
    [name] = await completed_images(h, jobs[0]["mobilesd_job_id"])
    sidecar, _ = await sidecar_and_text(h, name)
    assert (sidecar["width"], sidecar["height"]) == (192, 192)
    bad = await h.wait_status(jobs[1]["mobilesd_job_id"], "failed")
    assert (
        "upscaler 'R-ESRGAN 5x' is not offered by server 'gpu1'" in bad["result_details"]["error"]
    )


async def test_gallery_upscale_names_bad_fields(sim_harness: Harness) -> None:
    h = sim_harness
    response = await h.api.post(
        "/api/v1/gallery/upscale", json={"names": ["nope.png"], "upscaler": "", "scale": 99}
    )
    assert response.status_code == 422
    # The body's own fields are judged first (the request model), before any image is read.
    paths = {p["path"] for p in response.json()["error"]["details"]}
    assert paths == {"upscaler", "scale"}
    response = await h.api.post(
        "/api/v1/gallery/upscale", json={"names": ["nope.png"], "upscaler": "Lanczos"}
    )
    assert response.status_code == 422
    paths = {p["path"] for p in response.json()["error"]["details"]}
    assert paths == {"names[0]"}
    first = await generate(h)
    [source] = await completed_images(h, first.json()["mobilesd_job_id"])
    response = await h.api.post(
        "/api/v1/gallery/upscale", json={"names": [source], "upscaler": "", "scale": 99}
    )
    assert response.status_code == 422
    paths = {p["path"] for p in response.json()["error"]["details"]}
    assert paths == {"upscaler", "scale"}


# ---- upload limits and bad images ---------------------------------------------------------------


def _bomb() -> bytes:
    """A valid 20000 x 20000 greyscale PNG of zeros: about 400 KB, 400 M pixels."""
    width = height = 20000
    raw = zlib.compress((b"\0" + b"\0" * width) * height, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(body, zlib.crc32(kind))
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


async def test_bad_uploads_are_refused_and_nothing_is_stored(sim_harness: Harness) -> None:
    h = sim_harness
    before = stored(h)
    huge = png() + b"\0" * MAX_UPLOAD_BYTES  # a PNG over the byte cap
    cases = [
        (b"this is not an image", 422, "not an image"),
        (png()[:40], 422, "not an image"),  # cut short
        (_bomb(), 422, "M pixels"),
        (huge, 413, "larger than"),
        (b"", 422, "empty"),
    ]
    for body, status, words in cases:
        response = await h.api.post("/api/v1/uploads", content=body)
        assert response.status_code == status, (words, response.text)
        error = response.json()["error"]
        [problem] = error["details"]
        assert problem["path"] == "file" and words in problem["message"], error
    assert stored(h) == before

    image = await upload(h, png((64, 64)))
    mask = await upload(h, left_half_mask((64, 48)))
    after_uploads = stored(h)
    response = await generate(h, init={"image": image["ref"], "mask": mask["ref"]})
    assert response.status_code == 422
    [problem] = response.json()["error"]["details"]
    assert problem["path"] == "generation_params.init.mask"
    assert "is 64x48, but the image is 64x64" in problem["message"]
    assert stored(h) == after_uploads
    assert (await h.api.get("/api/v1/queue/jobs")).json()["total"] == 0


async def test_upload_needs_the_token(sim_harness: Harness) -> None:
    h = sim_harness
    async with httpx.AsyncClient(base_url=str(h.api.base_url)) as stranger:
        response = await stranger.post("/api/v1/uploads", content=png())
    assert response.status_code == 401
    assert stored(h) == set()


async def test_exif_orientation_is_applied(sim_harness: Harness) -> None:
    h = sim_harness
    photo = Image.new("RGB", (64, 32), (10, 20, 30))
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    out = io.BytesIO()
    photo.save(out, format="JPEG", exif=exif.tobytes())
    up = await upload(h, out.getvalue())
    assert (up["width"], up["height"]) == (32, 64)
    with Image.open(uploads_dir(h) / f"{up['sha256']}.png") as kept:
        assert kept.format == "PNG" and kept.size == (32, 64) and "exif" not in kept.info
    thumb = await h.api.get(f"/api/v1/uploads/{up['sha256']}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    assert (await h.api.get(f"/api/v1/uploads/{'f' * 64}/thumbnail")).status_code == 404


# ---- kept while a job needs it ---------------------------------------------------------------


async def test_upload_survives_a_restart_and_goes_after_its_job(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    h = await start_harness(settings)
    try:
        assert (await h.api.post("/api/v1/queue/pause")).status_code == 200
        up = await upload(h, png())
        h.core.uploads.grace = 0  # from now on only jobs keep uploads
        response = await generate(h, init={"image": up["ref"]})
        job_id = response.json()["mobilesd_job_id"]
    finally:
        await stop_harness(h)
    h = await start_harness(settings)
    try:
        h.core.uploads.grace = 0
        half_written = uploads_dir(h) / f"{TMP_PREFIX}0123-{'a' * 64}.png"  # died mid-write
        half_written.write_bytes(b"\x89PNG")
        await h.core.sweep_uploads()  # what start did, now without any grace
        assert stored(h) == {f"{up['sha256']}.png"}  # the pending job needs it
        await h.add_sim("gpu1")
        assert (await h.api.post("/api/v1/queue/resume")).status_code == 200
        await completed_images(h, job_id)
        await wait_for(lambda: stored(h) == set(), what="the upload to be removed")
    finally:
        await stop_harness(h)


async def test_an_upscale_job_goes_to_a_server_that_lists_its_upscaler(harness: Harness) -> None:
    h = harness
    assert (await h.api.post("/api/v1/queue/pause")).status_code == 200
    await h.add_sim(
        "gpu1", SimulatorConfig(step_ms=5, switch_ms=20, name="gpu1", upscalers=["Lanczos"])
    )
    await h.add_sim("gpu2")
    up = await upload(h, png())
    jobs = []
    for _ in range(3):  # both servers free: without routing, gpu1 would take one
        response = await generate(h, upscale={"image": up["ref"], "upscaler": UPSCALER})
        jobs.append(response.json()["mobilesd_job_id"])
    assert (await h.api.post("/api/v1/queue/resume")).status_code == 200
    for job_id in jobs:
        await completed_images(h, job_id)
        assert (await h.job(job_id))["assigned_server_alias"] == "gpu2"


async def test_hires_rerun_of_gallery_images(sim_harness: Harness) -> None:
    h = sim_harness
    first = await generate(h, seed=-1, n_iter=2)
    names = await completed_images(h, first.json()["mobilesd_job_id"])
    response = await h.api.post(
        "/api/v1/gallery/upscale",
        json={"names": names, "upscaler": "Latent", "scale": 2, "mode": "hires"},
    )
    assert response.status_code == 202, response.text
    for job_id, source in zip(response.json()["mobilesd_job_ids"], names, strict=True):
        [name] = await completed_images(h, job_id)
        before, _ = await sidecar_and_text(h, source)
        after, texts = await sidecar_and_text(h, name)
        assert after["seed"] == before["seed"]  # the same picture, now with the hires fix
        assert (after["width"], after["height"]) == (128, 128)
        assert after["generation_params"]["hires"]["upscaler"] == "Latent"
        assert parse_infotext(texts["parameters"])["Hires upscaler"] == "Latent"

    # An upscaled image has no job of its own to run again; mode extras takes no denoising.
    extras = await h.api.post(
        "/api/v1/gallery/upscale", json={"names": names[:1], "upscaler": UPSCALER}
    )
    [upscaled] = await completed_images(h, extras.json()["mobilesd_job_ids"][0])
    response = await h.api.post(
        "/api/v1/gallery/upscale",
        json={"names": [upscaled], "upscaler": "Latent", "mode": "hires"},
    )
    assert response.status_code == 422
    [problem] = response.json()["error"]["details"]
    assert problem["path"] == "names[0]" and "use mode extras" in problem["message"]
    response = await h.api.post(
        "/api/v1/gallery/upscale",
        json={"names": names, "upscaler": UPSCALER, "denoising_strength": 0.5, "mode": "x"},
    )
    assert {p["path"] for p in response.json()["error"]["details"]} == {"mode"}


async def test_editing_a_pending_job_stores_its_new_image(sim_harness: Harness) -> None:
    h = sim_harness
    assert (await h.api.post("/api/v1/queue/pause")).status_code == 200
    red, blue = await upload(h, png()), await upload(h, png(colour=(0, 0, 255)))
    response = await generate(h, init={"image": red["ref"]})
    job_id = response.json()["mobilesd_job_id"]
    job = await h.job(job_id)
    init = dict(job["generation_params"]["init"])
    assert init["image_sha256"] == red["sha256"]

    # A client sends the block back with another image, and the old hash still in it.
    changed = await h.api.patch(
        f"/api/v1/queue/jobs/{job_id}",
        json={"generation_params": {"init": {**init, "image": blue["ref"]}}},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["generation_params"]["init"]["image_sha256"] == blue["sha256"]
    # Other edits keep the image.
    changed = await h.api.patch(
        f"/api/v1/queue/jobs/{job_id}", json={"generation_params": {"steps": 5}}
    )
    assert changed.json()["generation_params"]["init"]["image_sha256"] == blue["sha256"]
    wrong = await upload(h, left_half_mask((32, 32)))
    refused = await h.api.patch(
        f"/api/v1/queue/jobs/{job_id}",
        json={"generation_params": {"init": {"image": blue["ref"], "mask": wrong["ref"]}}},
    )
    assert refused.status_code == 422
    [problem] = refused.json()["error"]["details"]
    assert problem["path"] == "generation_params.init.mask" and "32x32" in problem["message"]


async def test_img2img_progress_counts_the_steps_forge_runs(harness: Harness) -> None:
    h = harness
    await h.add_sim("gpu1", SimulatorConfig(step_ms=60, switch_ms=20, name="gpu1"))
    up = await upload(h, png())
    response = await generate(h, steps=20, init={"image": up["ref"], "denoising_strength": 0.5})
    job_id = response.json()["mobilesd_job_id"]

    async def sampling() -> dict[str, Any] | None:
        progress = (await h.job(job_id))["progress"] or {}
        return progress if progress.get("phase") == "sampling" and progress.get("step") else None

    # 0.5 x 20 steps: Forge's sampler runs 11, and that is what the job shows as its own.
    progress = await wait_for(sampling, timeout=10, what="the job's own sampling progress")
    assert progress["steps"] == 11
    await completed_images(h, job_id)
