"""Faults of the core's own machine: a full or read-only disk, folders vanishing, kills mid-phase.

Disk faults are injected at the OS call, in-process: `os.write` (and `os.open` for writing) fail
with ENOSPC or EROFS for files under one folder, the way a full or read-only filesystem fails
them, whichever thread writes. What must hold: no accepted job is lost, the store always loads,
the error is stated plainly, and the service recovers by itself when the fault goes away.

Kills use the real `mobilesd serve` subprocess of test_crash.py, with the phase held open by a
fault, so the kill lands in that phase every time (the random soak covers the rest).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from mobilesd_core.config import ConfigError
from mobilesd_core.forge.simulator import SimServer, SimulatorConfig
from mobilesd_core.forge.simulator.server import free_port

from .conftest import Harness, fast_settings, start_harness, stop_harness, wait_for
from .helpers.images import png_bytes
from .helpers.processes import TOKEN, CoreProcess, read_archive

TERMINAL = {"completed", "failed", "cancelled"}


class FaultyDisk:
    """Makes writes under chosen folders fail at the OS call, like a full or read-only disk."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.broken: dict[Path, int] = {}
        self.hits: Counter[int] = Counter()
        real_write, real_open = os.write, os.open

        def write(fd: int, data: bytes) -> int:  # type: ignore[no-untyped-def]
            err = self._errno_for(_fd_path(fd)) if self.broken else None
            if err is not None:
                self.hits[err] += 1
                raise OSError(err, os.strerror(err))
            return real_write(fd, data)

        def open_(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
            writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            err = self._errno_for(str(path)) if self.broken and writing else None
            if err == errno.EROFS:  # a full disk still opens files; a read-only one does not
                self.hits[err] += 1
                raise OSError(err, os.strerror(err), str(path))
            return real_open(path, flags, mode, dir_fd=dir_fd)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "open", open_)

    def _errno_for(self, path: str | None) -> int | None:
        if not path:
            return None
        for root, err in list(self.broken.items()):
            if path == str(root) or path.startswith(f"{root}/"):
                return err
        return None

    def fail(self, root: Path, err: int = errno.ENOSPC) -> None:
        self.broken[root.resolve()] = err

    def heal(self) -> None:
        self.broken.clear()


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FaultyDisk:
    return FaultyDisk(monkeypatch)


def terminal_tally(harness: Harness):  # type: ignore[no-untyped-def]
    sub, _ = harness.core.bus.subscribe(queue_size=1_000_000)

    def drain() -> Counter[str]:
        while not sub.queue.empty():
            event = sub.queue.get_nowait()
            if event is not None and event.name == "job" and event.data["status"] in TERMINAL:
                counts[event.data["mobilesd_job_id"]] += 1
        return counts

    counts: Counter[str] = Counter()
    return drain


# --- a full or read-only disk -----------------------------------------------------------------


async def test_disk_full_on_submit_is_a_plain_503_and_changes_nothing(
    tmp_path: Path, disk: FaultyDisk
) -> None:
    settings = fast_settings(tmp_path)
    harness = await start_harness(settings)
    try:
        disk.fail(settings.data_path, errno.ENOSPC)
        body = {"generation_params": {"prompt": "no room", "width": 64, "height": 64}}
        response = await harness.api.post("/api/v1/generate", json=body)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "storage_unavailable"
        assert "cannot write the job store in" in error["message"]
        assert "No space left on device; nothing was changed" in error["message"]
        assert (await harness.api.get("/api/v1/queue/jobs")).json()["total"] == 0
        assert disk.hits[errno.ENOSPC] >= 1
        disk.heal()
        job_id = await harness.submit(prompt="room again")
    finally:
        await stop_harness(harness)
    again = await start_harness(settings)  # the store loads, holding exactly the accepted job
    try:
        listed = (await again.api.get("/api/v1/queue/jobs")).json()
        assert [j["mobilesd_job_id"] for j in listed["jobs"]] == [job_id]
    finally:
        await stop_harness(again)


async def test_a_full_disk_at_shutdown_still_stops_every_part(
    tmp_path: Path, disk: FaultyDisk
) -> None:
    settings = fast_settings(tmp_path)
    harness = await start_harness(settings)
    job_id = await harness.submit(prompt="waits for a server")
    await harness.api.aclose()
    disk.fail(settings.data_path)  # the downloads list cannot be saved at stop
    with pytest.raises(OSError, match="No space left on device"):
        await harness.server.close()
    disk.heal()
    # The parts after the failing one stopped too: the store released its lock, so a new core
    # opens the same folder (it would refuse with "in use by another MobileSD process").
    again = await start_harness(settings)
    try:
        listed = (await again.api.get("/api/v1/queue/jobs")).json()
        assert [j["mobilesd_job_id"] for j in listed["jobs"]] == [job_id]
    finally:
        await stop_harness(again)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["full", "read-only"])
