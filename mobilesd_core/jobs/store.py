"""The job and server store.

Live jobs (pending and processing) are a TinyDB snapshot, `jobs.json`, plus a journal,
`jobs.journal`, of the changes since: each change is one appended line, so its cost depends
neither on the history nor on the length of the queue. The journal is folded into a fresh
snapshot (written atomically) every few thousand lines and at every start. A job that reaches a
terminal state is appended to a monthly archive (`archive/jobs-YYYY-MM.jsonl`) and only then
dropped from the journal. Servers live in `servers.json` (0600: it holds passwords).

All file work happens on one writer thread that commits in groups: the changes that arrive while
an fsync runs share the next one. The event loop owns the in-memory view and changes it as soon as
a change is queued; callers await the write (`durable=False`: it reached the OS, which survives a
killed process) or its fsync (`durable=True`, the default: it survives a power cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import itertools
import json
import logging
import os
import queue
import sys
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import ValidationError

from ..config import ConfigError
from ..durable import (
    OS,
    AppendLog,
    AtomicJSONStorage,
    DamagedFile,
    FileSystem,
    atomic_write_bytes,
    corrupt_copy_name,
    fsync_dir,
    fsync_path,
)
from ..errors import Conflict as Conflict  # where the store's callers have imported it from
from ..errors import NotFound, StorageUnavailable
from ..schema import ACTIVE_STATUSES, TERMINAL_STATUSES, ServerConfig, utc_now_iso
from . import transitions
from .archive_cache import (
    ArchiveEntry,
    MonthScan,
    file_mark,
    needs_write,
    read_cache,
    read_lines,
    sweep_temps,
    write_cache,
)
from .transitions import Transition
from .types import Job

log = logging.getLogger(__name__)

T = TypeVar("T")
JobListener = Callable[[str, Job | str], None]  # ("job", job) or ("job_removed", job_id)

COMPACT_EVERY = 4000  # journal lines before they are folded into a new snapshot


class JobNotFound(NotFound):
    code = "job_not_found"

    @property
    def public_message(self) -> str:
        return f"no job with id '{self.args[0]}'"


class BatchNotFound(NotFound):
    """No job (live or finished) carries this batch_id."""

    code = "batch_not_found"

    @property
    def public_message(self) -> str:
        return f"no job has batch_id '{self.args[0]}'"


class StoreWriteError(StorageUnavailable):
    """A store write did not reach the disk (full, read-only, gone): nothing changed."""

    def __init__(self, data_path: Path, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        super().__init__(cause.errno, f"cannot write the job store in {data_path}: {reason}")
        self.reason = reason


class DataFolderInUse(ConfigError):
    """Another MobileSD process owns this CONFIG_DATA_PATH."""


class JobsFileDamaged(ConfigError):
    """`jobs.json` does not parse. It is the only copy of queued jobs that did not change since
    the last start (the journal holds only changes since), so starting without it would drop
    them: the core stops, names the file and the place, and says what the user can do."""

    def __init__(self, damage: DamagedFile) -> None:
        super().__init__(
            f"CONFIG_DATA_PATH: {damage}. It holds the queued jobs, so MobileSD does not start "
            "without it. Restore it from a backup, or move it away to start with what "
            "jobs.journal and archive/ hold (finished jobs and jobs changed since the last "
            "start are kept; queued jobs not changed since then are lost)."
        )
        self.damage = damage


def job_problem(job: Any, *, live: bool) -> str | None:
    """What makes a stored job unusable (None: nothing). Only what the store and the views
    rely on is checked; a record failing this was written by hand or damaged."""
    if not isinstance(job, dict):
        return "not a job object"
    job_id = job.get("mobilesd_job_id")
    if not isinstance(job_id, str) or not job_id:
        return "no mobilesd_job_id"
    status = job.get("status")
    if status not in (ACTIVE_STATUSES if live else TERMINAL_STATUSES):
        return f"job {job_id}: status {status!r} does not belong here"
    if not isinstance(job.get("generation_params"), dict):
        return f"job {job_id}: no generation_params object"
    if live and (not isinstance(job.get("position"), int) or isinstance(job["position"], bool)):
        return f"job {job_id}: no position"
    return None


_ArchiveEntry = ArchiveEntry


def checked(record: dict[str, Any]) -> Job:
    """A record read from the files, once `job_problem` passed it (or for the archive, whose
    records were checked when the index was built)."""
    return cast(Job, record)


def _records(jobs: list[Job]) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], jobs)


def finish_time(job: Job) -> float:
    """A finished job's completion time in unix seconds (0 when it has none: counts as old)."""
    stamp = job.get("completion_timestamp")
    if not isinstance(stamp, str):
        return 0.0
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0


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


