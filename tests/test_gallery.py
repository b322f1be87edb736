"""Gallery: real files in tmp_path, real PNG/JPEG bytes made with Pillow, no mocks."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from mobilesd_core.forge.infotext import build_infotext, parse_infotext
from mobilesd_core.gallery import (
    Gallery,
    GalleryError,
    ImageNotFound,
    SavedImage,
    UnsafeName,
)
from mobilesd_core.gallery.index import make_record
from mobilesd_core.schema import GenerationParams, new_job

from .helpers.images import blank_png, png_bytes

ENTRY_KEYS = {
    "filename",
    "url",
    "thumb_url",
    "width",
    "height",
    "created",
    "mobilesd_job_id",
    "prompt",
    "negative_prompt",
    "seed",
    "checkpoint",
}


# --- helpers ----------------------------------------------------------------------------------


class Clock:
    """A clock that moves one second per reading, so every save has its own `created`."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def jpeg_bytes(width: int = 64, height: int = 72) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def make_job(created: str = "2026-03-01T10:00:00.000Z", **params: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"prompt": "a lighthouse at dusk", "width": 64, "height": 72}
    fields.update(params)
    job = new_job(GenerationParams(**fields), source="api")
    job["creation_timestamp"] = created
    job["status"] = "processing"
    job["assigned_server_alias"] = "gpu1"
    return job


def make_info(
    job: dict[str, Any], count: int, *, seed: int = 1000, infotexts: bool = False
) -> dict[str, Any]:
    params = job["generation_params"]
    seeds = [seed + i for i in range(count)]
    info: dict[str, Any] = {
        "seed": seed,
        "all_seeds": seeds,
        "subseed": 7,
        "all_subseeds": [7 + i for i in range(count)],
        "all_prompts": [params["prompt"]] * count,
        "all_negative_prompts": [params["negative_prompt"]] * count,
        "width": params["width"],
        "height": params["height"],
        "sampler_name": params["sampler_name"],
        "cfg_scale": params["cfg_scale"],
        "steps": params["steps"],
        "sd_model_name": "juggernautXL_v9",
        "sd_model_hash": "a1b2c3d4e5",
        "index_of_first_image": 0,
        "version": "f2.0.1v1.10.1",
    }
    if infotexts:
        info["infotexts"] = [
            build_infotext(
                prompt=params["prompt"],
                steps=params["steps"],
                sampler_name=params["sampler_name"],
                cfg_scale=params["cfg_scale"],
                seed=s,
                width=params["width"],
                height=params["height"],
                model_name="juggernautXL_v9",
                model_hash="a1b2c3d4e5",
            )
            for s in seeds
        ]
    return info


async def save(
    gallery: Gallery, job: dict[str, Any], images: list[bytes], **info_kw: Any
) -> list[SavedImage]:
    return await gallery.save_job_images(
        job,
        images,
        make_info(job, len(images), **info_kw),
        server_alias="gpu1",
        timings={"queue_seconds": 0.5, "generation_seconds": 3.25},
        model_title="sdxl/juggernautXL_v9.safetensors [a1b2c3d4e5]",
    )


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, to prove nothing there changed."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
async def gallery(tmp_path: Path) -> Gallery:
    g = Gallery(tmp_path / "outputs", thumb_size=32, clock=Clock())
    await g.start()
    return g


# --- saving -----------------------------------------------------------------------------------


async def test_server_png_with_parameters_is_kept_byte_for_byte(gallery: Gallery) -> None:
    job = make_job(seed=42)
    text = "a lighthouse at dusk\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 64x72"
    original = png_bytes(parameters=text)
    saved = await save(gallery, job, [original], seed=42)

    assert saved == [SavedImage(filename=saved[0].filename, width=64, height=72, seed=42)]
    path = gallery.image_path(saved[0].filename)
    assert path.read_bytes() == original
    with Image.open(path) as im:
        assert im.info["parameters"] == text


async def test_png_without_chunk_gets_the_server_infotext(gallery: Gallery) -> None:
    job = make_job()
    info = make_info(job, 2, seed=500, infotexts=True)
    saved = await gallery.save_job_images(job, [png_bytes(), png_bytes()], info, server_alias="a")

    for index, image in enumerate(saved):
        with Image.open(gallery.image_path(image.filename)) as im:
            assert im.format == "PNG"
            assert im.info["parameters"] == info["infotexts"][index]
            assert im.text["parameters"] == info["infotexts"][index]
        assert image.seed == 500 + index