async def test_gallery_full_or_read_only_while_saving_retries_until_it_can(
    tmp_path: Path, disk: FaultyDisk, err: int
) -> None:
    settings = fast_settings(tmp_path, max_attempts=50, retry_backoff=0.1, retry_backoff_max=0.2)
    harness = await start_harness(settings)
    try:
        await harness.add_sim("gpu1")
        tally = terminal_tally(harness)
        disk.fail(settings.gallery_path, err)
        job_id = await harness.submit()

        async def failed_once() -> bool:
            return bool((await harness.job(job_id)).get("errors"))

        await wait_for(failed_once, what="a save to fail")
        disk.heal()
        job = await harness.wait_status(job_id, *TERMINAL)
        assert job["status"] == "completed", job
        assert f"could not save the images: {os.strerror(err)}" in job["errors"][0]["error"]
        names = sorted(p.name for p in settings.gallery_path.iterdir() if p.is_file())
        assert len(names) == 2 and not [n for n in names if n.startswith(".tmp-")], names
        await harness.core.run_until_idle()
        assert tally()[job_id] == 1
    finally:
        await stop_harness(harness)


async def test_store_full_while_claiming_and_finishing_recovers_by_itself(
    tmp_path: Path, disk: FaultyDisk
) -> None:
    settings = fast_settings(tmp_path)
    harness = await start_harness(settings)
    try:
        sim = await harness.add_sim("gpu1", SimulatorConfig(step_ms=20, switch_ms=0))
        runtime = harness.core.registry.runtimes["gpu1"]
        tally = terminal_tally(harness)

        # 1. The claim cannot be written: the job stays pending, the slot is not lost.
        await harness.api.post("/api/v1/queue/pause")
        first = await harness.submit(prompt="first", steps=30)
        disk.fail(settings.data_path)
        refused = await harness.api.post("/api/v1/queue/resume")  # its flag can't be saved
        assert refused.status_code == 503, refused.text
        assert "No space left on device" in refused.json()["error"]["message"]
        harness.core.dispatcher.set_paused(False)  # as if resumed just before the disk filled
        await wait_for(lambda: disk.hits[errno.ENOSPC] >= 2, what="a failed claim")
        hits = disk.hits[errno.ENOSPC]
        await wait_for(lambda: disk.hits[errno.ENOSPC] > hits, what="the claim tried again")
        # The hit is counted in the writer thread before the failed claim is undone on the
        # loop: between two tries (a second apart) the job is pending again, its slot free.
        await wait_for(
            lambda: (
                harness.core.store.get_live(first)["status"] == "pending"
                and runtime.active == 0
                and not harness.core.dispatcher._runs
            ),
            what="the failed claim undone",
        )
        assert sim.sim.generations == []
        disk.heal()
        # The run starts once the claim is written (the store shows "processing" a moment
        # earlier, while the write is on its way, and failing the disk then would undo it).
        await wait_for(
            lambda: getattr(harness.core.dispatcher._runs.get(first), "task", None) is not None,
            what="the claim once the disk has room",
        )
        assert harness.core.store.get_live(first)["status"] == "processing"

        # 2. The outcome cannot be written: the job stays processing until it can.
        disk.fail(settings.data_path)
        await wait_for(lambda: len(sim.sim.generations) == 1, what="forge to finish")
        await wait_for(
            lambda: list(settings.gallery_path.glob(f"*{first}*.png")), what="the image saved"
        )
        hits = disk.hits[errno.ENOSPC]
        await wait_for(lambda: disk.hits[errno.ENOSPC] > hits + 1, what="the outcome retried")
        assert harness.core.store.get_live(first)["status"] == "processing"
        disk.heal()
        job = await harness.wait_status(first, *TERMINAL)
        assert job["status"] == "completed" and job["attempts"] == 1, job
        second = await harness.submit(prompt="second")
        assert (await harness.wait_status(second, *TERMINAL))["status"] == "completed"
        await harness.core.run_until_idle()
        counts = tally()
        assert (counts[first], counts[second]) == (1, 1)
        assert runtime.active == 0
    finally:
        await stop_harness(harness)
    again = await start_harness(settings)
    try:
        statuses = [j["status"] for j in (await again.api.get("/api/v1/queue/jobs")).json()["jobs"]]
        assert statuses == ["completed", "completed"]
    finally:
        await stop_harness(again)


