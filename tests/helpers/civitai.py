"""Shared set-up for the Civitai tests: a fake Civitai on loopback and a core pointed at it.

Test modules import `civitai_fixture` and `core_fixture`, which registers the fixtures `civitai`
and `core` there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fakes.civitai import FakeCivitai, FakeCivitaiServer
from mobilesd_core.config import Settings

from ..conftest import Harness, fast_settings, start_harness, stop_harness, wait_for

KEY = "civitai-key-SECRET-0123456789abcdef"


def civitai_settings(root: Path, fake_url: str, **overrides: Any) -> Settings:
    loras = root / "models" / "Lora"
    ckpts = root / "models" / "Stable-diffusion"
    loras.mkdir(parents=True, exist_ok=True)
    ckpts.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "lora_path": loras,
        "checkpoint_path": ckpts,
        "civitai_base_url": fake_url,
        "civitai_api_key": KEY,
        "civitai_retry_backoff": 0.02,
        "civitai_retry_backoff_max": 0.1,
        "civitai_max_retries": 3,
    }
    values.update(overrides)
    return fast_settings(root, **values)


@pytest.fixture(name="civitai")
async def civitai_fixture() -> AsyncIterator[FakeCivitaiServer]:
    server = FakeCivitaiServer(FakeCivitai(chunk_size=64 * 1024))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(name="core")
async def core_fixture(tmp_path: Path, civitai: FakeCivitaiServer) -> AsyncIterator[Harness]:
    harness = await start_harness(civitai_settings(tmp_path, civitai.url))
    try:
        yield harness
    finally:
        await stop_harness(harness)


async def download_view(harness: Harness, download_id: str) -> dict[str, Any]:
    response = await harness.api.get("/api/v1/civitai/downloads")
    assert response.status_code == 200, response.text
    found = [d for d in response.json()["downloads"] if d["download_id"] == download_id]
    assert found, f"download {download_id} not listed"
    return found[0]


async def wait_download(
    harness: Harness, download_id: str, *statuses: str, timeout: float = 20.0
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        view = await download_view(harness, download_id)
        return view if view["status"] in statuses else None

    return await wait_for(check, timeout=timeout, what=f"download {download_id} {statuses}")


async def start_download(harness: Harness, **body: Any) -> str:
    response = await harness.api.post("/api/v1/civitai/download-model", json=body)
    assert response.status_code == 202, response.text
    return response.json()["download_id"]


REAL_META_TEMPLATE: dict[str, Any] = {
    # The shape Civitai's API returns for an A1111/Forge image (flatMeta=true): numbers as
    # strings, the scheduler inside the sampler name, LoRAs as prompt tags plus hashes.
    "prompt": (
        "masterpiece, best quality, a lighthouse at dusk, oil painting, "
        "<lora:add_detail:0.6>, <lora:inkwash_v2:0.8> <lora:grainy_style:1.2>"
    ),
    "negativePrompt": "blurry, lowres, text, watermark",
    "seed": "1234567890",
    "steps": "30",
    "cfgScale": "6.5",
    "sampler": "DPM++ 2M Karras",
    "clipSkip": "2",
    "Size": "832x1216",
    "Model": "juggernautXL_v9Rundiffusionphoto2",
    "Version": "f2.0.1v1.10.1-previous-313-g8a042934",
    "ADetailer model": "face_yolov8n.pt",
    "resources": [],
}
