"""The core service assembled: store, servers, gallery, dispatcher, events, service, inbox.

`Core` owns the lifecycle of every part; the HTTP app, the CLI and the tests build one and
start/stop it as a unit (the aiohttp app does so in a cleanup context).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx

from .civitai.client import CivitaiClient
from .civitai.downloads import DownloadManager
from .civitai.hashes import HashCache
from .civitai.importer import ImageImporter, new_importer
from .config import Settings
from .dispatcher import Dispatcher
from .events import EventBus
from .gallery import Gallery, ImageNotFound
from .inbox import InboxWatcher
from .jobs.images import JobImages, needed_uploads
from .jobs.store import JobStore, ServerStore
from .jobs.types import Job
from .model_sync import LibraryIndex, ModelSync
from .notify import Notifier
from .progress import ProgressBoard
from .retention import Pins, Retention
from .schema import TERMINAL_STATUSES
from .servers import ServerRegistry, default_client_factory
from .service import QueueService, load_paused
from .uploads import UploadStore

log = logging.getLogger(__name__)

# Endings after which a job keeps no images.
UNFINISHED_ENDS = frozenset({"failed", "cancelled"})


class Core:
    def __init__(
        self,
        settings: Settings,
        *,
        forge_transport: httpx.AsyncBaseTransport | None = None,
        civitai_transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` (unix seconds) measures retention ages and webhook retry times; tests move
        it instead of waiting days."""
        self.settings = settings
        self.clock = clock
        self.bus = EventBus()
        self.board = ProgressBoard()
        self.store = JobStore(settings.data_path)
        self.server_store = ServerStore(settings.data_path)
        self.gallery = Gallery(settings.gallery_path)
        self.registry = ServerRegistry(
            self.server_store,
            self.bus,
            health_interval=settings.health_interval,
            client_factory=default_client_factory(forge_transport),
        )
        self.dispatcher = Dispatcher(
            self.store, self.registry, self.gallery, self.bus, self.board, settings
        )
        self.hash_cache = HashCache(settings.data_path)
        # Model sync: the Router learns what the library holds, the dispatcher copies it first.
        self.library_index = LibraryIndex(settings.checkpoint_path, settings.lora_path)
        self.model_sync = ModelSync(
            settings, self.registry, self.store, self.bus, self.hash_cache, self.library_index
        )
        self.dispatcher.router.library = self.library_index
        self.dispatcher.before_run.append(self.model_sync.prepare)
        self.pins = Pins(settings.data_path)
        self.retention = Retention(self.store, self.pins, settings, clock=clock)
        self.uploads = UploadStore(settings.data_path)
        self.dispatcher.uploads = self.uploads
        self.service = QueueService(
            self.store,
            self.registry,
            self.dispatcher,
            self.gallery,
            self.bus,
            self.board,
            model_sync=self.model_sync,
            wildcards_path=settings.wildcards_path,
            retention=self.retention,
            images=JobImages(self.uploads, self.gallery),
        )
        self.notifier = Notifier(settings, live_jobs=self.store.live_jobs, clock=clock)
        self.inbox = InboxWatcher(settings, self.service)
        self.civitai = CivitaiClient(
            settings.civitai_base_url,
            settings.civitai_api_key,
            transport=civitai_transport,
            backoff=min(settings.civitai_retry_backoff, 1.0),
        )
        self.downloads = DownloadManager(
            settings,
            self.civitai,
            self.bus,
            self.hash_cache,
            on_downloaded=self._on_downloaded,
        )
        self.store.set_listener(self._on_job_change)
        self.bus.add_listener(self.notifier.on_event)
        self.registry.set_on_available(self.dispatcher.wake)
        self._parts: contextlib.AsyncExitStack | None = None  # the parts started, to stop
        self._stop_errors: list[Exception] = []
        self._background: set[asyncio.Task[None]] = set()

    async def _on_downloaded(self, kind: str) -> None:
        await self.library_index.refresh()  # the new file can be synced to servers now
        await self.registry.refresh_models(kind)
        self.dispatcher.wake()

    def _on_job_change(self, kind: str, payload: Job | str) -> None:
        if isinstance(payload, str):  # "job_removed": the id
            self.bus.publish("job_removed", {"mobilesd_job_id": payload})
            if payload in self.pins:
                # A deleted job's pin goes with it (in the background: listeners never wait).
                self._in_background(self.pins.forget([payload]))
        else:
            view = self.service.view(payload)
            self.bus.publish("job", view)
            self.notifier.on_job(view)
            job_id = view["mobilesd_job_id"]
            if view["status"] in UNFINISHED_ENDS and self.gallery.names_for_jobs([job_id]):
                self._in_background(self._drop_attempt_images(job_id, view["status"]))
            if view["status"] in TERMINAL_STATUSES:
                used = needed_uploads(payload["generation_params"])
                if used:
                    self._in_background(self._uploads_released(used))

    async def _uploads_released(self, used: set[str]) -> None:
        """A job that read uploads ended: their grace starts now (time to retry it), and what
        no job needs any more, past its grace, goes (uploads.py)."""
        await self.uploads.touch(used)
        await self.sweep_uploads()

    async def sweep_uploads(self) -> None:
        needed: set[str] = set()
        for job in self.store.live_jobs():
            if job["status"] not in TERMINAL_STATUSES:
                needed |= needed_uploads(job["generation_params"])
        await self.uploads.sweep(needed)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        async def logged() -> None:
            try:
                await work
            except Exception:  # nobody awaits it to see the error: say it here
                # A Coroutine need not be a native one with a __qualname__.
                log.exception("background work %s failed", getattr(work, "__qualname__", work))

        task = asyncio.create_task(logged())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drop_attempt_images(self, job_id: str, status: str) -> None:
        """A job that ended failed or cancelled has no images. Some can be there from an
        attempt whose images were saved just before the core stopped (the job then ran again
        and did not complete): they go, so the gallery holds only completed jobs' images."""
        entries = {}
        for name in self.gallery.names_for_jobs([job_id]):
            with contextlib.suppress(ImageNotFound):
                entries[name] = await self.gallery.get_entry(name)
        deleted = await self.gallery.delete_job_images(job_id)
        log.info(
            "job %s ended %s: removed %d image(s) of an earlier attempt",
            job_id,
            status,
            len(deleted),
        )
        for name in deleted:
            if name in entries:
                self.bus.publish("image", {"removed": entries[name]})

    async def start(self) -> None:
        """Start every part in order. Each part that started is stopped again, in reverse
        order, by `stop()`, or at once if a later part fails to start (the error is raised as
        it came: the store's threads and lock, health loops and tasks are not left behind)."""
        errors: list[Exception] = []
        async with contextlib.AsyncExitStack() as parts:

            def started(name: str, stop: Callable[[], Awaitable[object]]) -> None:
                parts.push_async_callback(_stop_part, name, stop, errors)

            # Built in __init__, so it is closed whatever else fails.
            started("civitai client", self.civitai.aclose)
            await self.notifier.prepare()  # configuration errors before any file is taken
            # Undoes prepare (its log filter) if the start ends before the notifier starts.
            stop_notifier = _once(self.notifier.stop)
            started("notifications", stop_notifier)
            await self.store.open()
            started("job store", self.store.close)
            await self.server_store.open()
            started("server list", self.server_store.close)
            started("event stream", self._close_streams)
            started("background tasks", self._await_background)
            await self.pins.load()
            await self.gallery.start()
            self.dispatcher.paused = await asyncio.to_thread(load_paused, self.settings.data_path)
            # Before servers and jobs move: it must see their first states. It stops after
            # the dispatcher, once the last terminal jobs are queued.
            await self.notifier.start()
            started("notifications", stop_notifier)
            await self.registry.start()
            started("servers", self.registry.stop)
            await self.model_sync.start()
            started("model sync", self.model_sync.stop)
            await self.dispatcher.start()
            started("dispatcher", self.dispatcher.stop)
            await self.inbox.start()
            started("inbox", self.inbox.stop)
            await self.downloads.start()  # unfinished downloads resume
            started("downloads", self.downloads.stop)
            self.retention.start()  # prunes once now, then every RETENTION interval
            started("retention", self.retention.stop)
            await self.sweep_uploads()  # uploads no job needs (a crash between store and job)
            self._parts, self._stop_errors = parts.pop_all(), errors
        counts = self.store.count()
        log.info(
            "core started: %d pending, %d servers%s",
            counts["pending"],
            len(self.registry.runtimes),
            " (queue paused)" if self.dispatcher.paused else "",
        )

    async def stop(self) -> None:
        """Stop every part that started, in reverse order. Each part stops even if one before
        it fails (a full disk at shutdown must still release the store's lock and close the
        sockets); the first failure is raised last. A cancelled stop still stops the rest, then
        raises its CancelledError."""
        parts, self._parts = self._parts, None
        if parts is None:
            return
        errors = self._stop_errors
        await parts.aclose()
        log.info("core stopped")
        if errors:
            raise errors[0]

    async def _await_background(self) -> None:
        for task in list(self._background):
            await task

    async def _close_streams(self) -> None:
        self.bus.close_all()

    def importer(self) -> ImageImporter:
        """A Civitai image importer over the current library (one per request: it caches the
        folder scan for that request only)."""
        return new_importer(self.civitai, self.settings, self.hash_cache)

    async def run_until_idle(self, timeout: float = 30.0) -> None:
        """Wait until nothing runs and nothing can be assigned (tests, demo, benchmarks)."""
        await asyncio.sleep(0)
        async with asyncio.timeout(timeout):
            await self.dispatcher.idle.wait()
            while self._background:  # clean-ups that follow a job's end
                await asyncio.wait(list(self._background))


async def _stop_part(
    name: str, stop: Callable[[], Awaitable[object]], errors: list[Exception]
) -> None:
    """Stop one part; an error is logged and kept, so the parts after it stop too (a
    cancellation is not an error: it goes on, and the stack still stops the rest)."""
    try:
        await stop()
    except Exception as exc:
        log.error("stopping the %s failed: %s", name, exc)
        errors.append(exc)


def _once(stop: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
    """`stop` on the first call only (a part registered at two places of the start)."""
    called = False

    async def once() -> None:
        nonlocal called
        if not called:
            called = True
            await stop()

    return once
