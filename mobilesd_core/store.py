"""The job and server store.

Live jobs (pending and processing) sit in a small TinyDB file, `jobs.json`, written atomically
on every change. A job that reaches a terminal state is appended to a monthly archive
(`archive/jobs-YYYY-MM.jsonl`) and only then removed from the live file, so the cost of a write
depends on the size of the live queue, never on the history. Servers live in `servers.json`
(mode 0600: it holds passwords).

All file work runs on one writer thread, so writes are ordered and the event loop never blocks.
The loop-side mirror (`_live`, the archive index) is changed only after the file write succeeded:
what readers see is always what is on disk.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tinydb import TinyDB
from tinydb.table import Document

from .config import ConfigError
from .schema import TERMINAL_STATUSES, utc_now_iso
from .storage import AppendLog, AtomicJSONStorage

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = dict[str, Any]
JobListener = Callable[[str, Job | str], None]  # ("job", job) or ("job_removed", job_id)


class JobNotFound(Exception):
    pass


class DataFolderInUse(ConfigError):
    """Another MobileSD process owns this CONFIG_DATA_PATH."""


class Conflict(Exception):
    """The job is not in a state that allows the operation."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class _ArchiveEntry:
    month: str
    offset: int
    length: int
    status: str
    creation_timestamp: str
    search: str  # lower-cased prompt + checkpoint + server, for `q`


