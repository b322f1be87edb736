"""Local library scan (GET /api/v1/loras, /api/v1/checkpoints) over the real core."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mobilesd_core.api.openapi import openapi_document
from mobilesd_core.library import LORAS, scan_folder

from .conftest import Harness, fast_settings, start_harness, stop_harness
from .helpers.openapi import ResponseChecker


def _write(path: Path, data: bytes | str = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    loras = tmp_path / "models" / "Lora"
    ckpts = tmp_path / "models" / "Stable-diffusion"
    _write(loras / "add_detail.safetensors", b"a" * 10)
    _write(loras / "style" / "ink" / "inkwash.safetensors", b"b" * 25)
    _write(loras / "old.pt", b"c" * 3)
    _write(loras / "notes.txt")
    _write(loras / "inkwash.yaml")
    _write(loras / ".hidden.safetensors")
    _write(loras / ".trash" / "deleted.safetensors")
    info = {
        "name": "v1.0",
        "baseModel": "SDXL 1.0",
        "trainedWords": ["inkwash style", " "],
        "model": {"name": "Inkwash Painting", "type": "LORA"},
    }
    _write(loras / "style" / "ink" / "inkwash.civitai.info", json.dumps(info))
    _write(loras / "style" / "ink" / "inkwash.preview.png")
    _write(loras / "add_detail.json", json.dumps({"name": "Detail Tweaker"}))
    _write(loras / "old.jpg")  # a preview only
    _write(ckpts / "SDXL" / "juggernautXL_v9.safetensors", b"j" * 7)
    _write(ckpts / "flux1-dev-Q8_0.gguf", b"g" * 5)
    _write(ckpts / "model.pt")  # not a checkpoint extension
    return {"loras": loras, "checkpoints": ckpts}


@pytest.fixture
async def library(tmp_path: Path, folders: dict[str, Path]) -> AsyncIterator[Harness]:
    settings = fast_settings(
        tmp_path, lora_path=folders["loras"], checkpoint_path=folders["checkpoints"]
    )
    harness = await start_harness(settings)
    try:
        yield harness
    finally:
        await stop_harness(harness)


async def _get(harness: Harness, path: str) -> dict[str, Any]:
    response = await harness.api.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def _by_path(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["relativePath"]: item for item in answer["items"]}


async def test_loras_nested_with_size_and_only_model_files(
    library: Harness, folders: dict[str, Path]
) -> None:
    answer = await _get(library, "/api/v1/loras")
    assert answer["configured"] is True and answer["available"] is True
    assert answer["error"] is None
    assert answer["root"] == str(folders["loras"])
    items = _by_path(answer)
    assert list(items) == [
        "add_detail.safetensors",
        "old.pt",
        "style/ink/inkwash.safetensors",
    ]
    assert answer["total"] == 3
    ink = items["style/ink/inkwash.safetensors"]
    assert ink["filename"] == "inkwash.safetensors"
    assert ink["size"] == 25
    assert ink["modified"].endswith("Z")


async def test_sidecar_metadata_and_preview(library: Harness) -> None:
    items = _by_path(await _get(library, "/api/v1/loras"))
    assert items["style/ink/inkwash.safetensors"]["sidecar"] == {
        "file": "style/ink/inkwash.civitai.info",
        "name": "Inkwash Painting",
        "baseModel": "SDXL 1.0",
        "trainedWords": ["inkwash style"],
        "preview": "style/ink/inkwash.preview.png",
    }
    assert items["add_detail.safetensors"]["sidecar"] == {
        "file": "add_detail.json",
        "name": "Detail Tweaker",
        "baseModel": None,
        "trainedWords": [],
        "preview": None,
    }
    assert items["old.pt"]["sidecar"]["preview"] == "old.jpg"
    assert items["old.pt"]["sidecar"]["file"] is None


async def test_checkpoints_include_gguf(library: Harness) -> None:
    answer = await _get(library, "/api/v1/checkpoints")
    assert [i["relativePath"] for i in answer["items"]] == [
        "flux1-dev-Q8_0.gguf",
        "SDXL/juggernautXL_v9.safetensors",
    ]
    assert all(i["sidecar"] is None for i in answer["items"])


async def test_feature_off_when_the_variable_is_unset(harness: Harness) -> None:
    for path in ("/api/v1/loras", "/api/v1/checkpoints"):
        answer = await _get(harness, path)
        assert answer == {
            "configured": False,
            "root": None,
            "available": False,
            "error": None,
            "items": [],
            "total": 0,
        }


async def test_missing_folder_is_unavailable_naming_the_variable(tmp_path: Path) -> None:
    not_a_folder = _write(tmp_path / "file.txt")
    settings = fast_settings(tmp_path, lora_path=tmp_path / "nope", checkpoint_path=not_a_folder)
    harness = await start_harness(settings)
    try:
        loras = await _get(harness, "/api/v1/loras")
        assert loras["configured"] is True and loras["available"] is False
        assert "LORA_PATH" in loras["error"] and "does not exist" in loras["error"]
        assert str(tmp_path / "nope") in loras["error"]
        assert loras["items"] == [] and loras["total"] == 0
        ckpts = await _get(harness, "/api/v1/checkpoints")
        assert ckpts["available"] is False
        assert "CHECKPOINT_PATH" in ckpts["error"] and "not a folder" in ckpts["error"]
    finally:
        await stop_harness(harness)


async def test_unreadable_folder_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mobilesd_core.library as library

    locked = tmp_path / "locked"
    _write(locked / "a.safetensors")
    real_scandir = os.scandir

    def refuse(path: Any) -> Any:
        # Injected at the OS call: as root (CI), chmod 0 would not stop the read.
        if os.fspath(path) == os.fspath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(library.os, "scandir", refuse)
    harness = await start_harness(fast_settings(tmp_path, lora_path=locked))
    try:
        answer = await _get(harness, "/api/v1/loras")
        assert answer["available"] is False
        assert "LORA_PATH" in answer["error"] and "cannot be read" in answer["error"]
    finally:
        await stop_harness(harness)


async def test_symlinks_out_of_the_root_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "loras"
    outside = tmp_path / "elsewhere"
    _write(root / "inside" / "a.safetensors")
    _write(outside / "secret.safetensors")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "escape.safetensors").symlink_to(outside / "secret.safetensors")
    (root / "alias").symlink_to(root / "inside", target_is_directory=True)  # inside: listed once
    (root / "inside" / "loop").symlink_to(root, target_is_directory=True)
    harness = await start_harness(fast_settings(tmp_path, lora_path=root))
    try:
        answer = await _get(harness, "/api/v1/loras")
        paths = [i["relativePath"] for i in answer["items"]]
        assert len(paths) == 1 and paths[0] in ("inside/a.safetensors", "alias/a.safetensors")
    finally:
        await stop_harness(harness)


async def test_routes_need_the_token(library: Harness) -> None:
    async with httpx.AsyncClient(base_url=str(library.api.base_url)) as anonymous:
        for path in ("/api/v1/loras", "/api/v1/checkpoints"):
            response = await anonymous.get(path)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"


async def test_answers_match_the_document(library: Harness, tmp_path: Path) -> None:
    """Each answer is checked against the OpenAPI document (the checker raises on a mismatch)."""
    check = ResponseChecker(openapi_document())
    statuses = [
        check_and_status(check, await library.api.get("/api/v1/loras")),
        check_and_status(check, await library.api.get("/api/v1/checkpoints")),
    ]
    async with httpx.AsyncClient(base_url=str(library.api.base_url)) as anonymous:
        statuses.append(check_and_status(check, await anonymous.get("/api/v1/loras")))
    off = await start_harness(fast_settings(tmp_path / "off", lora_path=tmp_path / "missing"))
    try:
        statuses.append(check_and_status(check, await off.api.get("/api/v1/loras")))
        statuses.append(check_and_status(check, await off.api.get("/api/v1/checkpoints")))
    finally:
        await stop_harness(off)
    assert statuses == [200, 200, 401, 200, 200]


def check_and_status(check: ResponseChecker, response: httpx.Response) -> int:
    check(response)
    return response.status_code


def test_five_thousand_files_are_all_listed(tmp_path: Path) -> None:
    """(How fast: about 0.12 s here; speed is the benchmarks' business, not a test's.)"""
    root = tmp_path / "big"
    for i in range(5000):
        folder = root / f"set{i % 50:02d}" / f"sub{i % 7}"
        _write(folder / f"lora_{i:04d}.safetensors")
        if i % 2 == 0:
            _write(folder / f"lora_{i:04d}.civitai.info", '{"baseModel": "SDXL 1.0"}')
            _write(folder / f"lora_{i:04d}.preview.png")
    items = scan_folder(root, LORAS.extensions)
    assert len(items) == 5000
    assert sum(1 for i in items if i["sidecar"]) == 2500
