"""A power cut after any write of the job store loses no acknowledged job and doubles none.

The store runs a realistic sequence (submits, claims as the dispatcher makes them, finishes that
move jobs to the archive, retries, cancels, moves, removals from the history, finishes in another
month, and compactions of the journal), is then killed with finishes written but not yet
fsynced, and is started again on what the kill left. All of it runs on a `PowerCutFS`
(tests/helpers/powercut.py), which records what each call made durable. Then, for every call k, the
folder is rebuilt as a power cut right after call k would leave it (only what was fsynced: file
data as of its last fsync, names as of their folder's last fsync), the store is opened on it,
and what the store then holds is compared with what it had acknowledged before call k:

- every acknowledged job is there, at a state no older than the last one acknowledged (each
  change of a job bumps a version `v` kept in the job itself);
- a job acknowledged as removed from the history stays removed;
- no job is there twice, and each one is a state the store was really asked to write.

A kill -9 keeps more than this (everything written reaches the OS); tests/test_crash.py covers it.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

import mobilesd_core.jobs.store as store_module
from mobilesd_core.jobs.store import JobStore
from mobilesd_core.schema import GenerationParams, new_job, utc_now_iso

from .helpers.powercut import Durable, NoSyncFS, PowerCutFS

REMOVED = -1  # the version a job has once removed from the history


class Book:
    """What the store was asked to write, and what it acknowledged as durable and when."""

    def __init__(self, fs: PowerCutFS) -> None:
        self.fs = fs
        self.written: dict[tuple[str, int], str] = {}  # (job id, v) -> status
        self.acks: list[tuple[int, str, int]] = []  # (calls made before the ack, job id, v)
        self.version: dict[str, int] = {}

    def next(self, job_id: str, status: str) -> dict[str, Any]:
        """The changes for a job's next version (every change carries its `v`)."""
        v = self.version.get(job_id, -1) + 1
        self.version[job_id] = v
        self.written[(job_id, v)] = status
        return {"status": status, "v": v}

    def ack(self, job: dict[str, Any]) -> None:
        self.acks.append((self.fs.calls, job["mobilesd_job_id"], job["v"]))

    def ack_removed(self, job_id: str) -> None:
        self.acks.append((self.fs.calls, job_id, REMOVED))

    def acknowledged(self, k: int) -> dict[str, int]:
        """Each job's last acknowledged version by the time of a cut right after call k."""
        out: dict[str, int] = {}
        for calls, job_id, v in self.acks:
            before = out.get(job_id)
            if calls > k or before == REMOVED:
                continue
            out[job_id] = v if before is None or v == REMOVED else max(before, v)
        return out


def fresh_job(book: Book, n: int) -> dict[str, Any]:
    job = new_job(GenerationParams(prompt=f"power cut {n}"), source="api")
    return {**job, **book.next(job["mobilesd_job_id"], "pending")}


class Ops:
    """The store's writes as the dispatcher and the service make them, noted in the book."""

    def __init__(self, store: JobStore, book: Book) -> None:
        self.store = store
        self.book = book
        self.counter = itertools.count()

    async def submit(self, n: int) -> list[dict[str, Any]]:
        added = await self.store.add([fresh_job(self.book, next(self.counter)) for _ in range(n)])
        for job in added:
            self.book.ack(job)
        return added

    async def claim(self, job_id: str) -> None:
        # As the dispatcher claims: on its way to the OS, fsynced a moment later, never waited
        # for; so not acknowledged as durable.
        await self.store.update(
            job_id,
            {
                **self.book.next(job_id, "processing"),
                "attempts": 1,
                "started_timestamp": utc_now_iso(),
            },
            expect={"pending"},
            durable=False,
        )

    async def finish(self, job_id: str, status: str, month: str | None = None) -> None:
        stamp = utc_now_iso() if month is None else f"{month}-15T12:00:00+00:00"
        job = await self.store.update(
            job_id,
            {**self.book.next(job_id, status), "completion_timestamp": stamp},
            expect={"processing"} if status != "cancelled" else {"pending", "processing"},
        )
        self.book.ack(job)

    async def retry(self, job_id: str) -> None:
        job = await self.store.update(
            job_id, {**self.book.next(job_id, "pending"), "retry_at": 0.0}, expect={"processing"}
        )
        self.book.ack(job)


