"""The job store: durable, crash-safe, and cheap to write whatever the history."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mobilesd_core.durable import AppendLog, AtomicJSONStorage
from mobilesd_core.jobs.store import Conflict, JobNotFound, JobStore, ServerStore, _Archive
from mobilesd_core.schema import GenerationParams, new_job, utc_now_iso


def make_jobs(n: int, prompt: str = "a cat") -> list[dict]:
    return [new_job(GenerationParams(prompt=f"{prompt} {i}"), source="api") for i in range(n)]


async def open_store(path: Path) -> JobStore:
    store = JobStore(path)
    await store.open()
    return store


async def test_jobs_survive_reopen_in_order(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    added = await store.add(make_jobs(3))
    await store.close()

    again = await open_store(tmp_path)
    ids = [j["mobilesd_job_id"] for j in again.pending_in_order()]
    assert ids == [j["mobilesd_job_id"] for j in added]
    assert [j["position"] for j in again.pending_in_order()] == [1, 2, 3]
    await again.close()


async def test_terminal_jobs_move_to_archive_and_stay_listed(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    a, b = await store.add(make_jobs(2))
    await store.update(a["mobilesd_job_id"], {"status": "processing"}, expect={"pending"})
    done = await store.update(
        a["mobilesd_job_id"],
        {"status": "completed", "completion_timestamp": utc_now_iso()},
        expect={"processing"},
    )
    assert done["status"] == "completed"
    assert [j["mobilesd_job_id"] for j in store.live_jobs()] == [b["mobilesd_job_id"]]
    archived = list((tmp_path / "archive").glob("jobs-*.jsonl"))
    assert len(archived) == 1
    # The live side learnt of it by one appended line, not by a rewrite.
    last = json.loads((tmp_path / "jobs.journal").read_text().splitlines()[-1])
    assert last == {"op": "done", "job": done}

    jobs, total = await store.list_jobs()
    assert total == 2
    assert [j["status"] for j in jobs] == ["pending", "completed"]
    await store.close()

    again = await open_store(tmp_path)
    # Opening folds the journal into a fresh snapshot.
    live = json.loads((tmp_path / "jobs.json").read_text())["jobs"]
    assert [d["mobilesd_job_id"] for d in live.values()] == [b["mobilesd_job_id"]]
    assert (tmp_path / "jobs.journal").read_bytes() == b""
    assert (await again.get(a["mobilesd_job_id"]))["status"] == "completed"
    jobs, total = await again.list_jobs(statuses={"completed"})
    assert total == 1 and jobs[0]["mobilesd_job_id"] == a["mobilesd_job_id"]
    await again.close()


async def test_update_checks_expected_state(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    (job,) = await store.add(make_jobs(1))
    job_id = job["mobilesd_job_id"]
    with pytest.raises(Conflict):
        await store.update(job_id, {"status": "completed"}, expect={"processing"})
    await store.update(job_id, {"status": "cancelled"}, expect={"pending"})
    with pytest.raises(Conflict):
        await store.update(job_id, {"status": "cancelled"}, expect={"pending"})
    with pytest.raises(JobNotFound):
        await store.update("nope", {"status": "cancelled"})
    await store.close()


async def test_crash_between_archive_and_live_removal_keeps_one_copy(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    (job,) = await store.add(make_jobs(1))
    job["mobilesd_job_id"]
    await store.close()
    # Simulate the crash window: the archive line is written, the live file still has the job.
    finished = {**job, "status": "completed", "completion_timestamp": utc_now_iso()}
    (tmp_path / "archive").mkdir(exist_ok=True)
    AppendLog(tmp_path / "archive" / f"jobs-{finished['completion_timestamp'][:7]}.jsonl").append(
        [finished]
    )
    again = await open_store(tmp_path)
    jobs, total = await again.list_jobs()
    assert total == 1
    assert jobs[0]["status"] == "completed"
    assert again.pending_in_order() == []
    await again.close()


async def test_torn_archive_line_is_ignored(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    jobs = await store.add(make_jobs(2))
    for job in jobs:
        await store.update(job["mobilesd_job_id"], {"status": "failed"})
    await store.close()
    (archive,) = (tmp_path / "archive").glob("*.jsonl")
    with archive.open("ab") as fh:
        fh.write(b'{"mobilesd_job_id": "torn", "sta')  # a kill -9 mid-append
    again = await open_store(tmp_path)
    assert again.count()["failed"] == 2
    # The next append starts on a fresh line and stays readable.
    (job,) = await again.add(make_jobs(1))
    await again.update(job["mobilesd_job_id"], {"status": "failed"})
    await again.close()
    third = await open_store(tmp_path)
    assert third.count()["failed"] == 3
    await third.close()


async def test_remove_finished_and_reorder(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    a, b, c = await store.add(make_jobs(3))
    await store.reorder([c["mobilesd_job_id"], a["mobilesd_job_id"], b["mobilesd_job_id"]])
    assert [j["mobilesd_job_id"] for j in store.pending_in_order()] == [
        c["mobilesd_job_id"],
        a["mobilesd_job_id"],
        b["mobilesd_job_id"],
    ]
    await store.update(a["mobilesd_job_id"], {"status": "cancelled"})
    removed = await store.remove_finished([a["mobilesd_job_id"], b["mobilesd_job_id"]])
    assert removed == [a["mobilesd_job_id"]]  # b is still pending: not removable
    await store.close()
    again = await open_store(tmp_path)
    with pytest.raises(JobNotFound):
        await again.get(a["mobilesd_job_id"])
    assert [j["mobilesd_job_id"] for j in again.pending_in_order()] == [
        c["mobilesd_job_id"],
        b["mobilesd_job_id"],
    ]
    await again.close()


async def test_requeue_processing_puts_jobs_first(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    a, b = await store.add(make_jobs(2))
    await store.update(b["mobilesd_job_id"], {"status": "processing", "attempts": 1})
    await store.close()
    again = await open_store(tmp_path)
    requeued = await again.requeue_processing()
    assert [j["mobilesd_job_id"] for j in requeued] == [b["mobilesd_job_id"]]
    order = [j["mobilesd_job_id"] for j in again.pending_in_order()]
    assert order == [b["mobilesd_job_id"], a["mobilesd_job_id"]]
    assert again.get_live(b["mobilesd_job_id"])["attempts"] == 1
    await again.close()


async def test_list_pages_and_search_span_live_and_archive(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    jobs = await store.add(make_jobs(5, "fox") + make_jobs(5, "heron"))
    for job in jobs[:6]:
        await store.update(job["mobilesd_job_id"], {"status": "completed"})
    page, total = await store.list_jobs(limit=3, offset=3)
    assert total == 10
    # 4 pending first, then finished newest first
    full, _ = await store.list_jobs(limit=100)
    assert [j["status"] for j in full[:4]] == ["pending"] * 4
    assert page == full[3:6]
    found, n = await store.list_jobs(q="HERON")
    assert n == 5 and all("heron" in j["generation_params"]["prompt"] for j in found)
    await store.close()


def test_atomic_storage_never_leaves_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db.json"
    storage = AtomicJSONStorage(path)
    storage.write({"t": {"1": {"a": 1}}})
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # A write failing at the OS call (disk full, I/O error) keeps the old content, on disk and
    # in memory, and leaves no temp file behind.
    import mobilesd_core.durable as storage_module

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage_module.os, "replace", disk_full)
    with pytest.raises(OSError):
        storage.write({"t": {"1": {"a": 2}}})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["db.json"]
    assert json.loads(path.read_text()) == {"t": {"1": {"a": 1}}}
    assert storage.read() == {"t": {"1": {"a": 1}}}


async def test_server_store_keeps_passwords_private(tmp_path: Path) -> None:
    store = ServerStore(tmp_path)
    await store.open()
    gpu1 = {"alias": "gpu1", "api_url": "http://x", "username": "sd", "password": "pw"}
    await store.replace_all({"gpu1": gpu1})
    await store.close()
    path = tmp_path / "servers.json"
    assert path.stat().st_mode & 0o077 == 0
    again = ServerStore(tmp_path)
    await again.open()
    assert again.get("gpu1")["password"] == "pw"
    await again.close()


async def test_finished_job_only_in_the_journal_is_archived_at_open(tmp_path: Path) -> None:
    """The journal's `done` line and the archive line are flushed independently; a power cut
    may keep only the first. Opening re-archives the job from it."""
    store = await open_store(tmp_path)
    (job,) = await store.add(make_jobs(1))
    await store.close()
    finished = {**job, "status": "completed", "completion_timestamp": utc_now_iso()}
    AppendLog(tmp_path / "jobs.journal").append([{"op": "done", "job": finished}])
    assert not list((tmp_path / "archive").glob("*.jsonl"))

    again = await open_store(tmp_path)
    assert again.live_jobs() == []
    assert (await again.get(job["mobilesd_job_id"]))["status"] == "completed"
    await again.close()
    third = await open_store(tmp_path)
    assert third.count()["completed"] == 1
    await third.close()


async def test_write_failure_keeps_memory_equal_to_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(tmp_path)
    (job,) = await store.add(make_jobs(1))

    def disk_full(self: AppendLog, records: list, *, sync: bool = True) -> list:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(AppendLog, "append", disk_full)
    with pytest.raises(OSError, match="No space left"):
        await store.update(job["mobilesd_job_id"], {"status": "processing"})
    assert store.get_live(job["mobilesd_job_id"])["status"] == "pending"
    monkeypatch.undo()
    await store.update(job["mobilesd_job_id"], {"status": "processing"})
    await store.close()
    again = await open_store(tmp_path)
    assert again.get_live(job["mobilesd_job_id"])["status"] == "processing"
    await again.close()


async def test_journal_is_folded_into_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mobilesd_core.jobs.store as store_module

    monkeypatch.setattr(store_module, "COMPACT_EVERY", 10)
    store = await open_store(tmp_path)
    jobs = await store.add(make_jobs(3))
    for _ in range(4):
        for job in jobs:
            await store.update(job["mobilesd_job_id"], {"attempts": 1})
    lines = (tmp_path / "jobs.journal").read_text().count("\n")
    assert lines < 10  # folded at least once
    await store.close()
    again = await open_store(tmp_path)
    assert sorted(j["mobilesd_job_id"] for j in again.live_jobs()) == sorted(
        j["mobilesd_job_id"] for j in jobs
    )
    await again.close()


async def test_pages_and_counts_of_a_long_history(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    jobs = await store.add(make_jobs(30))
    for i, job in enumerate(jobs):
        status = "failed" if i % 3 == 0 else "completed"
        await store.update(job["mobilesd_job_id"], {"status": status})
    await store.remove_finished([jobs[-1]["mobilesd_job_id"]])  # a completed one
    newest_first = [j["mobilesd_job_id"] for j in reversed(jobs[:-1])]

    page, total = await store.list_jobs(limit=5, offset=3)
    assert total == 29
    assert [j["mobilesd_job_id"] for j in page] == newest_first[3:8]
    page, total = await store.list_jobs(statuses={"failed"}, limit=4, offset=2)
    failed = [j for j in newest_first if store._archive.index[j].status == "failed"]
    assert total == len(failed) == 10
    assert [j["mobilesd_job_id"] for j in page] == failed[2:6]
    assert store.count() == {
        "pending": 0,
        "processing": 0,
        "completed": 19,
        "failed": 10,
        "cancelled": 0,
    }
    await store.close()
    again = await open_store(tmp_path)
    assert again.count()["completed"] == 19
    await again.close()


async def test_damaged_journal_lines_are_named_skipped_and_the_file_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A line in the middle that is not a record (damage, not a crash: a crash only tears the
    last line) loses the change it held; the rest loads, the log names each line, and the
    journal as it was is kept before the start folds it away."""
    store = await open_store(tmp_path)
    a, b, c = await store.add(make_jobs(3))
    await store.update(b["mobilesd_job_id"], {"status": "processing"})
    await store.close()
    journal = tmp_path / "jobs.journal"
    good = journal.read_bytes()
    assert good.count(b"\n") == 4  # three jobs put, one changed
    damaged = (
        b'{"op": "put", "job": {"mobilesd_job_id": "x", "status": 7}}\n'  # not a job
        + b"\x81\xfe not a record\n"
        + good
        + b'{"op": "pos", "positions": [1]}\n'
    )
    journal.write_bytes(damaged)
    again = await open_store(tmp_path)
    try:
        statuses = {j["mobilesd_job_id"]: j["status"] for j in again.live_jobs()}
        assert statuses == {
            a["mobilesd_job_id"]: "pending",
            b["mobilesd_job_id"]: "processing",
            c["mobilesd_job_id"]: "pending",
        }
    finally:
        await again.close()
    (aside,) = await asyncio.to_thread(lambda: list(tmp_path.glob("jobs.journal.corrupt-*")))
    assert aside.read_bytes() == damaged and aside.stat().st_mode & 0o077 == 0
    said = caplog.text
    assert f"{journal}: line 1: job x: status 7 does not belong here; skipped" in said
    assert f"{journal}: line 2: not a whole record; skipped" in said
    assert f"{journal}: line 7: a move without positions; skipped" in said
    assert (
        "3 damaged line(s) skipped (the changes they held are lost); "
        f"the file as it was is kept as {aside.name}" in said
    )


