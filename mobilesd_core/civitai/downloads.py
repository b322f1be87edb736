"""Civitai model downloads: resumable, verified, and surviving a restart of the core.

One download is a small state machine, persisted (atomically) in
CONFIG_DATA_PATH/civitai_downloads.json on every status change:

    queued -> downloading -> verifying -> completed
                  |               |
                  +---------------+--> failed (with a message saying what to do)
      |           |               |
      +-----------+---------------+--> cancelled (by cancel(): the part file is deleted)

Bytes go to `<name>.part` beside the final file. Every (re)connection asks Civitai for a fresh
redirect (signed URLs expire) and sends `Range: bytes=<part size>-`; the answer is appended only
when it is a 206 whose Content-Range starts where the part file ends, and a 200 starts over. The
part file's size, not the persisted counter, is the truth on resume. The SHA-256 is computed while
writing (in the same worker-thread call as the write) and checked against Civitai's before the
final rename; a mismatch deletes the part file. 429, 5xx and dropped connections back off and
retry (Retry-After wins); 401/403/404/410 fail at once with the message of docs/civitai.md's table.

After the file is in place: a `.civitai.info` sidecar (the model-version JSON, the format
library.py reads) and a `.preview.<ext>` image, the hash cache learns the file, and every server
is asked to rescan its models.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from ulid import ULID

from ..backoff import backoff_delay
from ..config import Settings
from ..durable import FOR_PEOPLE, atomic_write_bytes, fsync_dir, write_temp_beside
from ..errors import Conflict, NotFound
from ..events import EventBus
from ..library import CHECKPOINTS, LORAS, PREVIEW_SUFFIXES, LibraryKind
from ..schema import utc_now_iso
from ..tasks import cancel_and_wait
from .client import CivitaiClient, CivitaiError, retry_after_seconds, transport_error
from .filenames import (
    UnsafePath,
    default_extension,
    disposition_filename,
    free_name,
    inside,
    safe_component,
    safe_filename,
)
from .hashes import FileHashes, HashCache, hash_file
from .urls import ModelRef

log = logging.getLogger(__name__)

STATE_FILE = "civitai_downloads.json"
ACTIVE = frozenset({"queued", "downloading", "verifying"})
KEEP_FINISHED = 100  # finished downloads listed; older ones are forgotten
WRITE_BLOCK = 1024 * 1024  # bytes gathered before one write+hash call in a thread
PROGRESS_INTERVAL = 0.25  # at most four `download` events a second per download
PREVIEW_LIMIT = 16 * 1024 * 1024
PARALLEL = 2  # downloads at once: more only splits the same bandwidth
MODEL_TYPES: dict[str, tuple[str, LibraryKind]] = {
    "checkpoint": ("checkpoint", CHECKPOINTS),
    "lora": ("lora", LORAS),
    "locon": ("lora", LORAS),
    "dora": ("lora", LORAS),
}
PREVIEW_TYPES = {"image/png": ".png", "image/jpeg": ".jpeg", "image/webp": ".webp"}

RefreshHook = Callable[[str], Awaitable[None]]


@dataclass
class Download:
    download_id: str
    model_version_id: int
    file_id: int | None
    model_id: int | None
    model_name: str | None
    version_name: str | None
    model_type: str
    base_model: str | None
    kind: str  # lora | checkpoint
    folder: str  # subfolder of the kind's root ("" for the root itself)
    filename: str | None  # None until the storage names it (no files[].name)
    sha256: str | None  # what Civitai says the file hashes to (upper-case hex)
    status: str = "queued"
    bytes_done: int = 0
    bytes_total: int | None = None
    error: str | None = None
    error_code: str | None = None
    note: str | None = None
    attempts: int = 0
    created: str = field(default_factory=utc_now_iso)
    updated: str = field(default_factory=utc_now_iso)
    version: dict[str, Any] = field(default_factory=dict, repr=False)  # for the sidecar

    @property
    def relative_path(self) -> str | None:
        if not self.filename:
            return None
        return f"{self.folder}/{self.filename}" if self.folder else self.filename

    def view(self) -> dict[str, Any]:
        """What clients see (no local absolute paths, no metadata blob)."""
        return {
            "download_id": self.download_id,
            "status": self.status,
            "model_version_id": self.model_version_id,
            "file_id": self.file_id,
            "model_id": self.model_id,
            "model_name": self.model_name,
            "version_name": self.version_name,
            "model_type": self.model_type,
            "base_model": self.base_model,
            "kind": self.kind,
            "filename": self.filename,
            "relative_path": self.relative_path,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "error": self.error,
            "error_code": self.error_code,
            "note": self.note,
            "attempts": self.attempts,
            "created": self.created,
            "updated": self.updated,
        }

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Download:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class DownloadNotFound(NotFound):
    """No download with this id (or it was finished long enough ago to be forgotten)."""

    code = "download_not_found"

    @property
    def public_message(self) -> str:
        return f"no download with id '{self.args[0]}'"


class DownloadFailed(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _pick_file(version: dict[str, Any], file_id: int | None) -> dict[str, Any]:
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    if file_id is not None:
        for f in files:
            if f.get("id") == file_id:
                return f
        raise CivitaiError(
            f"model version {version.get('id')} has no file {file_id}",
            code="civitai_not_found",
            status=404,
        )
    models = [f for f in files if f.get("type") in (None, "Model", "Pruned Model")]
    chosen = next((f for f in models if f.get("primary")), None) or (models[0] if models else None)
    if chosen is None:
        raise CivitaiError(
            f"model version {version.get('id')} lists no model file to download",
            code="civitai_not_found",
            status=404,
        )
    return chosen


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, total or None) of `bytes <first>-<last>/<total>`."""
    if not value or not value.lower().startswith("bytes "):
        return None
    span, _, total = value[6:].strip().partition("/")
    first, _, _ = span.partition("-")
    try:
        return int(first), (int(total) if total.strip().isdigit() else None)
    except ValueError:
        return None


