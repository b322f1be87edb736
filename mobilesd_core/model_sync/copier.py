"""One verified file copy (blocking: runs in a worker thread).

The bytes go to a hidden temp name beside the target whose extension Forge does not list
(`.<name>.<token>.mobilesd-part`), so a server refreshing its list mid-copy never sees half a
model. The source is hashed as it is read; after the temp file is fsynced it is read back and
must have the library file's size and SHA-256, else it is deleted. Only then is it renamed to
the final name and the folder fsynced.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..civitai.hashes import FileHashes, StreamHasher
from ..durable import FOR_PEOPLE, fsync_dir

CHUNK = 8 * 1024 * 1024
PART_SUFFIX = ".mobilesd-part"
PROGRESS_EVERY = 0.1  # seconds between progress callbacks from the copying thread


class CopyFailed(Exception):
    """The copy could not be made; `message` says why, for the job's error."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


class CopyCancelled(Exception):
    pass


def temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}{PART_SUFFIX}")


def copy_verified(
    source: Path,
    target: Path,
    *,
    expected: FileHashes | None,
    progress: Callable[[int, int, str], None],
    cancel: threading.Event,
    after_write: Callable[[Path], None] | None = None,
) -> FileHashes:
    """Copy `source` to `target` (which must not exist), verified; the source's hashes.

    `expected`: the library file's cached hashes, when the hash cache has them; without them the
    hashes of the bytes read are the reference. `progress(done, total, phase)` is called from
    this thread. `after_write` sees the fsynced temp file before verification (tests use it to
    corrupt a copy)."""
    size = source.stat().st_size
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        # AutoV3 (a second SHA-256 over most of the bytes) only when the hash cache will
        # learn the file from this copy; with the cached hashes, the full SHA-256 is enough.
        safetensors = expected is None and source.suffix.lower() == ".safetensors"
        hasher = StreamHasher(safetensors=safetensors, size=size)
        done = 0
        last = 0.0
        progress(0, size, "copying")
        with open(source, "rb") as src:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FOR_PEOPLE)
            try:
                while chunk := src.read(CHUNK):
                    if cancel.is_set():
                        raise CopyCancelled
                    hasher.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    done += len(chunk)
                    now = time.monotonic()
                    if now - last >= PROGRESS_EVERY:
                        last = now
                        progress(done, size, "copying")
                os.fsync(fd)
            finally:
                os.close(fd)
        read = hasher.result()
        if done != size or (expected is not None and read.sha256 != expected.sha256):
            raise CopyFailed(
                f"the library file {source} changed while it was copied", transient=True
            )
        if after_write is not None:
            after_write(tmp)
        progress(done, size, "verifying")
        copied_size = tmp.stat().st_size
        copied = sha256_file(tmp, cancel)
        if copied_size != size or copied != read.sha256:
            what = (
                f"{copied_size} bytes instead of {size}"
                if copied_size != size
                else f"SHA-256 {copied[:12]}… instead of {read.sha256[:12]}…"
            )
            raise CopyFailed(
                f"the copy failed verification ({what}); it was deleted", transient=True
            )
        os.replace(tmp, target)
        fsync_dir(target.parent)
        progress(size, size, "done")
        return read
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path, cancel: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        # Drop the just-written pages from the cache (Linux), so the check reads what the disk
        # or share holds rather than our own memory.
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while chunk := fh.read(CHUNK):
            if cancel is not None and cancel.is_set():
                raise CopyCancelled
            digest.update(chunk)
    return digest.hexdigest()