async def test_infotext_built_from_job_when_server_gave_none(gallery: Gallery) -> None:
    job = make_job(
        negative_prompt="blurry",
        loras=[{"name": "add_detail", "weight": 0.6}],
        steps=28,
        sampler_name="DPM++ 2M",
        scheduler="Karras",
        seed=-1,
        batch_size=2,
    )
    saved = await save(gallery, job, [png_bytes(), png_bytes(color=(0, 0, 0))], seed=9000)

    for index, image in enumerate(saved):
        raw = gallery.image_path(image.filename).read_bytes()
        assert b"tEXt" in raw  # Latin-1 text goes into a plain tEXt chunk
        with Image.open(io.BytesIO(raw)) as im:
            fields = parse_infotext(im.info["parameters"])
        assert fields["prompt"] == "a lighthouse at dusk <lora:add_detail:0.6>"
        assert fields["negative_prompt"] == "blurry"
        assert fields["Seed"] == str(9000 + index)
        assert fields["Size"] == "64x72"
        assert fields["Steps"] == "28"
        assert fields["Sampler"] == "DPM++ 2M"
        assert fields["Schedule type"] == "Karras"
        assert fields["Model"] == "juggernautXL_v9"
        assert fields["Model hash"] == "a1b2c3d4e5"
        assert image.seed == 9000 + index


async def test_jpeg_is_reencoded_as_png_with_itxt_for_non_latin1(gallery: Gallery) -> None:
    job = make_job(prompt="猫 on a windowsill — ночь", seed=77)
    info = make_info(job, 1, seed=77)
    del info["all_seeds"]  # seed then comes from info["seed"] + index
    saved = await gallery.save_job_images(job, [jpeg_bytes(80, 56)], info, server_alias="gpu1")

    path = gallery.image_path(saved[0].filename)
    raw = path.read_bytes()
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    assert b"iTXt" in raw
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (80, 56)
        fields = parse_infotext(im.info["parameters"])
    assert fields["prompt"] == "猫 on a windowsill — ночь"
    assert fields["Seed"] == "77"
    assert saved[0].width == 80 and saved[0].height == 56 and saved[0].seed == 77


async def test_rgba_png_without_chunk_keeps_alpha(gallery: Gallery) -> None:
    job = make_job()
    saved = await save(gallery, job, [png_bytes(mode="RGBA")])
    with Image.open(gallery.image_path(saved[0].filename)) as im:
        assert im.mode == "RGBA"
        assert "parameters" in im.info


async def test_sidecar_holds_the_job_record(gallery: Gallery) -> None:
    job = make_job(negative_prompt="ugly", n_iter=2)
    saved = await save(gallery, job, [png_bytes(), png_bytes()], seed=300, infotexts=True)

    sidecar_path = gallery.root / (saved[1].filename[:-4] + ".json")
    data = json.loads(sidecar_path.read_text(encoding="utf-8"))
    assert data["mobilesd_job_id"] == job["mobilesd_job_id"]
    assert data["index"] == 1
    assert data["filename"] == saved[1].filename
    assert data["generation_params"] == job["generation_params"]
    assert data["server_alias"] == "gpu1"
    assert data["model_title"] == "sdxl/juggernautXL_v9.safetensors [a1b2c3d4e5]"
    assert data["timings"] == {"queue_seconds": 0.5, "generation_seconds": 3.25}
    assert data["width"] == 64 and data["height"] == 72
    assert data["seed"] == 301
    assert data["job"] == job
    assert datetime.fromisoformat(data["created"].replace("Z", "+00:00")).tzinfo is not None
    assert data["created"].endswith("Z")
    with Image.open(gallery.image_path(saved[1].filename)) as im:
        assert data["infotext"] == im.info["parameters"]

    info = data["info"]
    assert info["seed"] == 301
    assert info["subseed"] == 8
    assert info["all_seeds"] == [300, 301]
    assert info["prompt"] == "a lighthouse at dusk"
    assert info["negative_prompt"] == "ugly"
    assert info["sd_model_name"] == "juggernautXL_v9"
    assert "infotexts" not in info and "all_prompts" not in info
    assert "all_negative_prompts" not in info


