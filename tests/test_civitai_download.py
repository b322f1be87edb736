"""Civitai model downloads over real sockets against the fake Civitai: folders and names,
sidecars, resume after a dropped connection and after a restart, hash check, errors, the key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from fakes.civitai import FakeCivitaiServer, safetensors_bytes
from mobilesd_core.api.openapi import openapi_document
from mobilesd_core.forge.simulator import SimulatorConfig

from .conftest import Harness, start_harness, stop_harness, wait_for
from .helpers.civitai import (
    KEY,
    civitai_fixture,  # noqa: F401 - fixture
    civitai_settings,
    core_fixture,  # noqa: F401 - fixture
    download_view,
    start_download,
    wait_download,
)
from .helpers.openapi import ResponseChecker

MB = 1024 * 1024


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


async def test_lora_lands_in_lora_path_with_sidecar_preview_and_refresh(
    tmp_path: Path, civitai: FakeCivitaiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # httpx logs each request URL at INFO
    caplog.set_level(logging.DEBUG, logger="mobilesd_core")
    fake = civitai.fake
    data = safetensors_bytes(3 * MB + 12345, seed=7)
    version = fake.add_model(
        "Ink Wash Painting",
        base_model="SDXL 1.0",
        files=[("inkwash_v2.safetensors", data)],
        trained_words=["inkwash style"],
    )
    harness = await start_harness(civitai_settings(tmp_path, civitai.url, civitai_subfolders=True))
    check = ResponseChecker(openapi_document())
    try:
        sim = await harness.add_sim("gpu1", SimulatorConfig(step_ms=5, switch_ms=20, name="gpu1"))
        with harness.core.bus.subscribe()[0] as events:
            response = await harness.api.post(
                "/api/v1/civitai/download-model",
                json={"url": f"https://civitai.com/models/{version.model_id}/ink-wash"},
            )
            accepted = check(response)
            assert response.status_code == 202
            done = await wait_download(harness, accepted["download_id"], "completed", "failed")
            assert done["status"] == "completed", done
            seen = []
            while not events.queue.empty():
                event = events.queue.get_nowait()
                if event is not None and event.name == "download":
                    seen.append(event.data)
        lora_root = harness.settings.lora_path
        assert lora_root is not None
        assert _files(lora_root) == {
            "SDXL 1.0/inkwash_v2.safetensors",
            "SDXL 1.0/inkwash_v2.civitai.info",
            "SDXL 1.0/inkwash_v2.preview.png",
        }
        assert (lora_root / "SDXL 1.0/inkwash_v2.safetensors").read_bytes() == data
        assert (done["relative_path"], done["bytes_done"], done["bytes_total"]) == (
            "SDXL 1.0/inkwash_v2.safetensors",
            len(data),
            len(data),
        )
        assert [e["status"] for e in seen][-1] == "completed"
        assert len(seen) < 30  # throttled: a few per second, not one per chunk

        # The library scan reads the sidecar we wrote.
        loras = check(await harness.api.get("/api/v1/loras"))
        sidecar = loras["items"][0]["sidecar"]
        assert sidecar["name"] == "Ink Wash Painting"
        assert sidecar["baseModel"] == "SDXL 1.0"
        assert sidecar["trainedWords"] == ["inkwash style"]
        assert sidecar["preview"] == "SDXL 1.0/inkwash_v2.preview.png"
        check(await harness.api.get("/api/v1/civitai/downloads"))

        # Every server rescans its LoRAs.
        await wait_for(
            lambda: sim.sim.request_counts.get("/sdapi/v1/refresh-loras", 0) >= 1,
            what="the LoRA refresh on gpu1",
        )

        # The key went to Civitai as Bearer, never to the storage redirect.
        download_calls = [r for r in fake.requests if r.path.startswith("/api/download/")]
        assert download_calls and all(r.authorization == f"Bearer {KEY}" for r in download_calls)
        assert download_calls[0].query == {"fileId": str(version.files[0].id)}
        storage = fake.storage_requests()
        assert storage and all(r.authorization is None for r in storage)
        assert all(KEY not in json.dumps(r.query) for r in fake.requests)

        # Nor is it in any answer or log line.
        for path in ("/api/v1/civitai/downloads", "/api/v1/openapi.json", "/api/v1/servers"):
            assert KEY not in (await harness.api.get(path)).text
        assert KEY not in caplog.text
        assert "X-Amz-Signature" not in caplog.text  # the signed URL is not logged either
    finally:
        await stop_harness(harness)


async def test_checkpoint_goes_to_checkpoint_path_and_servers_refresh(
    core: Harness, civitai: FakeCivitaiServer
) -> None:
    fake = civitai.fake
    data = safetensors_bytes(200_000, seed=8)
    version = fake.add_model(
        "Juggernaut XL",
        type="Checkpoint",
        version_name="v9",
        files=[("Juggernaut_XL_v9.safetensors", data)],
    )
    sim = await core.add_sim("gpu1")
    before = sim.sim.request_counts.get("/sdapi/v1/refresh-checkpoints", 0)
    download_id = await start_download(core, model_version_id=version.id)
    done = await wait_download(core, download_id, "completed", "failed")
    assert done["status"] == "completed", done
    assert core.settings.checkpoint_path is not None
    assert (core.settings.checkpoint_path / "Juggernaut_XL_v9.safetensors").read_bytes() == data
    await wait_for(
        lambda: sim.sim.request_counts.get("/sdapi/v1/refresh-checkpoints", 0) > before,
        what="the checkpoint refresh on gpu1",
    )
    # The same version again: the file is there with the right hash, nothing is fetched.
    storage_before = len(fake.storage_requests())
    again = await start_download(
        core, url=f"https://civitai.com/models/{version.model_id}?modelVersionId={version.id}"
    )
    done = await wait_download(core, again, "completed", "failed")
    assert (done["status"], done["note"]) == ("completed", "already in the folder")
    assert len(fake.storage_requests()) == storage_before


async def test_a_download_never_overwrites_sidecars_it_did_not_write(
    core: Harness, civitai: FakeCivitaiServer
) -> None:
    """The user's own `.civitai.info` and preview stay as they are: beside a file that is
    already in the folder, and beside a free name the new file takes."""
    fake = civitai.fake
    assert core.settings.lora_path is not None
    folder = core.settings.lora_path
    there = safetensors_bytes(50_000, seed=21)
    already = fake.add_model("Already", files=[("already.safetensors", there)])
    (folder / "already.safetensors").write_bytes(there)
    (folder / "already.civitai.info").write_bytes(b'{"name": "my own notes"}')
    (folder / "already.preview.jpg").write_bytes(b"my own preview")
    # Sidecars with no model file beside them (another tool's, or the model moved away).
    fresh = fake.add_model("Fresh", files=[("fresh.safetensors", safetensors_bytes(50_000))])
    (folder / "fresh.civitai.info").write_bytes(b'{"name": "kept"}')
    (folder / "fresh.preview.png").write_bytes(b"kept preview")
    for version in (already, fresh):
        done = await wait_download(
            core, await start_download(core, model_version_id=version.id), "completed", "failed"
        )
        assert done["status"] == "completed", done
    assert done["filename"] == "fresh.safetensors"
    assert (folder / "already.civitai.info").read_bytes() == b'{"name": "my own notes"}'
    assert (folder / "already.preview.jpg").read_bytes() == b"my own preview"
    assert (folder / "fresh.civitai.info").read_bytes() == b'{"name": "kept"}'
    assert (folder / "fresh.preview.png").read_bytes() == b"kept preview"
    assert _files(folder) == {
        "already.safetensors",
        "already.civitai.info",
        "already.preview.jpg",
        "fresh.safetensors",
        "fresh.civitai.info",
        "fresh.preview.png",
    }  # no second preview that would shadow the user's, no temp files left


async def test_dropped_connection_resumes_with_range(
    core: Harness, civitai: FakeCivitaiServer
) -> None:
    fake = civitai.fake
    data = safetensors_bytes(3 * MB, seed=9)
    version = fake.add_model("Detail", files=[("detail.safetensors", data)])
    cut = 3 * MB // 2
    fake.add_fault("drop", path="/storage/", after_bytes=cut)
    download_id = await start_download(core, model_version_id=version.id)
    done = await wait_download(core, download_id, "completed", "failed")
    assert done["status"] == "completed", done
    ranges = [r.range for r in fake.storage_requests()]
    assert ranges[0] is None
    assert ranges[1] is not None and ranges[1].startswith("bytes=")
    start = int(ranges[1][6:].rstrip("-"))
    assert 0 < start <= cut
    # A fresh redirect for the resumed request (signed URLs expire).
    assert len([r for r in fake.requests if r.path.startswith("/api/download/")]) == 2
    assert core.settings.lora_path is not None
    final = core.settings.lora_path / "detail.safetensors"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert not (core.settings.lora_path / "detail.safetensors.part").exists()


async def test_wrong_range_answer_restarts_from_zero(
    core: Harness, civitai: FakeCivitaiServer
) -> None:
    fake = civitai.fake
    data = safetensors_bytes(2 * MB, seed=10)
    version = fake.add_model("Ranged", files=[("ranged.safetensors", data)])
    fake.add_fault("drop", path="/storage/", after_bytes=MB + 100)
    fake.add_fault("bad_range", path="/storage/")
    download_id = await start_download(core, model_version_id=version.id)
    done = await wait_download(core, download_id, "completed", "failed")
    assert done["status"] == "completed", done
    assert [r.range is not None for r in fake.storage_requests()] == [False, True, False]
    assert core.settings.lora_path is not None
    assert (core.settings.lora_path / "ranged.safetensors").read_bytes() == data


async def test_core_restart_mid_download_resumes(
    tmp_path: Path, civitai: FakeCivitaiServer
) -> None:
    fake = civitai.fake
    data = safetensors_bytes(3 * MB, seed=11)
    version = fake.add_model("Big", files=[("big.safetensors", data)])
    fake.add_fault("hold", path="/storage/", after_bytes=2 * MB)
    settings = civitai_settings(tmp_path, civitai.url)
    first = await start_harness(settings)
    try:
        download_id = await start_download(first, model_version_id=version.id)

        async def halfway() -> bool:
            return (await download_view(first, download_id))["bytes_done"] >= MB

        await wait_for(halfway, what="the first megabyte")
    finally:
        await stop_harness(first)
    fake.release_holds()
    assert settings.lora_path is not None
    part = settings.lora_path / "big.safetensors.part"
    assert part.exists() and 0 < part.stat().st_size < len(data)
    stored = json.loads((settings.data_path / "civitai_downloads.json").read_text())
    assert stored["downloads"][0]["status"] == "downloading"

    second = await start_harness(settings)
    try:
        done = await wait_download(second, download_id, "completed", "failed")
        assert done["status"] == "completed", done
    finally:
        await stop_harness(second)
    resumed = [r.range for r in fake.storage_requests()][-1]
    assert resumed is not None and int(resumed[6:].rstrip("-")) >= MB
    final = settings.lora_path / "big.safetensors"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_wrong_bytes_fail_the_hash_check_and_remove_the_part(
    core: Harness, civitai: FakeCivitaiServer
) -> None:
    fake = civitai.fake
    version = fake.add_model("Bad", files=[("bad.safetensors", safetensors_bytes(500_000))])
    fake.add_fault("corrupt", path="/storage/")
    download_id = await start_download(core, model_version_id=version.id)
    done = await wait_download(core, download_id, "completed", "failed")
    assert (done["status"], done["error_code"]) == ("failed", "hash_mismatch")
    assert "SHA-256" in done["error"] and "deleted" in done["error"]
    assert core.settings.lora_path is not None
    assert _files(core.settings.lora_path) == set()


@pytest.mark.parametrize(
    ("name", "disposition", "expected"),
    [
        ("../x.safetensors", None, "x.safetensors"),
        ("/etc/cron.d/evil.safetensors", None, "evil.safetensors"),
        ("..\\..\\win.safetensors", None, "win.safetensors"),
        ("CON.safetensors", None, "_CON.safetensors"),
        (".hidden.safetensors", None, "hidden.safetensors"),
        ("a\x00b\x1fc.safetensors", None, "a_b_c.safetensors"),
        ("noext", None, "noext.safetensors"),
        (
            None,
            "attachment; filename*=UTF-8''..%2F..%2Fstar%C3%A9.safetensors",
            "staré.safetensors",
        ),
        (None, 'attachment; filename="/abs/plain.safetensors"', "plain.safetensors"),
        (None, None, "file.safetensors"),
    ],
)
async def test_hostile_names_are_made_safe_inside_the_folder(
    core: Harness,
    civitai: FakeCivitaiServer,
    tmp_path: Path,
    name: str | None,
    disposition: str | None,
    expected: str,
) -> None:
    fake = civitai.fake
    version = fake.add_model("Hostile", files=[(name, safetensors_bytes(10_000))])
    version.files[0].disposition = disposition
    download_id = await start_download(core, model_version_id=version.id)
    done = await wait_download(core, download_id, "completed", "failed")
    assert done["status"] == "completed", done
    assert done["filename"] == expected
    assert core.settings.lora_path is not None
    assert expected in _files(core.settings.lora_path)
    outside = {p for p in _files(tmp_path) if not p.startswith(("models/Lora/", "data/"))}
    assert outside == set()


async def test_long_name_is_cut_with_its_extension_and_no_file_is_overwritten(
    core: Harness, civitai: FakeCivitaiServer
) -> None:
    fake = civitai.fake
    long_name = "é" * 200 + ".safetensors"  # 400+ bytes of UTF-8
    version = fake.add_model("Long", files=[(long_name, safetensors_bytes(10_000, seed=1))])
    assert core.settings.lora_path is not None
    mine = core.settings.lora_path / "mine.safetensors"
    mine.write_bytes(b"my own file")
    other = fake.add_model("Mine", files=[("mine.safetensors", safetensors_bytes(10_000, seed=2))])
    first = await start_download(core, model_version_id=version.id)
    second = await start_download(core, model_version_id=other.id)
    done = await wait_download(core, first, "completed", "failed")
    assert done["status"] == "completed", done
    assert len(done["filename"].encode()) <= 240 and done["filename"].endswith(".safetensors")
    done = await wait_download(core, second, "completed", "failed")
    assert (done["status"], done["filename"]) == ("completed", "mine_2.safetensors")
    assert mine.read_bytes() == b"my own file"


@pytest.mark.parametrize(
    ("status", "body", "code", "words"),
    [
        (
            401,
            {
                "error": "Unauthorized",
                "message": "The creator of this asset requires you to be logged in to download it",
            },
            "civitai_login_required",
            ["CIVITAI_API_KEY", "API key"],
        ),
        (
            401,
            {"error": "Unauthorized", "message": "The creator has disabled downloads on this file"},
            "civitai_download_disabled",
            ["disabled downloads"],
        ),
        (
            403,
            {
                "error": "Early Access",
                "deadline": "2026-12-24T00:00:00.000Z",
                "message": "This asset is in Early Access.",
            },
            "civitai_early_access",
            ["early access", "until 2026-12-24T00:00:00.000Z"],
        ),
        (
            403,
            {"error": "You do not have access to download this file", "message": "Forbidden"},
            "civitai_forbidden",
            ["CIVITAI_API_KEY", "access"],
        ),
        (404, {"error": "File not found"}, "civitai_not_found", ["no such file"]),
        (
            410,
            {"error": "Model archived, not available for download"},
            "civitai_gone",
            ["archived"],
        ),
    ],
)
async def test_final_errors_give_civitai_md_messages(
    core: Harness,
    civitai: FakeCivitaiServer,
    status: int,
    body: dict[str, Any],
    code: str,
    words: list[str],
) -> None:
    fake = civitai.fake
    version = fake.add_model("Locked", files=[("locked.safetensors", b"x" * 100)])
    fake.add_fault("status", path=f"/api/download/models/{version.id}", status=status, body=body)
    download_id = await start_download(core, model_version_id=version.id)
    done = await wait_download(core, download_id, "completed", "failed")
    assert (done["status"], done["error_code"]) == ("failed", code)
    for word in words:
        assert word in done["error"], done["error"]
    assert KEY not in done["error"]
    assert len([r for r in fake.requests if r.path.startswith("/api/download/")]) == 1


async def test_rate_limit_and_busy_storage_are_retried_honouring_retry_after(
    core: Harness, civitai: FakeCivitaiServer
) -> None:
    fake = civitai.fake
    data = safetensors_bytes(100_000, seed=12)
    version = fake.add_model("Busy", files=[("busy.safetensors", data)])
    fake.add_fault(
        "status",
        path="/api/download/",
        status=429,
        body={"error": "We've noticed an unusual amount of downloading from your account."},
        headers={"Retry-After": "1"},
    )
    fake.add_fault("status", path="/storage/", status=503, body={"error": "busy"})
    download_id = await start_download(core, model_version_id=version.id)
    done = await wait_download(core, download_id, "completed", "failed")
    assert done["status"] == "completed", done
    downloads = [r for r in fake.requests if r.path.startswith("/api/download/")]
    assert len(downloads) == 3  # 429, then a redirect to a 503, then one that works


async def test_requests_refused_before_any_download(
    tmp_path: Path, core: Harness, civitai: FakeCivitaiServer
) -> None:
    fake = civitai.fake
    check = ResponseChecker(openapi_document())
    embedding = fake.add_model("EasyNegative", type="TextualInversion")
    response = await core.api.post(
        "/api/v1/civitai/download-model", json={"model_version_id": embedding.id}
    )
    error = check(response)["error"]
    assert (response.status_code, error["code"]) == (422, "unsupported_model_type")
    assert "TextualInversion" in error["message"] and "LORA_PATH" in error["message"]
    response = await core.api.post(
        "/api/v1/civitai/download-model", json={"model_version_id": 424242}
    )
    assert (response.status_code, check(response)["error"]["code"]) == (404, "civitai_not_found")
    response = await core.api.post(
        "/api/v1/civitai/download-model", json={"url": "https://civitai.com/images/5"}
    )
    assert check(response)["error"]["code"] == "invalid_fields"
    version = fake.add_model("Twice", files=[("twice.safetensors", b"x" * 10)])
    fake.add_fault("hold", path="/storage/", after_bytes=5)
    first = await start_download(core, model_version_id=version.id)
    second = await start_download(core, url=f"https://civitai.com/model-versions/{version.id}")
    assert first == second  # the same file under way is not downloaded twice
    fake.release_holds()
    assert (await wait_download(core, first, "completed", "failed"))["status"] == "completed"

    # No LORA_PATH: refused with the variable to set.
    other = await start_harness(
        dataclasses.replace(civitai_settings(tmp_path / "nolora", civitai.url), lora_path=None)
    )
    try:
        response = await other.api.post(
            "/api/v1/civitai/download-model", json={"model_version_id": version.id}
        )
        error = check(response)["error"]
        assert (response.status_code, error["code"]) == (409, "folder_not_configured")
        assert "LORA_PATH is not set" in error["message"]
    finally:
        await stop_harness(other)


# --- cancelling -------------------------------------------------------------------------------


async def _cancel(harness: Harness, download_id: str) -> Any:
    return await harness.api.post(f"/api/v1/civitai/downloads/{download_id}/cancel")


async def test_cancel_a_running_download_deletes_its_part_and_it_never_resumes(
    tmp_path: Path, civitai: FakeCivitaiServer
) -> None:
    fake = civitai.fake
    data = safetensors_bytes(3 * MB, seed=13)
    version = fake.add_model("Cancelled", files=[("cancelled.safetensors", data)])
    fake.add_fault("hold", path="/storage/", after_bytes=2 * MB)
    settings = civitai_settings(tmp_path, civitai.url)
    assert settings.lora_path is not None
    part = settings.lora_path / "cancelled.safetensors.part"
    check = ResponseChecker(openapi_document())
    first = await start_harness(settings)
    try:
        with first.core.bus.subscribe()[0] as events:
            download_id = await start_download(first, model_version_id=version.id)

            async def halfway() -> bool:
                return (await download_view(first, download_id))["bytes_done"] >= MB

            await wait_for(halfway, what="the first megabyte")
            assert part.exists()
            response = await _cancel(first, download_id)
            cancelled = check(response)
            assert response.status_code == 200, response.text
            assert (cancelled["download_id"], cancelled["status"]) == (download_id, "cancelled")
            assert _files(settings.lora_path) == set()  # no part file, no final file
            # Saved before the answer: a core killed right now would not resume it either.
            stored = json.loads((settings.data_path / "civitai_downloads.json").read_text())
            assert [d["status"] for d in stored["downloads"]] == ["cancelled"]
            assert (await download_view(first, download_id))["status"] == "cancelled"
            seen = []
            while not events.queue.empty():
                event = events.queue.get_nowait()
                if event is not None and event.name == "download":
                    seen.append(event.data)
        assert seen[-1]["download_id"] == download_id
        assert seen[-1]["status"] == "cancelled"

        # Cancelling it again is a conflict in the usual error shape.
        again = await _cancel(first, download_id)
        error = check(again)["error"]
        assert (again.status_code, error["code"]) == (409, "wrong_state")
        assert error["details"] == {"status": "cancelled"}
    finally:
        await stop_harness(first)
    fake.release_holds()

    # A restart leaves it cancelled: nothing is fetched for it, no part file comes back.
    requests_before = len(fake.requests)
    second = await start_harness(settings)
    try:
        assert download_id not in second.core.downloads._tasks
        probe_version = fake.add_model("Probe", files=[("probe.safetensors", b"p" * 1000)])
        probe = await start_download(second, model_version_id=probe_version.id)
        assert (await wait_download(second, probe, "completed", "failed"))["status"] == "completed"
        assert (await download_view(second, download_id))["status"] == "cancelled"
    finally:
        await stop_harness(second)
    later = fake.requests[requests_before:]
    assert not [r for r in later if r.path.startswith(f"/api/download/models/{version.id}")]
    assert not [r for r in later if r.path.startswith(f"/storage/{version.files[0].id}/")]
    assert not part.exists()
    assert not (settings.lora_path / "cancelled.safetensors").exists()


async def test_cancel_a_queued_download(core: Harness, civitai: FakeCivitaiServer) -> None:
    fake = civitai.fake
    held = []
    for seed in (14, 15):  # two held transfers fill both parallel slots
        fake.add_fault("hold", path="/storage/", after_bytes=10_000)
        version = fake.add_model(f"Held {seed}", files=[(f"held{seed}.safetensors", b"h" * 50_000)])
        held.append(await start_download(core, model_version_id=version.id))
    waiting = fake.add_model("Waiting", files=[("waiting.safetensors", b"w" * 50_000)])
    queued = await start_download(core, model_version_id=waiting.id)

    async def slots_full() -> bool:
        views = {d: (await download_view(core, d))["status"] for d in (*held, queued)}
        return [views[d] for d in held] == ["downloading"] * 2 and views[queued] == "queued"

    await wait_for(slots_full, what="two downloads running and one queued")
    response = await _cancel(core, queued)
    assert (response.status_code, response.json()["status"]) == (200, "cancelled")
    fake.release_holds()
    for download_id in held:
        done = await wait_download(core, download_id, "completed", "failed")
        assert done["status"] == "completed", done
    assert (await download_view(core, queued))["status"] == "cancelled"
    assert not [r for r in fake.requests if r.path == f"/api/download/models/{waiting.id}"]
    assert core.settings.lora_path is not None
    assert _files(core.settings.lora_path) == {
        "held14.safetensors",
        "held14.civitai.info",
        "held14.preview.png",
        "held15.safetensors",
        "held15.civitai.info",
        "held15.preview.png",
    }


async def test_cancel_refuses_finished_and_unknown_downloads(
    core: Harness, civitai: FakeCivitaiServer
) -> None:
    fake = civitai.fake
    check = ResponseChecker(openapi_document())
    version = fake.add_model("Done", files=[("done.safetensors", b"d" * 20_000)])
    download_id = await start_download(core, model_version_id=version.id)
    assert (await wait_download(core, download_id, "completed", "failed"))["status"] == "completed"
    response = await _cancel(core, download_id)
    error = check(response)["error"]
    assert (response.status_code, error["code"]) == (409, "wrong_state")
    assert "completed" in error["message"] and error["details"] == {"status": "completed"}
    assert (await download_view(core, download_id))["status"] == "completed"
    assert core.settings.lora_path is not None
    assert (core.settings.lora_path / "done.safetensors").read_bytes() == b"d" * 20_000

    response = await _cancel(core, "01JUNKNOWNDOWNLOAD000000000")
    error = check(response)["error"]
    assert (response.status_code, error["code"]) == (404, "download_not_found")
    assert "01JUNKNOWNDOWNLOAD000000000" in error["message"]


async def test_cancel_after_the_file_is_in_place_is_refused_and_it_completes(
    core: Harness, civitai: FakeCivitaiServer
) -> None:
    """The preview is fetched after the rename: held there, the download is past the point of
    no return, so the cancel answers 409 and the download still ends completed."""
    fake = civitai.fake
    data = safetensors_bytes(100_000, seed=16)
    version = fake.add_model("Placed", files=[("placed.safetensors", data)])
    fake.add_fault("hold", path="/img/")
    download_id = await start_download(core, model_version_id=version.id)
    assert core.settings.lora_path is not None
    final = core.settings.lora_path / "placed.safetensors"
    await wait_for(final.exists, what="the file under its final name")
    assert (await download_view(core, download_id))["status"] == "verifying"
    response = await _cancel(core, download_id)
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (409, "wrong_state")
    assert "completed" in error["message"] and error["details"] == {"status": "verifying"}
    fake.release_holds()
    done = await wait_download(core, download_id, "completed", "failed", "cancelled")
    assert done["status"] == "completed", done
    assert final.read_bytes() == data