async def test_gallery_folder_vanishing_is_made_again(harness: Harness) -> None:
    await harness.add_sim("gpu1")
    first = await harness.submit(prompt="before")
    assert (await harness.wait_status(first, *TERMINAL))["status"] == "completed"
    shutil.rmtree(harness.settings.gallery_path)
    second = await harness.submit(prompt="after")
    job = await harness.wait_status(second, *TERMINAL)
    assert job["status"] == "completed", job
    (name,) = job["result_details"]["images"]
    assert (harness.settings.gallery_path / name).is_file()
    image = await harness.api.get(f"/gallery_files/{name}")
    assert image.status_code == 200


def _read_only_serve(data: Path, gallery: Path) -> subprocess.CompletedProcess[str]:
    """`mobilesd serve` with `data` read-only: a read-only bind mount in a private mount
    namespace (root), or plain permissions (any other user)."""
    command = [
        sys.executable,
        "-m",
        "mobilesd_core.cli",
        "serve",
        "--port",
        str(free_port()),
        "--data",
        str(data),
    ]
    env = {
        **os.environ,
        "STABLE_DIFFUSION_SAVE_PATH": str(gallery),
        "MOBILESD_TOKEN": TOKEN,
        "INBOX_PATH": str(gallery.parent / "inbox"),
    }
    if os.geteuid() != 0:
        data.chmod(0o555)
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
        finally:
            data.chmod(0o755)
    script = (
        'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
        if shutil.which("unshare")
        else "exit 99"
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(data), *command],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    if result.returncode != 2 and "mount" in result.stderr:
        pytest.skip(f"cannot make a read-only mount here: {result.stderr.strip()}")
    return result


async def test_read_only_data_folder_at_start_exits_2_and_the_store_still_loads(
    tmp_path: Path,
) -> None:
    settings = fast_settings(tmp_path)
    harness = await start_harness(settings)
    job_id = await harness.submit(prompt="kept")
    await stop_harness(harness)

    result = await asyncio.to_thread(_read_only_serve, settings.data_path, settings.gallery_path)
    assert result.returncode == 2, result.stderr
    assert (
        f"configuration error: CONFIG_DATA_PATH: folder {settings.data_path} is not writable"
        in result.stderr
    ), result.stderr
    assert "Traceback" not in result.stderr

    again = await start_harness(settings)  # writable again: everything is there
    try:
        assert (await again.job(job_id))["status"] == "pending"
    finally:
        await stop_harness(again)


# --- a stop between saving the images and writing the outcome --------------------------------


