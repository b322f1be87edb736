"""Files made for people follow the umask; the core's own files and its secrets stay 0600.

With `UMASK=002` (the Docker image's default, or `umask 002; mobilesd serve`), the people in
the share's group must be able to edit and delete what the core puts there: gallery images,
sidecars and thumbnails, the inbox's processed/ and failed/ folders and reports, Civitai
downloads with their sidecars, and model-sync copies. The core runs in this process with the
umask set (every file is made by the process, its worker threads included), against a real
simulator, the fake Civitai and a real inbox. tests/test_docker.py checks the same in the image,
with ownership.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes.civitai import FakeCivitaiServer, safetensors_bytes
from mobilesd_core.forge.simulator import SimulatorConfig

from .conftest import start_harness, stop_harness, wait_for
from .helpers.civitai import civitai_fixture, civitai_settings, start_download, wait_download
from .helpers.inbox import settled
from .helpers.model_files import put

__all__ = ["civitai_fixture"]  # the `civitai` fixture


@pytest.fixture(params=[0o002, 0o022], ids=["umask-002", "umask-022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def wrong_modes(paths: list[Path], umask: int) -> list[str]:
    """Each path whose mode is not what the umask gives a file (0666) or folder (0777)."""
    wrong = []
    for path in paths:
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        if mode(path) != want:
            wrong.append(f"{path}: {mode(path):04o}, expected {want:04o}")
    return wrong


async def test_files_for_people_follow_the_umask_and_secrets_stay_private(
    tmp_path: Path, umask: int, civitai: FakeCivitaiServer
) -> None:
    root = tmp_path
    settings = civitai_settings(
        root,
        civitai.url,
        civitai_subfolders=True,
        inbox_poll_seconds=0.1,
        inbox_settle_seconds=0.2,
    )
    (root / "inbox").mkdir()
    library = settings.checkpoint_path
    assert library is not None and settings.lora_path is not None
    put(library, "sdxl/libonly_v1.safetensors")
    forge_models = root / "forge" / "Stable-diffusion"
    forge_models.mkdir(parents=True)
    version = civitai.fake.add_model(
        "Ink Wash", base_model="SDXL 1.0", files=[("inkwash.safetensors", safetensors_bytes(4096))]
    )
    h = await start_harness(settings)
    try:
        # A password makes servers.json a file with a secret in it.
        await h.add_sim(
            "gpu1",
            SimulatorConfig(
                step_ms=5, switch_ms=20, name="gpu1", auth=("u", "pw"), models_dir=str(forge_models)
            ),
            username="u",
            password="pw",
            checkpoint_dir=str(forge_models),
        )
        job_id = await h.submit(checkpoint_name="sdxl/libonly_v1.safetensors")
        (root / "inbox" / "good.yaml").write_text("prompt: from the inbox\nsteps: 2\n")
        (root / "inbox" / "bad.yaml").write_text("prompt: typo\nstesp: 2\n")
        download_id = await start_download(h, url=f"https://civitai.com/models/{version.model_id}")
        job = await h.wait_status(job_id, "completed", "failed")
        assert job["status"] == "completed", job["result_details"]
        (image,) = job["result_details"]["images"]
        thumb = await h.api.get(f"/gallery_files/{image}?thumb=1")
        assert thumb.status_code == 200, thumb.text
        await wait_for(lambda: settled(h, "good.yaml", "bad.yaml"), what="the inbox files")
        done = await wait_download(h, download_id, "completed", "failed")
        assert done["status"] == "completed", done
        await wait_for(
            lambda: (settings.lora_path / "SDXL 1.0" / "inkwash.preview.png").exists(),
            what="the download's preview",
        )
    finally:
        await stop_harness(h)

    gallery, inbox, loras = settings.gallery_path, root / "inbox", settings.lora_path
    for_people = [
        gallery / image,
        gallery / (image[:-4] + ".json"),
        gallery / ".thumbs",
        gallery / ".thumbs" / (image + ".jpg"),
        inbox / "processed",
        inbox / "failed",
        inbox / "failed" / "bad.yaml.error.txt",
        loras / "SDXL 1.0",
        loras / "SDXL 1.0" / "inkwash.safetensors",
        loras / "SDXL 1.0" / "inkwash.civitai.info",
        loras / "SDXL 1.0" / "inkwash.preview.png",
        forge_models / "sdxl",
        forge_models / "sdxl" / "libonly_v1.safetensors",
    ]
    assert wrong_modes(for_people, umask) == []
    # The core's own state, and its secrets (webhook key, server passwords): the core's alone.
    data = settings.data_path
    assert {"webhook_secret", "servers.json"} <= {p.name for p in data.iterdir()}
    private = [p for p in data.rglob("*") if p.is_file()]
    assert [f"{p}: {mode(p):04o}" for p in private if mode(p) != 0o600] == []
