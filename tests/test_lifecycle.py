"""The core starts and stops as one: whatever part fails (to start, or while stopping), every part
that started is stopped, and a stop cancelled from outside is cancelled, not carried on silently.

What "stopped" means is checked where it shows: the store's writer threads have ended, the data
folder's lock is free (a second core opens the same folder), and no asyncio task is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mobilesd_core.config import Settings
from mobilesd_core.core import Core
from mobilesd_core.model_sync.copier import PART_SUFFIX
from mobilesd_core.tasks import cancel_and_wait

from .conftest import fast_settings, wait_for


def _our_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("mobilesd-") and t.is_alive()}


def _other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


def _write_servers(settings: Settings, **fields: str) -> None:
    # A server the registry starts a health loop for (nothing answers at port 9).
    entry = {"alias": "gpu1", "api_url": "http://127.0.0.1:9", **fields}
    (settings.data_path / "servers.json").write_text(json.dumps({"servers": {"1": entry}}))


async def _opens_again(settings: Settings) -> None:
    """A second core takes the same data folder: the first released its lock."""
    again = Core(settings)
    await again.start()
    await again.stop()


async def test_a_part_failing_to_start_stops_every_part_started_before_it(
    tmp_path: Path,
) -> None:
    settings = fast_settings(tmp_path)
    _write_servers(settings)
    # The inbox starts late (after the store, the servers' health loops, the notifier and the
    # dispatcher): a folder where its ledger file should be fails it, as a real start would.
    ledger = settings.data_path / "inbox-ledger.jsonl"
    ledger.mkdir()
    threads, tasks = _our_threads(), _other_tasks()
    core = Core(settings)
    with pytest.raises(IsADirectoryError):
        await core.start()
    assert _our_threads() - threads == set(), "the store's threads still run"
    assert _other_tasks() - tasks == set(), "tasks of the started parts are left running"
    await core.stop()  # nothing left to stop; says nothing
    ledger.rmdir()
    await _opens_again(settings)


@dataclass
class HangingShare:
    """A server's sync folder on a share that hangs: deleting a file there blocks (in its
    thread) until released, the way a dead network mount does."""

    path: Path
    entered: threading.Event
    release: threading.Event


@pytest.fixture
def hanging_share(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HangingShare]:
    share = HangingShare(tmp_path / "share", threading.Event(), threading.Event())
    share.path.mkdir()
    (share.path / f"cut-short.safetensors{PART_SUFFIX}").write_bytes(b"x")
    real_unlink = os.unlink

    def unlink(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> None:
        if str(path).startswith(f"{share.path}/"):
            share.entered.set()
            share.release.wait()
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink)
    try:
        yield share
    finally:
        share.release.set()


def _waiting_in(task: asyncio.Task[object], qualname: str) -> bool:
    """Whether `task` is suspended inside the coroutine function `qualname` (at any depth)."""
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        if coro.cr_code.co_qualname == qualname:
            return True
        coro = coro.cr_await
    return False


async def test_a_stop_cancelled_from_outside_is_cancelled_and_still_releases_everything(
    tmp_path: Path, hanging_share: HangingShare
) -> None:
    settings = fast_settings(tmp_path)
    _write_servers(settings, checkpoint_dir=str(hanging_share.path))
    threads, tasks = _our_threads(), _other_tasks()
    core = Core(settings)
    await core.start()
    try:
        # Model sync sweeps the share for leftover temp files; its stop waits for that sweep.
        await wait_for(hanging_share.entered.is_set, what="the sweep to reach the share")
        stopping = asyncio.create_task(core.stop())
        await wait_for(
            lambda: _waiting_in(stopping, "ModelSync.stop"), what="the stop to wait on the share"
        )
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        # The parts after model sync were stopped all the same.
        assert _our_threads() - threads == set(), "the store's threads still run"
    finally:
        # Only the sweep is left, its thread stuck on the share; it ends once the share answers
        # (released here: the event loop's end waits for that thread).
        hanging_share.release.set()
    await asyncio.wait(_other_tasks() - tasks, timeout=10)
    assert _other_tasks() - tasks == set()
    await _opens_again(settings)  # (after the release: its own sweep reaches the share too)


async def test_cancel_and_wait_lets_the_callers_own_cancellation_through() -> None:
    ending = asyncio.Event()
    release = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        finally:  # a task whose clean-up takes a while (closing a connection, a last write)
            ending.set()
            await release.wait()

    task = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(cancel_and_wait(task))
    await wait_for(ending.is_set, what="the task to be cancelled")
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    release.set()
    await asyncio.wait({task})
    assert task.cancelled()


async def test_cancel_and_wait_ends_every_task_and_raises_the_first_error() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("clean-up failed")

    async def waits() -> None:
        await asyncio.Event().wait()

    failing, waiting = asyncio.create_task(fails_on_cancel()), asyncio.create_task(waits())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="clean-up failed"):
        await cancel_and_wait(failing, None, waiting)
    assert failing.done() and waiting.cancelled()
    await cancel_and_wait()  # nothing to do