async def test_sidecar_is_a_snapshot_not_a_live_reference(gallery: Gallery) -> None:
    job = make_job()
    saved = await save(gallery, job, [png_bytes()])
    job["status"] = "completed"  # the store goes on changing its record afterwards
    data = json.loads((gallery.root / (saved[0].filename[:-4] + ".json")).read_text())
    assert data["job"]["status"] == "processing"


async def test_names_are_deterministic_safe_and_sortable(gallery: Gallery) -> None:
    early = make_job(created="2026-01-05T08:09:10.123Z")
    late = make_job(created="2026-01-05T08:09:11.000Z")

    name = gallery.image_name(early, 3)
    assert name == gallery.image_name(early, 3)
    assert name == f"20260105-080910_{early['mobilesd_job_id']}_003.png"
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", name)
    assert gallery.image_name(early, 4) != name
    assert gallery.image_name(late, 3) != name
    assert gallery.image_name(early, 9) < gallery.image_name(early, 10)
    assert gallery.image_name(early, 799) < gallery.image_name(late, 0)

    # A timestamp with an offset names the same UTC second.
    shifted = dict(early, creation_timestamp="2026-01-05T10:09:10.123+02:00")
    assert gallery.image_name(shifted, 3) == name


@pytest.mark.parametrize(
    ("job_id", "created", "index"),
    [
        ("../evil", "2026-01-05T08:09:10Z", 0),
        ("a/b", "2026-01-05T08:09:10Z", 0),
        ("", "2026-01-05T08:09:10Z", 0),
        ("01JD3ABC", "not a time", 0),
        ("01JD3ABC", None, 0),
        ("01JD3ABC", "2026-01-05T08:09:10Z", -1),
        ("01JD3ABC", "2026-01-05T08:09:10Z", 1000),
    ],
)
def test_image_name_refuses_what_cannot_make_a_safe_name(
    tmp_path: Path, job_id: str, created: str | None, index: int
) -> None:
    gallery = Gallery(tmp_path)
    with pytest.raises(GalleryError):
        gallery.image_name({"mobilesd_job_id": job_id, "creation_timestamp": created}, index)


async def test_resave_overwrites_instead_of_duplicating(gallery: Gallery) -> None:
    job = make_job()
    first = await save(gallery, job, [png_bytes(), png_bytes()])
    thumb = await gallery.thumbnail_path(first[0].filename)
    again = await save(
        gallery, job, [png_bytes(color=(1, 2, 3)), png_bytes(color=(4, 5, 6))], seed=5
    )

    assert [s.filename for s in again] == [s.filename for s in first]
    assert sorted(p.name for p in gallery.root.glob("*.png")) == sorted(s.filename for s in first)
    assert len(list(gallery.root.glob("*.json"))) == 2
    assert not [p for p in gallery.root.iterdir() if p.name.startswith(".tmp-")]
    assert not thumb.exists()  # the old image's thumbnail is not served for the new one
    entries, total = await gallery.list_images()
    assert total == 2
    assert {e["seed"] for e in entries} == {5, 6}
    with Image.open(gallery.image_path(first[0].filename)) as im:
        assert im.getpixel((0, 0)) == (1, 2, 3)


async def test_unreadable_image_fails_the_save_and_writes_nothing(gallery: Gallery) -> None:
    job = make_job()
    with pytest.raises(GalleryError, match="image 1"):
        await save(gallery, job, [png_bytes(), b"<html>502 Bad Gateway</html>"])
    truncated = png_bytes(parameters="x\nSteps: 1, Sampler: Euler, Seed: 1")[:-30]
    with pytest.raises(GalleryError, match="image 0"):
        await save(gallery, job, [truncated])
    assert [p.name for p in gallery.root.iterdir()] == [".thumbs"]
    assert await gallery.list_images() == ([], 0)


async def test_save_before_start_creates_the_folder(tmp_path: Path) -> None:
    gallery = Gallery(tmp_path / "new" / "gallery")
    saved = await save(gallery, make_job(), [png_bytes()])
    assert gallery.image_path(saved[0].filename).is_file()
    assert (await gallery.get_entry(saved[0].filename))["width"] == 64


# --- listing ----------------------------------------------------------------------------------


