"""Init images, masks and upscale sources: stored content-addressed under the data folder.

Every image a job reads (an upload from the phone or the API, a gallery image, a file beside a
job file) is copied here when the job is created, so the job never depends on the original
staying where it was. A file is `uploads/<sha256>.png`, the SHA-256 of the stored PNG: the
picture as decoded (at most MAX_PIXELS, see images.py), with its EXIF orientation applied and
every other piece of metadata dropped, re-encoded as PNG. The same picture uploaded twice is one
file.

Kept while a job needs it: an upload is deleted by `sweep` once no pending or processing job
refers to it and it was neither stored nor used for `grace` seconds (an hour by default). The
grace gives a client time to create the job an upload is for, and a person time to retry a job
that failed; a job created with an upload that is gone is refused naming the field. Writes are
atomic (durable.py): a crash leaves a whole file or none, and a file no job refers to is swept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .durable import TMP_PREFIX, atomic_write_bytes
from .images import ImageTooLarge, open_capped

log = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
"""Bytes one uploaded file may have (a 4096 x 4096 PNG photo is about 30 MB)."""
DEFAULT_GRACE = 3600.0
THUMB_SIZE = 256

_SHA = re.compile(r"^[0-9a-f]{64}$")


class UploadRejected(ValueError):
    """The bytes are not an image the core stores; the message says why, for the person."""

    def __init__(self, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StoredUpload:
    sha256: str
    width: int
    height: int
    bytes: int

    @property
    def ref(self) -> str:
        return f"upload:{self.sha256}"


def is_sha256(value: str) -> bool:
    return bool(_SHA.fullmatch(value))


def normalise(data: bytes) -> tuple[bytes, int, int]:
    """The PNG stored for `data`: decoded within the pixel cap, EXIF orientation applied, no
    metadata. UploadRejected when it is too big or not an image."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadRejected(f"is {len(data):,} bytes; at most {MAX_UPLOAD_BYTES:,}", status=413)
    if not data:
        raise UploadRejected("is empty; expected an image (PNG, JPEG, WebP)")
    try:
        with open_capped(io.BytesIO(data)) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            mode = upright.mode
            if mode not in ("RGB", "RGBA", "L", "LA"):
                upright = upright.convert(
                    "RGBA" if "A" in mode or "transparency" in upright.info else "RGB"
                )
            out = io.BytesIO()
            upright.save(out, format="PNG", compress_level=3)
            return out.getvalue(), upright.width, upright.height
    except ImageTooLarge as exc:
        raise UploadRejected(f"is too large an image: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise UploadRejected("is not an image Pillow can read (PNG, JPEG, WebP, ...)") from None


class UploadStore:
    def __init__(self, data_path: Path, *, grace: float = DEFAULT_GRACE) -> None:
        self.root = data_path / UPLOADS_DIR
        self.grace = grace
        # Several jobs may store the same picture at once; one lock keeps put and sweep apart.
        self._lock = asyncio.Lock()

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        return self.root / f"{sha256}.png"

    def has(self, sha256: str) -> bool:
        return is_sha256(sha256) and self.path(sha256).is_file()

    async def put(self, data: bytes) -> StoredUpload:
        """Store `data` (any image) and say under which hash. UploadRejected: nothing stored."""
        png, width, height = await asyncio.to_thread(normalise, data)
        sha = hashlib.sha256(png).hexdigest()
        async with self._lock:
            await asyncio.to_thread(self._write, sha, png)
        return StoredUpload(sha, width, height, len(png))

    def _write(self, sha: str, png: bytes) -> None:
        path = self.path(sha)
        if path.is_file():
            os.utime(path)  # used again: its grace starts over
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # Private (0600): photos from a phone are nobody else's; only the core reads them.
        atomic_write_bytes(path, png)

    async def size(self, sha256: str) -> tuple[int, int]:
        def read() -> tuple[int, int]:
            with open_capped(self.path(sha256)) as image:
                return image.size

        return await asyncio.to_thread(read)

    async def read(self, sha256: str) -> bytes:
        return await asyncio.to_thread(self.path(sha256).read_bytes)

    async def touch(self, hashes: Iterable[str]) -> None:
        """Start the grace of these uploads again (a job that used them ended)."""

        def run() -> None:
            for sha in hashes:
                if is_sha256(sha):
                    with contextlib.suppress(FileNotFoundError):
                        os.utime(self.path(sha))

        await asyncio.to_thread(run)

    async def thumbnail(self, sha256: str) -> bytes:
        def make() -> bytes:
            with open_capped(self.path(sha256)) as image:
                image.thumbnail((THUMB_SIZE, THUMB_SIZE))
                out = io.BytesIO()
                image.convert("RGB").save(out, format="JPEG", quality=80)
                return out.getvalue()

        return await asyncio.to_thread(make)

    async def sweep(self, needed: set[str], *, now: float | None = None) -> list[str]:
        """Delete uploads outside `needed` whose grace has passed; their hashes."""
        async with self._lock:
            return await asyncio.to_thread(self._sweep, needed, time.time() if now is None else now)

    def _sweep(self, needed: set[str], now: float) -> list[str]:
        removed = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            name = entry.name
            sha = name.removesuffix(".png")
            if name.startswith(TMP_PREFIX):
                # A write the process did not finish (it died): no write runs during a sweep,
                # both hold the store's lock.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            if not is_sha256(sha) or sha in needed:
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime < self.grace:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(sha)
        if removed:
            log.info("uploads: removed %d no job needs any more", len(removed))
        return removed
