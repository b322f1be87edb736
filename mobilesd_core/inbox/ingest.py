"""One complete file in, its jobs queued (all or none) and the file moved: exactly once.

Order: read and hash the file, validate it, durably note the intent (file key + the ids the jobs
will get), create the jobs in one durable write, move the file to `processed/`, note the move.
A crash anywhere in between is recovered by the intent note (see ledger.py).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import posixpath
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..jobfiles import MAX_FILE_BYTES, JobFileResult, parse_job_text
from ..schema import FieldProblem, InvalidInput, new_job_id, utc_now_iso
from ..service import QueueService
from .inside import LinkOnPath, first_link, open_inside
from .ledger import FileKey, IngestLedger
from .names import FAILED, PROCESSED
from .outcome import REPORT_SUFFIX, free_name, move_into, render_report, write_report

log = logging.getLogger(__name__)


class Outcome(Enum):
    QUEUED = "queued"  # jobs created (or found created before a crash), file in processed/
    FAILED = "failed"  # file in failed/ with its report
    CHANGED = "changed"  # the file changed while being read: not complete yet
    DOUBT = "doubt"  # invalid at first reading: looked at again after one more quiet window
    HELD = "held"  # could not finish (store or move failed); tried again later
    GONE = "gone"  # the file disappeared (or a symbolic link is on its way: not ours)


@dataclass
class _Snapshot:
    key: FileKey
    data: bytes | None  # None: over the size limit, not read


def _read(root: Path, rel: str) -> _Snapshot | None:
    """Read a file whole and check it held still meanwhile; None if it changed or vanished.

    Opened one folder at a time without following links (raises LinkOnPath on one)."""
    try:
        fd, folder = open_inside(root, rel)
    except (FileNotFoundError, NotADirectoryError):
        return None
    name = rel.rsplit("/", 1)[-1]
    try:
        with os.fdopen(fd, "rb") as fh:
            before = os.fstat(fh.fileno())
            if before.st_size > MAX_FILE_BYTES:
                data = None
                digest = f"size:{before.st_size}"
            else:
                data = fh.read(MAX_FILE_BYTES + 1)
                digest = hashlib.sha256(data).hexdigest()
            try:
                after = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                return None
    finally:
        os.close(folder)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or (
        data is not None and len(data) != after.st_size
    ):
        return None
    return _Snapshot(FileKey(rel, after.st_size, after.st_mtime_ns, digest), data)


def _not_through_link(root: Path, *paths: Path) -> None:
    """Raises LinkOnPath if a folder or file on the way to one of `paths` (all under `root`) is a
    symbolic link. Checked right before a move: a rename would follow it, moving a file from
    outside the inbox, or into a `processed/` or `failed/` that leads out of it."""
    for path in paths:
        link = first_link(root, path.relative_to(root).as_posix())
        if link is not None:
            raise LinkOnPath(errno.ELOOP, "a symbolic link is on the way", link)


def _why_not_moved(exc: OSError, root: Path) -> str:
    """The move's error, with what to do when it is the inbox's permissions."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"{reason}: MobileSD runs as user {os.getuid()}, group {os.getgid()} and needs "
            f"write access to {root} (PUID/PGID in Docker, or the share's permissions)"
        )
    if exc.errno == errno.EROFS:
        return f"{reason}: {root} is mounted read-only"
    return reason