async def test_listing_newest_first_with_pagination_and_filters(gallery: Gallery) -> None:
    # Job creation order differs from completion order: listing follows completion (`created`).
    fox = make_job(created="2026-02-01T00:00:03Z", prompt="a red fox in snow", batch_size=2)
    heron = make_job(created="2026-02-01T00:00:01Z", prompt="a blue heron", negative_prompt="Fog")
    owl = make_job(created="2026-02-01T00:00:02Z", prompt="an owl", checkpoint_name="dreamshaper_8")
    fox_saved = await save(gallery, fox, [png_bytes(), png_bytes()])
    heron_saved = await save(gallery, heron, [png_bytes()])
    info = make_info(owl, 1)
    info["sd_model_name"] = "dreamshaper_8"
    owl_saved = await gallery.save_job_images(owl, [png_bytes()], info, server_alias="gpu2")

    entries, total = await gallery.list_images()
    assert total == 4
    # Newest first; the two fox images share `created`, so the higher file name comes first.
    assert [e["filename"] for e in entries] == [
        owl_saved[0].filename,
        heron_saved[0].filename,
        fox_saved[1].filename,
        fox_saved[0].filename,
    ]
    first = entries[0]
    assert set(first) == ENTRY_KEYS
    assert first["url"] == f"/gallery_files/{first['filename']}"
    assert first["thumb_url"] == f"/gallery_files/{first['filename']}?thumb=1"
    assert first["mobilesd_job_id"] == owl["mobilesd_job_id"]
    assert first["prompt"] == "an owl"
    assert first["checkpoint"] == "dreamshaper_8"
    assert (first["width"], first["height"], first["seed"]) == (64, 72, 1000)
    assert [e["created"] for e in entries] == sorted((e["created"] for e in entries), reverse=True)

    page, total = await gallery.list_images(limit=2, offset=1)
    assert total == 4
    assert [e["filename"] for e in page] == [e["filename"] for e in entries[1:3]]
    assert await gallery.list_images(limit=10, offset=10) == ([], 4)
    assert (await gallery.list_images(limit=0))[1] == 4

    async def names(**kw: Any) -> tuple[list[str], int]:
        found, count = await gallery.list_images(**kw)
        return [e["filename"] for e in found], count

    assert await names(q="FOX") == ([fox_saved[1].filename, fox_saved[0].filename], 2)
    assert await names(q="fog") == ([heron_saved[0].filename], 1)  # negative prompt
    assert (await names(q="DreamShaper"))[1] == 1  # checkpoint
    assert (await names(q="juggernaut"))[1] == 3  # the model that actually ran
    assert await names(q=owl_saved[0].filename[:15]) == ([owl_saved[0].filename], 1)
    assert await names(q="red snow") == ([fox_saved[1].filename, fox_saved[0].filename], 2)
    assert await names(q="red heron") == ([], 0)
    assert await names(q="   ") == (await names())
    assert await names(job_id=fox["mobilesd_job_id"]) == (
        [fox_saved[1].filename, fox_saved[0].filename],
        2,
    )
    assert await names(job_id=fox["mobilesd_job_id"], limit=1, offset=1) == (
        [fox_saved[0].filename],
        2,
    )
    assert await names(job_id=fox["mobilesd_job_id"], q="heron") == ([], 0)
    assert await names(job_id="01NOSUCHJOB") == ([], 0)
    assert await names(q="fox", limit=1, offset=1) == ([fox_saved[0].filename], 2)


async def test_entries_are_copies(gallery: Gallery) -> None:
    saved = await save(gallery, make_job(), [png_bytes()])
    entries, _ = await gallery.list_images()
    entries[0]["prompt"] = "changed by a caller"
    assert (await gallery.get_entry(saved[0].filename))["prompt"] == "a lighthouse at dusk"


async def test_get_entry(gallery: Gallery) -> None:
    saved = await save(gallery, make_job(), [png_bytes()])
    entry = await gallery.get_entry(saved[0].filename)
    assert entry["filename"] == saved[0].filename
    with pytest.raises(ImageNotFound):
        await gallery.get_entry("20260101-000000_NOPE_000.png")
    with pytest.raises(UnsafeName):
        await gallery.get_entry("../x.png")