class _Archive:
    """Append-only monthly JSON-lines files of finished jobs, with an in-memory index.

    Index and order are changed on the event loop only; file appends happen on the writer thread.
    """

    RECENT = 512  # full records kept in memory: the first pages of the queue view read no file

    def __init__(self, root: Path, fs: FileSystem = OS) -> None:
        self.root = root
        self.fs = fs
        self.index: dict[str, _ArchiveEntry] = {}
        self.order: list[str] = []  # append order, oldest first; may hold dead ids
        self._dead_in_order = 0
        self.recent: OrderedDict[str, Job] = OrderedDict()
        self.removed: set[str] = set()  # tombstoned ids seen while loading
        self.scans: dict[str, MonthScan] = {}  # what load read of each month, for the cache
        self._cache_stale = False
        self.lines_read = 0  # archive lines parsed by load (the cache spares the others)
        self.status_counts: Counter[str] = Counter()  # of the index, kept in step with it
        self._logs: dict[str, AppendLog] = {}
        # Finished jobs by completion time (parallel arrays, oldest first; may hold dead or
        # outdated items, checked against the index). Retention cut-offs are a bisect away, so
        # "finished in the last N days" costs those jobs, not the history.
        self._fin_times: array[float] = array("d")
        self._fin_ids: list[str] = []
        self._fin_dead = 0

    def log_for(self, month: str) -> AppendLog:
        log_ = self._logs.get(month)
        if log_ is None:
            log_ = self._logs[month] = AppendLog(self.root / f"jobs-{month}.jsonl", fs=self.fs)
        return log_

    @staticmethod
    def entry(month: str, offset: int, length: int, job: Job) -> _ArchiveEntry:
        # Interned status: 100,000 entries share five strings (and a batch's jobs one id).
        batch = job.get("batch_id")
        return _ArchiveEntry(
            month,
            offset,
            length,
            sys.intern(job["status"]),
            _search_text(job),
            sys.intern(batch) if isinstance(batch, str) else None,
            finish_time(job),
        )

    def load(self) -> None:
        """Every month into the index (thread side, before the loop uses it): from the cache
        (archive_cache.py) as far as it fits each file, the rest read line by line."""
        # Its name is made durable by the snapshot written next, in the same folder.
        self.fs.mkdir(self.root)
        sweep_temps(self.root, self.fs)  # a cache write a killed process left half done
        cache = read_cache(self.root)
        cached = dict(cache.months) if cache is not None else {}
        cached_months = set(cached)
        # Parsing 100,000 records makes many short-lived objects; the collector rescanning
        # the growing index each time would double the load time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for path in sorted(self.root.glob("jobs-*.jsonl")):
                month = path.stem.removeprefix("jobs-")
                scan = cached.pop(month, None)
                entries: Iterable[tuple[str, ArchiveEntry]] = ()
                if scan is not None and cache is not None and scan.fits(path):
                    try:
                        entries = cache.entries(month)
                    except (KeyError, TypeError, ValueError, IndexError) as exc:
                        log.warning("archive index of %s not used: %r", month, exc)
                        scan = None
                else:
                    if scan is not None:
                        log.warning("%s: changed since its index was cached; read whole", path)
                    scan = None
                self.scans[month] = scan = scan or MonthScan()
                self._load_month(month, scan, entries)
                del entries
        finally:
            if gc_was_enabled:
                gc.enable()
            if cache is not None:
                cache.close()
        self._cache_stale = needs_write(self.scans, cached_months)
        self._rebuild_order()
        self._rebuild_finish_index()
        self.status_counts = Counter(e.status for e in self.index.values())

    def take_cache_write(self) -> Callable[[], None] | None:
        """What writes the cache of what `load` read, once the files it describes are fsynced
        (None: the cache on disk is good enough). The scans leave the archive either way."""
        scans, self.scans = self.scans, {}
        if not self._cache_stale:
            return None
        return lambda: write_cache(self.root, scans, self.fs)

    def _load_month(
        self, month: str, scan: MonthScan, cached: Iterable[tuple[str, ArchiveEntry]]
    ) -> None:
        log_ = self.log_for(month)

        def bad(number: int, reason: str) -> None:
            scan.bad.append((number, reason))
            log.error("%s: line %d skipped: %s", log_.path, number, reason)

        # What the cache holds of this file, as if its lines were read: a month's effect on
        # the index is, per id, its last line there (ids are independent of each other).
        for number, reason in scan.bad:
            log.error("%s: line %d skipped: %s", log_.path, number, reason)
        for job_id in scan.removed:
            self.removed.add(job_id)
            self.index.pop(job_id, None)
        for job_id, entry in cached:
            self.index[job_id] = entry
            self.order.append(job_id)
        end = scan.size
        for number, offset, line in read_lines(log_.path, scan.size, scan.lines + 1):
            end = offset + len(line)
            scan.lines += 1
            self.lines_read += 1
            try:
                record = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8
                record = None
            if not isinstance(record, dict):
                if line.strip():
                    bad(number, "not a whole record (cut short, or damaged)")
                continue
            removed = record.get("_removed")
            if removed is not None:
                if not isinstance(removed, list) or not all(isinstance(j, str) for j in removed):
                    bad(number, "a removal without a list of job ids")
                    continue
                for job_id in removed:
                    self.removed.add(job_id)
                    scan.remove(job_id)
                    if self.index.pop(job_id, None) is not None:
                        scan.dead += 1
                continue
            problem = job_problem(record, live=False)
            if problem is not None:
                bad(number, problem)
                continue
            job_id = record["mobilesd_job_id"]
            if job_id in self.index:
                scan.dead += 1  # an older copy of a re-archived job; the newest wins
            entry = self.entry(month, offset, len(line), checked(record))
            self.index[job_id] = entry
            scan.put(job_id, entry)
            self.order.append(job_id)
        if end != scan.size:
            scan.size = end
            scan.ino, scan.tail = file_mark(log_.path, end)
        if scan.lines and scan.dead * 2 > scan.lines:
            self._compact(month)

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

    def _rebuild_finish_index(self) -> None:
        # Files are read month by month in append order: nearly sorted, so the sort is cheap.
        pairs = sorted(((e.finished, j) for j, e in self.index.items()), key=lambda p: p[0])
        self._fin_times = array("d", (t for t, _ in pairs))
        self._fin_ids = [j for _, j in pairs]
        self._fin_dead = 0

    def _index_finish(self, job_id: str, finished: float) -> None:
        times = self._fin_times
        if not times or finished >= times[-1]:  # the usual case: it just finished
            times.append(finished)
            self._fin_ids.append(job_id)
        else:
            i = bisect_right(times, finished)
            times.insert(i, finished)
            self._fin_ids.insert(i, job_id)

    def _finish_current(self, i: int) -> bool:
        entry = self.index.get(self._fin_ids[i])
        return entry is not None and entry.finished == self._fin_times[i]

    def finished_since(self, cutoff: float) -> list[str]:
        """Ids of jobs finished at or after `cutoff`, newest first."""
        start = bisect_left(self._fin_times, cutoff)
        seen: set[str] = set()
        out = []
        for i in range(len(self._fin_ids) - 1, start - 1, -1):
            job_id = self._fin_ids[i]
            if job_id not in seen and self._finish_current(i):
                seen.add(job_id)
                out.append(job_id)
        return out

    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of jobs finished before `cutoff`, oldest first."""
        end = bisect_left(self._fin_times, cutoff)
        seen: set[str] = set()
        out = []
        for i in range(end):
            job_id = self._fin_ids[i]
            if job_id not in seen and self._finish_current(i):
                seen.add(job_id)
                out.append(job_id)
        return out

    def _compact(self, month: str) -> None:
        log_ = self.log_for(month)
        live = [(job_id, e) for job_id, e in self.index.items() if e.month == month]
        records = [log_.read_at(e.offset, e.length) for _, e in live]
        spans = log_.rewrite(records)
        scan = self.scans[month] = MonthScan(lines=len(records))
        for (job_id, _), (offset, length), record in zip(live, spans, records, strict=True):
            entry = self.index[job_id] = self.entry(month, offset, length, checked(record))
            scan.put(job_id, entry)
        scan.size = spans[-1][0] + spans[-1][1] if spans else 0
        scan.ino, scan.tail = file_mark(log_.path, scan.size)
        log.info("archive %s compacted to %d jobs", month, len(records))

    def read_entry(self, entry: _ArchiveEntry) -> Job:
        return checked(self.log_for(entry.month).read_at(entry.offset, entry.length))

    def commit_append(self, job: Job, entry: _ArchiveEntry) -> None:
        job_id = job["mobilesd_job_id"]
        old = self.index.get(job_id)
        if old is not None:
            self._dead_in_order += 1
            self.status_counts[old.status] -= 1
        self.index[job_id] = entry
        self.status_counts[entry.status] += 1
        if old is None or old.finished != entry.finished:
            self._index_finish(job_id, entry.finished)
            self._fin_dead += old is not None
        self.order.append(job_id)
        self.recent[job_id] = job
        self.recent.move_to_end(job_id)
        while len(self.recent) > self.RECENT:
            self.recent.popitem(last=False)

    def commit_remove(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            old = self.index.pop(job_id, None)
            if old is not None:
                self._dead_in_order += 1
                self._fin_dead += 1
                self.status_counts[old.status] -= 1
            self.recent.pop(job_id, None)
        if self._dead_in_order > 1024 and self._dead_in_order * 4 > len(self.order):
            self._rebuild_order()
        if self._fin_dead > 1024 and self._fin_dead * 4 > len(self._fin_ids):
            self._rebuild_finish_index()

    def newest_first(self) -> Iterator[str]:
        seen: set[str] = set()
        for job_id in reversed(self.order):
            if job_id in self.index and job_id not in seen:
                seen.add(job_id)
                yield job_id


# --- the writer thread --------------------------------------------------------------------------


@dataclass
class _Op:
    """One change for the writer: journal records, archive appends, tombstones."""

    journal: list[dict[str, Any]] = field(default_factory=list)
    archive: list[Job] = field(default_factory=list)  # appended before the journal records
    tombstones: list[tuple[str, list[str]]] = field(default_factory=list)  # (month, ids)
    durable: bool = True
    future: asyncio.Future[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    result: Any = None  # held for the syncer to deliver


class _WriteFailed(Exception):
    """A write did not reach the OS; carries the live jobs as the files hold them."""

    def __init__(self, cause: BaseException, on_disk: dict[str, Job]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.on_disk = on_disk


def _record_problem(record: dict[str, Any]) -> str | None:
    """What makes a journal record unusable (None: nothing)."""
    op = record.get("op")
    if op in ("put", "done"):
        return job_problem(record.get("job"), live=op == "put")
    if op == "pos":
        positions = record.get("positions")
        if not isinstance(positions, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in positions.values()
        ):
            return "a move without positions"
        return None
    return f"unknown op {op!r}"


class _Writer:
    """Owns the live files.

    The appender thread writes every op in order and tells fast ops at once; the syncer thread
    then fsyncs each touched file once for everything written meanwhile (group commit) and tells
    durable ops. So a claim never waits behind another job's fsync.

    A finished job is written twice: as a `done` journal line holding the whole record, and as
    an archive line. Each is enough to recover it, so the two files need no ordering between
    their flushes; `load` re-archives any `done` job the archive lacks. Only compaction, which
    drops the `done` lines, must first make the archive lines durable (see `_compact`).
    """

    def __init__(self, data_path: Path, archive: _Archive, fs: FileSystem = OS) -> None:
        self.fs = fs
        self.snapshot_path = data_path / "jobs.json"
        self.journal = AppendLog(data_path / "jobs.journal", fs=fs)
        self.archive = archive
        self.jobs: dict[str, Job] = {}  # the live jobs as written (appender side)
        self.done: dict[str, Job] = {}  # finished jobs seen in the journal (load only)
        self.lines = 0
        # Archive files (and the archive folder, for a new month's file) written since the last
        # compaction, whether or not the syncer has fsynced them yet (appender side).
        self._archive_written: set[Path] = set()
        self._archive_files: set[Path] = set()  # known to exist: their names are durable
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._sync_queue: queue.SimpleQueue[tuple[list[_Op], set[Path]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []

    # -- load, before the threads start --------------------------------------------------------

    def read(self) -> list[str]:
        """Snapshot plus journal into `self.jobs`; writes nothing. Returns what was skipped in
        the journal (line and why). Raises `JobsFileDamaged` if the snapshot does not parse."""
        try:
            docs = self._snapshot_docs()
        except DamagedFile as exc:
            raise JobsFileDamaged(exc) from None
        for key, doc in docs.items():
            problem = job_problem(doc, live=True)
            if problem is not None:
                log.error("%s: job %s skipped: %s", self.snapshot_path, key, problem)
                continue
            self.jobs[doc["mobilesd_job_id"]] = checked(dict(doc))
        skipped: list[str] = []
        for number, _, _, record in self.journal.iter_numbered(
            lambda number, _: skipped.append(f"line {number}: not a whole record")
        ):
            problem = _record_problem(record)
            if problem is None:
                self._apply(record)
            else:
                skipped.append(f"line {number}: {problem}")
        return skipped

    def _snapshot_docs(self) -> dict[str, Any]:
        # TinyDB's format: {"jobs": {"<doc id>": {...}, ...}} (other tables are not ours).
        data = AtomicJSONStorage(self.snapshot_path, fs=self.fs).read() or {}
        docs = data.get("jobs", {})
        if not isinstance(docs, dict):
            raise DamagedFile(self.snapshot_path, "its 'jobs' table is not an object")
        return docs

    def load(self) -> dict[str, Job]:
        skipped = self.read()
        if skipped:
            # Changes are lost with those lines; the file is folded away below, so a copy stays
            # for whoever wants to look.
            aside = corrupt_copy_name(self.journal.path)
            atomic_write_bytes(aside, self.journal.path.read_bytes(), mode=0o600, fs=self.fs)
            for problem in skipped[:20]:
                log.error("%s: %s; skipped", self.journal.path, problem)
            log.error(
                "%s: %d damaged line(s) skipped (the changes they held are lost); "
                "the file as it was is kept as %s",
                self.journal.path,
                len(skipped),
                aside.name,
            )
        # Whatever a killed process left unsynced in the archive is about to be relied on.
        self._archive_written.update(self.archive.root.glob("jobs-*.jsonl"))
        lost = [
            job
            for job_id, job in self.done.items()
            if job_id not in self.archive.index and job_id not in self.archive.removed
        ]
        if lost:
            # Finished just before a crash, and the archive line never reached the disk.
            self._archive_now(lost)
        for job_id in [j for j in self.jobs if j in self.archive.index]:
            del self.jobs[job_id]
        self.done.clear()
        self.archive.removed.clear()
        self._compact()
        return {k: v.copy() for k, v in self.jobs.items()}

    def _archive_now(self, jobs: list[Job]) -> None:
        for month, group in _by_month(jobs).items():
            log_ = self.archive.log_for(month)
            self._note_archive_file(log_.path, self._archive_written)
            for job, (offset, length) in zip(
                group, log_.append(_records(group), sync=True), strict=True
            ):
                self.archive.commit_append(job, _Archive.entry(month, offset, length, job))
        log.info("re-archived %d finished job(s) found only in the journal", len(jobs))

    def _apply(self, record: dict[str, Any]) -> None:
        op = record.get("op")
        if op == "put":
            job = record["job"]
            self.jobs[job["mobilesd_job_id"]] = job
        elif op == "done":
            job = record["job"]
            self.jobs.pop(job["mobilesd_job_id"], None)
            self.done[job["mobilesd_job_id"]] = job
        elif op == "pos":
            for job_id, position in record["positions"].items():
                if job_id in self.jobs:
                    self.jobs[job_id] = {**self.jobs[job_id], "position": position}

    def _compact(self) -> None:
        # The `done` lines are about to go, so their archive lines, and the names of archive
        # files made since, must be durable first: the syncer may not have reached them yet
        # (or, at start, a killed process never did). Then the snapshot, then an empty
        # journal; a power cut in between replays records the snapshot already holds, which is
        # harmless (every record is idempotent).
        for path in self._archive_written:
            fsync_path(path, fs=self.fs)
        self._archive_written.clear()
        docs = {str(i): job for i, job in enumerate(self.jobs.values(), start=1)}
        payload = json.dumps({"jobs": docs}, separators=(",", ":"), ensure_ascii=False)
        atomic_write_bytes(self.snapshot_path, payload.encode(), mode=0o600, fs=self.fs)
        atomic_write_bytes(self.journal.path, b"", mode=0o600, fs=self.fs)
        self.lines = 0

    def _note_archive_file(self, path: Path, touched: set[Path]) -> None:
        """Before an append to `path`: a file about to be made has a durable name only once
        the archive folder is fsynced, so the folder joins the paths to fsync."""
        if path not in self._archive_files:
            if not path.exists():
                touched.add(self.archive.root)
            self._archive_files.add(path)

    # -- the threads ---------------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._append_loop, name="mobilesd-store", daemon=True),
            threading.Thread(target=self._sync_loop, name="mobilesd-fsync", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        if self._threads:
            self._queue.put(None)  # the appender passes the stop on to the syncer
            for thread in self._threads:
                thread.join()
            self._threads = []

    def submit(self, op: _Op) -> None:
        self._queue.put(op)

    @staticmethod
    def _drain(first: Any, source: queue.SimpleQueue[Any]) -> tuple[list[Any], bool]:
        batch, stop = [first], False
        while True:
            try:
                item = source.get_nowait()
            except queue.Empty:
                return batch, stop
            if item is None:
                return batch, True
            batch.append(item)

    def _append_loop(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, stop = self._drain(first, self._queue)
            self._append(batch)
            if stop:
                break
        self._sync_queue.put(None)

    def _append(self, batch: list[_Op]) -> None:
        records = [r for op in batch for r in op.journal]
        touched: set[Path] = set()
        try:
            results = [self._write_archive(op, touched) for op in batch]
            if records:
                self.journal.append(records, sync=False)
                touched.add(self.journal.path)
        except OSError as exc:
            log.error("job store write failed: %s", exc)
            failure = _WriteFailed(exc, {k: v.copy() for k, v in self.jobs.items()})
            for op in batch:
                _resolve(op, failure)
            return
        for record in records:
            self._apply(record)
        self.done.clear()  # kept only while loading
        self.lines += len(records)
        for op, result in zip(batch, results, strict=True):
            if op.durable:
                op.result = result
            else:
                _resolve(op, result)
        self._archive_written |= touched - {self.journal.path}
        durable = [op for op in batch if op.durable]
        if durable:
            self._sync_queue.put((durable, touched))
        if self.lines >= COMPACT_EVERY:
            try:
                self._compact()
            except OSError as exc:  # the journal still holds everything; try again later
                log.error("job store compaction failed: %s", exc)

    def _sync_loop(self) -> None:
        while (first := self._sync_queue.get()) is not None:
            batch, stop = self._drain(first, self._sync_queue)
            ops = [op for ops, _ in batch for op in ops]
            paths = set().union(*(paths for _, paths in batch))
            try:
                for path in paths:
                    fsync_path(path, fs=self.fs)
            except OSError as exc:
                log.error("job store fsync failed: %s", exc)
                for op in ops:
                    _resolve(op, exc)
            else:
                for op in ops:
                    _resolve(op, op.result)
            if stop:
                return

    def _write_archive(self, op: _Op, touched: set[Path]) -> list[_ArchiveEntry]:
        entries: list[_ArchiveEntry] = []
        for month, jobs in _by_month(op.archive).items():
            log_ = self.archive.log_for(month)
            self._note_archive_file(log_.path, touched)
            spans = log_.append(_records(jobs), sync=False)
            touched.add(log_.path)
            entries.extend(
                _Archive.entry(month, offset, length, job)
                for job, (offset, length) in zip(jobs, spans, strict=True)
            )
        for month, ids in op.tombstones:
            log_ = self.archive.log_for(month)
            self._note_archive_file(log_.path, touched)
            log_.append([{"_removed": ids}], sync=False)
            touched.add(log_.path)
        return entries


def _by_month(jobs: list[Job]) -> dict[str, list[Job]]:
    by_month: dict[str, list[Job]] = {}
    for job in jobs:
        stamp = job.get("completion_timestamp") or utc_now_iso()
        by_month.setdefault(stamp[:7], []).append(job)
    return by_month


def read_live_jobs(data_path: Path) -> dict[str, Job]:
    """The live jobs as the files hold them, read without changing anything (tools, tests)."""
    writer = _Writer(data_path, _Archive(data_path / "archive"))
    writer.read()
    return writer.jobs


def _resolve(op: _Op, result: Any) -> None:
    future, loop = op.future, op.loop
    if future is None or loop is None:
        return
    op.future = None

    def deliver() -> None:
        if future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(deliver)


# --- the store ----------------------------------------------------------------------------------


class JobStore:
    """Durable jobs. Reads come from memory; every change is ordered through the writer."""

    def __init__(
        self, data_path: Path, *, listener: JobListener | None = None, fs: FileSystem = OS
    ) -> None:
        """`fs` carries every call that changes the files (tests record them: powercut.py)."""
        self.data_path = data_path
        self._listener = listener
        self._archive = _Archive(data_path / "archive", fs)
        self._writer = _Writer(data_path, self._archive, fs)
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mobilesd-read")
        self._live: dict[str, Job] = {}
        self._pending_cache: list[Job] | None = None  # run order; dropped on any change
        # Jobs whose add is not acknowledged yet: not offered to the dispatcher, whose claim
        # (written without waiting for an fsync) would otherwise publish "processing" before
        # the add publishes "pending".
        self._adding: set[str] = set()
        self._archiving: set[str] = set()
        self._lock_fd: int | None = None
        self._cache_writer: threading.Thread | None = None

    def set_listener(self, listener: JobListener | None) -> None:
        self._listener = listener

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)
        self._writer.start()

    def _open_sync(self) -> None:
        self.data_path.mkdir(parents=True, exist_ok=True)
        self._take_folder_lock()
        try:
            self._archive.load()
            self._live = self._writer.load()
            # The archive files are fsynced now (writer.load): the cache may describe them.
            # Written beside the running store: it only reads what load left for it.
            cache_write = self._archive.take_cache_write()
            if cache_write is not None:
                self._cache_writer = threading.Thread(
                    target=cache_write, name="mobilesd-archive-cache", daemon=True
                )
                self._cache_writer.start()
        except BaseException:
            self._release_folder_lock()  # a start that failed leaves the folder free
            raise

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
        await asyncio.to_thread(self._writer.stop)
        if self._cache_writer is not None:  # done before the folder is free for another core
            await asyncio.to_thread(self._cache_writer.join)
            self._cache_writer = None
        self._readers.shutdown(wait=True)
        self._release_folder_lock()

    def _release_folder_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    async def _commit(self, op: _Op, *, pending_cache_kept: bool = False) -> Any:
        # Every change to `_live` is made just before its commit (or, archiving, just after).
        if not pending_cache_kept:
            self._pending_cache = None
        loop = asyncio.get_running_loop()
        op.future, op.loop = loop.create_future(), loop
        future = op.future
        self._writer.submit(op)
        try:
            # Shielded: a cancelled caller must not lose track of a write already queued.
            return await asyncio.shield(future)
        except _WriteFailed as failed:
            self._live = failed.on_disk  # memory goes back to what the files hold
            self._pending_cache = None
            cause = failed.cause
            if isinstance(cause, OSError):
                raise StoreWriteError(self.data_path, cause) from cause
            raise cause from None
        except OSError as exc:  # the fsync failed: the change reached the OS, maybe not the disk
            raise StoreWriteError(self.data_path, exc) from exc

    # -- reads (memory only) ----------------------------------------------------------------

    def live_jobs(self) -> list[Job]:
        return list(self._live.values())

    def pending_in_order(self) -> list[Job]:
        """Pending jobs in run order (a copy: callers may change the list)."""
        if self._pending_cache is None:
            adding = self._adding
            pending = [
                j
                for j in self._live.values()
                if j["status"] == "pending" and j["mobilesd_job_id"] not in adding
            ]
            pending.sort(key=lambda j: (j["position"], j["mobilesd_job_id"]))
            self._pending_cache = pending
        return list(self._pending_cache)

    def get_live(self, job_id: str) -> Job | None:
        return self._live.get(job_id)

    async def get(self, job_id: str) -> Job:
        job = self._live.get(job_id) or self._archive.recent.get(job_id)
        if job is not None:
            return job
        entry = self._archive.index.get(job_id)  # taken now: a removal may come meanwhile
        if entry is None:
            raise JobNotFound(job_id)
        return await self._read(self._archive.read_entry, entry)

    def count(self) -> dict[str, int]:
        counts = dict.fromkeys(("pending", "processing", "completed", "failed", "cancelled"), 0)
        for job in self._live.values():
            counts[job["status"]] += 1
        for status, n in self._archive.status_counts.items():
            counts[status] += n
        return counts

    async def list_jobs(
        self,
        *,
        statuses: set[str] | None = None,
        q: str | None = None,
        limit: int = 100,
        offset: int = 0,
        batch_id: str | None = None,
        finished_after: float | None = None,
        finished_before: float | None = None,
    ) -> tuple[list[Job], int]:
        """Pending in run order, then processing, then finished newest first.

        Finished jobs are all of them by default; `finished_after` keeps those finished at or
        after that unix time (the list without the archived ones), `finished_before` keeps only
        those finished before it (the archive alone, and then no live jobs).
        """
        needle = q.lower() if q else None

        def keep_live(job: Job) -> bool:
            if statuses and job["status"] not in statuses:
                return False
            if batch_id is not None and job.get("batch_id") != batch_id:
                return False
            return not needle or needle in _search_text(job)

        if finished_before is None:
            pending = [j for j in self.pending_in_order() if keep_live(j)]
            processing = sorted(
                (j for j in self._live.values() if j["status"] == "processing" and keep_live(j)),
                key=lambda j: j.get("started_timestamp") or "",
            )
            live = pending + processing
        else:
            live = []
        index = self._archive.index
        start = max(0, offset - len(live))
        page: list[Job] = live[offset : offset + limit]
        need = limit - len(page)

        def keep_finished(job_id: str) -> bool:
            entry = index[job_id]
            if statuses and entry.status not in statuses:
                return False
            if batch_id is not None and entry.batch != batch_id:
                return False
            return not needle or needle in entry.search

        if finished_after is not None:
            # The recent ones only: their count is bounded by the retention age, not history.
            finished = [j for j in self._archive.finished_since(finished_after) if keep_finished(j)]
            total_finished = len(finished)
            wanted = finished[start : start + need] if need > 0 else []
        elif needle or batch_id is not None or finished_before is not None:
            # A text search, a batch (or the archive alone) looks at every finished job anyway.
            finished = [
                j
                for j in self._archive.newest_first()
                if keep_finished(j)
                and (finished_before is None or index[j].finished < finished_before)
            ]
            total_finished = len(finished)
            wanted = finished[start : start + need] if need > 0 else []
        else:
            # Counted, not scanned: a page costs its offset, not the whole history.
            counts = self._archive.status_counts
            total_finished = sum(counts[s] for s in statuses) if statuses else len(index)
            wanted = []
            if need > 0:
                matching = (
                    j
                    for j in self._archive.newest_first()
                    if not statuses or index[j].status in statuses
                )
                wanted = list(itertools.islice(matching, start, start + need))
        total = len(live) + total_finished
        if wanted:
            page.extend(await self._finished_records(wanted))
        return page, total

    async def _finished_records(self, ids: list[str]) -> list[Job]:
        """Finished jobs' records, in order: from memory when recent, else from the archive.
        What is needed is taken from memory before reading: jobs finishing meanwhile push
        records out of `recent`, a removal drops ids from the index."""
        recent, index = self._archive.recent, self._archive.index
        found = {j: recent[j] for j in ids if j in recent}
        entries = {j: index[j] for j in ids if j not in found}
        if entries:
            found.update(
                await self._read(
                    lambda: {j: self._archive.read_entry(e) for j, e in entries.items()}
                )
            )
        return [found[j] for j in ids]

    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of finished jobs that finished before `cutoff` (unix time), oldest first."""
        return self._archive.finished_before(cutoff)

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
        """Insert new pending jobs, all or none, durably, in one journal write."""
        base = self.next_position()
        prepared: list[Job] = [{**job, "position": base + i} for i, job in enumerate(jobs)]
        ids = {job["mobilesd_job_id"] for job in prepared}
        for job in prepared:
            self._live[job["mobilesd_job_id"]] = job
        self._adding |= ids
        try:
            await self._commit(_Op(journal=[{"op": "put", "job": job} for job in prepared]))
        finally:
            self._adding -= ids
            self._pending_cache = None
        for job in prepared:
            self._notify("job", job)
        return prepared

    async def apply(self, job_id: str, transition: Transition, *, durable: bool = True) -> Job:
        """Move a live job through a status change (jobs/transitions.py); Conflict when the
        job is no longer in a status it applies from."""
        return await self.update(
            job_id, transition.changes, expect=transition.expect, durable=durable
        )

    async def update(
        self,
        job_id: str,
        changes: Mapping[str, object],
        *,
        expect: Iterable[str] | None = None,
        durable: bool = True,
    ) -> Job:
        """Change a live job, optionally only if its status is one of `expect`. Status changes
        come through `apply`; this is for the fields a pending job may have edited.

        A terminal status archives the job: appended to the archive first, then dropped from the
        journal, so a crash in between leaves it in both and `open` keeps the archived copy.
        """
        current = self._live.get(job_id)
        if job_id in self._archiving:
            raise Conflict("job is finishing", current["status"] if current else None)
        if current is None:
            if job_id in self._archive.index:
                status = self._archive.index[job_id].status
                raise Conflict(f"job is already {status}", status)
            raise JobNotFound(job_id)
        if expect is not None and current["status"] not in set(expect):
            raise Conflict(f"job is {current['status']}", current["status"])
        job = cast(Job, {**current, **changes})
        kept = self._patch_pending_cache(current, job)
        if job["status"] in TERMINAL_STATUSES:
            job["progress"] = None
            self._archiving.add(job_id)
            try:
                (entry,) = await self._commit(
                    _Op(archive=[job], journal=[{"op": "done", "job": job}]),
                    pending_cache_kept=kept,
                )
            finally:
                self._archiving.discard(job_id)
            self._archive.commit_append(job, entry)
            self._live.pop(job_id, None)
            if current["status"] == "pending":
                # The run-order cache may have been rebuilt while the commit was on its way,
                # from `_live` still holding the job as pending: it would keep offering a job
                # that is gone (the dispatcher planned it pass after pass, never claiming it).
                self._pending_cache = None
        else:
            self._live[job_id] = job
            await self._commit(
                _Op(journal=[{"op": "put", "job": job}], durable=durable),
                pending_cache_kept=kept,
            )
        self._notify("job", job)
        return job

    def _patch_pending_cache(self, old: Job, new: Job) -> bool:
        """Keep the run-order cache through a one-job change instead of sorting the whole queue
        again (a claim per job would make every pass O(n log n)). False: drop it."""
        cache = self._pending_cache
        was, now = old["status"] == "pending", new["status"] == "pending"
        if cache is None or not (was or now):
            return cache is not None
        if was and (not now or new["position"] == old["position"]):
            # Claimed jobs sit near the head: the scan is short.
            index = next((i for i, j in enumerate(cache) if j is old), None)
            if index is None:
                return False
            if now:
                cache[index] = new
            else:
                del cache[index]
            return True
        return False

    async def reorder(self, ordered_ids: list[str]) -> list[Job]:
        """Give pending jobs positions 1..n in the given order, in one journal line."""
        positions: dict[str, int] = {}
        for position, job_id in enumerate(ordered_ids, start=1):
            job = self._live.get(job_id)
            if job is None or job["status"] != "pending" or job_id in self._archiving:
                raise Conflict("only pending jobs can be moved")
            if job["position"] != position:
                positions[job_id] = position
        for job_id, position in positions.items():
            self._live[job_id] = {**self._live[job_id], "position": position}
        if positions:
            await self._commit(_Op(journal=[{"op": "pos", "positions": positions}]))
        moved = [self._live[j] for j in positions if j in self._live]
        for job in moved:
            self._notify("job", job)
        return moved

    async def requeue_processing(self) -> list[Job]:
        """On start: jobs left `processing` by a crash go back to pending at the queue's front."""
        stuck = sorted(
            (j for j in self._live.values() if j["status"] == "processing"),
            key=lambda j: j["position"],
        )
        if not stuck:
            return []
        front = min((j["position"] for j in self.pending_in_order()), default=1)
        requeued = []
        for i, stopped in enumerate(stuck):
            job: Job = {
                **stopped,
                **transitions.requeue_interrupted(stopped, front - len(stuck) + i),
            }
            self._live[job["mobilesd_job_id"]] = job
            requeued.append(job)
        await self._commit(_Op(journal=[{"op": "put", "job": job} for job in requeued]))
        return requeued

    async def remove_finished(self, job_ids: list[str]) -> list[str]:
        """Drop terminal jobs from the history (their images stay)."""
        ids = [j for j in dict.fromkeys(job_ids) if j in self._archive.index]
        if not ids:
            return []
        by_month: dict[str, list[str]] = {}
        for job_id in ids:
            by_month.setdefault(self._archive.index[job_id].month, []).append(job_id)
        await self._commit(_Op(tombstones=list(by_month.items())))
        self._archive.commit_remove(ids)
        for job_id in ids:
            self._notify("job_removed", job_id)
        return ids

    async def batch_jobs(self, batch_id: str) -> list[Job]:
        """Every job of a batch: live ones in run order, then finished ones oldest first."""
        live = [j for j in self.pending_in_order() if j.get("batch_id") == batch_id]
        live += sorted(
            (
                j
                for j in self._live.values()
                if j["status"] == "processing" and j.get("batch_id") == batch_id
            ),
            key=lambda j: j["mobilesd_job_id"],
        )
        done = sorted(j for j, e in self._archive.index.items() if e.batch == batch_id)
        jobs = live + await self._finished_records(done)
        if not jobs:
            raise BatchNotFound(batch_id)
        return jobs

    def finished_ids(self, statuses: set[str]) -> list[str]:
        return [j for j, e in self._archive.index.items() if e.status in statuses]

    def is_finished(self, job_id: str) -> bool:
        return job_id in self._archive.index