async def test_stop_while_saving_lets_the_save_finish_instead_of_running_again(
    tmp_path: Path,
) -> None:
    settings = fast_settings(tmp_path)
    sim = SimServer(SimulatorConfig(step_ms=5, switch_ms=0))
    await sim.start()
    harness = await start_harness(settings)
    try:
        added = await harness.api.post(
            "/api/v1/servers", json={"alias": "gpu1", "api_url": sim.url}
        )
        assert added.status_code == 201, added.text
        core = harness.core
        entered, release = threading.Event(), threading.Event()
        real = core.gallery._prepare_and_write

        def held(*args: object) -> object:
            entered.set()
            release.wait(20)
            return real(*args)

        core.gallery._prepare_and_write = held  # type: ignore[method-assign]
        job_id = await harness.submit(prompt="answered, then the core stops")
        await wait_for(entered.is_set, what="the save to begin")
        await harness.api.aclose()
        closing = asyncio.create_task(harness.server.close())
        loop_task = core.dispatcher._loop_task
        assert loop_task is not None
        await wait_for(loop_task.done, what="the dispatcher to stop assigning")
        release.set()  # the save finishes while the core is stopping
        await closing

        again = await start_harness(settings)
        try:
            job = await again.job(job_id)
            assert job["status"] == "completed" and job["attempts"] == 1, job
            assert len(sim.sim.generations) == 1  # Forge's work was not thrown away
            (name,) = job["result_details"]["images"]
            assert (settings.gallery_path / name).is_file()
        finally:
            await stop_harness(again)
    finally:
        release.set()
        await sim.stop()


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
async def test_images_of_an_interrupted_attempt_go_when_the_job_does_not_complete(
    harness: Harness, ending: str
) -> None:
    """An attempt saved its images, then the core stopped before writing the outcome (past the
    stop's grace, or killed): the job runs again. If it then fails or is cancelled, the gallery
    must not keep images of a job that did not complete."""
    params = {"checkpoint_name": "sdxl/no_such_model"} if ending == "failed" else {}
    job_id = await harness.submit(prompt="saved, then the core stopped", **params)
    job = harness.core.store.get_live(job_id)
    assert job is not None
    (saved,) = await harness.core.gallery.save_job_images(
        job, [png_bytes()], {"seed": 1}, server_alias="gpu1"
    )
    sub, _ = harness.core.bus.subscribe()
    if ending == "cancelled":
        assert (await harness.api.post(f"/api/v1/queue/jobs/{job_id}/cancel")).status_code == 200
    else:
        await harness.add_sim("gpu1")  # it does not have the checkpoint: the job fails
    assert (await harness.wait_status(job_id, *TERMINAL))["status"] == ending

    events: list[Any] = []

    async def removed() -> bool:
        while not sub.queue.empty():
            events.append(sub.queue.get_nowait())
        listed = (await harness.api.get("/api/v1/gallery/images")).json()
        return (
            saved.filename not in [i["filename"] for i in listed["images"]]
            and (await harness.api.get(f"/gallery_files/{saved.filename}")).status_code == 404
            and not list(harness.settings.gallery_path.glob(f"*{job_id}*"))  # sidecar too
            and any(
                e is not None
                and e.name == "image"
                and (e.data.get("removed") or {}).get("filename") == saved.filename
                for e in events
            )
        )

    await wait_for(removed, what="the attempt's image, its sidecar and its listing to go")


# --- SIGKILL in a phase held open ---------------------------------------------------------------


async def test_sigkill_mid_submission_creates_nothing(tmp_path: Path) -> None:
    core = CoreProcess(tmp_path, free_port())
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=core.url, headers=headers, timeout=10) as client:
        await core.start()
        try:
            await core.wait_healthy(client)
            body = b'{"generation_params": {"prompt": "half a body", "steps": 4}}'
            with socket.create_connection(("127.0.0.1", core.port)) as sock:
                sock.sendall(
                    b"POST /api/v1/generate HTTP/1.1\r\nHost: x\r\n"
                    + f"Authorization: Bearer {TOKEN}\r\n".encode()
                    + b"Content-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body[:20]
                )
                await asyncio.sleep(0.2)
                await core.kill()
            await core.start()
            await core.wait_healthy(client)
            assert (await client.get("/api/v1/queue/jobs")).json()["total"] == 0
        finally:
            await core.kill()


async def test_sigkill_while_the_job_is_held_on_the_server(tmp_path: Path) -> None:
    """Dispatch phase: the job is `processing` and Forge holds it (a hang); the core dies.
    After the restart it runs again from the front and completes once, with one image."""
    sim = SimServer(SimulatorConfig(step_ms=5, switch_ms=0, name="gpu1"), port=free_port())
    core = CoreProcess(tmp_path, free_port())
    headers = {"Authorization": f"Bearer {TOKEN}"}
    await sim.start()
    async with httpx.AsyncClient(base_url=core.url, headers=headers, timeout=10) as client:
        await core.start()
        try:
            await core.wait_healthy(client)
            response = await client.post(
                "/api/v1/servers", json={"alias": "gpu1", "api_url": sim.url}
            )
            assert response.status_code == 201
            sim.sim.set_fault("hang", count=1, path="txt2img")
            body = {"generation_params": {"prompt": "held", "steps": 6, "width": 64, "height": 64}}
            job_id = (await client.post("/api/v1/generate", json=body)).json()["mobilesd_job_id"]
            await wait_for(lambda: sim.sim.busy, what="the job to be held on the server")
            await core.kill()
            sim.sim.clear_faults()  # Forge finishes the orphaned generation on its own
            await core.start()
            await core.wait_healthy(client)

            async def done() -> dict | None:
                job = (await client.get(f"/api/v1/queue/jobs/{job_id}")).json()
                return job if job["status"] in TERMINAL else None

            job = await wait_for(done, timeout=30, what="the job after the restart")
            assert job["status"] == "completed", job
            assert job["interruptions"] == 1 and job["attempts"] == 2
            assert len(list(core.gallery.glob(f"*_{job_id}_*.png"))) == 1
            assert await core.terminate() == 0
            archived, _, _ = read_archive(core.data)
            assert [r["mobilesd_job_id"] for r in archived] == [job_id]
        finally:
            await core.kill()
            await sim.stop()