async def test_fresh_gallery_rebuilds_the_index_and_lists_foreign_pngs(
    gallery: Gallery,
) -> None:
    job = make_job(prompt="kept across restarts", batch_size=2)
    await save(gallery, job, [png_bytes(), png_bytes()])
    before, _ = await gallery.list_images()

    root = gallery.root
    text = "my own render\nNegative prompt: bad hands\nSteps: 30, Sampler: Euler a, CFG scale: 5, "
    text += "Seed: 1234, Size: 40x30, Model hash: 0123456789, Model: realisticVision"
    (root / "My photo (1).png").write_bytes(png_bytes(40, 30, parameters=text))
    (root / "plain.png").write_bytes(png_bytes(20, 10))
    (root / "notes.txt").write_text("not an image")
    (root / "data.json").write_text('{"mine": true}')
    (root / "fake.png").write_text("this is not a PNG")
    (root / "photo.jpg").write_bytes(jpeg_bytes())
    (root / "sub.png").mkdir()

    fresh = Gallery(root, thumb_size=32)
    await fresh.start()
    entries, total = await fresh.list_images(limit=100)
    assert total == 4
    by_name = {e["filename"]: e for e in entries}
    for entry in before:
        assert by_name[entry["filename"]] == entry
    mine = by_name["My photo (1).png"]
    assert mine["mobilesd_job_id"] is None
    assert mine["prompt"] == "my own render"
    assert mine["negative_prompt"] == "bad hands"
    assert mine["seed"] == 1234
    assert mine["checkpoint"] == "realisticVision"
    assert (mine["width"], mine["height"]) == (40, 30)
    assert mine["url"] == "/gallery_files/My%20photo%20%281%29.png"
    plain = by_name["plain.png"]
    assert (plain["prompt"], plain["seed"], plain["checkpoint"]) == ("", None, None)
    assert (await fresh.list_images(q="realistic"))[1] == 1
    assert (await fresh.list_images(job_id=job["mobilesd_job_id"]))[1] == 2

    # A user's own images can be served, thumbnailed and deleted like MobileSD's.
    assert fresh.image_path("My photo (1).png") == (root / "My photo (1).png").resolve()
    assert (await fresh.thumbnail_path("My photo (1).png")).is_file()
    removed = await fresh.delete_image("My photo (1).png")
    assert removed["prompt"] == "my own render"
    assert not (root / "My photo (1).png").exists()
    assert (root / "data.json").exists() and (root / "notes.txt").exists()


async def test_rescan_picks_up_images_added_by_hand(gallery: Gallery) -> None:
    await save(gallery, make_job(), [png_bytes()])
    (gallery.root / "dropped.png").write_bytes(png_bytes())
    assert (await gallery.list_images())[1] == 1
    await gallery.rescan()
    assert (await gallery.list_images())[1] == 2


async def test_listing_100k_entries_pages_and_filters(gallery: Gallery) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    records = {}
    for i in range(100_000):
        name = f"{i:08d}.png"
        created = (start + timedelta(seconds=i)).isoformat(timespec="milliseconds")
        records[name] = make_record(
            name,
            created=created.replace("+00:00", "Z"),
            width=512,
            height=512,
            job_id=f"JOB{i // 4}",
            prompt=f"prompt number {i}" + (" needle" if i % 1000 == 0 else ""),
            negative_prompt="",
            seed=i,
            checkpoint="model",
        )
    gallery._index.install(records)

    page, total = await gallery.list_images(limit=50, offset=5000)
    assert total == 100_000
    assert page[0]["filename"] == f"{100_000 - 1 - 5000:08d}.png"

    page, total = await gallery.list_images(q="NEEDLE")
    assert total == 100 and page[0]["filename"] == "00099000.png"

    page, total = await gallery.list_images(job_id="JOB7")
    assert [e["filename"] for e in page] == [f"{i:08d}.png" for i in (31, 30, 29, 28)]


# --- thumbnails -------------------------------------------------------------------------------


async def test_thumbnail_is_made_once_and_bounded(gallery: Gallery) -> None:
    saved = await save(gallery, make_job(), [png_bytes(200, 120, mode="RGBA")])
    name = saved[0].filename

    thumb = await gallery.thumbnail_path(name)
    assert thumb.parent == gallery.root.resolve() / ".thumbs"
    with Image.open(thumb) as im:
        assert im.format == "JPEG"
        assert max(im.size) == 32 and im.size == (32, 19)
    made = thumb.stat().st_mtime_ns

    paths = await asyncio.gather(*(gallery.thumbnail_path(name) for _ in range(5)))
    assert set(paths) == {thumb}
    assert thumb.stat().st_mtime_ns == made

    # The image changed after the thumbnail was made: a new thumbnail replaces it.
    image = gallery.image_path(name)
    later = made + 5 * 10**9
    os.utime(image, ns=(later, later))
    assert await gallery.thumbnail_path(name) == thumb
    assert thumb.stat().st_mtime_ns == later


