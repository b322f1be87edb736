"""Crash-safe file primitives under the job store.

TinyDB's own JSONStorage writes over the old file in place and then truncates: a kill -9 in
between leaves a file that does not parse, and it re-reads the file on every query. Here the
database lives in memory and every write goes to a temp file that is fsynced and renamed over the
old one, then the folder is fsynced, so the file on disk is always either the old or the new
complete database.

Every call that changes a file goes through a `FileSystem`, so that a test can put one in that
records what each call made durable and rebuild the files as a power cut after any of them
would leave them (tests/helpers/powercut.py). `OS` is the real one.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tinydb.storages import Storage

TMP_PREFIX = ".tmp-"  # temp files of atomic writes: hidden, and swept by their owners
# Modes files are created with, before the umask. Files for people (gallery images and sidecars,
# inbox reports, model downloads and copies) leave it to the umask, so `UMASK=002` keeps them
# editable by the share's group; the core's own state and its secrets are for the core alone.
FOR_PEOPLE = 0o666
PRIVATE = 0o600


class FileSystem:
    """The file calls that change what is on disk. Reads go to the OS directly."""

    def open(self, path: Path | str, flags: int, mode: int = 0o777) -> int:
        return os.open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def mkdir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)


OS = FileSystem()


class DamagedFile(ValueError):
    """A data file that cannot be read as what it should hold: which file, where, and why."""

    def __init__(
        self, path: Path, reason: str, *, line: int | None = None, column: int | None = None
    ) -> None:
        self.path = path
        self.reason = reason
        self.line = line
        where = "" if line is None else f"line {line}: " if column is None else f"line {line}, "
        where += "" if column is None else f"column {column}: "
        super().__init__(f"{path} is damaged ({where}{reason})")


def read_json_file(path: Path) -> Any:
    """The file's JSON value; None when it is missing or blank. Raises `DamagedFile` naming the
    line (and column) where it stops making sense."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DamagedFile(path, "a folder where a file should be") from None
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DamagedFile(path, exc.msg, line=exc.lineno, column=exc.colno) from None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DamagedFile(path, f"byte {exc.start} is not UTF-8 text", line=line) from None


def corrupt_copy_name(path: Path) -> Path:
    """Where a damaged file is kept aside: `<name>.corrupt-<UTC time>`, never over another."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    return aside


def fsync_dir(path: Path, *, fs: FileSystem = OS) -> None:
    """Make a rename in `path` durable. Some network filesystems refuse this; the rename has
    still happened, so that is not an error."""
    try:
        fd = fs.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        fs.fsync(fd)
    except OSError:
        pass
    finally:
        fs.close(fd)


def fsync_path(path: Path, *, fs: FileSystem = OS) -> None:
    """fsync a file (or a folder) by name; errors are raised."""
    fd = fs.open(path, os.O_RDONLY)
    try:
        fs.fsync(fd)
    finally:
        fs.close(fd)


def atomic_write_bytes(
    path: Path,
    data: bytes,
    *,
    mode: int = PRIVATE,
    sync_folder: bool = True,
    fs: FileSystem = OS,
) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file.

    `mode` before the umask: PRIVATE unless the file is for people (FOR_PEOPLE).

    The temp file is created exclusively ("x"): a planted file or symlink at its name is an
    error, never written through; `os.replace` swaps a symlink at `path` itself, never its target.
    """
    tmp = write_temp_beside(path, data, mode=mode, fs=fs)
    try:
        fs.replace(tmp, path)
    except BaseException:
        fs.unlink(tmp)
        raise
    if sync_folder:
        fsync_dir(path.parent, fs=fs)


def write_temp_beside(path: Path, data: bytes, *, mode: int, fs: FileSystem = OS) -> Path:
    """A new temp file beside `path` holding `data`, fsynced; the caller puts it in place.

    Created exclusively ("x"): a planted file or symlink at its name is an error, never
    written through."""
    tmp = path.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
    try:
        fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[fs.write(fd, view) :]
            fs.fsync(fd)
        finally:
            fs.close(fd)
    except BaseException:
        fs.unlink(tmp)
        raise
    return tmp