# --- damaged files in the data folder at start -------------------------------------------------


async def _serve_until_exit(core: CoreProcess, timeout: float = 60.0) -> tuple[int, str]:
    """Start `mobilesd serve`, expect it to exit by itself; its exit code and what it printed."""
    before = core.log_path.read_text() if core.log_path.exists() else ""
    await core.start()
    assert core.proc is not None
    try:
        code = await asyncio.wait_for(core.proc.wait(), timeout)
    except TimeoutError:
        await core.kill()
        raise AssertionError("the core kept running:\n" + core.log_tail()) from None
    return code, core.log_path.read_text()[len(before) :]


def _corrupt_copies(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.corrupt-*"))


async def test_a_damaged_jobs_json_stops_serve_with_exit_2_naming_the_place_every_time(
    tmp_path: Path,
) -> None:
    """jobs.json alone holds the queued jobs that did not change since the last start: the core
    refuses to start without it, says where it is damaged and what to do, and leaves it as it
    is, so a restart policy retrying gets the same answer instead of a queue quietly emptied."""
    settings = fast_settings(tmp_path)  # the folders CoreProcess(tmp_path) uses
    harness = await start_harness(settings)
    waiting = await harness.submit(prompt="queued before the last start")
    finished = await harness.submit(prompt="cancelled before the last start")
    assert (await harness.api.post(f"/api/v1/queue/jobs/{finished}/cancel")).status_code == 200
    await stop_harness(harness)
    harness = await start_harness(settings)  # this start folds them into jobs.json
    changed = await harness.submit(prompt="queued since the last start")  # in the journal
    await stop_harness(harness)

    jobs_file = settings.data_path / "jobs.json"
    good = jobs_file.read_bytes()
    at = good.index(b'"status"')
    damaged = good[:at] + b"#" + good[at + 1 :]
    jobs_file.write_bytes(damaged)
    core = CoreProcess(tmp_path, free_port())
    for _ in range(2):  # the second time is a restart policy trying again
        code, output = await _serve_until_exit(core)
        assert code == 2, output
        assert (
            f"mobilesd: configuration error: CONFIG_DATA_PATH: {jobs_file} is damaged "
            f"(line 1, column {at + 1}: Expecting property name enclosed in double quotes). "
            "It holds the queued jobs, so MobileSD does not start without it. "
            "Restore it from a backup, or move it away" in output
        ), output
        assert "Traceback" not in output, output
        assert jobs_file.read_bytes() == damaged
        assert not _corrupt_copies(settings.data_path, "jobs.json")

    # What the message offers: without it, the journal and the archive are what is left.
    jobs_file.rename(jobs_file.with_name("jobs.json.damaged"))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=core.url, headers=headers, timeout=10) as client:
        await core.start()
        try:
            await core.wait_healthy(client)
            listed = (await client.get("/api/v1/queue/jobs")).json()["jobs"]
            statuses = {j["mobilesd_job_id"]: j["status"] for j in listed}
            assert statuses == {finished: "cancelled", changed: "pending"}  # not `waiting`
            assert waiting not in statuses
        finally:
            assert await core.terminate() == 0


async def test_a_damaged_servers_json_is_kept_aside_and_serve_starts_without_servers(
    tmp_path: Path,
) -> None:
    """Servers are quickly added again; a core that refused to start would keep the queue,
    the gallery and the page down (and loop under a restart policy). So the file is moved
    aside, where its settings and passwords stay, and the start says so loudly, once."""
    settings = fast_settings(tmp_path)
    harness = await start_harness(settings)
    response = await harness.api.post(
        "/api/v1/servers",
        json={
            "alias": "gpu1",
            "api_url": f"http://127.0.0.1:{free_port()}",
            "username": "sd",
            "password": "secret-pw",
        },
    )
    assert response.status_code == 201, response.text
    await stop_harness(harness)
    servers_file = settings.data_path / "servers.json"
    damaged = servers_file.read_bytes()[:-7]  # cut short
    servers_file.write_bytes(damaged)

    core = CoreProcess(tmp_path, free_port())
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=core.url, headers=headers, timeout=10) as client:
        for start in range(2):  # the second start is a restart: nothing more to say
            await core.start()
            try:
                await core.wait_healthy(client)
                assert (await client.get("/api/v1/servers")).json() == []
            finally:
                assert await core.terminate() == 0
            (aside,) = _corrupt_copies(settings.data_path, "servers.json")
            assert aside.read_bytes() == damaged and aside.stat().st_mode & 0o077 == 0
            said = core.log_path.read_text().split("===== start at")[-1]
            assert "Traceback" not in said, said
            if start == 0:
                assert f"{servers_file} is damaged (line 1, column " in said, said
                assert f"It was moved to {aside.name} and the core starts with NO SERVERS" in said
                assert "secret-pw" not in said
            else:
                assert "is damaged" not in said and "NO SERVERS" not in said, said

        await core.start()
        try:
            await core.wait_healthy(client)
            response = await client.post(
                "/api/v1/servers", json={"alias": "gpu2", "api_url": "http://127.0.0.1:9"}
            )
            assert response.status_code == 201, response.text
        finally:
            assert await core.terminate() == 0
    assert [s["alias"] for s in json.loads(servers_file.read_bytes())["servers"].values()] == [
        "gpu2"
    ]


