"""Inbox set-up: a core whose inbox is watched (queue paused), and waits on what it did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..conftest import Harness, fast_settings, start_harness, wait_for


def inbox_settings(root: Path, mode: str, **overrides: Any) -> Any:
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "inbox_settle_seconds": 0.25,
        "inbox_rescan_seconds": 30.0,  # long: the tests prove events/polling, not the rescan
        "inbox_poll_seconds": 0.1 if mode == "polling" else None,
    }
    values.update(overrides)
    return fast_settings(root, **values)


async def start_paused(settings: Any) -> Harness:
    h = await start_harness(settings)
    response = await h.api.post("/api/v1/queue/pause")
    assert response.status_code == 200, response.text
    await wait_for(lambda: h.core.inbox.watching.is_set(), what="the watcher to start")
    return h


def jobs_of(h: Harness, name: str) -> list[dict[str, Any]]:
    jobs = [j for j in h.core.store.live_jobs() if j["source_ref"] == name]
    return sorted(jobs, key=lambda j: j["position"])


def settled(h: Harness, *names: str) -> bool:
    """Every named file has left the inbox for processed/ or failed/."""
    root = h.settings.inbox_path
    return all(not (root / n).exists() for n in names) and all(
        (root / "processed" / n).exists() or (root / "failed" / n).exists() for n in names
    )