class AtomicJSONStorage(Storage):
    """TinyDB storage: in-memory copy, atomic whole-file replace on write.

    `read` hands TinyDB the cached dict (TinyDB mutates it and then calls `write`); if a write
    fails, the cache is reloaded from disk so memory never runs ahead of the file. A file that
    does not parse raises `DamagedFile`.
    """

    def __init__(self, path: str | Path, *, mode: int = 0o600, fs: FileSystem = OS) -> None:
        self.path = Path(path)
        self.mode = mode
        self.fs = fs
        self._cache: dict[str, Any] | None = None
        self._load()

    def _load(self) -> None:
        data = read_json_file(self.path)
        if data is not None and not isinstance(data, dict):
            raise DamagedFile(self.path, f"a JSON {type(data).__name__}, not an object")
        self._cache = data

    def read(self) -> dict[str, Any] | None:
        return self._cache

    def write(self, data: dict[str, Any]) -> None:
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            atomic_write_bytes(self.path, payload, mode=self.mode, fs=self.fs)
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


# Told of a whole line (one that ends in a newline) that is not a JSON object: (line number,
# the line). A last line without its newline is a write a crash cut short, and is not told.
BadLine = Callable[[int, bytes], None]


class AppendLog:
    """An append-only JSON-lines file: the cost of a write does not depend on its length.

    Each record is one line. A crash can only tear the last line, which readers skip and the
    next append starts after.
    """

    def __init__(self, path: Path, *, mode: int = 0o600, fs: FileSystem = OS) -> None:
        self.path = path
        self.mode = mode
        self.fs = fs

    def append(self, records: list[dict[str, Any]], *, sync: bool = True) -> list[tuple[int, int]]:
        """Append records (fsynced unless `sync=False`); returns each line's (offset, length)."""
        lines = _encode_lines(records)
        fs = self.fs
        fd = fs.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, self.mode)
        try:
            offset = os.lseek(fd, 0, os.SEEK_END)
            if offset and os.pread(fd, 1, offset - 1) != b"\n":
                # A torn line from a crash: start ours on a fresh line so both stay separable.
                fs.write(fd, b"\n")
                offset += 1
            data = memoryview(b"".join(lines))
            while data:
                data = data[fs.write(fd, data) :]
            if sync:
                fs.fsync(fd)
        finally:
            fs.close(fd)
        spans = []
        for line in lines:
            spans.append((offset, len(line)))
            offset += len(line)
        return spans

    def iter_records(
        self, on_bad_line: BadLine | None = None
    ) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Every complete record with its (offset, length), streamed; torn lines are skipped."""
        for _, offset, length, record in self.iter_numbered(on_bad_line):
            yield offset, length, record

    def iter_numbered(
        self, on_bad_line: BadLine | None = None
    ) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
        """As `iter_records`, each record with its line number first."""
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        with fh:
            offset = 0
            for number, line in enumerate(fh, start=1):
                length = len(line)
                if line.endswith(b"\n"):
                    try:
                        record = json.loads(line)
                    except ValueError:  # not JSON, or not UTF-8
                        record = None
                    if isinstance(record, dict):
                        yield number, offset, length, record
                    elif on_bad_line is not None and line.strip():
                        on_bad_line(number, line)
                offset += length

    def read_at(self, offset: int, length: int) -> dict[str, Any]:
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return json.loads(fh.read(length))

    def rewrite(self, records: list[dict[str, Any]]) -> list[tuple[int, int]]:
        """Compact: atomically replace the log with exactly these records."""
        lines = _encode_lines(records)
        atomic_write_bytes(self.path, b"".join(lines), mode=self.mode, fs=self.fs)
        spans, offset = [], 0
        for line in lines:
            spans.append((offset, len(line)))
            offset += len(line)
        return spans
