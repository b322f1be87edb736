"""A real crash between creating a file's jobs and moving the file: no duplicate on restart.

The core runs as a `mobilesd serve` subprocess. A plain file named `processed` in the inbox makes
the move into `processed/` fail, which holds the watcher exactly between the two steps (jobs
committed, file still in the inbox) for as long as the test likes; the core is then SIGKILLed
there. After the obstacle is removed and the core restarted, the file must move on without its
jobs being created again, and the jobs must be the same ones (same ids).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from mobilesd_core.forge.simulator.server import free_port

from .conftest import wait_for
from .test_crash import TOKEN, CoreProcess

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