async def test_thumbnail_of_missing_image(gallery: Gallery) -> None:
    with pytest.raises(ImageNotFound):
        await gallery.thumbnail_path("20260101-000000_NOPE_000.png")
    assert list((gallery.root / ".thumbs").iterdir()) == []


# --- deleting ---------------------------------------------------------------------------------


async def test_delete_removes_image_sidecar_and_thumbnail(gallery: Gallery) -> None:
    saved = await save(gallery, make_job(), [png_bytes(), png_bytes()])
    name = saved[0].filename
    thumb = await gallery.thumbnail_path(name)
    sidecar = gallery.root / (name[:-4] + ".json")
    assert sidecar.exists() and thumb.exists()

    entry = await gallery.delete_image(name)
    assert entry["filename"] == name and set(entry) == ENTRY_KEYS
    assert not (gallery.root / name).exists()
    assert not sidecar.exists()
    assert not thumb.exists()
    assert (await gallery.list_images())[1] == 1
    with pytest.raises(ImageNotFound):
        await gallery.delete_image(name)
    with pytest.raises(ImageNotFound):
        gallery.image_path(name)


async def test_delete_job_images(gallery: Gallery) -> None:
    job = make_job(batch_size=3)
    other = make_job(prompt="another job")
    saved = await save(gallery, job, [png_bytes()] * 3)
    kept = await save(gallery, other, [png_bytes()])
    await gallery.thumbnail_path(saved[2].filename)
    (gallery.root / saved[1].filename).unlink()  # one already removed by hand

    deleted = await gallery.delete_job_images(job["mobilesd_job_id"])
    assert deleted == sorted(s.filename for s in saved)
    remaining = sorted(p.name for p in gallery.root.iterdir() if p.name != ".thumbs")
    assert remaining == sorted([kept[0].filename, kept[0].filename[:-4] + ".json"])
    assert list((gallery.root / ".thumbs").iterdir()) == []
    assert (await gallery.list_images())[1] == 1
    assert await gallery.delete_job_images(job["mobilesd_job_id"]) == []


# --- path safety ------------------------------------------------------------------------------

UNSAFE_NAMES = [
    "",
    ".",
    "..",
    "../x.png",
    "..%2Fx",
    "..%2Fx.png",
    "/etc/passwd",
    "/etc/x.png",
    "a/b.png",
    "a\\b.png",
    "..\\x.png",
    ".hidden.png",
    ".thumbs",
    ".tmp-1234-x.png",
    "x.png\x00.txt",
    "x\x00.png",
    "x.json",
    "x.jpg",
    "x.PNG.txt",
    ".png",
    "C:x.png",
    " x.png",
    "a" * 300 + ".png",
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
async def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    root = tmp_path / "outputs"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.png").write_bytes(png_bytes())
    (tmp_path / "x.png").write_bytes(png_bytes())
    gallery = Gallery(root, clock=Clock())
    await gallery.start()
    await save(gallery, make_job(), [png_bytes()])
    before_outside = tree(outside)
    before_root = tree(root)

    with pytest.raises(UnsafeName):
        gallery.image_path(name)
    with pytest.raises(UnsafeName):
        await gallery.thumbnail_path(name)
    with pytest.raises(UnsafeName):
        await gallery.delete_image(name)
    with pytest.raises(UnsafeName):
        await gallery.get_entry(name)

    assert tree(outside) == before_outside
    assert tree(root) == before_root
    assert (tmp_path / "x.png").exists()


async def test_symlink_out_of_the_gallery_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    secret.write_bytes(png_bytes(parameters="secret prompt\nSteps: 1, Sampler: Euler, Seed: 1"))
    (outside / "secret.json").write_text('{"mobilesd_job_id": "X", "generation_params": {}}')
    (root / "link.png").symlink_to(secret)
    (root / "link.json").symlink_to(outside / "secret.json")
    (root / "loop.png").symlink_to(root / "loop.png")
    before = tree(outside)

    gallery = Gallery(root)
    await gallery.start()
    assert await gallery.list_images() == ([], 0)
    with pytest.raises(UnsafeName):
        gallery.image_path("link.png")
    with pytest.raises(UnsafeName):
        await gallery.thumbnail_path("link.png")
    with pytest.raises(UnsafeName):
        await gallery.delete_image("link.png")
    with pytest.raises(GalleryError):
        gallery.image_path("loop.png")
    assert tree(outside) == before
    assert (root / "link.png").is_symlink()
    assert list((root / ".thumbs").iterdir()) == []


async def test_symlink_inside_the_gallery_is_served_and_only_the_link_deleted(
    gallery: Gallery,
) -> None:
    saved = await save(gallery, make_job(), [png_bytes()])
    target = gallery.root / saved[0].filename
    (gallery.root / "alias.png").symlink_to(target.name)
    await gallery.rescan()
    assert gallery.image_path("alias.png") == target.resolve()
    await gallery.delete_image("alias.png")
    assert not (gallery.root / "alias.png").is_symlink()
    assert target.exists()


async def test_thumbs_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".tmp-keep").write_text("not ours")
    (root / ".thumbs").symlink_to(elsewhere)
    with pytest.raises(GalleryError, match="thumbs"):
        await Gallery(root).start()
    assert (elsewhere / ".tmp-keep").exists()