SERVERS_FILE = "servers.json"


class ServerStore:
    """Forge server settings in `servers.json` (0600), alias is the key. Small: rewritten whole.

    A file that does not parse is moved aside (`servers.json.corrupt-<time>`) and the core starts
    with no servers, saying so loudly: servers are added again in a minute from the page or the
    TUI (the kept file holds their settings), whereas refusing to start would keep the queue,
    the gallery and the page down, in a loop under a restart policy. Entries that cannot be used
    are dropped the same way, the whole file kept aside first.
    """

    def __init__(self, data_path: Path, *, fs: FileSystem = OS) -> None:
        self.data_path = data_path
        self.path = data_path / SERVERS_FILE
        self.fs = fs
        self._storage: AtomicJSONStorage | None = None
        self._servers: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.data_path.mkdir(parents=True, exist_ok=True)
        try:
            storage = AtomicJSONStorage(self.path, fs=self.fs)
            servers, problems = _server_entries(self.path, storage.read())
        except DamagedFile as exc:
            aside = corrupt_copy_name(self.path)
            self.fs.replace(self.path, aside)
            fsync_dir(self.data_path, fs=self.fs)
            log.error(
                "%s. It was moved to %s and the core starts with NO SERVERS: add them again "
                "(that file holds their settings and passwords)",
                exc,
                aside.name,
            )
            storage = AtomicJSONStorage(self.path, fs=self.fs)
            servers, problems = {}, []
        self._storage = storage
        self._servers = servers
        if problems:
            self._set_aside(problems)

    async def close(self) -> None:
        pass

    def all(self) -> list[dict[str, Any]]:
        return sorted(self._servers.values(), key=lambda s: s["alias"])

    def get(self, alias: str) -> dict[str, Any] | None:
        return self._servers.get(alias)

    def _set_aside(self, problems: list[str]) -> None:
        assert self._storage is not None
        aside = corrupt_copy_name(self.path)
        atomic_write_bytes(aside, self.path.read_bytes(), mode=0o600, fs=self.fs)
        for problem in problems:
            log.error("%s: %s; this server is left out", self.path, problem)
        log.error("%s: the file as it was is kept as %s", self.path, aside.name)
        self._storage.write({"servers": _server_docs(self._servers)})

    async def replace_all(self, servers: dict[str, dict[str, Any]]) -> None:
        """Write the whole server list in one atomic write: the old list or the new, never half."""
        async with self._lock:
            assert self._storage is not None
            await asyncio.to_thread(self._storage.write, {"servers": _server_docs(servers)})
            self._servers = dict(servers)


def _server_docs(servers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(i): s for i, s in enumerate(servers.values(), start=1)}


def _server_entries(
    path: Path, data: dict[str, Any] | None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The servers in a parsed servers.json (TinyDB's format), and the entries left out."""
    docs = (data or {}).get("servers", {})
    if not isinstance(docs, dict):
        raise DamagedFile(path, "its 'servers' table is not an object")
    servers: dict[str, dict[str, Any]] = {}
    problems = []
    for key, doc in docs.items():
        alias = doc.get("alias") if isinstance(doc, dict) else None
        if not isinstance(alias, str) or not alias:
            problems.append(f"entry {key}: no alias")
            continue
        try:
            ServerConfig.model_validate(doc)
        except ValidationError as exc:
            # Edited by hand, or written under older rules. (Never the value: a password.)
            why = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                for e in exc.errors()
            )
            problems.append(f"server '{alias}': {why}")
            continue
        servers[alias] = dict(doc)
    return servers, problems
