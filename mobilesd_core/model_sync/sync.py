"""On-demand model sync: copy a job's checkpoint or LoRA from the master library into the
folder its server reads models from, then let the job run there.

The dispatcher awaits `ModelSync.prepare` for every job it has claimed, before the checkpoint is
resolved. For a server with `checkpoint_dir` / `lora_dir`, each model the job names that the
server does not list but the library holds is copied (copier.py: temp name, SHA-256 checked,
fsync, rename), the server's list is refreshed, and the job runs. One copy per target file at a
time: jobs that need the same file wait for the same copy. Progress goes to the jobs (phase
"syncing model") and to `sync` events.

Copies the core made are recorded in the ledger (ledger.py). When a server's copies would pass
its cap (`sync_cap_gb`, else MODEL_SYNC_CAP_GB), the least recently used are deleted first,
never a file the core did not copy (a copy replaced since, by size or SHA-256, is left and
forgotten), the model loaded on that server, or a file a pending or running job is about to use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..civitai.hashes import HashCache
from ..config import Settings
from ..events import EventBus
from ..forge.errors import ForgePermanentError, ForgeTransientError
from ..forge.models import (
    CheckpointAmbiguous,
    CheckpointInfo,
    CheckpointNotFound,
    model_key,
    resolve_checkpoint,
)
from ..jobs.store import JobStore
from ..jobs.types import Job, JobProgress
from ..schema import FieldProblem, ServerConfig, utc_now_iso
from ..servers import ServerRegistry, ServerRuntime
from ..tasks import wait_ended
from .copier import PART_SUFFIX, CopyCancelled, CopyFailed, copy_verified, sha256_file
from .dirs import check_dirs
from .index import Kind, LibraryFile, LibraryIndex, listed_as
from .ledger import SyncedFile, SyncLedger

log = logging.getLogger(__name__)

ProgressFn = Callable[[JobProgress], None]
EVENT_EVERY = 0.25  # seconds between `sync` progress events of one copy
GB = 1_000_000_000


@dataclass(frozen=True)
class Need:
    """A library file a job needs on a server, and where its copy goes."""

    file: LibraryFile
    target: Path

    @property
    def key(self) -> str:
        return str(self.target)


class ModelSync:
    def __init__(
        self,
        settings: Settings,
        registry: ServerRegistry,
        store: JobStore,
        bus: EventBus,
        hash_cache: HashCache,
        index: LibraryIndex,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._store = store
        self._bus = bus
        self._hash_cache = hash_cache
        self.index = index
        self.ledger = SyncLedger(settings.data_path)
        self._copies: dict[str, asyncio.Task[None]] = {}  # target path -> the one copy
        self._incoming: dict[str, dict[str, int]] = {}  # alias -> target -> size being copied
        self._listeners: dict[str, dict[str, ProgressFn]] = {}  # target -> job id -> progress
        self._cancel: dict[str, threading.Event] = {}
        self._stale: dict[str, set[str]] = {}  # alias -> kinds whose list predates an eviction
        self._event_at: dict[str, float] = {}
        self.copies_started = 0
        self._sweep: asyncio.Task[int] | None = None
        # Test seam: called with the fsynced temp file before it is verified (corrupt a copy).
        self.after_write: Callable[[Path], None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.ledger.load)
        await self.index.refresh()
        folders = {
            Path(d)
            for r in self._registry.runtimes.values()
            for d in (r.config.checkpoint_dir, r.config.lora_dir)
            if d
        }
        if folders:
            # Temp files of copies cut short by a crash: ours by their suffix, never listed by
            # Forge, but they hold disk space. Swept in the background (a share may be slow).
            self._sweep = asyncio.create_task(asyncio.to_thread(_sweep_parts, sorted(folders)))

    async def stop(self) -> None:
        """Stop copies in flight (their temp files are removed) and wait for their threads."""
        for event in self._cancel.values():
            event.set()
        # Their errors were logged where they happened; a cancellation of this stop propagates.
        with contextlib.suppress(Exception):
            await wait_ended(self._sweep, *self._copies.values())

    # -- configuration ----------------------------------------------------------------------

    async def check_dirs(self, config: ServerConfig, fields: set[str]) -> list[FieldProblem]:
        return await asyncio.to_thread(check_dirs, config, self._settings, fields)

    async def rename_server(self, old: str, new: str) -> None:
        if old != new and self.ledger.entries(old):
            self.ledger.rename(old, new)
            await self.ledger.save()

    def cap_bytes(self, runtime: ServerRuntime) -> int | None:
        gb = runtime.config.sync_cap_gb or self._settings.model_sync_cap_gb
        return int(gb * GB) if gb else None

    # -- the dispatcher's hook ----------------------------------------------------------------

    async def prepare(self, job: Job, runtime: ServerRuntime, progress: ProgressFn) -> None:
        """Make the job's library models present on its server (copy, refresh), or raise a
        ForgeError saying why not. Does nothing for a server without sync folders."""
        config = runtime.config
        if not (config.checkpoint_dir or config.lora_dir):
            return
        needs, used = await self._needs(job, runtime)
        touched = [self.ledger.touch(runtime.alias, path) for path in used]
        if not needs:
            if any(touched):
                await self.ledger.save()
            return
        job_id = job["mobilesd_job_id"]
        for need in needs:
            await self._ensure(need, runtime, job_id, progress)
        await self._refresh(runtime, {need.file.kind for need in needs})
        self._check_listed(job, runtime, needs)

    async def _needs(self, job: Job, runtime: ServerRuntime) -> tuple[list[Need], list[str]]:
        """(what must be copied, copies already there that the job will use)."""
        config = runtime.config
        params = job["generation_params"]
        needs: list[Need] = []
        used: list[str] = []
        rescanned = False

        async def lookup(kind: str, name: str) -> LibraryFile | None:
            # A miss may be a file added since the last scan: rescan once per job, since the
            # job would fail on this server without it.
            nonlocal rescanned
            find = self.index.checkpoint if kind == "checkpoint" else self.index.lora
            found = find(name)
            if found is None and not rescanned and self.index.configured:
                rescanned = True
                await self.index.refresh()
                found = find(name)
            return found

        name = params.get("checkpoint_name")
        if name and config.checkpoint_dir:
            models = await self._registry.checkpoints(runtime)
            listed = _resolves(name, models)
            file = None if listed else await lookup("checkpoint", name)
            if listed and (file := self.index.checkpoint(name)) is not None:
                used.append(str(Path(config.checkpoint_dir) / file.relpath))
            elif file is not None:
                needs.append(Need(file, Path(config.checkpoint_dir) / file.relpath))
        if config.lora_dir:
            for lora in params.get("loras") or []:
                catalog = await self._registry.catalog(runtime)
                if lora["name"] in catalog.loras:
                    if (file := self.index.lora(lora["name"])) is not None:
                        used.append(str(Path(config.lora_dir) / file.relpath))
                    continue
                file = await lookup("lora", lora["name"])
                target = Path(config.lora_dir) / file.relpath if file else None
                if file and target and all(n.key != str(target) for n in needs):
                    needs.append(Need(file, target))
        return needs, used

    async def _ensure(
        self, need: Need, runtime: ServerRuntime, job_id: str, progress: ProgressFn
    ) -> None:
        key = need.key
        task = self._copies.get(key)
        if task is None:
            size = await asyncio.to_thread(_size, need.target)
            task = self._copies.get(key)  # another job may have started it meanwhile
        if task is None:
            owner = self.ledger.owner(key)
            if size is not None:
                if owner is not None or size == need.file.size:
                    if owner is not None:
                        self.ledger.touch(owner, key)
                    return  # already there; the server's list was older than the file
                raise ForgePermanentError(
                    f"model sync: {need.target} exists on server '{runtime.alias}' and differs "
                    f"from the library's {need.file.relpath} ({size} vs {need.file.size} "
                    "bytes); the core never overwrites a file it did not copy"
                )
            if owner is not None:  # deleted by someone else: forget it, copy again
                self.ledger.remove(owner, key)
            task = asyncio.create_task(self._copy(need, runtime), name=f"sync-{key}")
            self._copies[key] = task
            task.add_done_callback(functools.partial(self._forget_copy, key))
        listeners = self._listeners.setdefault(key, {})
        listeners[job_id] = progress
        try:
            # Shielded: a job cancelled while waiting must not stop the copy others wait for.
            await asyncio.shield(task)
        finally:
            listeners.pop(job_id, None)

    def _forget_copy(self, key: str, task: asyncio.Task[None]) -> None:
        if self._copies.get(key) is task:
            del self._copies[key]
            self._listeners.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: its waiters got it already

    async def _copy(self, need: Need, runtime: ServerRuntime) -> None:
        alias, file = runtime.alias, need.file
        cap = self.cap_bytes(runtime)
        if cap is not None and file.size > cap:
            message = (
                f"model sync: {file.relpath} ({_gb(file.size)}) is larger than the sync cap of "
                f"server '{alias}' ({_gb(cap)}); raise sync_cap_gb"
            )
            self._publish(alias, need, "failed", 0, error=message)
            raise ForgePermanentError(message)
        incoming = self._incoming.setdefault(alias, {})
        incoming[need.key] = file.size
        cancel = threading.Event()
        self._cancel[need.key] = cancel
        try:
            await self._evict(runtime, keep={need.key})
            known = await asyncio.to_thread(self._hash_cache.known, [file.path])
            expected = known.get(file.path)
            self.copies_started += 1
            log.info("model sync: copying %s to %s for server %s", file.relpath, need.target, alias)
            loop = asyncio.get_running_loop()
            started = time.monotonic()

            def progress(done: int, total: int, phase: str) -> None:
                loop.call_soon_threadsafe(self._on_progress, alias, need, done, total, phase)

            try:
                hashes = await asyncio.to_thread(
                    copy_verified,
                    file.path,
                    need.target,
                    expected=expected,
                    progress=progress,
                    cancel=cancel,
                    after_write=self.after_write,
                )
            except CopyCancelled:
                self._publish(alias, need, "failed", 0, error="cancelled: the core is stopping")
                raise ForgeTransientError("model sync cancelled: the core is stopping") from None
            except (CopyFailed, OSError) as exc:
                reason = exc.message if isinstance(exc, CopyFailed) else _os_reason(exc)
                message = (
                    f"model sync of '{file.relpath}' to server '{alias}' ({need.target}) "
                    f"failed: {reason}"
                )
                log.warning("%s", message)
                self._publish(alias, need, "failed", 0, error=message)
                raise ForgeTransientError(message) from None
        finally:
            incoming.pop(need.key, None)
            self._cancel.pop(need.key, None)
        seconds = time.monotonic() - started
        self.ledger.add(
            alias,
            SyncedFile(
                kind=file.kind,
                relpath=file.relpath,
                path=need.key,
                size=file.size,
                sha256=hashes.sha256,
                copied_at=utc_now_iso(),
                last_used=self.ledger.tick(),
                mtime_ns=await asyncio.to_thread(_mtime_ns, need.target),
            ),
        )
        await self.ledger.save()
        if expected is None:  # later copies (and the Civitai import) need not hash it again
            await self._hash_cache.remember(file.path, hashes)
        log.info(
            "model sync: %s on server %s, verified (%.1f s, %.0f MB/s)",
            file.relpath,
            alias,
            seconds,
            file.size / max(seconds, 1e-6) / 1e6,
        )
        self._publish(alias, need, "done", file.size)

    def _on_progress(self, alias: str, need: Need, done: int, total: int, phase: str) -> None:
        job_progress: JobProgress = {
            "fraction": round(done / total, 4) if total else 1.0,
            "phase": "syncing model" if phase == "copying" else "verifying model copy",
            "file": need.file.relpath,
            "bytes_done": done,
            "bytes_total": total,
        }
        for listener in list(self._listeners.get(need.key, {}).values()):
            listener(job_progress)
        now = time.monotonic()
        if phase != "copying" or now - self._event_at.get(need.key, 0.0) >= EVENT_EVERY:
            self._event_at[need.key] = now
            if phase != "done":  # "done" is published once the ledger has the copy
                self._publish(alias, need, phase, done)

    def _publish(
        self, alias: str, need: Need, status: str, done: int, *, error: str | None = None
    ) -> None:
        self._bus.publish(
            "sync",
            {
                "server": alias,
                "kind": need.file.kind,
                "file": need.file.relpath,
                "path": need.key,
                "status": status,
                "bytes_done": done,
                "bytes_total": need.file.size,
                "jobs": sorted(self._listeners.get(need.key, {})),
                "error": error,
            },
        )

    async def _refresh(self, runtime: ServerRuntime, kinds: set[str]) -> None:
        kinds = kinds | self._stale.pop(runtime.alias, set())
        if "checkpoint" in kinds:
            await self._registry.checkpoints(runtime, refresh=True)
        if "lora" in kinds:
            await self._registry.catalog(runtime, refresh=True)

    def _check_listed(self, job: Job, runtime: ServerRuntime, needs: list[Need]) -> None:
        """A copy the server still does not list went to a folder Forge does not read."""
        params = job["generation_params"]
        for need in needs:
            if need.file.kind == "checkpoint":
                listed = _resolves(params["checkpoint_name"], runtime.checkpoints or [])
                field = "checkpoint_dir"
            else:
                listed = need.file.stem in (runtime.catalog.loras if runtime.catalog else set())
                field = "lora_dir"
            if not listed:
                raise ForgePermanentError(
                    f"model sync: copied '{need.file.relpath}' to {need.target}, but server "
                    f"'{runtime.alias}' does not list it after a refresh; is {field} the folder "
                    "that Forge reads these models from?"
                )

    # -- cache management -------------------------------------------------------------------

    async def _evict(self, runtime: ServerRuntime, *, keep: set[str]) -> None:
        """Delete this server's least recently used copies until the ones in flight fit."""
        alias = runtime.alias
        cap = self.cap_bytes(runtime)
        if cap is None:
            return
        incoming = sum(self._incoming.get(alias, {}).values())
        used = self.ledger.used_bytes(alias)
        if used + incoming <= cap:
            return
        protected = self.protected(runtime) | keep
        changed = False  # the ledger, to be saved
        for entry in self.ledger.entries(alias):
            if used + incoming <= cap:
                break
            if entry.path in protected:
                continue
            try:
                removed = await asyncio.to_thread(_remove_copy, entry)
            except OSError as exc:  # kept in the ledger: tried again at the next eviction
                log.warning("model sync: cannot delete %s: %s", entry.path, _os_reason(exc))
                continue
            self.ledger.remove(alias, entry.path)
            used -= entry.size
            if not removed:
                # Replaced since (by the user, another tool): not ours to delete. Forgotten,
                # so it no longer counts against the cap and is never deleted later.
                changed = True
                log.warning(
                    "model sync: %s is no longer the copy the core made for server %s (its "
                    "size or SHA-256 differs); left in place and forgotten",
                    entry.path,
                    alias,
                )
                continue
            changed = True
            self._stale.setdefault(alias, set()).add(entry.kind)
            log.info(
                "model sync: evicted %s from server %s (least recently used)", entry.relpath, alias
            )
            self._bus.publish(
                "sync",
                {
                    "server": alias,
                    "kind": entry.kind,
                    "file": entry.relpath,
                    "path": entry.path,
                    "status": "evicted",
                    "bytes_done": 0,
                    "bytes_total": entry.size,
                    "jobs": [],
                    "error": None,
                },
            )
        if changed:
            await self.ledger.save()
        if used + incoming > cap:
            log.warning(
                "model sync: server %s holds %s of copies in use (cap %s); nothing more can go",
                alias,
                _gb(used + incoming),
                _gb(cap),
            )

    def protected(self, runtime: ServerRuntime) -> set[str]:
        """Copies on this server that must stay: its loaded model, and what pending or running
        jobs that may run there are about to use."""
        alias, config = runtime.alias, runtime.config
        loaded = {k for k in (runtime.planned_checkpoint, runtime.loaded) if k}
        if runtime.current_checkpoint:
            loaded.add(model_key(runtime.current_checkpoint))
        out: set[str] = set()
        for entry in self.ledger.entries(alias):
            key = model_key(entry.relpath)
            if entry.kind == "checkpoint" and any(
                k == key or k.endswith("/" + key) for k in loaded
            ):
                out.add(entry.path)
        for job in self._store.live_jobs():
            status = job.get("status")
            where = (
                job.get("assigned_server_alias")
                if status == "processing"
                else (job.get("target_server_alias"))
            )
            if status not in ("pending", "processing") or where not in (None, alias):
                continue
            params = job["generation_params"]
            name = params.get("checkpoint_name")
            if name and config.checkpoint_dir and (file := self.index.checkpoint(name)):
                out.add(str(Path(config.checkpoint_dir) / file.relpath))
            for lora in params.get("loras") or []:
                if config.lora_dir and (file := self.index.lora(lora["name"])):
                    out.add(str(Path(config.lora_dir) / file.relpath))
        return out

    # -- views ------------------------------------------------------------------------------

    def status(self, runtime: ServerRuntime) -> dict[str, Any] | None:
        """The sync state of one server for its models answer; None when it has no folders."""
        config = runtime.config
        if not (config.checkpoint_dir or config.lora_dir):
            return None
        return {
            "checkpoint_dir": config.checkpoint_dir,
            "lora_dir": config.lora_dir,
            "cap_bytes": self.cap_bytes(runtime),
            "used_bytes": self.ledger.used_bytes(runtime.alias),
            "copies": self.ledger.view(runtime.alias),
            "copying": sorted(self._incoming.get(runtime.alias, {})),
        }

    def library_only(self, runtime: ServerRuntime) -> dict[str, list[str]]:
        """Library models this server does not list (by path; from its cached lists)."""
        checkpoints = runtime.checkpoints or []
        loras = runtime.catalog.loras if runtime.catalog else set()
        return {
            "checkpoints": [
                f.relpath
                for f in self.index.files["checkpoint"]
                if listed_as(f, checkpoints) is None
            ],
            "loras": sorted({f.stem for f in self.index.files["lora"] if f.stem not in loras}),
        }

    def on_servers(self, kind: Kind, relpath: str) -> list[str]:
        """Aliases whose cached lists include this library file."""
        file = LibraryFile(kind, relpath, Path(relpath), 0)
        out = []
        for alias, runtime in sorted(self._registry.runtimes.items()):
            if kind == "checkpoint":
                if runtime.checkpoints is not None and listed_as(file, runtime.checkpoints):
                    out.append(alias)
            elif runtime.catalog is not None and file.stem in runtime.catalog.loras:
                out.append(alias)
        return out


