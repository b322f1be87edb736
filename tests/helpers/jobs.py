"""Job records written straight into a data folder, as a crashed core leaves them."""

from __future__ import annotations

from typing import Any


async def leave_job_processing(settings: Any, *, interruptions: int = 0) -> str:
    """Write a job as a killed core leaves it: processing, one attempt counted."""
    from mobilesd_core.jobs.store import JobStore
    from mobilesd_core.schema import GenerationParams, new_job

    store = JobStore(settings.data_path)
    await store.open()
    (job,) = await store.add(
        [new_job(GenerationParams(prompt="x", steps=2, width=64, height=64), source="api")]
    )
    await store.update(
        job["mobilesd_job_id"],
        {"status": "processing", "attempts": 1, "interruptions": interruptions},
    )
    await store.close()
    return job["mobilesd_job_id"]
