"""The inbox watcher: watchdog events (or polling) for speed, full rescans for certainty.

Events only say "look here"; a file is read when the stability tracker says it is complete, and
one file at a time is handled (no file is ever handled twice at once). A full scan runs at start
(files that arrived while the core was down), after directory events, and every
`INBOX_RESCAN_SECONDS` (events get lost; shares deliver none). If the inbox folder vanishes (an
unmounted share) the watcher says so once, waits for it to come back and carries on; it never
creates the folder in its place. No symbolic link under the inbox is followed (see inside.py),
and no single file can stop the watcher: what goes wrong with one is logged and the next one
is handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from watchdog.events import DirDeletedEvent, DirMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from ..backoff import backoff_delay
from ..config import Settings
from ..service import QueueService
from .ingest import Ingestor, Outcome
from .inside import first_link
from .ledger import IngestLedger
from .names import FAILED, PROCESSED, Kind, classify, skip_dir
from .stability import StabilityTracker

log = logging.getLogger(__name__)

# watchdog's recursive inotify watch warns when a folder it already watches is created again
# (processed/<sub>/ after a nested file moves); the watch is replaced, nothing is lost.
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)

Stat = tuple[int, int]  # (size, mtime_ns)


class _Forwarder(FileSystemEventHandler):
    """Runs on watchdog's thread: hands each event's path(s) to the loop, nothing more."""

    def __init__(self, root: Path, notify: Callable[[str | None], None]) -> None:
        self.root = str(root)
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        if event.is_directory or isinstance(event, DirDeletedEvent | DirMovedEvent):
            self.notify(None)  # a folder came, went or moved: rescan everything
            return
        for raw in paths:
            path = os.fsdecode(raw)
            if path.startswith(self.root + os.sep):
                self.notify(path[len(self.root) + 1 :].replace(os.sep, "/"))


class InboxWatcher:
    def __init__(
        self,
        settings: Settings,
        service: QueueService,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = settings.inbox_path
        self.poll_seconds = settings.inbox_poll_seconds
        self.rescan_seconds = settings.inbox_rescan_seconds
        self.clock = clock
        self.tracker = StabilityTracker(settings.inbox_settle_seconds)
        self.ledger = IngestLedger(settings.data_path)
        self.ingestor = Ingestor(self.root, service, self.ledger)
        self.mode = f"polling every {self.poll_seconds:g} s" if self.poll_seconds else "events"
        self._wake = asyncio.Event()
        self._dirty: set[str] = set()
        self._rescan_asked = False
        self._doubted: set[str] = set()
        self._held: dict[str, int] = {}  # rel -> failed attempts in a row
        self._told_other: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.watching = asyncio.Event()  # set while the folder is watched (tests wait on it)
        self.scans = 0  # full scans completed, with the files they found ready handled
        self._scanned = asyncio.Event()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.ledger.load)
        self._task = asyncio.create_task(self._run(), name="inbox-watcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # Bounded: a stop must never hang the core's shutdown, whatever the watcher was doing.
        done, _ = await asyncio.wait({task}, timeout=15)
        if not done:
            log.warning("inbox: the watcher did not stop within 15 s; left behind")
        elif not task.cancelled() and task.exception() is not None:
            log.error("inbox: the watcher had failed: %r", task.exception())

    async def rescan_now(self) -> None:
        """Scan the whole inbox now and handle what is ready; returns when that is done."""
        target = self.scans + 1
        self._note(None)
        while self.scans < target:
            self._scanned.clear()
            await self._scanned.wait()

    # -- from watchdog's thread ---------------------------------------------------------------

    def _notify_threadsafe(self, rel: str | None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._note, rel)

    def _note(self, rel: str | None) -> None:
        if rel is None:
            self._rescan_asked = True
        else:
            top = rel.split("/", 1)[0]
            if top in (PROCESSED, FAILED):
                return
            self._dirty.add(rel)
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        missing_since: float | None = None
        first = True
        crashes = 0
        while True:
            if not await asyncio.to_thread(self.root.is_dir):
                if missing_since is None:
                    missing_since = self.clock()
                    log.warning(
                        "inbox folder %s is missing (share not mounted?); job files will be "
                        "picked up once it is back",
                        self.root,
                    )
                await self._pause(min(self.rescan_seconds, 5.0))
                continue
            if missing_since is not None:
                log.info("inbox folder %s is back; watching it again", self.root)
                missing_since = None
            observer = await asyncio.to_thread(self._start_observer)
            crashed = False
            try:
                await self._watch(first)
                first = False
            except OSError as exc:  # the share went away under a scan or a stat
                log.warning("inbox: %s (%s)", exc.strerror or exc, self.root)
            except Exception:
                # A bug must not end the watcher for good (files would wait forever, unsaid):
                # say so, then watch again, backing off if it keeps happening.
                crashes += 1
                crashed = True
                log.exception(
                    "inbox: the watcher failed; watching %s again in %g s",
                    self.root,
                    _crash_delay(crashes),
                )
            finally:
                self.watching.clear()
                if observer is not None:
                    await self._stop_observer(observer)
            if crashed:
                await asyncio.sleep(_crash_delay(crashes))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):  # (not wait_for: see Dispatcher._hand_over)
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    def _start_observer(self) -> BaseObserver | None:
        handler = _Forwarder(self.root, self._notify_threadsafe)
        # Polling with lstat: a link to a folder is seen as a link, never walked into (the plain
        # PollingObserver stats through it and reports files outside the inbox).
        observer: BaseObserver = (
            PollingObserverVFS(os.lstat, os.scandir, polling_interval=self.poll_seconds)
            if self.poll_seconds
            else Observer()
        )
        try:
            observer.schedule(handler, str(self.root), recursive=True)
            observer.start()
        except OSError as exc:
            # E.g. the inotify watch limit: the rescans still find every file, only slower.
            log.warning(
                "inbox: cannot watch %s for changes (%s); relying on rescans every %g s "
                "(set INBOX_POLL_SECONDS to poll instead)",
                self.root,
                exc.strerror or exc,
                self.rescan_seconds,
            )
            return None
        log.info("inbox: watching %s (%s)", self.root, self.mode)
        return observer

    async def _stop_observer(self, observer: BaseObserver) -> None:
        # On a daemon thread of its own, waited for with a deadline: watchdog joins its emitter
        # threads without a timeout, and a stop must never hang the core's shutdown (nor, via
        # the default executor, the interpreter's exit).
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()

        def stop() -> None:
            try:
                observer.stop()
                observer.join(timeout=10)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone
                    loop.call_soon_threadsafe(_resolve, stopped)

        threading.Thread(target=stop, name="inbox-observer-stop", daemon=True).start()
        try:
            async with asyncio.timeout(10):
                await asyncio.shield(stopped)
        except TimeoutError:
            log.warning("inbox: the file watcher did not stop within 10 s; left behind")

    async def _watch(self, first: bool) -> None:
        found = await asyncio.to_thread(self._scan)
        if first:
            closed = await asyncio.to_thread(self.ledger.settle_gone, set(found))
            for intent in closed:
                log.info("inbox: %s was handled before the last stop", intent.key.name)
        self._observe(found)
        self.watching.set()
        next_rescan = self.clock() + self.rescan_seconds
        while True:
            now = self.clock()
            due = self.tracker.due_in(now)
            timeout = next_rescan - now if due is None else min(due, next_rescan - now)
            await self._pause(max(timeout, 0.0) + 0.001)
            full = self._rescan_asked or self.clock() >= next_rescan
            if full:
                self._rescan_asked = False
                if not await asyncio.to_thread(self.root.is_dir):
                    return
                found = await asyncio.to_thread(self._scan)
                for gone in set(self.tracker.waiting()) - set(found):
                    self._forget(gone)
                next_rescan = self.clock() + self.rescan_seconds
            else:
                due_keys = self._due_keys(self.clock())
                found = await asyncio.to_thread(self._stat_many, self._dirty | due_keys)
                for gone in (self._dirty | due_keys) - set(found):
                    self._forget(gone)
            self._dirty.clear()
            ready = self._observe(found)
            for rel in sorted(ready):
                await self._handle(rel)
            if full:
                self.scans += 1
                self._scanned.set()

    def _due_keys(self, now: float) -> set[str]:
        return {k for k in self.tracker.waiting() if self.tracker.due_in_for(k, now) == 0.0}

    def _observe(self, found: dict[str, Stat]) -> list[str]:
        now = self.clock()
        return [
            rel
            for rel, (size, mtime) in found.items()
            if self.tracker.observe(rel, size, mtime, now)
        ]

    def _forget(self, rel: str) -> None:
        self.tracker.forget(rel)
        self._doubted.discard(rel)
        self._held.pop(rel, None)

    async def _handle(self, rel: str) -> None:
        try:
            outcome = await self.ingestor.ingest(rel, confirmed=rel in self._doubted)
        except Exception:
            # Past judging (which reports to failed/ itself): e.g. queuing or moving raised
            # something unforeseen. The file stays, is tried again later (the ledger keeps
            # that exactly-once), and the next file is handled.
            log.exception("inbox: %s could not be handled; it stays and is tried again later", rel)
            outcome = Outcome.HELD
        if outcome in (Outcome.QUEUED, Outcome.FAILED, Outcome.GONE):
            self._forget(rel)
        elif outcome is Outcome.DOUBT:
            self._doubted.add(rel)
            self.tracker.doubt(rel, self.clock())
        elif outcome is Outcome.HELD:
            # A store or move that keeps failing (file locked, share read-only): back off up
            # to a minute, so a stuck file is retried without a warning every second.
            self._held[rel] = self._held.get(rel, 0) + 1
            windows = backoff_delay(self._held[rel], 2.0, 60.0 / max(self.tracker.settle, 0.01))
            self.tracker.back_off(rel, self.clock(), windows)
        else:  # CHANGED: wait for it to hold still again
            self.tracker.doubt(rel, self.clock())

    # -- blocking helpers (run in a thread) -----------------------------------------------------

    def _scan(self) -> dict[str, Stat]:
        """Every job file under the inbox, skipping our folders, hidden and temporary names."""
        found: dict[str, Stat] = {}

        def unreadable(exc: OSError) -> None:
            if exc.filename == str(self.root):
                raise exc  # the inbox itself: the caller pauses until it is back
            self._tell_other(str(exc.filename), 0)

        for folder, dirs, files in os.walk(self.root, onerror=unreadable):
            here = Path(folder)
            kept = []
            for name in sorted(dirs):
                if skip_dir(name):
                    continue
                if os.path.islink(here / name):  # os.walk lists it, but does not enter it
                    rel = (here / name).relative_to(self.root).as_posix()
                    self._tell_other(rel, stat.S_IFLNK)
                    continue
                kept.append(name)
            dirs[:] = kept
            for name in files:
                rel = (here / name).relative_to(self.root).as_posix()
                kind = classify(name)
                if kind is Kind.TEMPORARY:
                    continue
                try:
                    st = os.stat(here / name, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if kind is Kind.OTHER or not _is_regular(st.st_mode):
                    self._tell_other(rel, st.st_mode)
                    continue
                found[rel] = (st.st_size, st.st_mtime_ns)
        return found

    def _stat_many(self, rels: set[str]) -> dict[str, Stat]:
        found: dict[str, Stat] = {}
        for rel in rels:
            parts = rel.split("/")
            if any(skip_dir(p) for p in parts[:-1]) or classify(parts[-1]) is not Kind.JOB:
                continue
            # os.stat below follows links in the folders on the way: a file under a linked
            # folder (reported by an observer) lives outside the inbox.
            link = first_link(self.root, rel)
            if link is not None:
                self._tell_other(link, stat.S_IFLNK)
                continue
            try:
                st = os.stat(self.root / rel, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if _is_regular(st.st_mode):
                found[rel] = (st.st_size, st.st_mtime_ns)
            else:
                self._tell_other(rel, st.st_mode)
        return found

    def _tell_other(self, rel: str, mode: int) -> None:
        if rel in self._told_other:
            return
        self._told_other.add(rel)
        if mode == 0:
            log.warning("inbox: cannot read the folder %s; its files are not picked up", rel)
        elif stat.S_ISLNK(mode):
            log.info("inbox: %s is a symbolic link; not followed, left where it is", rel)
        elif not _is_regular(mode):
            log.info("inbox: %s is not a regular file; left where it is", rel)
        else:
            log.info("inbox: %s is not a job file (.yaml or .yml); left where it is", rel)


def _crash_delay(crashes: int) -> float:
    return backoff_delay(crashes, 1.0, 60.0)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)