# --- crash leftovers --------------------------------------------------------------------------


async def test_temp_leftovers_are_ignored_and_cleaned_at_start(gallery: Gallery) -> None:
    job = make_job()
    saved = await save(gallery, job, [png_bytes()])
    root = gallery.root
    real = saved[0].filename
    # What a crash mid-save leaves: half-written temp files, and a sidecar whose image never
    # got its real name.
    (root / f".tmp-0badf00d-{real}").write_bytes(png_bytes()[:40])
    (root / f".tmp-0badf00d-{real[:-4]}.json").write_text('{"mobilesd_')
    orphan_job = make_job(created="2026-03-02T00:00:00Z")
    orphan = gallery.image_name(orphan_job, 0)[:-4] + ".json"
    (root / orphan).write_text(
        json.dumps({"mobilesd_job_id": orphan_job["mobilesd_job_id"], "generation_params": {}})
    )
    (root / ".thumbs" / ".tmp-cafe-x.png.jpg").write_bytes(b"partial")
    (root / ".thumbs" / "gone.png.jpg").write_bytes(b"thumb of an image that is gone")
    (root / "20260101-000000_USERFILE_000.json").write_text('{"mine": "keep me"}')

    await gallery.rescan()  # a rescan lists around leftovers but leaves them alone
    entries, total = await gallery.list_images()
    assert total == 1 and entries[0]["filename"] == real
    assert (root / orphan).exists()

    fresh = Gallery(root)
    await fresh.start()
    entries, total = await fresh.list_images()
    assert total == 1 and entries[0]["filename"] == real
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted(
        [".thumbs", real, real[:-4] + ".json", "20260101-000000_USERFILE_000.json"]
    )
    assert list((root / ".thumbs").iterdir()) == []


CRASHING_SAVER = """
import asyncio, io, sys
from pathlib import Path
from PIL import Image
from mobilesd_core.gallery import Gallery

JOB = {
    "mobilesd_job_id": "01KCRASHTEST0000000000000",
    "creation_timestamp": "2026-03-01T10:00:00.000Z",
    "generation_params": {"prompt": "crash test", "width": 256, "height": 256, "seed": 1},
}

async def main() -> None:
    gallery = Gallery(Path(sys.argv[1]))
    await gallery.start()
    images = []
    for i in range(3):
        out = io.BytesIO()
        Image.effect_noise((256, 256), 40 + i).convert("RGB").save(out, format="PNG")
        images.append(out.getvalue())
    print("ready", flush=True)
    while True:  # the same job again and again, as a retry after a crash would
        await gallery.save_job_images(JOB, images, {"all_seeds": [1, 2, 3]}, server_alias="x")

asyncio.run(main())
"""


REPO = Path(__file__).resolve().parents[1]


