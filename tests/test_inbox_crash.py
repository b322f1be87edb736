"""A real crash between creating a file's jobs and moving the file: no duplicate on restart.

The core runs as a `mobilesd serve` subprocess. A plain file named `processed` in the inbox makes
the move into `processed/` fail, which holds the watcher exactly between the two steps (jobs
committed, file still in the inbox) for as long as the test likes; the core is then SIGKILLed
there. After the obstacle is removed and the core restarted, the file must move on without its
jobs being created again, and the jobs must be the same ones (same ids).
"""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

import httpx

from mobilesd_core.forge.simulator.server import free_port

from .conftest import wait_for
from .helpers.jobfiles import nested_matrix_yaml
from .helpers.processes import TOKEN, CoreProcess

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "jobs"


async def inbox_jobs(client: httpx.AsyncClient, name: str) -> list[str]:
    response = await client.get("/api/v1/queue/jobs", params={"limit": 100})
    response.raise_for_status()
    return sorted(j["mobilesd_job_id"] for j in response.json()["jobs"] if j["source_ref"] == name)


async def test_sigkill_between_job_creation_and_move_doubles_nothing(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "processed").write_text("not a folder: the move into processed/ fails\n")
    core = CoreProcess(tmp_path, free_port())
    core.env.update(INBOX_SETTLE_SECONDS="0.2", INBOX_RESCAN_SECONDS="0.5")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=core.url, headers=headers, timeout=10) as client:
        await core.start()
        try:
            await core.wait_healthy(client)
            shutil.copy(EXAMPLES / "batch.yaml", inbox / "batch.yaml")

            async def created() -> list[str] | None:
                found = await inbox_jobs(client, "batch.yaml")
                return found if len(found) == 3 else None

            before = await wait_for(created, what="the jobs of batch.yaml")
            await wait_for(
                lambda: "cannot be moved to processed/" in core.log_tail(),
                what="the watcher to be held before the move",
            )
            await core.kill()
            assert (inbox / "batch.yaml").exists()  # the crash left the file in the inbox

            (inbox / "processed").unlink()
            await core.start()
            await core.wait_healthy(client)
            await wait_for(
                lambda: (inbox / "processed" / "batch.yaml").exists(),
                what="batch.yaml to move after the restart",
            )
            assert await inbox_jobs(client, "batch.yaml") == before
            response = await client.get("/api/v1/queue/jobs")
            assert response.json()["total"] == 3
            assert "were created before a restart; not again" in core.log_tail()
        finally:
            await core.kill()


def _status_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` figure in KiB (VmSize, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def test_a_nested_matrix_file_under_a_memory_limit_fails_alone(tmp_path: Path) -> None:
    """The 9 KB sweep whose placeholder values nest three deep, dropped into the inbox of a
    `mobilesd serve` held to its address space plus 768 MiB (RLIMIT_AS), in polling mode (the
    compose default): it lands in failed/ naming the field and the limit, the valid file
    dropped right after it is queued, and the core's peak memory hardly moves. (It asked for
    gigabytes: the MemoryError killed the watcher for good, and the valid file waited forever.)
    """
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    core = CoreProcess(tmp_path, free_port())
    # Few malloc arenas: each thread's would reserve 64 MiB of address space, not memory.
    core.env.update(INBOX_SETTLE_SECONDS="0.2", INBOX_POLL_SECONDS="0.1", MALLOC_ARENA_MAX="2")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=core.url, headers=headers, timeout=10) as client:
        await core.start()
        try:
            await core.wait_healthy(client)
            assert core.proc is not None
            pid = core.proc.pid
            limit = _status_kib(pid, "VmSize") * 1024 + 768 * 2**20
            resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
            peak_before = _status_kib(pid, "VmHWM")

            nested = nested_matrix_yaml().encode()
            assert len(nested) < 10_000
            for name, data in (("nested.yaml", nested), ("valid.yaml", b"prompt: a fox\n")):
                (inbox / f".{name}.tmp").write_bytes(data)
                os.replace(inbox / f".{name}.tmp", inbox / name)

            async def queued() -> list[str] | None:
                return await inbox_jobs(client, "valid.yaml") or None

            await wait_for(queued, timeout=15, what="the valid file's job")
            await wait_for(
                lambda: (inbox / "failed" / "nested.yaml.error.txt").exists(),
                what="the report of nested.yaml",
            )
            report = (inbox / "failed" / "nested.yaml.error.txt").read_text()
            assert "nested.yaml:1: prompt: would be 3,000,000 characters" in report, report
            assert "at most 20,000" in report
            assert (inbox / "processed" / "valid.yaml").exists()
            assert await inbox_jobs(client, "nested.yaml") == []
            assert core.proc.returncode is None
            grown = (_status_kib(pid, "VmHWM") - peak_before) / 1024
            print(f"core peak RSS grew by {grown:.1f} MiB under RLIMIT_AS {limit / 2**20:.0f} MiB")
            assert grown < 64, f"the core's peak memory grew by {grown:.1f} MiB"
        finally:
            await core.kill()