async def test_damaged_archive_lines_are_named_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await open_store(tmp_path)
    jobs = await store.add(make_jobs(2))
    for job in jobs:
        await store.update(job["mobilesd_job_id"], {"status": "failed"})
    await store.close()
    (archive,) = (tmp_path / "archive").glob("*.jsonl")
    with archive.open("ab") as fh:
        fh.write(b'{"mobilesd_job_id": "y", "status": "failed", "generation_params": 3}\n')
        fh.write(b'{"_removed": "everything"}\n')
        fh.write(b"\xff\xfe\x00garbage\x81\n")
    again = await open_store(tmp_path)
    try:
        assert again.count()["failed"] == 2
    finally:
        await again.close()
    said = caplog.text
    assert f"{archive}: line 3 skipped: job y: no generation_params object" in said
    assert f"{archive}: line 4 skipped: a removal without a list of job ids" in said
    assert f"{archive}: line 5 skipped: not a whole record (cut short, or damaged)" in said


@pytest.mark.parametrize("read", ["page", "batch", "one job"])
async def test_finished_jobs_read_from_disk_while_others_finish_or_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """Older finished jobs are read from the archive in a thread; meanwhile jobs finish (which
    pushes records out of the in-memory recent ones) or are removed. A page read while that
    happened answered 500 (found by the soak: a queue listing under load)."""
    monkeypatch.setattr(_Archive, "RECENT", 2)
    store = await open_store(tmp_path)
    jobs = await store.add([{**j, "batch_id": "b1"} for j in make_jobs(6)])
    ids = [j["mobilesd_job_id"] for j in jobs]
    for job_id in ids[:4]:
        await store.update(job_id, {"status": "failed", "completion_timestamp": utc_now_iso()})
    entered, go_on = asyncio.Event(), asyncio.Event()
    original = store._read

    async def held_read(fn: Any, *args: Any) -> Any:
        entered.set()
        await go_on.wait()  # the archive read waits while the others finish and go
        return await original(fn, *args)

    monkeypatch.setattr(store, "_read", held_read)
    reading = asyncio.ensure_future(
        store.list_jobs(limit=100)
        if read == "page"
        else store.batch_jobs("b1")
        if read == "batch"
        else store.get(ids[0])
    )
    await entered.wait()
    for job_id in ids[4:]:
        await store.update(job_id, {"status": "failed", "completion_timestamp": utc_now_iso()})
    assert await store.remove_finished([ids[0]]) == [ids[0]]
    go_on.set()
    result = await reading
    await store.close()
    # Each read answers as things were when it was asked: four finished, two queued.
    if read == "one job":
        assert result["mobilesd_job_id"] == ids[0] and result["status"] == "failed"
    else:
        listed = result[0] if read == "page" else result
        assert sorted(j["mobilesd_job_id"] for j in listed) == sorted(ids)


