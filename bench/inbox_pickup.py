"""The inbox: 1,000 files dropped at once until their jobs exist, and one file's pickup latency.

A real core in this process watches a real folder with its production settings (a quiet window
of INBOX_SETTLE_SECONDS = 1 s, a full rescan every 30 s), once with OS events and once polling
every second, as on an SMB share. The queue is paused: only the inbox's own work is timed.
A file counts as picked up when its job is in the store (durably written). The quiet window is
the floor of any pickup (a file is read only after it held still that long), so latencies are
also shown against it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mobilesd_core.config import Settings
from mobilesd_core.core import Core

from .report import Row, median, say, times

SETTLE = 1.0
POLL = 1.0


async def _core(root: Path, poll: float | None) -> Core:
    settings = Settings(
        data_path=root / "data",
        gallery_path=root / "outputs",
        inbox_path=root / "inbox",
        token="bench-token-0123456789",
        inbox_settle_seconds=SETTLE,
        inbox_poll_seconds=poll,
    )
    for path in (settings.data_path, settings.gallery_path, settings.inbox_path):
        path.mkdir(parents=True, exist_ok=True)
    core = Core(settings)
    await core.start()
    await core.service.set_paused(True)
    await asyncio.wait_for(core.inbox.watching.wait(), 30)
    return core


async def _until_jobs(core: Core, n: int, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while len(core.store.live_jobs()) < n:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {len(core.store.live_jobs())} of {n} jobs after {timeout}s")
        await asyncio.sleep(0.002)
    return time.perf_counter()


def _drop(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (folder / name).write_text(f'prompt: "dropped file {i}"\nseed: {i}\nsteps: 20\n')


async def _mode(root: Path, label: str, poll: float | None, files: int, rounds: int) -> list[Row]:
    core = await _core(root, poll)
    inbox = core.settings.inbox_path
    try:
        names = [f"drop-{i:04d}.yaml" for i in range(files)]
        started = time.perf_counter()
        await asyncio.to_thread(_drop, inbox, names)
        written = time.perf_counter()
        done = await _until_jobs(core, files, timeout=300)
        total = done - started
        say(
            f"  inbox ({label}): {files} files written in {written - started:.2f} s, "
            f"all jobs {total:.2f} s after the first write"
        )
        latencies = []
        for i in range(rounds):
            before = len(core.store.live_jobs())
            path = inbox / f"single-{i}.yaml"
            t0 = time.perf_counter()
            await asyncio.to_thread(path.write_text, f'prompt: "one more {i}"\n')
            latencies.append(await _until_jobs(core, before + 1, timeout=60) - t0)
        say(f"  inbox ({label}): single-file pickups {', '.join(f'{x:.2f}' for x in latencies)} s")
    finally:
        await core.stop()
    floor = SETTLE
    mid = median(latencies)
    return [
        Row(
            f"inbox {label}: {files:,} files dropped → jobs",
            f"{total:.2f} s ({files / total:.0f} files/s)",
        ),
        Row(
            f"inbox {label}: pickup latency, median of {rounds}",
            f"{mid:.2f} s (max {max(latencies):.2f} s)",
            ratio=f"{times(mid / floor)} the {floor:g} s quiet window",
        ),
    ]


async def run(root: Path, *, files: int = 1000, rounds: int = 5) -> list[Row]:
    say(f"inbox: {files} files at once, then {rounds} single files, events then polling")
    rows = await _mode(root / "events", "events", None, files, rounds)
    rows += await _mode(root / "polling", f"polling {POLL:g} s", POLL, files, rounds)
    return rows