def _prefix_hash(path: Path, length: int) -> Any:
    """sha256 of the first `length` bytes of `path` (the part file on resume)."""
    hasher = hashlib.sha256()
    if length:
        with open(path, "rb") as fh:
            remaining = length
            while remaining:
                chunk = fh.read(min(WRITE_BLOCK, remaining))
                if not chunk:
                    break
                hasher.update(chunk)
                remaining -= len(chunk)
    return hasher


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _open_part(path: Path, append: bool) -> BinaryIO:
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    flags |= os.O_APPEND if append else os.O_TRUNC
    return os.fdopen(os.open(path, flags, FOR_PEOPLE), "ab" if append else "wb")


def _write(fh: BinaryIO, hasher: Any, data: bytes) -> None:
    fh.write(data)
    hasher.update(data)


def _close(fh: BinaryIO, sync: bool) -> None:
    try:
        fh.flush()
        if sync:
            os.fsync(fh.fileno())
    finally:
        fh.close()


def _place(part: Path, target: Path) -> bool:
    """Move the part file to `target` without ever replacing an existing file; False when
    `target` exists."""
    try:
        os.link(part, target)  # fails if target exists: no check-then-rename race
    except FileExistsError:
        return False
    except OSError:
        if target.exists():  # a file system without hard links
            return False
        os.rename(part, target)
        return True
    part.unlink()
    return True


