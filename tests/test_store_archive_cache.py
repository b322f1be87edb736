"""The archive's index cache (archive/index.bin): a start reads only the archive lines appended
since the cache was written, and what it then serves is what a full read of the files gives."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from mobilesd_core.durable import TMP_PREFIX, AppendLog
from mobilesd_core.jobs import archive_cache
from mobilesd_core.jobs.store import JobStore
from mobilesd_core.schema import TERMINAL_STATUSES, GenerationParams, new_job

CACHE_NAME = "index.bin"
MONTHS = ("2026-10", "2026-11", "2026-12")


def stamp(month: str, i: int) -> str:
    return f"{month}-{1 + i % 27:02d}T{i % 24:02d}:00:00+00:00"


def at(month: str, i: int) -> float:
    return datetime.fromisoformat(stamp(month, i)).timestamp()


async def open_store(path: Path) -> JobStore:
    store = JobStore(path)
    await store.open()
    return store


async def build_history(data: Path, per_month: int = 12) -> None:
    """Finished jobs over three months: statuses, batches, removals, a job archived twice, a
    damaged line and a torn last line."""
    store = await open_store(data)
    try:
        for m, month in enumerate(MONTHS):
            jobs = []
            for i in range(per_month):
                job = new_job(GenerationParams(prompt=f"{month} Lighthouse {i}"), source="api")
                if i % 3 == 0:
                    job["batch_id"] = f"batch-{i % 2}"
                jobs.append(job)
            for i, job in enumerate(await store.add(jobs)):
                status = ("completed", "failed", "cancelled")[(i + m) % 3]
                await store.update(
                    job["mobilesd_job_id"],
                    {"status": status, "completion_timestamp": stamp(month, i)},
                )
        first = [j for j in store.finished_ids(set(TERMINAL_STATUSES))]
        await store.remove_finished(first[3:7])
        twice = await store.get(first[10])
    finally:
        await store.close()
    # Archived again in a later month (the newest copy wins), then damage.
    AppendLog(data / "archive" / "jobs-2026-12.jsonl").append(
        [{**twice, "status": "failed", "completion_timestamp": stamp("2026-12", 30)}]
    )
    with (data / "archive" / "jobs-2026-11.jsonl").open("ab") as fh:
        fh.write(b'{"mobilesd_job_id": "y", "status": "failed", "generation_params": 3}\n')
        fh.write(b'{"mobilesd_job_id": "torn", "sta')


def full_read(data: Path) -> dict[str, dict[str, Any]]:
    """The finished jobs as the month files hold them, read the straightforward way."""
    jobs: dict[str, dict[str, Any]] = {}
    for path in sorted((data / "archive").glob("jobs-*.jsonl")):
        for _, _, record in AppendLog(path).iter_records():
            if "_removed" in record:
                for job_id in record["_removed"]:
                    jobs.pop(job_id, None)
            elif isinstance(record.get("generation_params"), dict):
                jobs.pop(record["mobilesd_job_id"], None)  # the newest copy goes last
                jobs[record["mobilesd_job_id"]] = record
    return jobs


async def served(store: JobStore) -> dict[str, Any]:
    """Everything the store answers about finished jobs."""
    ids = store.finished_ids(set(TERMINAL_STATUSES))
    views: dict[str, Any] = {
        "count": store.count(),
        "ids": sorted(ids),
        "jobs": {j: await store.get(j) for j in ids},
        "before": store.finished_before(at("2026-11", 5)),
        "batch": [j["mobilesd_job_id"] for j in await store.batch_jobs("batch-0")],
    }
    queries: dict[str, dict[str, Any]] = {
        "all": {},
        "page2": {"limit": 7, "offset": 7},
        "failed": {"statuses": {"failed"}},
        "q": {"q": "lighthouse 1"},
        "batch1": {"batch_id": "batch-1"},
        "after": {"finished_after": at("2026-11", 3)},
        "archived": {"finished_before": at("2026-12", 2)},
    }
    for name, query in queries.items():
        page, total = await store.list_jobs(**query)
        views[name] = ([j["mobilesd_job_id"] for j in page], total)
    return views


async def served_after_open(data: Path) -> tuple[dict[str, Any], int]:
    store = await open_store(data)
    try:
        return await served(store), store._archive.lines_read
    finally:
        await store.close()


async def test_a_start_reads_only_the_lines_appended_since(tmp_path: Path) -> None:
    await build_history(tmp_path)
    await served_after_open(tmp_path)  # reads the files whole, writes the cache
    assert (tmp_path / "archive" / CACHE_NAME).exists()
    _, read = await served_after_open(tmp_path)
    assert read == 0
    store = await open_store(tmp_path)
    for job in await store.add([new_job(GenerationParams(prompt="x"), source="api")]):
        await store.update(job["mobilesd_job_id"], {"status": "cancelled"})
    await store.close()
    _, read = await served_after_open(tmp_path)
    assert read == 1


@pytest.mark.parametrize("piece, rewrite_after", [(archive_cache.PIECE, 1000), (7, 1)])
async def test_what_a_cached_start_serves_equals_a_full_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int, rewrite_after: int
) -> None:
    # Small pieces: the texts are decoded across many piece boundaries, as 100,000 jobs are.
    # Rewriting after 1 line: the cache is rebuilt from itself plus the lines read since.
    monkeypatch.setattr(archive_cache, "PIECE", piece)
    monkeypatch.setattr(archive_cache, "REWRITE_AFTER", rewrite_after)
    await build_history(tmp_path)
    whole, read_whole = await served_after_open(tmp_path)
    cached, read_cached = await served_after_open(tmp_path)
    assert read_whole > 0 and read_cached == 0
    assert cached == whole
    truth = full_read(tmp_path)
    assert sorted(truth) == whole["ids"]
    assert whole["jobs"] == truth
    # Newest first: the order of the files.
    assert whole["all"][0][-len(truth) :] == list(reversed(truth))

    # More history past the cache (a finish, a removal): cache + the lines since = full read.
    store = await open_store(tmp_path)
    (job,) = await store.add([new_job(GenerationParams(prompt="Lighthouse late"), source="api")])
    await store.update(job["mobilesd_job_id"], {"status": "completed"})
    await store.remove_finished(whole["ids"][:2])
    await store.close()
    since, read_since = await served_after_open(tmp_path)
    assert read_since == 2
    next_start, read_next = await served_after_open(tmp_path)
    assert next_start == since
    assert read_next == (0 if rewrite_after <= 2 else 2)
    (tmp_path / "archive" / CACHE_NAME).unlink()
    again, _ = await served_after_open(tmp_path)
    assert since == again
    assert since["jobs"] == full_read(tmp_path)


@pytest.mark.parametrize(
    "damage", ["garbage", "cut short", "a bit flipped", "file rewritten", "month gone"]
)
async def test_a_cache_that_does_not_fit_is_not_used(tmp_path: Path, damage: str) -> None:
    await build_history(tmp_path)
    whole, _ = await served_after_open(tmp_path)
    cache = tmp_path / "archive" / CACHE_NAME
    month = tmp_path / "archive" / "jobs-2026-12.jsonl"
    if damage == "garbage":
        cache.write_bytes(b"\x00not an index\n" * 10)
    elif damage == "cut short":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "a bit flipped":
        # The second job's offset in the last month: it would read the wrong bytes.
        data = bytearray(cache.read_bytes())
        head_end = data.index(b"\n", len(archive_cache.MAGIC))
        months = json.loads(data[len(archive_cache.MAGIC) : head_end])["months"]
        at = head_end + 1 + sum(sum(m["sections"]) for m in list(months.values())[:-1])
        at += sum(months["2026-12"]["sections"][:2]) + 8
        data[at] ^= 0x04
        cache.write_bytes(bytes(data))
    elif damage == "file rewritten":
        # Same records, another order (as a compaction or a restore writes it): offsets moved.
        lines = month.read_bytes().splitlines(keepends=True)
        tmp = month.with_suffix(".new")
        tmp.write_bytes(b"".join(reversed(lines)))
        os.replace(tmp, month)
    else:
        month.unlink()
    served_now, _ = await served_after_open(tmp_path)
    assert served_now["jobs"] == full_read(tmp_path)
    if damage in ("garbage", "cut short", "a bit flipped"):
        assert served_now == whole
    # And the cache was written again: the next start reads nothing.
    again, read = await served_after_open(tmp_path)
    assert read == 0 and again == served_now


async def test_damaged_archive_lines_are_named_at_every_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await build_history(tmp_path)
    archive = tmp_path / "archive" / "jobs-2026-11.jsonl"
    for _ in range(2):
        caplog.clear()
        await served_after_open(tmp_path)
        assert f"{archive}: line 13 skipped: job y: no generation_params object" in caplog.text
    _, read = await served_after_open(tmp_path)
    assert read == 0


CHILD = """
import asyncio, sys
from pathlib import Path
from mobilesd_core.jobs.store import JobStore

async def main():
    store = JobStore(Path(sys.argv[1]))
    await store.open()
    print("open", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


async def test_a_kill_while_the_cache_is_written_loses_nothing(tmp_path: Path) -> None:
    await build_history(tmp_path, per_month=300)
    truth = full_read(tmp_path)
    # A start with no cache writes one beside the running store; kill -9 it meanwhile.
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    assert child.stdout is not None
    assert await asyncio.wait_for(child.stdout.readline(), 20) == b"open\n"
    child.send_signal(signal.SIGKILL)
    await child.wait()
    served_now, _ = await served_after_open(tmp_path)
    assert served_now["jobs"] == truth
    assert not list((tmp_path / "archive").glob(f"{TMP_PREFIX}*"))  # swept at the start
    again, read = await served_after_open(tmp_path)
    assert read == 0 and again == served_now