async def test_a_job_is_offered_to_the_dispatcher_only_once_its_add_is_acknowledged(
    tmp_path: Path,
) -> None:
    """While an add waits for its fsync, the job is not among the pending jobs the dispatcher
    takes from: a claim of it (written without waiting for an fsync) would publish
    "processing" before the add publishes "pending" (seen as a flaky event order)."""
    import threading

    from mobilesd_core.durable import FileSystem

    class HeldFsync(FileSystem):
        def __init__(self) -> None:
            self.hold = threading.Event()
            self.held = threading.Event()
            self.release = threading.Event()

        def fsync(self, fd: int) -> None:
            if self.hold.is_set():
                self.held.set()
                self.release.wait(10)
            super().fsync(fd)

    fs = HeldFsync()
    store = JobStore(tmp_path, fs=fs)
    await store.open()
    events: list[tuple[str, str]] = []
    store.set_listener(lambda kind, job: events.append((job["mobilesd_job_id"], job["status"])))
    try:
        (first,) = await store.add(make_jobs(1))
        fs.hold.set()
        adding = asyncio.ensure_future(store.add(make_jobs(1, "a dog")))
        assert await asyncio.to_thread(fs.held.wait, 10)
        assert [j["mobilesd_job_id"] for j in store.pending_in_order()] == [
            first["mobilesd_job_id"]
        ]
        fs.release.set()
        (second,) = await adding
        assert [j["mobilesd_job_id"] for j in store.pending_in_order()] == [
            first["mobilesd_job_id"],
            second["mobilesd_job_id"],
        ]
        assert events[-1] == (second["mobilesd_job_id"], "pending")
    finally:
        fs.release.set()
        await store.close()


async def test_a_pending_job_that_ends_is_not_offered_even_if_the_order_was_read_meanwhile(
    tmp_path: Path,
) -> None:
    """A pending job cancelled while someone reads the run order during the cancel's commit
    (the dispatcher does, every pass) must not stay in that order once it is gone: it was
    offered pass after pass, never claimable, and listed as pending although cancelled."""
    store = await open_store(tmp_path)
    try:
        first, second = await store.add(make_jobs(2))
        cancelling = asyncio.ensure_future(
            store.update(
                first["mobilesd_job_id"],
                {"status": "cancelled", "completion_timestamp": utc_now_iso()},
                expect={"pending"},
            )
        )
        await asyncio.sleep(0)  # the cancel is on its way to the writer
        store.pending_in_order()  # a pass reads the order meanwhile
        await cancelling
        assert [j["mobilesd_job_id"] for j in store.pending_in_order()] == [
            second["mobilesd_job_id"]
        ]
    finally:
        await store.close()