def _write_new(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` (fsynced) unless a file of that name is there; False when
    one is: it is someone else's and is left as it is (no check-then-write race: the temp
    file is linked to its name, which fails on an existing name)."""
    if os.path.lexists(path):
        return False
    tmp = write_temp_beside(path, data, mode=FOR_PEOPLE)
    try:
        placed = _place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if placed:
        fsync_dir(path.parent)
    return placed


def _names_in(folder: Path) -> set[str]:
    """The names in `folder`, lower-cased (the library matches sidecars case-insensitively)."""
    try:
        return {name.lower() for name in os.listdir(folder)}
    except OSError:
        return set()


class DownloadManager:
    def __init__(
        self,
        settings: Settings,
        client: CivitaiClient,
        bus: EventBus,
        cache: HashCache,
        *,
        on_downloaded: RefreshHook | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.bus = bus
        self.cache = cache
        self.on_downloaded = on_downloaded
        self.path = settings.data_path / STATE_FILE
        self.downloads: dict[str, Download] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(PARALLEL)
        self._save_lock = asyncio.Lock()
        self._published: dict[str, float] = {}
        self._submit_lock = asyncio.Lock()
        # Downloads past the point of no return: their file is being put under its final name
        # (or a file already there is being accepted), so they end as completed, not cancelled.
        self._committed: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the downloads; unfinished ones carry on where their part file ends."""
        records = await asyncio.to_thread(self._read)
        for data in records:
            try:
                download = Download.from_record(data)
            except TypeError:
                continue
            self.downloads[download.download_id] = download
        unfinished = [d for d in self.downloads.values() if d.status in ACTIVE]
        for download in unfinished:
            log.info("civitai download %s resumes (%s)", download.download_id, download.filename)
            download.status = "queued"
            self._schedule(download)

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks.values(), *self._side_tasks)
        self._tasks.clear()
        self._side_tasks.clear()
        await self._save()

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("civitai: cannot read %s (%s); starting with no downloads", self.path, exc)
            return []
        items = data.get("downloads") if isinstance(data, dict) else None
        if not isinstance(items, list):
            log.warning("civitai: %s holds no list of downloads; starting with none", self.path)
            return []
        return [d for d in items if isinstance(d, dict)]

    async def _save(self) -> None:
        async with self._save_lock:
            ordered = sorted(self.downloads.values(), key=lambda d: d.created)
            finished = [d for d in ordered if d.status not in ACTIVE]
            for old in finished[:-KEEP_FINISHED]:
                del self.downloads[old.download_id]
            records = [d.record() for d in self.downloads.values()]
            payload = json.dumps({"downloads": records}, ensure_ascii=False).encode()
            writing = asyncio.ensure_future(
                asyncio.to_thread(atomic_write_bytes, self.path, payload, mode=0o600)
            )
            try:
                await asyncio.shield(writing)
            except asyncio.CancelledError:
                # The thread writes on regardless: hold the lock until it has, or the next
                # save (cancel()'s, stop()'s) could land first and be replaced by this older one.
                with contextlib.suppress(OSError):
                    await writing
                raise

    # -- queries -----------------------------------------------------------------------------

    def views(self) -> list[dict[str, Any]]:
        """Newest first."""
        ordered = sorted(self.downloads.values(), key=lambda d: d.created, reverse=True)
        return [d.view() for d in ordered]

    def _root(self, kind: LibraryKind) -> Path:
        root = self.settings.lora_path if kind is LORAS else self.settings.checkpoint_path
        if root is None:
            raise CivitaiError(
                f"{kind.variable} is not set: set it to the folder your Forge server reads "
                f"{'LoRAs' if kind is LORAS else 'checkpoints'} from, then restart the core",
                code="folder_not_configured",
                status=409,
            )
        return root

    # -- submitting --------------------------------------------------------------------------

    async def submit(self, ref: ModelRef) -> Download:
        """Check what `ref` names (type, folder, file) and queue its download. A download of
        the same file already under way is returned instead of a second one."""
        version_id = ref.model_version_id
        if version_id is None and ref.model_id is not None:
            model = await self.client.model(ref.model_id)
            versions = [v for v in model.get("modelVersions") or [] if isinstance(v, dict)]
            if not versions or not isinstance(versions[0].get("id"), int):
                raise CivitaiError(
                    f"Civitai model {ref.model_id} has no published version to download",
                    code="civitai_not_found",
                    status=404,
                )
            version_id = versions[0]["id"]
        assert version_id is not None
        version = await self.client.model_version(version_id)
        raw_model = version.get("model")
        model = raw_model if isinstance(raw_model, dict) else {}
        model_type = str(model.get("type") or "")
        if model_type.lower() not in MODEL_TYPES:
            raise CivitaiError(
                f"'{model.get('name') or version_id}' is a {model_type or 'model of unknown type'}"
                ": MobileSD downloads checkpoints (to CHECKPOINT_PATH) and LoRA, LoCon and DoRA "
                "models (to LORA_PATH) only",
                code="unsupported_model_type",
                status=422,
            )
        kind_name, kind = MODEL_TYPES[model_type.lower()]
        root = self._root(kind)
        chosen = _pick_file(version, ref.file_id)
        async with self._submit_lock:
            for existing in self.downloads.values():
                if (
                    existing.status in ACTIVE
                    and existing.model_version_id == version_id
                    and existing.file_id == chosen.get("id")
                ):
                    return existing
            folder = ""
            if self.settings.civitai_subfolders and version.get("baseModel"):
                folder = safe_component(str(version["baseModel"]), fallback="")
            if folder:
                try:
                    inside(root, folder)
                except UnsafePath:
                    folder = ""  # e.g. a symlink there leading elsewhere: use the root
            raw_hashes = chosen.get("hashes")
            hashes = raw_hashes if isinstance(raw_hashes, dict) else {}
            size_kb = chosen.get("sizeKB")
            download = Download(
                download_id=str(ULID()),
                model_version_id=version_id,
                file_id=chosen.get("id") if isinstance(chosen.get("id"), int) else None,
                model_id=version.get("modelId")
                if isinstance(version.get("modelId"), int)
                else None,
                model_name=model.get("name"),
                version_name=version.get("name"),
                model_type=model_type,
                base_model=version.get("baseModel"),
                kind=kind_name,
                folder=folder,
                filename=None,
                sha256=str(hashes["SHA256"]).upper() if hashes.get("SHA256") else None,
                bytes_total=round(size_kb * 1024) if isinstance(size_kb, int | float) else None,
                version=version,
            )
            if chosen.get("name"):
                download.filename = self._name_for(
                    download, str(chosen["name"]), chosen, fresh=False
                )
            self.downloads[download.download_id] = download
        await self._save()
        log.info(
            "civitai download %s queued: version %d (%s) -> %s",
            download.download_id,
            version_id,
            model_type,
            kind.variable,
        )
        self._publish(download, force=True)
        self._schedule(download)
        return download

    def _folder(self, download: Download) -> Path:
        kind = LORAS if download.kind == "lora" else CHECKPOINTS
        root = self._root(kind)
        if not download.folder:
            return root
        folder = inside(root, download.folder)
        folder.mkdir(parents=True, exist_ok=True)
        return inside(root, download.folder)

    def _name_for(
        self, download: Download, raw: str, file: dict[str, Any] | None, *, fresh: bool = True
    ) -> str:
        """A safe name in the download's folder. `fresh`: also unused on disk (no file, no
        part file); otherwise an existing file or part file of that name is kept for
        `_download` to judge (the same file already there, or a part to resume)."""
        kind = LORAS if download.kind == "lora" else CHECKPOINTS
        ext = default_extension((file or {}).get("metadata"), kind.extensions)
        name = safe_filename(
            raw,
            extensions=kind.extensions,
            default_ext=ext,
            fallback_stem=f"civitai_{download.model_version_id}",
        )
        folder = self._folder(download)
        inside(folder, name)  # never a path outside the folder
        taken = {
            d.filename
            for d in self.downloads.values()
            if d.status in ACTIVE and d.folder == download.folder and d.kind == download.kind
            if d.filename and d is not download
        }
        if not fresh and name not in taken:
            return name
        return free_name(folder, name, taken)

    # -- cancelling --------------------------------------------------------------------------

    async def cancel(self, download_id: str) -> Download:
        """Stop a queued or running download for good: its part file is deleted and it does not
        resume at the next start.

        "verifying" can be cancelled until the point of no return: while the hash is compared,
        and while a file already in the folder is hashed (that file is the user's and is left
        alone). Once the part file is being renamed to its final name, or the file already there
        is accepted, the download ends as completed and cancelling it is a Conflict, like
        cancelling any finished download: a cancel never leaves a final file behind a
        `cancelled` record, nor a `completed` record without its file."""
        download = self.downloads.get(download_id)
        if download is None:
            raise DownloadNotFound(download_id)
        if download.status not in ACTIVE:
            raise Conflict(f"download is already {download.status}", download.status)
        if download_id in self._committed:
            raise Conflict(
                "download is being put in place and will be completed; it can no longer be "
                "cancelled",
                download.status,
            )
        # Set before any await: a second cancel meanwhile gets its Conflict, and _run's error
        # handlers (a write failing as the task stops) leave the record alone.
        download.status = "cancelled"
        download.note = None
        task = self._tasks.get(download_id)
        if task is not None:
            task.cancel()
            # wait() rather than awaiting the task: the task's CancelledError is expected, but a
            # cancellation of this call itself (the core stopping) must still propagate.
            await asyncio.wait({task})
        # The record first: should the core die before the part file is deleted, a leftover
        # part file is harmless, a download resumed against the user's wish is not.
        await self._save()
        await asyncio.to_thread(self._delete_part, download)
        log.info("civitai download %s cancelled", download_id)
        self._publish(download, force=True)
        return download

    async def _start_over(self, download: Download, why: str) -> CivitaiError:
        """Drop the part file; the error (to raise) has the download retried from byte 0."""
        await asyncio.to_thread(self._delete_part, download)
        return CivitaiError(why, code="civitai_unavailable", transient=True, retry_after=0)

    def _delete_part(self, download: Download) -> None:
        try:
            part = self._part(download)
        except (CivitaiError, UnsafePath):
            return  # the folder is no longer configured (or safe): nothing of ours is there
        if part is not None:
            part.unlink(missing_ok=True)

    # -- running -----------------------------------------------------------------------------

    def _schedule(self, download: Download) -> None:
        task = asyncio.create_task(self._run(download), name=f"civitai-{download.download_id}")
        self._tasks[download.download_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(download.download_id, None))

    def _publish(self, download: Download, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._published.get(download.download_id, 0.0) < PROGRESS_INTERVAL:
            return
        self._published[download.download_id] = now
        download.updated = utc_now_iso()
        self.bus.publish("download", download.view())

    async def _set(self, download: Download, status: str, **changes: Any) -> None:
        if download.status == "cancelled":
            return  # cancel() owns the record from now on
        download.status = status
        for key, value in changes.items():
            setattr(download, key, value)
        self._publish(download, force=True)
        await self._save()

    async def _run(self, download: Download) -> None:
        try:
            async with self._slots:
                await self._set(download, "downloading", error=None, error_code=None)
                await self._download(download)
        except asyncio.CancelledError:
            # The core stops (the record stays unfinished and resumes at the next start), or
            # cancel() stopped this download and finishes the record itself.
            raise
        except (CivitaiError, DownloadFailed) as exc:
            log.warning("civitai download %s failed: %s", download.download_id, exc.message)
            await self._set(download, "failed", error=exc.message, error_code=exc.code, note=None)
        except UnsafePath as exc:
            await self._set(
                download, "failed", error=f"unsafe file name refused: {exc}", error_code="unsafe"
            )
        except OSError as exc:
            folder = "LORA_PATH" if download.kind == "lora" else "CHECKPOINT_PATH"
            await self._set(
                download,
                "failed",
                error=f"cannot write into {folder}: {exc.strerror or exc}",
                error_code="write_failed",
            )
        except Exception as exc:
            log.exception("civitai download %s failed unexpectedly", download.download_id)
            await self._set(
                download, "failed", error=f"unexpected error: {exc}", error_code="internal"
            )
        finally:
            self._committed.discard(download.download_id)

    async def _download(self, download: Download) -> None:
        if download.filename:
            target = inside(self._folder(download), download.filename)
            if target.exists():
                if await self._already_there(download, target):
                    return
                download.filename = self._name_for(download, download.filename, None)
                await self._save()
        digest = await self._transfer(download)
        target = inside(self._folder(download), download.filename or "")
        part = target.with_name(target.name + ".part")
        await self._set(download, "verifying", note=None)
        if download.sha256 and digest.upper() != download.sha256:
            await asyncio.to_thread(part.unlink, missing_ok=True)
            raise DownloadFailed(
                f"the downloaded file is damaged: its SHA-256 is {digest.upper()[:16]}..., Civitai "
                f"says {download.sha256[:16]}...; the partial file was deleted, download it again",
                "hash_mismatch",
            )
        # The point of no return (see cancel()): the rename below runs in a thread that a
        # cancelled task would not stop.
        self._committed.add(download.download_id)
        while not await asyncio.to_thread(_place, part, target):
            # Someone put a file there meanwhile: never overwrite it, take the next free name.
            download.filename = self._name_for(download, download.filename or "", None)
            target = inside(self._folder(download), download.filename)
        await self._finish(download, target, FileHashes(digest.lower(), self._autov3(download)))

    def _autov3(self, download: Download) -> str | None:
        for f in download.version.get("files") or []:
            if isinstance(f, dict) and f.get("id") == download.file_id:
                value = (f.get("hashes") or {}).get("AutoV3")
                return str(value).lower() if value else None
        return None

    async def _already_there(self, download: Download, target: Path) -> bool:
        """The file is already in place (same SHA-256): finish without downloading."""
        if not download.sha256:
            return False
        await self._set(download, "verifying", note="checking the file already in the folder")
        hashes = await asyncio.to_thread(hash_file, target)
        if hashes.sha256.upper() != download.sha256:
            return False
        self._committed.add(download.download_id)  # the point of no return (see cancel())
        size = await asyncio.to_thread(_size, target)
        download.bytes_done = download.bytes_total = size
        await self._finish(download, target, hashes, note="already in the folder")
        return True

    async def _transfer(self, download: Download) -> str:
        """Fetch the file into its part file, resuming, retrying; returns its sha256 hex."""
        hasher: Any = None
        hashed = -1
        failures = 0
        while True:
            part = self._part(download)
            have = await asyncio.to_thread(_size, part) if part else 0
            if hasher is None or hashed != have:
                hasher = await asyncio.to_thread(_prefix_hash, part, have) if part else None
                hasher = hasher or hashlib.sha256()
                hashed = have
            download.bytes_done = have
            start_bytes = have
            download.attempts += 1
            try:
                hasher, hashed = await self._connection(download, have, hasher)
            except CivitaiError as exc:
                if not exc.transient:
                    raise
                progressed = download.bytes_done > start_bytes
                failures = 0 if progressed else failures + 1
                if failures > self.settings.civitai_max_retries:
                    raise CivitaiError(
                        f"{exc.message}; gave up after {failures} tries without progress",
                        code=exc.code,
                    ) from None
                delay = (
                    exc.retry_after
                    if exc.retry_after is not None
                    else backoff_delay(
                        failures,
                        self.settings.civitai_retry_backoff,
                        self.settings.civitai_retry_backoff_max,
                    )
                )
                log.info(
                    "civitai download %s: %s; retrying in %.1f s",
                    download.download_id,
                    exc.message,
                    delay,
                )
                download.note = f"{exc.message}; retrying in {delay:.0f} s"
                self._publish(download, force=True)
                await asyncio.sleep(delay)  # backoff, not synchronisation
                continue
            return str(hasher.hexdigest())

    def _part(self, download: Download) -> Path | None:
        if not download.filename:
            return None
        target = inside(self._folder(download), download.filename)
        return target.with_name(target.name + ".part")

    async def _connection(self, download: Download, have: int, hasher: Any) -> tuple[Any, int]:
        """One redirect + one storage answer, appended to (or restarting) the part file.
        Returns the hasher and the part file's length after it."""
        url = await self.client.download_location(download.model_version_id, download.file_id)
        try:
            async with self.client.storage(url, start=have) as response:
                status = response.status_code
                append = False
                total: int | None = None  # the storage's word on the size, not Civitai's sizeKB
                if status == 206 and have:
                    span = _content_range(response.headers.get("Content-Range"))
                    if span is None or span[0] != have:
                        # Not the bytes we asked for: start over rather than splice garbage.
                        log.info(
                            "civitai download %s: wrong range; restarting", download.download_id
                        )
                        raise await self._start_over(
                            download, "the file storage answered a different range"
                        )
                    append = True
                    total = span[1]
                elif status == 200:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                elif status == 416:
                    raise await self._start_over(
                        download, "the part file is longer than the file; starting over"
                    )
                else:
                    raise CivitaiError(
                        f"Civitai's file storage answered {status}",
                        code="civitai_unavailable",
                        transient=True,  # an expired signature: the next try gets a fresh URL
                        retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                    )
                if not download.filename:
                    raw = disposition_filename(response.headers.get("Content-Disposition"))
                    download.filename = self._name_for(download, raw or "", self._file(download))
                    await self._save()
                if not append:
                    hasher, have = hashlib.sha256(), 0
                if total is not None:
                    download.bytes_total = total
                part = self._part(download)
                assert part is not None
                hasher, have = await self._stream(download, response, part, append, hasher, have)
        except httpx.HTTPError as exc:
            raise transport_error(exc, "Civitai's file storage") from None
        if total is not None and have < total:
            raise CivitaiError(
                "Civitai's file storage ended the answer early",
                code="civitai_unavailable",
                transient=True,
            )
        return hasher, have

    def _file(self, download: Download) -> dict[str, Any] | None:
        for f in download.version.get("files") or []:
            if isinstance(f, dict) and f.get("id") == download.file_id:
                return f
        return None

    async def _stream(
        self,
        download: Download,
        response: httpx.Response,
        part: Path,
        append: bool,
        hasher: Any,
        have: int,
    ) -> tuple[Any, int]:
        opening = asyncio.ensure_future(asyncio.to_thread(_open_part, part, append))
        try:
            fh = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The thread opens (creates) the part file whatever happens here: close it before
            # cancel() deletes the part file, so no handle and no empty file outlive the task.
            with contextlib.suppress(OSError):
                (await opening).close()
            raise
        buffer = bytearray()
        # One block is written and hashed in a thread while the next one arrives: the socket
        # keeps being read during disk work. Blocks stay in order (each waits for the last).
        writing: asyncio.Future[None] | None = None
        written = have
        done = False
        try:
            async for chunk in response.aiter_bytes():
                buffer += chunk
                if len(buffer) >= WRITE_BLOCK:
                    if writing is not None:
                        await asyncio.shield(writing)  # a cancel must not orphan a write
                    block = bytes(buffer)
                    buffer.clear()
                    writing = asyncio.ensure_future(asyncio.to_thread(_write, fh, hasher, block))
                    written += len(block)
                    writing.add_done_callback(self._progress(download, written))
            done = True
        finally:
            # Bytes received before a drop are good bytes of the file: keep them to resume.
            if writing is not None:
                await writing
            if buffer:
                await asyncio.to_thread(_write, fh, hasher, bytes(buffer))
                written += len(buffer)
            have = download.bytes_done = written
            await asyncio.to_thread(_close, fh, done)
        self._publish(download, force=True)
        return hasher, have

    def _progress(self, download: Download, size: int) -> Callable[[asyncio.Future[None]], None]:
        """Once a block is on disk, the part file is `size` long: say so."""

        def written(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is None:
                download.bytes_done = size
                download.note = None
                self._publish(download)

        return written

    async def _finish(
        self, download: Download, target: Path, hashes: FileHashes, note: str | None = None
    ) -> None:
        await self._write_sidecars(download, target)
        await self.cache.remember(target, hashes)
        log.info("civitai download %s completed: %s", download.download_id, download.relative_path)
        await self._set(download, "completed", note=note, error=None, error_code=None)
        if self.on_downloaded is not None:
            task = asyncio.create_task(self._refresh(download.kind))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

    async def _refresh(self, kind: str) -> None:
        assert self.on_downloaded is not None
        try:
            await self.on_downloaded(kind)
        except Exception:
            log.exception("civitai: refreshing the servers' model lists failed")

    async def _write_sidecars(self, download: Download, target: Path) -> None:
        """`<stem>.civitai.info` (the version JSON, as Civitai Helper writes it) and a preview
        image. Both are extras: a failure is noted, never fatal. Neither replaces a file that
        is there already (the user's own sidecar or preview, or one another tool wrote, beside
        a file that was already in the folder or at a free name): that one is kept, and said
        so in the log."""
        stem = target.name[: -len(target.suffix)] if target.suffix else target.name
        info = json.dumps(download.version, ensure_ascii=False, indent=1).encode()
        info_path = target.with_name(stem + ".civitai.info")
        try:
            if not await asyncio.to_thread(_write_new, info_path, info):
                log.info("civitai: %s is there already; left as it is", info_path.name)
        except OSError as exc:
            log.warning("civitai: cannot write the sidecar of %s: %s", target.name, exc)
        # Any preview the library would show for this file is kept (and would shadow ours).
        names = await asyncio.to_thread(_names_in, target.parent)
        existing = [stem + s for s in PREVIEW_SUFFIXES if (stem + s).lower() in names]
        if existing:
            log.info(
                "civitai: %s has a preview already (%s); none fetched", target.name, existing[0]
            )
            return
        images = [
            i
            for i in download.version.get("images") or []
            if isinstance(i, dict) and isinstance(i.get("url"), str)
            if i.get("type") in (None, "image")
        ]
        if not images:
            return
        try:
            data, content_type = await self.client.fetch_small(images[0]["url"], PREVIEW_LIMIT)
            ext = PREVIEW_TYPES.get(content_type.split(";")[0].strip().lower())
            if ext is None:
                return
            preview = target.with_name(f"{stem}.preview{ext}")
            if not await asyncio.to_thread(_write_new, preview, data):
                log.info("civitai: %s is there already; left as it is", preview.name)
        except (CivitaiError, OSError) as exc:
            log.info("civitai: no preview for %s (%s)", target.name, exc)
