"""Model sync over real sockets: a job for a model that only the library holds gets the file
copied into its server's folder (verified), the simulated Forge lists it after the refresh, and
the job runs. Copies are shared, tracked and evicted LRU under a cap, never touching files the
core did not copy, the loaded model, or what waiting jobs need."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from mobilesd_core.api.openapi import EVENT_DATA, openapi_document
from mobilesd_core.civitai.hashes import StreamHasher, hash_file
from mobilesd_core.events import Event, Subscription
from mobilesd_core.forge.models import CheckpointInfo, resolve_checkpoint
from mobilesd_core.forge.simulator import SimulatedForge, SimulatorConfig
from mobilesd_core.model_sync.copier import PART_SUFFIX

from .conftest import Harness, fast_settings, start_harness, stop_harness, wait_for
from .helpers.model_files import KB, model_bytes, put
from .helpers.openapi import ResponseChecker, closed_schemas


@dataclass
class Env:
    harness: Harness
    root: Path
    library: Path  # CHECKPOINT_PATH
    lora_library: Path  # LORA_PATH

    def server_dirs(self, alias: str) -> tuple[Path, Path]:
        ckpt, lora = self.root / alias / "Stable-diffusion", self.root / alias / "Lora"
        ckpt.mkdir(parents=True, exist_ok=True)
        lora.mkdir(parents=True, exist_ok=True)
        return ckpt, lora

    async def add_synced(self, alias: str, **fields: Any) -> tuple[Any, Path, Path]:
        """A simulator reading real folders, registered with those folders as sync folders."""
        ckpt, lora = self.server_dirs(alias)
        sim = await self.harness.add_sim(
            alias,
            SimulatorConfig(
                step_ms=5, switch_ms=20, name=alias, models_dir=str(ckpt), lora_dir=str(lora)
            ),
            checkpoint_dir=str(ckpt),
            lora_dir=str(lora),
            **fields,
        )
        return sim, ckpt, lora


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    library, lora_library = tmp_path / "library" / "checkpoints", tmp_path / "library" / "loras"
    library.mkdir(parents=True)
    lora_library.mkdir(parents=True)
    harness = await start_harness(
        fast_settings(tmp_path, checkpoint_path=library, lora_path=lora_library)
    )
    try:
        yield Env(harness, tmp_path, library, lora_library)
    finally:
        await stop_harness(harness)


def drain(events: Subscription, name: str) -> list[dict[str, Any]]:
    out = []
    while not events.queue.empty():
        event: Event | None = events.queue.get_nowait()
        if event is not None and event.name == name:
            out.append(event.data)
    return out


def event_validator(name: str) -> Draft202012Validator:
    doc = openapi_document()
    strict = copy.deepcopy(doc)
    strict["components"]["schemas"] = closed_schemas(strict["components"]["schemas"])
    registry = Registry().with_resource("urn:doc", Resource(strict, specification=DRAFT202012))
    return Draft202012Validator(
        {"$ref": f"urn:doc#/components/schemas/{EVENT_DATA[name]}"}, registry=registry
    )


def parts(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(PART_SUFFIX)]


# --- the simulator reads real folders ------------------------------------------------------


async def test_simulator_lists_a_copied_file_only_after_refresh(tmp_path: Path) -> None:
    models, loras = tmp_path / "models", tmp_path / "loras"
    put(models, "boot/at_start.safetensors")
    loras.mkdir()
    sim = SimulatedForge(SimulatorConfig(models_dir=str(models), lora_dir=str(loras)))
    assert sim.lookup_checkpoint("boot/at_start.safetensors") is not None  # read at boot
    data = put(models, "sdxl/late.safetensors")
    (models / "sdxl" / ".late.safetensors.x.mobilesd-part").write_bytes(b"half")
    put(loras, "style/inkwash.safetensors")
    assert sim.lookup_checkpoint("sdxl/late.safetensors") is None
    assert "inkwash" not in sim.lora_by_alias()
    await sim.refresh_checkpoints()
    await sim.refresh_loras()
    late = sim.lookup_checkpoint("sdxl/late.safetensors")
    assert late is not None
    assert late.title == "sdxl/late.safetensors"  # new file: not hashed until first loaded
    assert late.full_sha256 == hashlib.sha256(data).hexdigest()
    assert "inkwash" in sim.lora_by_alias()
    assert [c.relpath for c in sim.checkpoints if "mobilesd-part" in c.relpath] == []


def test_stream_hasher_agrees_with_hash_file(tmp_path: Path) -> None:
    cases = {
        "a.safetensors": model_bytes("a", 3 * KB + 7),
        "short.safetensors": b"\x05\x00",
        "huge_header.safetensors": (10**9).to_bytes(8, "little") + b"x" * 100,
        "b.ckpt": os.urandom(5000),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        for step in (1, 3, 8, 1000, len(data) or 1):
            hasher = StreamHasher(safetensors=name.endswith(".safetensors"), size=len(data))
            for i in range(0, len(data), step):
                hasher.update(data[i : i + step])
            assert hasher.result() == hash_file(path), (name, step)


def test_a_relative_path_names_a_model_nested_deeper_on_the_server() -> None:
    models = [
        CheckpointInfo(
            "mobilesd/sdxl/a.safetensors [0123456789]",
            "mobilesd/sdxl/a.safetensors",
            "mobilesd_sdxl_a",
            "0123456789",
            None,
        ),
        CheckpointInfo("sdxl/b.safetensors", "sdxl/b.safetensors", "sdxl_b", None, None),
    ]
    assert resolve_checkpoint("sdxl/a.safetensors", models) is models[0]
    assert resolve_checkpoint("sdxl/a", models) is models[0]
    assert resolve_checkpoint("sdxl/b", models) is models[1]


# --- a library-only model is synced, then the job runs -------------------------------------


async def test_library_only_checkpoint_is_copied_verified_and_the_job_runs(env: Env) -> None:
    h = env.harness
    data = put(env.library, "sdxl/libonly_v1.safetensors", 300 * KB)
    put(env.library, "sd15/dreamshaper_8.safetensors")  # also on the server
    sim, ckpt_dir, _ = await env.add_synced("gpu1")
    assert sim.sim.lookup_checkpoint("sdxl/libonly_v1.safetensors") is None
    validate = event_validator("sync")
    with h.core.bus.subscribe()[0] as events:
        job_id = await h.submit(checkpoint_name="sdxl/libonly_v1.safetensors")
        job = await h.wait_status(job_id, "completed", "failed")
        sync_events = drain(events, "sync")
    assert job["status"] == "completed", job["result_details"]
    assert job["assigned_server_alias"] == "gpu1"
    assert sim.sim.generations[-1].checkpoint.startswith("sdxl/libonly_v1.safetensors")
    copied = ckpt_dir / "sdxl" / "libonly_v1.safetensors"
    assert copied.read_bytes() == data
    assert parts(ckpt_dir) == []
    assert sim.sim.request_counts["/sdapi/v1/refresh-checkpoints"] >= 1
    statuses = [e["status"] for e in sync_events]
    assert statuses[0] == "copying" and statuses[-1] == "done", statuses
    assert "verifying" in statuses
    for event in sync_events:
        assert not list(validate.iter_errors(event)), event
    assert sync_events[-1]["jobs"] == [job_id]
    assert sync_events[-1]["bytes_done"] == len(data)
    # The ledger on disk knows the copy, with its hash.
    ledger = json.loads((h.settings.data_path / "model_sync.json").read_text())
    entry = ledger["servers"]["gpu1"][str(copied)]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert (entry["kind"], entry["relpath"], entry["size"]) == (
        "checkpoint",
        "sdxl/libonly_v1.safetensors",
        len(data),
    )
    # The hash cache learned the library file: the next copy elsewhere is checked against it.
    known = h.core.hash_cache.known([env.library / "sdxl" / "libonly_v1.safetensors"])
    assert [k.sha256 for k in known.values()] == [entry["sha256"]]
    # A second job reuses the copy: no new copy.
    again = await h.submit(checkpoint_name="libonly_v1")
    assert (await h.wait_status(again, "completed", "failed"))["status"] == "completed"
    assert h.core.model_sync.copies_started == 1


async def test_library_only_lora_is_synced_too(env: Env) -> None:
    h = env.harness
    data = put(env.lora_library, "styles/inkwash.safetensors")
    sim, _, lora_dir = await env.add_synced("gpu1")
    job_id = await h.submit(loras=[{"name": "inkwash", "weight": 0.7}])
    job = await h.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    assert sim.sim.generations[-1].loras == ["inkwash"]
    assert (lora_dir / "styles" / "inkwash.safetensors").read_bytes() == data
    assert sim.sim.request_counts["/sdapi/v1/refresh-loras"] >= 1


async def test_two_jobs_needing_one_file_share_one_copy(env: Env) -> None:
    h = env.harness
    put(env.library, "flux/shared.safetensors", 200 * KB)
    sim, _, _ = await env.add_synced("gpu1", max_concurrent=2)
    sync = h.core.model_sync
    both_waiting = threading.Event()

    def hold_until_both_wait(_tmp: Path) -> None:
        # Runs in the copy thread: the copy ends only once the second job waits for it too.
        assert both_waiting.wait(20), "the second job never joined the copy"

    sync.after_write = hold_until_both_wait
    await h.api.post("/api/v1/queue/pause")
    first = await h.submit(checkpoint_name="flux/shared.safetensors")
    second = await h.submit(checkpoint_name="shared")
    with h.core.bus.subscribe()[0] as events:
        await h.api.post("/api/v1/queue/resume")
        await wait_for(
            lambda: any(len(jobs) == 2 for jobs in sync._listeners.values()),
            what="both jobs waiting for the copy",
        )
        both_waiting.set()
        for job_id in (first, second):
            job = await h.wait_status(job_id, "completed", "failed")
            assert job["status"] == "completed", job["result_details"]
        done = [e for e in drain(events, "sync") if e["status"] == "done"]
    assert sync.copies_started == 1
    assert len(done) == 1 and sorted(done[0]["jobs"]) == sorted([first, second])
    assert len(sim.sim.generations) == 2


async def test_a_corrupted_copy_is_deleted_and_the_job_retries(env: Env) -> None:
    h = env.harness
    data = put(env.library, "sdxl/fragile.safetensors", 128 * KB)
    sim, ckpt_dir, _ = await env.add_synced("gpu1")
    corrupted: list[str] = []

    def corrupt_once(tmp: Path) -> None:
        if not corrupted:
            corrupted.append(tmp.name)
            with open(tmp, "r+b") as fh:
                fh.seek(1000)
                byte = fh.read(1)
                fh.seek(1000)
                fh.write(bytes([byte[0] ^ 0xFF]))

    h.core.model_sync.after_write = corrupt_once
    job_id = await h.submit(checkpoint_name="sdxl/fragile.safetensors")
    job = await h.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    assert job["attempts"] == 2
    error = job["errors"][0]["error"]
    assert "model sync of 'sdxl/fragile.safetensors' to server 'gpu1'" in error
    assert "failed verification (SHA-256" in error and "it was deleted" in error
    assert (ckpt_dir / "sdxl" / "fragile.safetensors").read_bytes() == data
    assert parts(ckpt_dir) == []
    assert len(sim.sim.generations) == 1


async def test_a_copy_that_never_verifies_fails_the_job_clearly(env: Env) -> None:
    h = env.harness
    put(env.library, "sdxl/broken.safetensors", 64 * KB)
    sim, ckpt_dir, _ = await env.add_synced("gpu1")

    def truncate(tmp: Path) -> None:
        with open(tmp, "r+b") as fh:
            fh.truncate(100)

    h.core.model_sync.after_write = truncate
    job_id = await h.submit(checkpoint_name="sdxl/broken.safetensors")
    job = await h.wait_status(job_id, "completed", "failed")
    assert job["status"] == "failed"
    error = job["result_details"]["error"]
    assert error.startswith("gave up after 3 attempts; last error: model sync of")
    assert "failed verification (100 bytes instead of" in error
    assert not (ckpt_dir / "sdxl" / "broken.safetensors").exists()
    assert parts(ckpt_dir) == []
    assert sim.sim.generations == []
    assert h.core.model_sync.ledger.entries("gpu1") == []


async def test_job_progress_shows_the_copy(env: Env) -> None:
    h = env.harness
    put(env.library, "sdxl/big.safetensors", 3 * 1024 * KB)
    await env.add_synced("gpu1")
    release = threading.Event()
    h.core.model_sync.after_write = lambda _tmp: release.wait(20) or None
    validate = event_validator("job")
    job_id = await h.submit(checkpoint_name="sdxl/big.safetensors")

    async def syncing() -> dict[str, Any] | None:
        job = await h.job(job_id)
        progress = job.get("progress") or {}
        return job if progress.get("phase") == "syncing model" else None

    job = await wait_for(syncing, what="the job to show the copy")
    release.set()
    assert job["progress"]["file"] == "sdxl/big.safetensors"
    assert job["progress"]["bytes_total"] == (env.library / "sdxl/big.safetensors").stat().st_size
    assert not list(validate.iter_errors(job)), list(validate.iter_errors(job))
    done = await h.wait_status(job_id, "completed", "failed")
    assert done["status"] == "completed", done["result_details"]


# --- routing ------------------------------------------------------------------------------


async def test_only_servers_with_a_sync_folder_get_library_only_models(env: Env) -> None:
    h = env.harness
    put(env.library, "sdxl/libonly_v1.safetensors")
    plain = await h.add_sim("plain")  # no checkpoint_dir
    synced, _, _ = await env.add_synced("synced")
    job_ids = [await h.submit(checkpoint_name="sdxl/libonly_v1.safetensors") for _ in range(3)]
    for job_id in job_ids:
        job = await h.wait_status(job_id, "completed", "failed")
        assert job["status"] == "completed", job["result_details"]
        assert job["assigned_server_alias"] == "synced"
    assert plain.sim.generations == []
    assert len(synced.sim.generations) == 3
    # Aimed at the server without a sync folder: fails before dispatch, naming the server.
    put(env.library, "sdxl/other_only.safetensors")
    aimed = await h.submit("plain", checkpoint_name="sdxl/other_only.safetensors")
    job = await h.wait_status(aimed, "completed", "failed")
    assert job["status"] == "failed"
    assert (
        "checkpoint 'sdxl/other_only.safetensors' is not on server 'plain'"
        in (job["result_details"]["error"])
    )
    assert job["attempts"] == 0


async def test_a_model_in_no_library_still_refreshes_once_then_fails(env: Env) -> None:
    h = env.harness
    sim, _, _ = await env.add_synced("gpu1")
    job_id = await h.submit(checkpoint_name="sdxl/juggernautXL_v8")
    job = await h.wait_status(job_id, "failed", "completed")
    assert job["status"] == "failed"
    assert "closest: sdxl/juggernautXL_v9.safetensors" in job["result_details"]["error"]
    assert sim.sim.request_counts.get("/sdapi/v1/refresh-checkpoints") == 1
    assert h.core.model_sync.copies_started == 0


async def test_a_folder_forge_does_not_read_fails_with_a_hint(env: Env) -> None:
    h = env.harness
    put(env.library, "sdxl/lost.safetensors")
    ckpt, _ = env.server_dirs("gpu1")
    elsewhere = env.root / "gpu1" / "not-read-by-forge"
    elsewhere.mkdir()
    await h.add_sim(
        "gpu1",
        SimulatorConfig(step_ms=5, switch_ms=20, name="gpu1", models_dir=str(ckpt)),
        checkpoint_dir=str(elsewhere),
    )
    job_id = await h.submit(checkpoint_name="sdxl/lost.safetensors")
    job = await h.wait_status(job_id, "completed", "failed")
    assert job["status"] == "failed"
    assert (
        "does not list it after a refresh; is checkpoint_dir the folder"
        in (job["result_details"]["error"])
    )


# --- the cache cap ------------------------------------------------------------------------


async def run(h: Harness, **params: Any) -> dict[str, Any]:
    job = await h.wait_status(await h.submit(**params), "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    return job


async def test_cap_evicts_own_copies_lru_never_the_loaded_model_or_foreign_files(
    env: Env,
) -> None:
    h = env.harness
    size = 100 * KB
    for relpath in ("sdxl/a.safetensors",):
        put(env.library, relpath, size)
    for relpath in ("l1.safetensors", "l2.safetensors"):
        put(env.lora_library, relpath, size)
    sim, ckpt_dir, lora_dir = await env.add_synced("gpu1", sync_cap_gb=0.00025)  # 250 kB
    foreign = put(ckpt_dir, "theirs/foreign.safetensors", 400 * KB)  # not the core's
    await run(h, checkpoint_name="sdxl/a.safetensors")  # a: oldest use, and loaded
    await run(h, loras=[{"name": "l1", "weight": 1}])
    with h.core.bus.subscribe()[0] as events:
        await run(h, loras=[{"name": "l2", "weight": 1}])  # over the cap: evicts l1, not a
        evicted = [e for e in drain(events, "sync") if e["status"] == "evicted"]
    assert [e["file"] for e in evicted] == ["l1.safetensors"]
    assert (ckpt_dir / "sdxl" / "a.safetensors").exists()
    assert not (lora_dir / "l1.safetensors").exists()
    assert (lora_dir / "l2.safetensors").exists()
    assert (ckpt_dir / "theirs" / "foreign.safetensors").read_bytes() == foreign
    sync = h.core.model_sync
    runtime = h.core.registry.runtimes["gpu1"]
    assert [e.relpath for e in sync.ledger.entries("gpu1")] == [
        "sdxl/a.safetensors",
        "l2.safetensors",
    ]
    assert sync.ledger.used_bytes("gpu1") <= sync.cap_bytes(runtime)  # type: ignore[operator]
    # The server was told: l1 is gone from its list.
    await wait_for(lambda: "l1" not in sim.sim.lora_by_alias(), what="l1 off the server's list")
    # Evicted files come back on demand.
    await run(h, loras=[{"name": "l1", "weight": 1}])
    assert (lora_dir / "l1.safetensors").exists()
    assert sync.copies_started == 4


async def test_eviction_deletes_only_what_is_still_its_copy(env: Env) -> None:
    """A copy replaced since (same size, other bytes) is left in place and forgotten, never
    deleted; a copy only touched since (other mtime, same bytes) is hashed, found to be ours,
    and evicted."""
    h = env.harness
    size = 100 * KB
    for name in ("l1", "l2", "l3", "l4"):
        put(env.lora_library, f"{name}.safetensors", size)
    _, _, lora_dir = await env.add_synced("gpu1", sync_cap_gb=0.00025)  # room for two
    await run(h, loras=[{"name": "l1", "weight": 1}])
    await run(h, loras=[{"name": "l2", "weight": 1}])
    mine = b"the user's own file, " * 10_000
    mine = mine[: (lora_dir / "l1.safetensors").stat().st_size]
    l1, l2 = lora_dir / "l1.safetensors", lora_dir / "l2.safetensors"
    l1.write_bytes(mine)  # the user's file now, same size
    for path in (l1, l2):  # a later mtime, whatever the clock's granularity; l2 only touched
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    sync = h.core.model_sync
    with h.core.bus.subscribe()[0] as events:
        await run(h, loras=[{"name": "l3", "weight": 1}])  # over the cap: l1 is oldest
        evicted = [e for e in drain(events, "sync") if e["status"] == "evicted"]
    assert evicted == []  # l1 was not ours any more; forgetting it made room
    assert l1.read_bytes() == mine
    assert [e.relpath for e in sync.ledger.entries("gpu1")] == ["l2.safetensors", "l3.safetensors"]
    with h.core.bus.subscribe()[0] as events:
        await run(h, loras=[{"name": "l4", "weight": 1}])  # l2: other mtime, same bytes: ours
        evicted = [e for e in drain(events, "sync") if e["status"] == "evicted"]
    assert [e["file"] for e in evicted] == ["l2.safetensors"]
    assert not l2.exists()
    assert l1.read_bytes() == mine
    saved = json.loads((h.settings.data_path / "model_sync.json").read_bytes())
    assert sorted(Path(p).name for p in saved["servers"]["gpu1"]) == [
        "l3.safetensors",
        "l4.safetensors",
    ]


async def test_cap_keeps_what_waiting_jobs_need(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    h = env.harness
    size = 100 * KB
    put(env.library, "sdxl/a.safetensors", size)
    for relpath in ("l1.safetensors", "l2.safetensors"):
        put(env.lora_library, relpath, size)
    _, _, lora_dir = await env.add_synced("gpu1", sync_cap_gb=0.00025)
    await run(h, checkpoint_name="sdxl/a.safetensors")
    await run(h, loras=[{"name": "l1", "weight": 1}])
    # l2 needs room while a queued job needs l1 and the loaded model is a: nothing may go.
    await h.api.post("/api/v1/queue/pause")
    needs_l2 = await h.submit(loras=[{"name": "l2", "weight": 1}])
    needs_l1 = await h.submit(loras=[{"name": "l1", "weight": 1}])
    with caplog.at_level(logging.WARNING, logger="mobilesd_core.model_sync.sync"):
        await h.api.post("/api/v1/queue/resume")
        for job_id in (needs_l2, needs_l1):
            job = await h.wait_status(job_id, "completed", "failed")
            assert job["status"] == "completed", job["result_details"]
    assert (lora_dir / "l1.safetensors").exists() and (lora_dir / "l2.safetensors").exists()
    assert any("copies in use" in r.getMessage() for r in caplog.records)
    assert h.core.model_sync.copies_started == 3


async def test_a_file_larger_than_the_cap_fails_at_once(env: Env) -> None:
    h = env.harness
    put(env.library, "sdxl/huge.safetensors", 300 * KB)
    sim, _, _ = await env.add_synced("gpu1", sync_cap_gb=0.0001)
    job = await h.wait_status(
        await h.submit(checkpoint_name="sdxl/huge.safetensors"), "completed", "failed"
    )
    assert job["status"] == "failed"
    assert "is larger than the sync cap of server 'gpu1'" in job["result_details"]["error"]
    assert job["attempts"] == 1
    assert sim.sim.generations == []


# --- the API ------------------------------------------------------------------------------


async def test_models_answer_flags_library_only_models_and_the_library_names_servers(
    env: Env,
) -> None:
    h = env.harness
    check = ResponseChecker(openapi_document())
    put(env.library, "sd15/dreamshaper_8.safetensors")  # the simulator lists it
    put(env.library, "sdxl/libonly_v1.safetensors")
    put(env.lora_library, "add_detail.safetensors")  # listed too
    put(env.lora_library, "inkwash.safetensors")
    await h.add_sim("plain")
    await env.add_synced("gpu1")
    for alias in ("plain", "gpu1"):
        models = check(await h.api.get(f"/api/v1/servers/{alias}/models"))
        assert models["library_only"] == {
            "checkpoints": ["sdxl/libonly_v1.safetensors"],
            "loras": ["inkwash"],
        }
    assert check(await h.api.get("/api/v1/servers/plain/models"))["sync"] is None
    library = check(await h.api.get("/api/v1/checkpoints"))
    on = {i["relativePath"]: i["on_servers"] for i in library["items"]}
    assert on == {
        "sd15/dreamshaper_8.safetensors": ["gpu1", "plain"],
        "sdxl/libonly_v1.safetensors": [],
    }
    loras = check(await h.api.get("/api/v1/loras"))
    assert {i["relativePath"]: i["on_servers"] for i in loras["items"]} == {
        "add_detail.safetensors": ["gpu1", "plain"],
        "inkwash.safetensors": [],
    }

    await run(h, target="gpu1", checkpoint_name="sdxl/libonly_v1.safetensors")
    models = check(await h.api.get("/api/v1/servers/gpu1/models", params={"refresh": "1"}))
    assert models["library_only"]["checkpoints"] == []
    sync = models["sync"]
    assert sync["checkpoint_dir"] == str(env.root / "gpu1" / "Stable-diffusion")
    assert [c["relpath"] for c in sync["copies"]] == ["sdxl/libonly_v1.safetensors"]
    assert sync["used_bytes"] == sync["copies"][0]["size"] and sync["cap_bytes"] is None
    library = check(await h.api.get("/api/v1/checkpoints"))
    on = {i["relativePath"]: i["on_servers"] for i in library["items"]}
    assert on["sdxl/libonly_v1.safetensors"] == ["gpu1"]


async def test_sync_folders_are_validated(env: Env) -> None:
    h = env.harness
    check = ResponseChecker(openapi_document())
    sim_dirs = env.server_dirs("gpu1")
    a_file = env.root / "a-file"
    a_file.write_text("x")
    base = {"alias": "gpu1", "api_url": "http://127.0.0.1:9"}
    cases = [
        ({"checkpoint_dir": "models/sd"}, "checkpoint_dir", "must be an absolute path"),
        ({"lora_dir": "/srv/../etc"}, "lora_dir", "must not contain '..'"),
        ({"checkpoint_dir": str(env.root / "nope")}, "checkpoint_dir", "does not exist"),
        ({"lora_dir": str(a_file)}, "lora_dir", "is not a folder"),
        ({"checkpoint_dir": str(env.library / "sub")}, "checkpoint_dir", "does not exist"),
        ({"checkpoint_dir": str(env.library)}, "checkpoint_dir", "overlaps CHECKPOINT_PATH"),
        ({"lora_dir": str(env.root)}, "lora_dir", "overlaps"),
        ({"sync_cap_gb": 0}, "sync_cap_gb", "greater than 0"),
        (
            {"checkpoint_dir": str(sim_dirs[0]), "lora_dir": str(sim_dirs[0])},
            "lora_dir",
            "must differ from checkpoint_dir",
        ),
    ]
    for fields, path, fragment in cases:
        response = await h.api.post("/api/v1/servers", json={**base, **fields})
        check(response)
        assert response.status_code == 422, (fields, response.text)
        details = response.json()["error"]["details"]
        assert [d["path"] for d in details] == [path], details
        assert fragment in details[0]["message"], details
    added = check(
        await h.api.post(
            "/api/v1/servers",
            json={**base, "checkpoint_dir": str(sim_dirs[0]) + "/", "sync_cap_gb": 2},
        )
    )
    assert added["checkpoint_dir"] == str(sim_dirs[0])  # normalised
    assert added["lora_dir"] is None and added["sync_cap_gb"] == 2
    bad = await h.api.put("/api/v1/servers/gpu1", json={"lora_dir": "relative"})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["path"] == "lora_dir"
    cleared = check(await h.api.put("/api/v1/servers/gpu1", json={"checkpoint_dir": None}))
    assert cleared["checkpoint_dir"] is None
    # A folder that went away later does not block other edits, nor a restart.
    gone = env.root / "gone"
    gone.mkdir()
    check(await h.api.put("/api/v1/servers/gpu1", json={"lora_dir": str(gone)}))
    gone.rmdir()
    renamed = check(await h.api.put("/api/v1/servers/gpu1", json={"max_concurrent": 2}))
    assert renamed["lora_dir"] == str(gone)


async def test_copies_cut_short_are_swept_at_start_and_the_ledger_survives(
    tmp_path: Path,
) -> None:
    library = tmp_path / "library"
    put(library, "sdxl/a.safetensors")
    settings = fast_settings(tmp_path, checkpoint_path=library)
    folder = tmp_path / "gpu1"
    folder.mkdir()
    h = await start_harness(settings)
    try:
        await h.add_sim(
            "gpu1",
            SimulatorConfig(step_ms=5, switch_ms=20, name="gpu1", models_dir=str(folder)),
            checkpoint_dir=str(folder),
        )
        await run(h, checkpoint_name="sdxl/a.safetensors")
    finally:
        await stop_harness(h)
    leftover = folder / "sdxl" / f".b.safetensors.0badc0de{PART_SUFFIX}"
    leftover.write_bytes(b"half a model")
    theirs = folder / "sdxl" / ".hidden-by-someone-else.part"
    theirs.write_bytes(b"not ours")
    h = await start_harness(settings)
    try:
        await wait_for(lambda: not leftover.exists(), what="the leftover temp file to go")
        assert theirs.exists()
        entries = h.core.model_sync.ledger.entries("gpu1")
        assert [e.relpath for e in entries] == ["sdxl/a.safetensors"]
    finally:
        await stop_harness(h)


async def test_cancelling_a_job_during_its_copy_keeps_the_copy(env: Env) -> None:
    h = env.harness
    data = put(env.library, "sdxl/slow.safetensors", 256 * KB)
    sim, ckpt_dir, _ = await env.add_synced("gpu1")
    release = threading.Event()
    h.core.model_sync.after_write = lambda _tmp: release.wait(20) or None
    job_id = await h.submit(checkpoint_name="sdxl/slow.safetensors")
    await wait_for(lambda: h.core.model_sync._copies, what="the copy to start")
    cancelled = await h.api.post(f"/api/v1/queue/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert (await h.wait_status(job_id, "cancelled"))["status"] == "cancelled"
    release.set()
    target = ckpt_dir / "sdxl" / "slow.safetensors"
    await wait_for(lambda: h.core.model_sync.ledger.entries("gpu1"), what="the copy recorded")
    assert target.read_bytes() == data
    assert sim.sim.generations == []
    # The next job for it finds the file there: no second copy.
    await run(h, checkpoint_name="sdxl/slow.safetensors")
    assert h.core.model_sync.copies_started == 1
