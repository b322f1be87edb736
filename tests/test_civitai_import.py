"""POST /api/v1/civitai/image-info against the fake Civitai: meta -> generation_params, local
matching by hash then name, and what is missing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from fakes.civitai import FakeCivitaiServer, autov3, safetensors_bytes
from mobilesd_core.api.openapi import openapi_document
from mobilesd_core.civitai.importer import split_sampler, take_lora_tags

from .conftest import Harness
from .helpers.civitai import KEY, REAL_META_TEMPLATE, civitai_fixture, core_fixture  # noqa: F401 - fixtures
from .helpers.openapi import ResponseChecker


def _place(folder: Path, relative: str, data: bytes) -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("sampler", "schedule", "expected"),
    [
        ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras")),
        ("DPM++ 2M SDE Karras", None, ("DPM++ 2M SDE", "Karras")),
        ("DPM++ SDE Karras", None, ("DPM++ SDE", "Karras")),
        ("Euler a", None, ("Euler a", None)),
        ("DPM++ 2M", "Karras", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M", "Automatic", ("DPM++ 2M", None)),
        ("Euler", "SGM Uniform", ("Euler", "SGM Uniform")),
        ("Euler SGM Uniform", None, ("Euler", "SGM Uniform")),
        ("DPM++ 3M SDE Exponential", None, ("DPM++ 3M SDE", "Exponential")),
        ("dpmpp_2m", "karras", ("DPM++ 2M", "Karras")),
        ("euler_ancestral", "normal", ("Euler a", "Normal")),
        ("", None, ("Euler", None)),
    ],
)
def test_sampler_and_scheduler_are_split_into_forge_names(
    sampler: str, schedule: str | None, expected: tuple[str, str | None]
) -> None:
    assert split_sampler(sampler, schedule) == expected


def test_lora_tags_leave_the_prompt_clean() -> None:
    prompt, tags = take_lora_tags(
        "masterpiece, <lora:add_detail:0.6>, a lighthouse <LORA:ink wash:1> at dusk,"
        " <lyco:grain> <lora:x:bad>"
    )
    assert prompt == "masterpiece, a lighthouse at dusk"
    assert tags == [("add_detail", 0.6), ("ink wash", 1.0), ("grain", None), ("x", None)]


@pytest.fixture
def library(core: Harness) -> dict[str, bytes]:
    """Local files: the checkpoint and one LoRA under other names (found by hash), one LoRA
    by name only."""
    settings = core.settings
    assert settings.checkpoint_path and settings.lora_path
    files = {
        "ckpt": safetensors_bytes(70_000, seed=1),
        "detail": safetensors_bytes(30_000, seed=2),
        "grain": safetensors_bytes(20_000, seed=3),
    }
    _place(settings.checkpoint_path, "SDXL/juggernaut_local_copy.safetensors", files["ckpt"])
    _place(settings.checkpoint_path, "other.safetensors", safetensors_bytes(9_000, seed=9))
    _place(settings.lora_path, "tweaks/detail_tweaker.safetensors", files["detail"])
    _place(settings.lora_path, "grainy_style.safetensors", files["grain"])
    return files


async def test_real_image_maps_to_params_matching_by_hash_then_name(
    core: Harness, civitai: FakeCivitaiServer, library: dict[str, bytes]
) -> None:
    fake = civitai.fake
    remote = safetensors_bytes(40_000, seed=4)
    ink = fake.add_model("Inkwash", files=[("inkwash_v2.safetensors", remote)])
    meta = {
        **REAL_META_TEMPLATE,
        "Model hash": _sha(library["ckpt"])[:10],
        "hashes": {
            "model": _sha(library["ckpt"])[:10],
            "lora:add_detail": autov3(library["detail"])[:12],  # type: ignore[index]
            "lora:inkwash_v2": autov3(remote)[:12].upper(),  # type: ignore[index]
        },
    }
    image_id = fake.add_image(meta, nsfw_level=4)  # R: needs browsingLevel beyond PG
    check = ResponseChecker(openapi_document())

    answer = check(
        await core.api.post(
            "/api/v1/civitai/image-info",
            json={"url": f"https://civitai.com/images/{image_id}?period=AllTime"},
        )
    )

    params = answer["generation_params"]
    assert params["prompt"] == "masterpiece, best quality, a lighthouse at dusk, oil painting"
    assert params["negative_prompt"] == "blurry, lowres, text, watermark"
    assert (params["seed"], params["steps"], params["cfg_scale"]) == (1234567890, 30, 6.5)
    assert (params["sampler_name"], params["scheduler"]) == ("DPM++ 2M", "Karras")
    assert (params["width"], params["height"], params["clip_skip"]) == (832, 1216, 2)
    assert params["checkpoint_name"] == "SDXL/juggernaut_local_copy.safetensors"
    assert params["loras"] == [
        {"name": "detail_tweaker", "weight": 0.6},
        {"name": "inkwash_v2", "weight": 0.8},
        {"name": "grainy_style", "weight": 1.2},
    ]
    by_name = {r["name"]: r for r in answer["resources"]}
    assert by_name["juggernautXL_v9Rundiffusionphoto2"]["local"] == {
        "relative_path": "SDXL/juggernaut_local_copy.safetensors",
        "matched_by": "hash",
    }
    assert by_name["add_detail"]["local"]["matched_by"] == "hash"
    assert by_name["grainy_style"]["local"] == {
        "relative_path": "grainy_style.safetensors",
        "matched_by": "name",
    }
    assert [m["name"] for m in answer["missing"]] == ["inkwash_v2"]
    missing = answer["missing"][0]
    assert missing["model_version_id"] == ink.id
    assert (missing["type"], missing["model_type"], missing["downloadable"]) == (
        "lora",
        "LORA",
        True,
    )
    # Through the fake: images with the parameters docs/civitai.md names, the key as Bearer.
    images = [r for r in fake.requests if r.path == "/api/v1/images"]
    assert images[0].query == {
        "imageId": str(image_id),
        "withMeta": "true",
        "flatMeta": "true",
        "browsingLevel": "31",
    }
    assert all(r.authorization == f"Bearer {KEY}" for r in fake.requests)
    assert all("mobilesd" in (r.user_agent or "").lower() for r in fake.requests)

    # The hashes were computed once and cached: a second import reads no model file again.
    cache = core.settings.data_path / "civitai_hashes.json"
    assert cache.exists()
    before = cache.stat().st_mtime_ns
    again = check(await core.api.post("/api/v1/civitai/image-info", json={"image_id": image_id}))
    assert again["generation_params"] == params
    assert cache.stat().st_mtime_ns == before


async def test_on_site_generation_resources_come_from_model_versions(
    core: Harness, civitai: FakeCivitaiServer, library: dict[str, bytes]
) -> None:
    fake = civitai.fake
    ckpt = fake.add_model(
        "Juggernaut XL",
        type="Checkpoint",
        files=[("juggernautXL_v9.safetensors", library["ckpt"])],
    )
    lora = fake.add_model("Paper Cut", files=[("papercut.safetensors", b"\0" * 64)])
    image_id = fake.add_image(
        {
            "prompt": "a paper cut fox",
            "sampler": "Euler a",
            "steps": 25,
            "cfgScale": 7,
            "width": 1024,
            "height": 1024,
            "seed": 42,
            "civitaiResources": [
                {"type": "checkpoint", "modelVersionId": ckpt.id},
                {"type": "lora", "weight": 0.75, "modelVersionId": lora.id},
            ],
        }
    )
    answer = (await core.api.post("/api/v1/civitai/image-info", json={"url": str(image_id)})).json()
    params = answer["generation_params"]
    assert params["checkpoint_name"] == "SDXL/juggernaut_local_copy.safetensors"
    assert params["loras"] == [{"name": "papercut", "weight": 0.75}]
    assert (params["width"], params["height"], params["scheduler"]) == (1024, 1024, None)
    assert [(m["name"], m["model_version_id"], m["model_name"]) for m in answer["missing"]] == [
        ("papercut", lora.id, "Paper Cut")
    ]


@pytest.mark.parametrize(
    ("body", "status", "code", "text"),
    [
        ({"image_id": 999999}, 404, "civitai_image_not_found", "no image 999999"),
        ({"url": "https://example.com/images/5"}, 422, "invalid_fields", "not Civitai"),
        ({"url": "https://civitai.com/models/5"}, 422, "invalid_fields", "image link"),
        ({}, 422, "invalid_fields", "either url or image_id"),
        ({"image_id": "12"}, 422, "invalid_fields", "integer"),
    ],
)
async def test_bad_requests_say_what_is_wrong(
    core: Harness, body: dict[str, Any], status: int, code: str, text: str
) -> None:
    check = ResponseChecker(openapi_document())
    response = await core.api.post("/api/v1/civitai/image-info", json=body)
    error = check(response)["error"]
    assert (response.status_code, error["code"]) == (status, code), response.text
    assert text in error["message"] or any(text in d["message"] for d in error.get("details", []))


async def test_image_without_generation_data(core: Harness, civitai: FakeCivitaiServer) -> None:
    image_id = civitai.fake.add_image(None)
    response = await core.api.post("/api/v1/civitai/image-info", json={"image_id": image_id})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "civitai_no_meta"
    assert "no generation data" in error["message"]


async def test_busy_civitai_is_retried_then_reported(
    core: Harness, civitai: FakeCivitaiServer
) -> None:
    fake = civitai.fake
    image_id = fake.add_image({"prompt": "a fox", "Size": "1000x1500", "steps": "500"})
    fake.add_fault("status", path="/api/v1/images", status=503, headers={"Retry-After": "0"})
    answer = (await core.api.post("/api/v1/civitai/image-info", json={"image_id": image_id})).json()
    params = answer["generation_params"]
    assert (params["width"], params["height"], params["steps"]) == (1000, 1504, 150)
    assert any("steps 500" in w for w in answer["warnings"])
    fake.add_fault("status", path="/api/v1/images", status=503, count=None)
    response = await core.api.post("/api/v1/civitai/image-info", json={"image_id": image_id})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "civitai_unavailable"