async def test_a_folder_in_place_of_a_data_file_is_named_with_exit_2(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    (settings.data_path / "jobs.journal").mkdir()
    code, output = await _serve_until_exit(CoreProcess(tmp_path, free_port()))
    assert code == 2, output
    assert "mobilesd: configuration error: cannot start: [Errno 21] Is a directory" in output
    assert f"{settings.data_path / 'jobs.journal'}" in output
    assert "Traceback" not in output, output


async def test_an_unusable_server_entry_is_left_out_and_the_file_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fast_settings(tmp_path)
    servers_file = settings.data_path / "servers.json"
    written = {
        "servers": {
            "1": {"alias": "good", "api_url": "http://127.0.0.1:9"},
            "2": {"alias": "bad", "api_url": "not a url"},
            "3": {"api_url": "http://127.0.0.1:9"},
        }
    }
    servers_file.write_text(json.dumps(written))
    harness = await start_harness(settings)
    try:
        assert [s["alias"] for s in (await harness.api.get("/api/v1/servers")).json()] == ["good"]
    finally:
        await stop_harness(harness)
    (aside,) = _corrupt_copies(settings.data_path, "servers.json")
    assert json.loads(aside.read_bytes()) == written
    kept = json.loads(servers_file.read_bytes())["servers"]
    assert [s["alias"] for s in kept.values()] == ["good"]
    said = caplog.text
    assert f"{servers_file}: entry 3: no alias; this server is left out" in said
    assert f"{servers_file}: server 'bad': api_url: " in said
    assert f"the file as it was is kept as {aside.name}" in said


# Files of the data folder a start reads, each written with garbage: the core starts (from what
# is left, saying what it skipped) or, for a secret another party holds, stops naming the file.
GARBAGE = {
    "not JSON": b'{"op": "put", "job": {"mobilesd_job_id": \n',
    "not UTF-8": b"garbage \x81\xfe\n",
    "wrong shape": b'{"op": "intent", "key": 1, "servers": [1], "pinned": 5, "downloads": 3}\n',
}
STARTS = (
    "jobs.journal",
    "archive/jobs-2026-01.jsonl",
    "servers.json",
    "civitai_downloads.json",
    "civitai_hashes.json",
    "queue_state.json",
    "notify_batches.json",
    "model_sync.json",
    "inbox-ledger.jsonl",
    "pinned_jobs.json",
    "webhook_outbox.jsonl",
)


@pytest.mark.parametrize("kind", list(GARBAGE))
@pytest.mark.parametrize("name", [*STARTS, "access_token", "webhook_secret"])
async def test_every_data_file_damaged_at_start_is_survived_or_named(
    tmp_path: Path, name: str, kind: str
) -> None:
    settings = dataclasses.replace(fast_settings(tmp_path), token=None)
    harness = await start_harness(settings)  # the files a first start makes
    await stop_harness(harness)
    path = settings.data_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(GARBAGE[kind])
    try:
        harness = await start_harness(settings)
    except ConfigError as exc:
        assert name in ("access_token", "webhook_secret") and kind == "not UTF-8", exc
        assert f"CONFIG_DATA_PATH: {path} is damaged (not text); " in str(exc)
        return
    try:
        token = (settings.data_path / "access_token").read_text().strip()
        health = await harness.api.get(
            "/api/v1/queue/jobs", headers={"Authorization": f"Bearer {token}"}
        )
        assert health.status_code == 200, health.text
    finally:
        await stop_harness(harness)