async def run_sequence(store: JobStore, book: Book) -> None:
    ops = Ops(store, book)
    submit, claim, finish, retry = ops.submit, ops.claim, ops.finish, ops.retry

    await submit(4)
    for added in await asyncio.gather(submit(1), submit(1), submit(2)):
        assert added
    finished: list[str] = []
    for round_ in range(8):
        head = [j["mobilesd_job_id"] for j in store.pending_in_order()[:3]]
        await asyncio.gather(*(claim(j) for j in head))
        # Outcomes land together, so a group commit mixes them (and a compaction follows).
        month = "2020-01" if round_ == 3 else None  # a new archive file mid-run
        await asyncio.gather(
            finish(head[0], "completed", month),
            retry(head[1]),
            finish(head[2], "failed"),
            submit(2),
        )
        finished += [head[0], head[2]]
        if round_ % 3 == 1:
            pending = [j["mobilesd_job_id"] for j in store.pending_in_order()]
            moved = await store.reorder(list(reversed(pending)))
            for job in moved:
                book.ack(job)  # positions change, versions not: acknowledged as they were
            await finish(pending[0], "cancelled")
        if round_ % 3 == 2:
            gone = finished.pop(0)
            assert await store.remove_finished([gone]) == [gone]
            book.ack_removed(gone)


async def what_opens(folder: Durable, where: Path) -> dict[str, dict[str, Any]]:
    """Open a store on the folder a power cut left; every job it holds, by id (checked once)."""
    folder.write_to(where)
    store = JobStore(where, fs=NoSyncFS())
    await store.open()
    try:
        jobs, total = await store.list_jobs(limit=100_000)
    finally:
        await store.close()
    ids = [j["mobilesd_job_id"] for j in jobs]
    assert len(ids) == len(set(ids)) == total, f"a job is there twice: {sorted(ids)}"
    return {j["mobilesd_job_id"]: j for j in jobs}


@pytest.mark.parametrize("compact_every", [1, 5])
async def test_a_power_cut_after_any_write_loses_no_acknowledged_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compact_every: int
) -> None:
    # Compaction every `compact_every` journal lines instead of 4,000: it runs many times,
    # right after finishes (1) and between them (5).
    monkeypatch.setattr(store_module, "COMPACT_EVERY", compact_every)
    data = tmp_path / "data"
    data.mkdir()
    fs = PowerCutFS(data)
    book = Book(fs)
    store = JobStore(data, fs=fs)
    await store.open()
    try:
        await run_sequence(store, book)
        # Killed while finishes are written but not fsynced: they reached the OS (so the next
        # start reads them back), not the disk (so a power cut takes them).
        head = [j["mobilesd_job_id"] for j in store.pending_in_order()[:2]]
        ops = Ops(store, book)
        await asyncio.gather(*(ops.claim(j) for j in head))
        fs.fsync_fails = True
        for job_id in head:
            with pytest.raises(OSError):
                await ops.finish(job_id, "completed")
    finally:
        await store.close()
    fs.fsync_fails = False
    again = JobStore(data, fs=fs)
    await again.open()
    try:
        ops = Ops(again, book)
        assert all(again.is_finished(j) for j in head)  # the kill left them finished
        (job,) = await ops.submit(1)
        await ops.claim(job["mobilesd_job_id"])
        await ops.finish(job["mobilesd_job_id"], "completed")
    finally:
        await again.close()
    assert any(v == REMOVED for _, _, v in book.acks)

    opened: dict[int, dict[str, dict[str, Any]]] = {}
    for k in range(fs.calls + 1):
        index, folder = fs.state_at(k)
        if index not in opened:
            opened[index] = await what_opens(folder, tmp_path / f"cut-{index}")
        found = opened[index]
        for job_id, job in found.items():
            assert book.written.get((job_id, job["v"])) == job["status"], (k, job)
        for job_id, v in book.acknowledged(k).items():
            if v == REMOVED:
                assert job_id not in found, f"cut after call {k}: removed job {job_id} is back"
                continue
            assert job_id in found, f"cut after call {k}: acknowledged job {job_id} (v{v}) lost"
            now = found[job_id]
            assert now["v"] >= v, (
                f"cut after call {k}: job {job_id} went back from v{v} "
                f"({book.written[(job_id, v)]}) to v{now['v']} ({now['status']})"
            )
    print(f"\n{fs.calls} cut points, {len(opened)} distinct folders after a cut, all checked")
