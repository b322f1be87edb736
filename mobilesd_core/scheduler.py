"""Which pending job a free server takes next.

FIFO by `position`, skipping jobs that target another server and jobs waiting out a retry
backoff. (Checkpoint affinity is the scheduling issue's; it plugs in here.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def eligible(job: dict[str, Any], alias: str, now: float) -> bool:
    target = job.get("target_server_alias")
    if target is not None and target != alias:
        return False
    return (job.get("retry_at") or 0) <= now


def pick(
    pending_in_order: Iterable[dict[str, Any]], alias: str, now: float
) -> dict[str, Any] | None:
    for job in pending_in_order:
        if eligible(job, alias, now):
            return job
    return None
