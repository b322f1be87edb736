"""The gallery folder (STABLE_DIFFUSION_SAVE_PATH): saving a job's images, resolving and deleting
them, and keeping the index in step with the files.

Files are written to a hidden temp name, fsynced and renamed, sidecar first and image second: an
image under a real name always has complete metadata, and a crash leaves at worst a hidden temp
file or an orphan sidecar, both removed by the next `start()`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..durable import FOR_PEOPLE, TMP_PREFIX, atomic_write_bytes, fsync_dir
from ..forge.infotext import parse_infotext
from ..schema import DELIVERY_FIELDS
from .errors import GalleryError, ImageNotFound, UnsafeName
from .files import check_name, is_listable_name, sidecar_name, unlink_entry
from .index import GalleryIndex, Record, record_from_png, record_from_sidecar
from .png import encode_image, seed_for, with_source_text
from .sidecars import (
    OWN_SIDECAR_RE,
    SIDECAR_VERSION,
    read_own_sidecar,
    scrub_sidecar,
    sidecar_bytes,
    sidecar_info,
)
from .thumbs import THUMBS_DIR, Thumbnails, remove_stale, thumbnail_name
from .values import as_int, iso, parse_time

log = logging.getLogger(__name__)

# batch_size (8) x n_iter (100) is at most 800 images, so three digits keep names sortable.
MAX_IMAGES_PER_JOB = 1000

_JOB_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")


@dataclass(slots=True)
class SavedImage:
    filename: str
    width: int
    height: int
    seed: int | None


@dataclass(slots=True)
class _Prepared:
    filename: str
    png: bytes
    sidecar: dict[str, Any]


class Gallery:
    """The images MobileSD saved (and any PNG a user put in the folder), with an in-memory index.

    The index is only read and changed on the event loop; every file operation runs in a thread.
    """

    def __init__(
        self,
        root: Path,
        *,
        thumb_size: int = 384,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.root = Path(root)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._real_root: Path | None = None
        self._index = GalleryIndex()
        self._thumbs = Thumbnails(size=thumb_size, root=self._root, resolve=self._resolve)
        self._scan_lock = asyncio.Lock()

    @property
    def thumb_size(self) -> int:
        return self._thumbs.size

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the folders, remove leftovers of interrupted writes, and build the index."""
        await self._scan(clean=True)

    async def rescan(self) -> None:
        """Rebuild the index from disk, picking up images a user added or removed by hand."""
        await self._scan(clean=False)

    async def _scan(self, *, clean: bool) -> None:
        async with self._scan_lock:
            self._index.begin_scan()
            records = None
            try:
                records = await asyncio.to_thread(self._scan_folder, clean)
            finally:
                self._index.finish_scan(records)
        log.info("gallery %s: %d images indexed", self.root, len(self._index))

    def _scan_folder(self, clean: bool) -> dict[str, Record]:
        root = self._ensure_folders()
        with os.scandir(root) as it:
            entries = list(it)
        names = {entry.name for entry in entries}
        if clean:
            self._clean_leftovers(root, entries, names)
        records: dict[str, Record] = {}
        scrubbed = 0
        for entry in entries:
            if not is_listable_name(entry.name):
                continue
            path = Path(entry.path)
            try:
                if entry.is_symlink():
                    target = path.resolve(strict=True)
                    if not target.is_relative_to(root) or not target.is_file():
                        continue
                elif not entry.is_file(follow_symlinks=False):
                    continue
            except (OSError, RuntimeError):
                continue
            record = None
            if sidecar_name(entry.name) in names:
                sidecar = root / sidecar_name(entry.name)
                data = read_own_sidecar(sidecar)
                if data is not None:
                    if clean and scrub_sidecar(sidecar, data):
                        scrubbed += 1
                    record = record_from_sidecar(entry.name, data)
            if record is None:
                record = record_from_png(path, entry.name)
            if record is not None:
                records[entry.name] = record
        if scrubbed:
            fsync_dir(root)
            log.info("gallery %s: removed webhook URLs from %d older sidecars", root, scrubbed)
        return records

    def _ensure_folders(self) -> Path:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            root = self.root.resolve(strict=True)
            thumbs = root / THUMBS_DIR
            thumbs.mkdir(exist_ok=True)
        except OSError as exc:
            raise GalleryError(f"cannot use gallery folder {self.root}: {exc}") from exc
        # A .thumbs that is a link elsewhere would make cleanup delete files outside the gallery.
        if thumbs.is_symlink() or not thumbs.is_dir():
            raise GalleryError(f"{thumbs} must be a folder inside the gallery, not a link")
        self._real_root = root
        return root

    def _clean_leftovers(
        self, root: Path, entries: list[os.DirEntry[str]], names: set[str]
    ) -> None:
        removed = 0
        for entry in entries:
            try:
                if entry.name.startswith(TMP_PREFIX) and not entry.is_dir(follow_symlinks=False):
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
                elif (
                    OWN_SIDECAR_RE.fullmatch(entry.name)
                    and entry.name[:-5] + ".png" not in names
                    and entry.is_file(follow_symlinks=False)
                    and read_own_sidecar(Path(entry.path)) is not None
                ):
                    # Sidecars are written before their image: this one's image never arrived.
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
            except OSError as exc:
                log.warning("gallery: cannot remove leftover %s: %s", entry.name, exc)
        removed += remove_stale(root, names)
        if removed:
            log.info("gallery %s: removed %d leftovers of interrupted writes", root, removed)

    def _root(self) -> Path:
        if self._real_root is None:
            self._real_root = self.root.resolve()
        return self._real_root

    # --- saving -------------------------------------------------------------------------------

    def image_name(self, job: Mapping[str, Any], index: int) -> str:
        """`<job created:%Y%m%d-%H%M%S>_<job id>_<index:03d>.png`: the same job and index always
        give the same name, so a retry after a crash overwrites instead of adding a copy."""
        job_id = job.get("mobilesd_job_id")
        if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
            raise UnsafeName(f"job id {job_id!r} cannot be part of a file name")
        if isinstance(index, bool) or not isinstance(index, int):
            raise GalleryError(f"image index must be an integer, not {index!r}")
        if not 0 <= index < MAX_IMAGES_PER_JOB:
            raise GalleryError(f"image index {index} out of range 0..{MAX_IMAGES_PER_JOB - 1}")
        created = parse_time(job.get("creation_timestamp"))
        if created is None:
            raise GalleryError(f"job {job_id} has no valid creation_timestamp")
        return f"{created.astimezone(UTC):%Y%m%d-%H%M%S}_{job_id}_{index:03d}.png"

    async def save_job_images(
        self,
        job: dict[str, Any],
        images: list[bytes],
        info: dict[str, Any],
        *,
        server_alias: str,
        timings: dict[str, float] | None = None,
        model_title: str | None = None,
    ) -> list[SavedImage]:
        """Save a finished job's images with their metadata; saving again overwrites.

        Every image is checked and encoded before the first file is written, so a bad image fails
        the save without leaving half of the job in the gallery.
        """
        if not images:
            return []
        info = info or {}
        names = [self.image_name(job, index) for index in range(len(images))]
        # The store keeps changing its job dict on the loop; the thread gets a frozen copy.
        snapshot = copy.deepcopy(job)
        created = iso(self._clock())
        prepared = await asyncio.to_thread(
            self._prepare_and_write,
            names,
            list(images),
            snapshot,
            info,
            server_alias,
            timings,
            model_title,
            created,
        )
        saved = []
        for item in prepared:
            self._index.put(record_from_sidecar(item.filename, item.sidecar))
            saved.append(
                SavedImage(
                    filename=item.filename,
                    width=item.sidecar["width"],
                    height=item.sidecar["height"],
                    seed=item.sidecar["seed"],
                )
            )
        log.info(
            "job %s: saved %d images from %s to the gallery",
            job.get("mobilesd_job_id"),
            len(saved),
            server_alias,
        )
        return saved

    def _prepare_and_write(
        self,
        names: list[str],
        images: list[bytes],
        job: dict[str, Any],
        info: Mapping[str, Any],
        server_alias: str,
        timings: dict[str, float] | None,
        model_title: str | None,
        created: str,
    ) -> list[_Prepared]:
        params = job.get("generation_params")
        params = params if isinstance(params, Mapping) else {}
        prepared = []
        for index, (name, data) in enumerate(zip(names, images, strict=True)):
            seed = seed_for(index, info, params)
            png, width, height, infotext = encode_image(
                data, index, params, info, model_title, seed
            )
            if seed is None:
                seed = as_int(parse_infotext(infotext).get("Seed"))
            png = with_source_text(png, params)
            sidecar = {
                "sidecar_version": SIDECAR_VERSION,
                "filename": name,
                "mobilesd_job_id": job.get("mobilesd_job_id"),
                "index": index,
                "created": created,
                "width": width,
                "height": height,
                "seed": seed,
                "server_alias": server_alias,
                "model_title": model_title,
                "generation_params": params,
                "infotext": infotext,
                "info": sidecar_info(info, index, seed),
                "timings": timings,
                "job": {k: v for k, v in job.items() if k not in DELIVERY_FIELDS},
            }
            prepared.append(_Prepared(filename=name, png=png, sidecar=sidecar))

        root = self._ensure_folders()
        thumbs = root / THUMBS_DIR
        for item in prepared:
            try:
                # Sidecar before image: an image under its real name always has its metadata.
                atomic_write_bytes(
                    root / sidecar_name(item.filename),
                    sidecar_bytes(item.sidecar),
                    mode=FOR_PEOPLE,
                    sync_folder=False,
                )
                atomic_write_bytes(
                    root / item.filename, item.png, mode=FOR_PEOPLE, sync_folder=False
                )
                # The old thumbnail of an overwritten image may share its mtime second.
                (thumbs / thumbnail_name(item.filename)).unlink(missing_ok=True)
            except OSError as exc:
                raise GalleryError(f"cannot write {item.filename} in {root}: {exc}") from exc
        fsync_dir(root)
        return prepared

    # --- reading ------------------------------------------------------------------------------

    async def list_images(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        q: str | None = None,
        job_id: str | None = None,
        job_range: tuple[str, str] | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of entries, newest first, and how many match in total (see GalleryIndex.page)."""
        return self._index.page(limit=limit, offset=offset, q=q, job_id=job_id, job_range=job_range)

    def names_for_jobs(self, job_ids: Iterable[str]) -> list[str]:
        """The gallery images of these jobs, job by job in the given order, by name in a job."""
        return self._index.names_for_jobs(job_ids)

    def sidecar_path(self, filename: str) -> Path | None:
        """The JSON sidecar beside an image, if there is one (blocking): a regular file in the
        gallery folder, never a link (its bytes would come from wherever it points)."""
        path = self._root() / sidecar_name(check_name(filename))
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return path if stat.S_ISREG(st.st_mode) else None

    async def get_entry(self, filename: str) -> dict[str, Any]:
        record = self._index.get(check_name(filename))
        if record is None:
            raise ImageNotFound(f"no gallery image named {filename!r}")
        return dict(record.entry)

    def image_path(self, filename: str) -> Path:
        """The real path of a gallery image; never a path outside the gallery folder."""
        return self._resolve(check_name(filename))

    def _resolve(self, name: str) -> Path:
        root = self._root()
        try:
            real = (root / name).resolve(strict=True)
        except FileNotFoundError:
            raise ImageNotFound(f"no gallery image named {name!r}") from None
        except (OSError, RuntimeError) as exc:  # symlink loops, permission errors
            raise UnsafeName(f"cannot resolve {name!r}: {exc}") from None
        # A link may point at another image in the gallery, never anywhere else.
        if not real.is_relative_to(root) or real == root:
            raise UnsafeName(f"{name!r} points outside the gallery")
        if not real.is_file():
            raise ImageNotFound(f"no gallery image named {name!r}")
        return real

    async def thumbnail_path(self, filename: str) -> Path:
        """A JPEG thumbnail (longest side at most thumb_size), made once and then reused.

        Concurrent requests for one image share one piece of work.
        """
        return await self._thumbs.path(check_name(filename))

    # --- deleting -----------------------------------------------------------------------------

    async def delete_image(self, filename: str) -> dict[str, Any]:
        """Remove the image, its sidecar and its thumbnail; return the entry it had."""
        name = check_name(filename)
        indexed = self._index.get(name)
        removed = await asyncio.to_thread(self._delete_files, name, indexed is None)
        record = self._index.drop(name) or removed
        if record is None:  # a concurrent delete of the same image won the race
            raise ImageNotFound(f"no gallery image named {filename!r}")
        log.info("gallery: deleted %s", name)
        return dict(record.entry)

    async def delete_job_images(self, job_id: str) -> list[str]:
        """Remove every image of a job (with sidecars and thumbnails); return their names."""
        names = self._index.names_of_job(job_id)
        if not names:
            return []
        deleted = await asyncio.to_thread(self._delete_many, names)
        for name in deleted:
            self._index.drop(name)
        log.info("job %s: deleted %d gallery images", job_id, len(deleted))
        return deleted

    def _delete_many(self, names: list[str]) -> list[str]:
        deleted = []
        for name in names:
            try:
                self._delete_files(name, False)
            except GalleryError as exc:
                # One image that cannot go (a link out of the gallery, a permission error) must
                # not keep the rest of the job's images.
                log.warning("gallery: not deleting %s: %s", name, exc)
                continue
            deleted.append(name)
        return deleted

    def _delete_files(self, name: str, want_record: bool) -> Record | None:
        """Delete one image's files. `want_record`: it is not indexed, so read its entry first."""
        root = self._root()
        image = root / name  # the directory entry itself: a link is removed, not its target
        try:
            self._resolve(name)  # refuses a name whose target lies outside the gallery
        except ImageNotFound:
            if want_record:
                raise
            # Indexed but removed by hand: still clear its sidecar, thumbnail and index entry.
        sidecar = root / sidecar_name(name)
        own = read_own_sidecar(sidecar)
        record = None
        if want_record:
            record = record_from_sidecar(name, own) if own else record_from_png(image, name)
            if record is None:
                raise ImageNotFound(f"{name!r} is not an image")
        try:
            # Image first: a sidecar left by a crash here is an orphan that start() removes.
            unlink_entry(image)
            if own is not None:
                unlink_entry(sidecar)
            unlink_entry(root / THUMBS_DIR / thumbnail_name(name))
        except OSError as exc:
            raise GalleryError(f"cannot delete {name!r}: {exc}") from exc
        return record