def test_kill_mid_save_leaves_no_partial_image(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for delay in (0.02, 0.11, 0.23):
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHING_SAVER, str(root)],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

        # Whatever instant the kill hit, every image under a real name is whole, carries its
        # infotext and has its sidecar.
        for image in root.glob("[!.]*.png"):
            with Image.open(image) as im:
                im.load()
                assert im.info["parameters"].startswith("crash test")
            assert image.with_suffix(".json").is_file()

    gallery = Gallery(root)
    asyncio.run(gallery.start())
    entries, total = asyncio.run(gallery.list_images())
    assert total <= 3
    assert all(e["mobilesd_job_id"] == "01KCRASHTEST0000000000000" for e in entries)
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert {p.stem for p in root.glob("*.json")} == {p.stem for p in root.glob("*.png")}


def test_png_chunks_are_read_without_decoding_and_checked() -> None:
    from mobilesd_core.gallery.png import png_facts

    for text in ("a fox, Steps: 20", "ein Fuchs im Schnee, 狐"):  # tEXt, then iTXt
        info = PngImagePlugin.PngInfo()
        if text.isascii():
            info.add_text("parameters", text)
        else:
            info.add_itxt("parameters", text)
        out = io.BytesIO()
        Image.new("RGB", (40, 24), "red").save(out, format="PNG", pnginfo=info)
        data = out.getvalue()
        assert png_facts(data) == (40, 24, text)
        broken = bytearray(data)
        broken[60] ^= 0xFF  # one flipped byte: a CRC no longer matches
        assert png_facts(bytes(broken)) is None
        assert png_facts(data[:-20]) is None  # cut short
    assert png_facts(b"GIF89a...") is None


# --- the pixel cap ----------------------------------------------------------------------------


def test_blank_png_is_a_real_png() -> None:
    with Image.open(io.BytesIO(blank_png(300, 200))) as im:
        im.load()
        assert im.size == (300, 200) and im.mode == "L" and im.getextrema() == (0, 0)


THUMBNAILER = """
import asyncio, json, resource, sys
from pathlib import Path
from mobilesd_core.gallery import Gallery, GalleryError

async def main() -> None:
    gallery = Gallery(Path(sys.argv[1]))
    await gallery.start()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        await gallery.thumbnail_path(sys.argv[2])
        outcome = "thumbnail"
    except GalleryError as exc:
        outcome = type(exc).__name__
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"outcome": outcome, "grew_mib": grew / 1024}))

asyncio.run(main())
"""


@pytest.mark.parametrize("edge", [12000, 20000])
def test_a_thumbnail_of_an_image_over_the_pixel_cap_decodes_nothing(
    tmp_path: Path, edge: int
) -> None:
    """12000 x 12000 (144 M pixels) is one Pillow would decode on its own (144 MB here, 576 MB
    in RGB); 20000 x 20000 one it refuses. Peak memory is measured in a process of its own."""
    root = tmp_path / "outputs"
    root.mkdir()
    data = blank_png(edge, edge)
    assert len(data) < 1_000_000
    (root / "bomb.png").write_bytes(data)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", THUMBNAILER, str(root), "bomb.png"],
        capture_output=True,
        env=env,
        timeout=60,
        check=True,
    )
    took = time.monotonic() - start
    result = json.loads(done.stdout.decode().splitlines()[-1])
    print(f"{edge}x{edge} ({len(data):,} B): {result}, {took:.2f}s")
    assert result["outcome"] == "NoThumbnail"
    assert result["grew_mib"] < 20
    assert list((root / ".thumbs").iterdir()) == []


async def test_a_server_image_over_the_pixel_cap_is_saved_without_decoding(
    gallery: Gallery,
) -> None:
    """An upscale without its infotext: the text chunk goes in beside the pixels."""
    job = make_job()
    data = blank_png(20000, 20000)
    (saved,) = await save(gallery, job, [data])
    assert (saved.width, saved.height) == (20000, 20000)
    stored = (gallery.root / saved.filename).read_bytes()
    assert stored.endswith(data[33:])  # the pixels as they came
    with PngImagePlugin.PngImageFile(gallery.root / saved.filename) as im:
        assert im.size == (20000, 20000)
        assert parse_infotext(im.info["parameters"])["prompt"] == "a lighthouse at dusk"
    entry = await gallery.get_entry(saved.filename)
    assert (entry["width"], entry["height"]) == (20000, 20000)

    # A JPEG over the cap cannot be kept as it came (the gallery holds PNGs): refused, named.
    out = io.BytesIO()
    Image.new("L", (9000, 8000)).save(out, format="JPEG")
    with pytest.raises(GalleryError, match="over the 67 M pixels"):
        await save(gallery, make_job(), [out.getvalue()])