def _resolves(name: str, models: list[CheckpointInfo]) -> bool:
    try:
        resolve_checkpoint(name, models)
    except CheckpointAmbiguous:
        return True  # it is there (several times): the dispatcher reports the ambiguity
    except CheckpointNotFound:
        return False
    return True


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _sweep_parts(folders: list[Path]) -> int:
    """Delete leftover `*.mobilesd-part` temp files under `folders`; how many."""
    removed = 0
    for folder in folders:
        for path in folder.rglob(f"*{PART_SUFFIX}"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
                log.info("model sync: removed %s, left by a copy that was cut short", path)
    return removed


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """(mode, inode, size, mtime) of the file itself (a symlink is not followed)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns


def _remove_copy(entry: SyncedFile) -> bool:
    """Delete the copy the ledger entry records, if the file at its path still is that copy
    (blocking). True when it was deleted or is gone already; False when something else is
    there now (other size or SHA-256, not a plain file): that is left alone.

    Size and mtime as recorded at the copy stand for the SHA-256 (as the hash cache keys on
    them); otherwise the file is read and hashed, and must not change meanwhile."""
    path = Path(entry.path)
    before = _identity(path)
    if before is None:
        return True
    mode, _, size, mtime_ns = before
    if not stat.S_ISREG(mode) or size != entry.size:
        return False
    if mtime_ns != entry.mtime_ns and (
        sha256_file(path) != entry.sha256 or _identity(path) != before
    ):
        return False
    path.unlink(missing_ok=True)
    return True


def _gb(size: float) -> str:
    return f"{size / GB:.2f} GB"


def _os_reason(exc: OSError) -> str:
    return f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
