"""Crash-safe file primitives under the job store.

TinyDB's own JSONStorage writes over the old file in place and then truncates: a kill -9 in
between leaves a file that does not parse, and it re-reads the file on every query. Here the
database lives in memory and every write goes to a temp file that is fsynced and renamed over the
old one, then the folder is fsynced, so the file on disk is always either the old or the new
complete database.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinydb.storages import Storage

TMP_PREFIX = ".tmp-"  # temp files of atomic writes: hidden, and swept by their owners
# Modes files are created with, before the umask. Files for people (gallery images and sidecars,
# inbox reports, model downloads and copies) leave it to the umask, so `UMASK=002` keeps them
# editable by the share's group; the core's own state and its secrets are for the core alone.
FOR_PEOPLE = 0o666
PRIVATE = 0o600


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable. Some network filesystems refuse this; the rename has
    still happened, so that is not an error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: Path, data: bytes, *, mode: int = PRIVATE, sync_folder: bool = True
) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file.

    `mode` before the umask: PRIVATE unless the file is for people (FOR_PEOPLE).

    The temp file is created exclusively ("x"): a planted file or symlink at its name is an
    error, never written through; `os.replace` swaps a symlink at `path` itself, never its target.
    """
    tmp = path.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_dir(path.parent)


class AtomicJSONStorage(Storage):
    """TinyDB storage: in-memory copy, atomic whole-file replace on write.

    `read` hands TinyDB the cached dict (TinyDB mutates it and then calls `write`); if a write
    fails, the cache is reloaded from disk so memory never runs ahead of the file.
    """

    def __init__(self, path: str | Path, *, mode: int = 0o600) -> None:
        self.path = Path(path)
        self.mode = mode
        self._cache: dict[str, Any] | None = None
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._cache = None
            return
        self._cache = json.loads(raw) if raw.strip() else None

    def read(self) -> dict[str, Any] | None:
        return self._cache

    def write(self, data: dict[str, Any]) -> None:
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            atomic_write_bytes(self.path, payload, mode=self.mode)
        except BaseException:
            self._load()
            raise
        self._cache = data

    def close(self) -> None:
        pass


def _encode_lines(records: list[dict[str, Any]]) -> list[bytes]:
    return [
        json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for r in records
    ]


class AppendLog:
    """An append-only JSON-lines file: the cost of a write does not depend on its length.

    Each record is one line. A crash can only tear the last line, which readers skip and the
    next append starts after.
    """

    def __init__(self, path: Path, *, mode: int = 0o600) -> None:
        self.path = path
        self.mode = mode

    def append(self, records: list[dict[str, Any]], *, sync: bool = True) -> list[tuple[int, int]]:
        """Append records (fsynced unless `sync=False`); returns each line's (offset, length)."""
        lines = _encode_lines(records)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, self.mode)
        try:
            offset = os.lseek(fd, 0, os.SEEK_END)
            if offset and os.pread(fd, 1, offset - 1) != b"\n":
                # A torn line from a crash: start ours on a fresh line so both stay separable.
                os.write(fd, b"\n")
                offset += 1
            data = memoryview(b"".join(lines))
            while data:
                data = data[os.write(fd, data) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        spans = []
        for line in lines:
            spans.append((offset, len(line)))
            offset += len(line)
        return spans

    def iter_records(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Every complete record with its (offset, length), streamed; torn lines are skipped."""
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        with fh:
            offset = 0
            for line in fh:
                length = len(line)
                if line.endswith(b"\n"):
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        record = None
                    if isinstance(record, dict):
                        yield offset, length, record
                offset += length

    def read_at(self, offset: int, length: int) -> dict[str, Any]:
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return json.loads(fh.read(length))

    def rewrite(self, records: list[dict[str, Any]]) -> list[tuple[int, int]]:
        """Compact: atomically replace the log with exactly these records."""
        lines = _encode_lines(records)
        atomic_write_bytes(self.path, b"".join(lines), mode=self.mode)
        spans, offset = [], 0
        for line in lines:
            spans.append((offset, len(line)))
            offset += len(line)
        return spans