class _Archive:
    """Append-only monthly JSON-lines files of finished jobs, with an in-memory index."""

    RECENT = 512  # full records kept in memory: the first pages of the queue view read no file

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index: dict[str, _ArchiveEntry] = {}
        self.order: list[str] = []  # append order (oldest finished first); may hold dead ids
        self._dead_in_order = 0
        self.recent: OrderedDict[str, Job] = OrderedDict()
        self._logs: dict[str, AppendLog] = {}

    def _log(self, month: str) -> AppendLog:
        log_ = self._logs.get(month)
        if log_ is None:
            log_ = self._logs[month] = AppendLog(self.root / f"jobs-{month}.jsonl")
        return log_

    @staticmethod
    def _search_text(job: Job) -> str:
        params = job.get("generation_params") or {}
        return " ".join(
            str(x)
            for x in (
                params.get("prompt", ""),
                params.get("negative_prompt", ""),
                params.get("checkpoint_name") or "",
                job.get("assigned_server_alias") or "",
                job.get("source_ref") or "",
                job["mobilesd_job_id"],
            )
        ).lower()

    # -- thread side ------------------------------------------------------------------------

    def load(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.glob("jobs-*.jsonl")):
            month = path.stem.removeprefix("jobs-")
            records = self._log(month).read_records()
            removed = 0
            for offset, length, record in records:
                if "_removed" in record:
                    for job_id in record["_removed"]:
                        if self.index.pop(job_id, None) is not None:
                            removed += 1
                    continue
                job_id = record.get("mobilesd_job_id")
                if not job_id:
                    continue
                if job_id in self.index:
                    removed += 1  # an older copy of a re-archived job; the newest wins
                self.index[job_id] = self._entry(month, offset, length, record)
                self.order.append(job_id)
            if records and removed * 2 > len(records):
                self._compact(month)
        self._rebuild_order()

    def _entry(self, month: str, offset: int, length: int, job: Job) -> _ArchiveEntry:
        return _ArchiveEntry(
            month, offset, length, job["status"], job["creation_timestamp"], self._search_text(job)
        )

    def _rebuild_order(self) -> None:
        seen: set[str] = set()
        order: list[str] = []
        for job_id in reversed(self.order):
            if job_id in self.index and job_id not in seen:
                seen.add(job_id)
                order.append(job_id)
        order.reverse()
        self.order = order
        self._dead_in_order = 0

    def _compact(self, month: str) -> None:
        log_ = self._log(month)
        live = [(job_id, e) for job_id, e in self.index.items() if e.month == month]
        records = [log_.read_at(e.offset, e.length) for _, e in live]
        spans = log_.rewrite(records)
        for (job_id, _), (offset, length), record in zip(live, spans, records, strict=True):
            self.index[job_id] = self._entry(month, offset, length, record)
        log.info("archive %s compacted to %d jobs", month, len(records))

    def append(self, jobs: list[Job]) -> list[tuple[str, _ArchiveEntry]]:
        by_month: dict[str, list[Job]] = {}
        for job in jobs:
            stamp = job.get("completion_timestamp") or utc_now_iso()
            by_month.setdefault(stamp[:7], []).append(job)
        out = []
        for month, group in by_month.items():
            spans = self._log(month).append(group)
            for job, (offset, length) in zip(group, spans, strict=True):
                out.append((job["mobilesd_job_id"], self._entry(month, offset, length, job)))
        return out

    def tombstone(self, job_ids: list[str]) -> None:
        by_month: dict[str, list[str]] = {}
        for job_id in job_ids:
            entry = self.index.get(job_id)
            if entry is not None:
                by_month.setdefault(entry.month, []).append(job_id)
        for month, ids in by_month.items():
            self._log(month).append([{"_removed": ids}])

    def read(self, job_id: str) -> Job:
        entry = self.index[job_id]
        return self._log(entry.month).read_at(entry.offset, entry.length)

    # -- loop side --------------------------------------------------------------------------

    def commit_append(self, items: list[tuple[str, _ArchiveEntry]], jobs: list[Job]) -> None:
        for (job_id, entry), job in zip(items, jobs, strict=True):
            if job_id in self.index:
                self._dead_in_order += 1
            self.index[job_id] = entry
            self.order.append(job_id)
            self._remember(job)

    def commit_remove(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            if self.index.pop(job_id, None) is not None:
                self._dead_in_order += 1
            self.recent.pop(job_id, None)
        if self._dead_in_order > 1024 and self._dead_in_order * 4 > len(self.order):
            self._rebuild_order()

    def _remember(self, job: Job) -> None:
        self.recent[job["mobilesd_job_id"]] = job
        self.recent.move_to_end(job["mobilesd_job_id"])
        while len(self.recent) > self.RECENT:
            self.recent.popitem(last=False)

    def newest_first(self) -> Iterable[str]:
        seen: set[str] = set()
        for job_id in reversed(self.order):
            if job_id in self.index and job_id not in seen:
                seen.add(job_id)
                yield job_id


class JobStore:
    """Durable jobs. Every method that changes a job returns after the change is on disk."""

    def __init__(self, data_path: Path, *, listener: JobListener | None = None) -> None:
        self.data_path = data_path
        self._listener = listener
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mobilesd-store")
        self._lock = asyncio.Lock()
        self._db: TinyDB | None = None
        self._lock_fd: int | None = None
        self._live: dict[str, Job] = {}
        self._doc_ids: dict[str, int] = {}
        self._next_doc_id = 1
        self._archive = _Archive(data_path / "archive")

    def set_listener(self, listener: JobListener | None) -> None:
        self._listener = listener

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        await self._io(self._open_sync)

    def _open_sync(self) -> None:
        self.data_path.mkdir(parents=True, exist_ok=True)
        self._take_folder_lock()
        self._db = TinyDB(self.data_path / "jobs.json", storage=AtomicJSONStorage)
        self._archive.load()
        table = self._db.table("jobs")
        stale: list[int] = []
        for doc in table.all():
            job_id = doc.get("mobilesd_job_id")
            if not job_id or job_id in self._archive.index:
                # Archived but not yet dropped from the live file when the core stopped.
                stale.append(doc.doc_id)
                continue
            self._live[job_id] = dict(doc)
            self._doc_ids[job_id] = doc.doc_id
        if stale:
            table.remove(doc_ids=stale)
        self._next_doc_id = max(self._doc_ids.values(), default=0) + 1

    def _take_folder_lock(self) -> None:
        # Two cores on one folder would both rewrite jobs.json and each other's temp files.
        fd = os.open(self.data_path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataFolderInUse(
                f"CONFIG_DATA_PATH: {self.data_path} is in use by another MobileSD process; "
                "stop it first or give this one its own folder"
            ) from None
        self._lock_fd = fd

    async def close(self) -> None:
        if self._db is not None:
            await self._io(self._db.close)
        self._executor.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- reads (memory only) ----------------------------------------------------------------

    def live_jobs(self) -> list[Job]:
        return list(self._live.values())

    def pending_in_order(self) -> list[Job]:
        pending = [j for j in self._live.values() if j["status"] == "pending"]
        pending.sort(key=lambda j: (j["position"], j["mobilesd_job_id"]))
        return pending

    def get_live(self, job_id: str) -> Job | None:
        return self._live.get(job_id)

    async def get(self, job_id: str) -> Job:
        job = self._live.get(job_id)
        if job is not None:
            return job
        job = self._archive.recent.get(job_id)
        if job is not None:
            return job
        if job_id not in self._archive.index:
            raise JobNotFound(job_id)
        return await self._io(self._archive.read, job_id)

    def count(self) -> dict[str, int]:
        counts = {s: 0 for s in ("pending", "processing", "completed", "failed", "cancelled")}
        for job in self._live.values():
            counts[job["status"]] += 1
        for entry in self._archive.index.values():
            counts[entry.status] += 1
        return counts

    async def list_jobs(
        self,
        *,
        statuses: set[str] | None = None,
        q: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """Pending in run order, then processing, then finished newest first."""
        needle = q.lower() if q else None

        def keep_live(job: Job) -> bool:
            if statuses and job["status"] not in statuses:
                return False
            return not needle or needle in _Archive._search_text(job)

        pending = [j for j in self.pending_in_order() if keep_live(j)]
        processing = sorted(
            (j for j in self._live.values() if j["status"] == "processing" and keep_live(j)),
            key=lambda j: j.get("started_timestamp") or "",
        )
        live = pending + processing
        index = self._archive.index
        finished = [
            job_id
            for job_id in self._archive.newest_first()
            if (not statuses or index[job_id].status in statuses)
            and (not needle or needle in index[job_id].search)
        ]
        total = len(live) + len(finished)
        page: list[Job] = live[offset : offset + limit]
        start = max(0, offset - len(live))
        need = limit - len(page)
        if need > 0:
            wanted = finished[start : start + need]
            missing = [j for j in wanted if j not in self._archive.recent]
            loaded: dict[str, Job] = {}
            if missing:
                loaded = await self._io(lambda: {j: self._archive.read(j) for j in missing})
            page.extend(self._archive.recent.get(j) or loaded[j] for j in wanted)
        return page, total

    # -- writes -----------------------------------------------------------------------------

    def _notify(self, kind: str, payload: Job | str) -> None:
        if self._listener is not None:
            try:
                self._listener(kind, payload)
            except Exception:  # a broken subscriber must not undo a durable change
                log.exception("job listener failed")

    def next_position(self) -> int:
        positions = [j["position"] for j in self._live.values() if j["status"] == "pending"]
        return max(positions, default=0) + 1

    async def add(self, jobs: list[Job]) -> list[Job]:
        """Insert new pending jobs, all or none, in one write."""
        async with self._lock:
            base = self.next_position()
            prepared = []
            for i, job in enumerate(jobs):
                job = {**job, "position": base + i}
                prepared.append((self._next_doc_id + i, job))
            await self._io(self._insert_sync, prepared)
            self._next_doc_id += len(prepared)
            for doc_id, job in prepared:
                self._live[job["mobilesd_job_id"]] = job
                self._doc_ids[job["mobilesd_job_id"]] = doc_id
        for _, job in prepared:
            self._notify("job", job)
        return [job for _, job in prepared]

    def _insert_sync(self, prepared: list[tuple[int, Job]]) -> None:
        assert self._db is not None
        self._db.table("jobs").insert_multiple(Document(job, doc_id=i) for i, job in prepared)

    async def update(
        self,
        job_id: str,
        changes: dict[str, Any],
        *,
        expect: Iterable[str] | None = None,
    ) -> Job:
        """Change a live job, optionally only if its status is one of `expect`.

        A change to a terminal status archives the job: appended to the archive first, then
        removed from the live file, so a crash in between leaves it in both and `open` keeps the
        archived (newer) copy.
        """
        async with self._lock:
            current = self._live.get(job_id)
            if current is None:
                if job_id in self._archive.index:
                    job = await self.get(job_id)
                    raise Conflict(f"job is already {job['status']}", job["status"])
                raise JobNotFound(job_id)
            if expect is not None and current["status"] not in set(expect):
                raise Conflict(f"job is {current['status']}", current["status"])
            job = {**current, **changes}
            if job["status"] in TERMINAL_STATUSES:
                job["progress"] = None
                items = await self._io(self._archive_sync, [job])
                self._archive.commit_append(items, [job])
                del self._live[job_id]
                self._doc_ids.pop(job_id, None)
            else:
                await self._io(self._update_sync, {job_id: changes})
                self._live[job_id] = job
        self._notify("job", job)
        return job

    def _archive_sync(self, jobs: list[Job]) -> list[tuple[str, _ArchiveEntry]]:
        assert self._db is not None
        items = self._archive.append(jobs)
        doc_ids = [self._doc_ids[j["mobilesd_job_id"]] for j in jobs]
        self._db.table("jobs").remove(doc_ids=doc_ids)
        return items

    def _update_sync(self, changes_by_id: dict[str, dict[str, Any]]) -> None:
        assert self._db is not None

        def apply(doc: dict[str, Any]) -> None:
            doc.update(changes_by_id[doc["mobilesd_job_id"]])

        doc_ids = [self._doc_ids[job_id] for job_id in changes_by_id]
        self._db.table("jobs").update(apply, doc_ids=doc_ids)

    async def reorder(self, ordered_ids: list[str]) -> list[Job]:
        """Give pending jobs positions 1..n in the given order, in one write."""
        async with self._lock:
            changes = {}
            for position, job_id in enumerate(ordered_ids, start=1):
                job = self._live.get(job_id)
                if job is None or job["status"] != "pending":
                    raise Conflict("only pending jobs can be moved")
                if job["position"] != position:
                    changes[job_id] = {"position": position}
            if changes:
                await self._io(self._update_sync, changes)
                for job_id, ch in changes.items():
                    self._live[job_id] = {**self._live[job_id], **ch}
            moved = [self._live[j] for j in changes]
        for job in moved:
            self._notify("job", job)
        return moved

    async def requeue_processing(self) -> list[Job]:
        """On start: jobs left `processing` by a crash go back to pending at the queue's front."""
        async with self._lock:
            stuck = [j for j in self._live.values() if j["status"] == "processing"]
            if not stuck:
                return []
            front = min((j["position"] for j in self.pending_in_order()), default=1)
            changes = {}
            for i, job in enumerate(sorted(stuck, key=lambda j: j["position"])):
                changes[job["mobilesd_job_id"]] = {
                    "status": "pending",
                    "assigned_server_alias": None,
                    "progress": None,
                    "position": front - len(stuck) + i,
                    # Not the server's fault: counted apart from the retry budget.
                    "interruptions": job.get("interruptions", 0) + 1,
                }
            await self._io(self._update_sync, changes)
            for job_id, ch in changes.items():
                self._live[job_id] = {**self._live[job_id], **ch}
            return [self._live[j] for j in changes]

    async def remove_finished(self, job_ids: list[str]) -> list[str]:
        """Drop terminal jobs from the history (their images stay)."""
        async with self._lock:
            ids = [j for j in dict.fromkeys(job_ids) if j in self._archive.index]
            if ids:
                await self._io(self._archive.tombstone, ids)
                self._archive.commit_remove(ids)
        for job_id in ids:
            self._notify("job_removed", job_id)
        return ids

    def finished_ids(self, statuses: set[str]) -> list[str]:
        return [j for j, e in self._archive.index.items() if e.status in statuses]

    def is_finished(self, job_id: str) -> bool:
        return job_id in self._archive.index


class ServerStore:
    """Forge server settings in `servers.json` (0600), alias is the key."""

    def __init__(self, data_path: Path) -> None:
        self.data_path = data_path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mobilesd-servers")
        self._db: TinyDB | None = None
        self._servers: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        def _open() -> None:
            self.data_path.mkdir(parents=True, exist_ok=True)
            self._db = TinyDB(self.data_path / "servers.json", storage=AtomicJSONStorage)
            for doc in self._db.table("servers").all():
                self._servers[doc["alias"]] = dict(doc)

        await self._io(_open)

    async def close(self) -> None:
        if self._db is not None:
            await self._io(self._db.close)
        self._executor.shutdown(wait=True)

    def all(self) -> list[dict[str, Any]]:
        return sorted(self._servers.values(), key=lambda s: s["alias"])

    def get(self, alias: str) -> dict[str, Any] | None:
        return self._servers.get(alias)

    async def replace_all(self, servers: dict[str, dict[str, Any]]) -> None:
        """Write the whole server list (small) in one atomic write."""
        async with self._lock:

            def _write() -> None:
                # One storage write (not truncate + insert): a crash leaves the old or new list.
                assert self._db is not None
                docs = {str(i): s for i, s in enumerate(servers.values(), start=1)}
                self._db.storage.write({"servers": docs})
                self._db.table("servers").clear_cache()

            await self._io(_write)
            self._servers = dict(servers)