class Ingestor:
    def __init__(self, root: Path, service: QueueService, ledger: IngestLedger) -> None:
        self.root = root
        self.service = service
        self.ledger = ledger
        # Files handled but not moved (an inbox this user cannot write): said once, then
        # retried quietly until the move works.
        self._stuck: set[FileKey] = set()
        self._stuck_invalid: set[tuple[str, tuple[str, ...]]] = set()

    async def ingest(self, rel: str, *, confirmed: bool) -> Outcome:
        """Handle one file that has held still; `confirmed`: it was doubted once already."""
        path = self.root / rel
        try:
            snap = await asyncio.to_thread(_read, self.root, rel)
        except LinkOnPath:
            log.info("inbox: %s is under a symbolic link; not followed, left where it is", rel)
            return Outcome.GONE
        except OSError as exc:
            log.warning("inbox: cannot read %s (%s); will try again", rel, exc.strerror or exc)
            return Outcome.HELD
        if snap is None:
            return Outcome.GONE if not path.exists() else Outcome.CHANGED
        try:
            result = await self._judge(rel, snap)
        except Exception as exc:
            # One file must never stop the watcher: a bug or a MemoryError while judging it
            # sends it to failed/ with a report, like any invalid file, and the next file
            # is handled as usual.
            log.exception("inbox: %s could not be handled", rel)
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            problem = FieldProblem(
                path="",
                message=f"could not be handled ({detail[:300]}); the core's log has the details",
            )
            return await self._fail(path, rel, [problem])
        if result.problems:
            if not confirmed and snap.data is not None:
                return Outcome.DOUBT
            return await self._fail(path, rel, result.problems)
        return await self._queue(path, snap.key, result)

    async def _judge(self, rel: str, snap: _Snapshot) -> JobFileResult:
        """The file's jobs, or every problem it has (its targets checked too)."""
        if snap.data is None:
            result = JobFileResult(
                problems=[
                    FieldProblem(
                        path="",
                        message=f"file is {snap.key.size:,} bytes; at most {MAX_FILE_BYTES:,} "
                        "(split it into several files)",
                    )
                ]
            )
        else:
            result = await asyncio.to_thread(
                parse_job_text, snap.data, name=rel, expander=self.service.expander
            )
        for spec in result.jobs:
            where = f"{spec.path}.server" if spec.path else "server"
            problem = self.service.unknown_target(spec.server, where)
            if problem is not None:
                problem.line = spec.server_line
                result.problems.append(problem)
        return result

    async def _queue(self, path: Path, key: FileKey, result: JobFileResult) -> Outcome:
        intent = self.ledger.open_intent(key)
        # The ids noted before a crash, if they still fit the file's jobs.
        noted = intent.job_ids if intent and len(intent.job_ids) == len(result.jobs) else None
        created_before = False
        if noted is not None:
            created_before = any([await self.service.exists(job_id) for job_id in noted])
        # Chosen and noted before the jobs exist: a crash after the store write finds them by
        # these ids and does not create them again.
        ids = noted if noted is not None else [new_job_id() for _ in result.jobs]
        if created_before and key not in self._stuck:
            log.info("inbox: the jobs of %s were created before a restart; not again", key.name)
        else:
            if noted is None and (seen := self.ledger.seen_before(key.sha256)) is not None:
                log.info(
                    "inbox: %s has the same content as %s, processed at %s (kept as %s); "
                    "queuing it again as asked",
                    key.name,
                    seen.name,
                    seen.at,
                    seen.moved_to,
                )
            try:
                await asyncio.to_thread(self.ledger.record_intent, key, ids)
                # Images beside the file are read from its folder, never outside the inbox.
                await self.service.submit_specs(
                    result.jobs,
                    source="inbox",
                    source_ref=key.name,
                    job_ids=ids,
                    inbox=(self.root, posixpath.dirname(key.name)),
                )
            except InvalidInput as exc:  # a target server was removed meanwhile
                return await self._fail(path, key.name, exc.problems)
            except OSError as exc:
                log.error("inbox: cannot queue %s (%s); will try again", key.name, exc)
                return Outcome.HELD
        try:
            dest = await asyncio.to_thread(self._move, path, key.name, PROCESSED)
        except OSError as exc:
            if key not in self._stuck:
                self._stuck.add(key)
                log.warning(
                    "inbox: %s -> %d job(s) queued, but the file cannot be moved to %s/ (%s); "
                    "it stays in the inbox and its jobs are not queued again",
                    key.name,
                    len(ids),
                    PROCESSED,
                    _why_not_moved(exc, self.root),
                )
            return Outcome.HELD
        moved_to = dest.relative_to(self.root).as_posix()
        await asyncio.to_thread(self.ledger.record_moved, key, moved_to, utc_now_iso())
        if key in self._stuck:
            self._stuck.discard(key)
            log.info("inbox: %s moved to %s (its jobs were queued before)", key.name, moved_to)
        else:
            log.info("inbox: %s -> %d job(s) queued, moved to %s", key.name, len(ids), moved_to)
        return Outcome.QUEUED

    def _move(self, path: Path, rel: str, folder: str) -> Path:
        dest = free_name(self.root / folder, rel)
        _not_through_link(self.root, path, dest.parent)
        move_into(path, dest)
        return dest

    async def _fail(self, path: Path, rel: str, problems: list[FieldProblem]) -> Outcome:
        problems = sorted(problems, key=lambda p: (p.line is not None, p.line or 0))

        def fail() -> Path:
            # The report is written first, under the name the file will get: a crash between
            # the two leaves the file in the inbox, to be judged (and reported) again.
            dest = free_name(self.root / FAILED, rel, also=REPORT_SUFFIX)
            _not_through_link(self.root, path, dest.parent)
            report = write_report(dest, render_report(rel, problems))
            try:
                move_into(path, dest)
            except OSError:
                report.unlink(missing_ok=True)
                raise
            return dest

        first = problems[0].render_in(rel)
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        try:
            dest = await asyncio.to_thread(fail)
        except FileNotFoundError:
            return Outcome.GONE
        except OSError as exc:
            told = (rel, tuple(p.render_in(rel) for p in problems))
            if told not in self._stuck_invalid:
                self._stuck_invalid.add(told)
                log.warning(
                    "inbox: %s is invalid: %s%s; it cannot be moved to %s/ with its report (%s), "
                    "so it stays in the inbox",
                    rel,
                    first,
                    more,
                    FAILED,
                    _why_not_moved(exc, self.root),
                )
            return Outcome.HELD
        self._stuck_invalid = {t for t in self._stuck_invalid if t[0] != rel}
        log.warning(
            "inbox: %s is invalid: %s%s; moved to %s, see %s%s",
            rel,
            first,
            more,
            dest.relative_to(self.root).as_posix(),
            dest.name,
            REPORT_SUFFIX,
        )
        return Outcome.FAILED
