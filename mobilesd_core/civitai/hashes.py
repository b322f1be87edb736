"""Hashes of local model files, as Civitai and Forge name them, computed once and cached.

- SHA256: of the whole file. Civitai's AutoV2 (= Forge's checkpoint `hash`, infotext
  `Model hash`) is its first 10 hex digits.
- AutoV3: the sha256 of a safetensors file's data after its header (Forge's `Lora hashes`
  value is its first 12 hex digits; sd-scripts' "addnet hash").

Both come out of one read of the file, in a worker thread. Hashing a multi-GB checkpoint takes
seconds, so results are kept in CONFIG_DATA_PATH/civitai_hashes.json keyed by the file's real
path and checked against its size and mtime: a file is hashed again only when it changed.
Downloads add what they verified, so a fresh download is never hashed twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..durable import atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_FILE = "civitai_hashes.json"
BLOCK = 1024 * 1024
MIN_MATCH = 8  # fewer hex digits than this match too much by chance


@dataclass(frozen=True)
class FileHashes:
    sha256: str  # 64 lower-case hex digits
    autov3: str | None  # 64 hex digits, safetensors files only

    @property
    def autov2(self) -> str:
        return self.sha256[:10]

    def matches(self, given: str | None) -> bool:
        """Whether a Civitai/Forge hash of any kind (full or short, any case) names this file."""
        wanted = (given or "").strip().lower()
        if len(wanted) < MIN_MATCH or not all(c in "0123456789abcdef" for c in wanted):
            return False
        return any(h and h.startswith(wanted) for h in (self.sha256, self.autov3))


def hash_file(path: Path) -> FileHashes:
    """SHA256 and (for safetensors) AutoV3 of `path` in one pass. Blocking: run in a thread."""
    full = hashlib.sha256()
    data_hash: Any = None
    with open(path, "rb") as fh:
        if path.suffix.lower() == ".safetensors":
            head = fh.read(8)
            full.update(head)
            size = os.fstat(fh.fileno()).st_size
            header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
            if 0 <= header_len <= size - 8:
                remaining = header_len
                while remaining:
                    chunk = fh.read(min(BLOCK, remaining))
                    if not chunk:
                        break
                    full.update(chunk)
                    remaining -= len(chunk)
                data_hash = hashlib.sha256()
        while chunk := fh.read(BLOCK):
            full.update(chunk)
            if data_hash is not None:
                data_hash.update(chunk)
    return FileHashes(full.hexdigest(), data_hash.hexdigest() if data_hash else None)


class StreamHasher:
    """The hashes of `hash_file`, fed chunk by chunk as the bytes go by (a copy hashes what it
    reads without a second pass over the source). `size` is the whole stream's length: like
    `hash_file`, AutoV3 exists only when the safetensors header length fits in it."""

    def __init__(self, *, safetensors: bool, size: int) -> None:
        self._full = hashlib.sha256()
        self._safetensors = safetensors
        self._size = size
        self._head = b""
        self._skip: int | None = None  # header bytes still to pass before the data hash starts
        self._data: Any = None

    def update(self, chunk: bytes | memoryview) -> None:
        self._full.update(chunk)
        if not self._safetensors:
            return
        view = memoryview(chunk)
        if self._skip is None:
            need = 8 - len(self._head)
            self._head += bytes(view[:need])
            view = view[need:]
            if len(self._head) < 8:
                return
            header_len = int.from_bytes(self._head, "little")
            self._skip = header_len if header_len <= self._size - 8 else -1
        if self._skip < 0:
            return  # not a safetensors layout: no AutoV3
        if self._skip:
            step = min(self._skip, len(view))
            self._skip -= step
            view = view[step:]
            if self._skip:
                return
        if self._data is None:
            self._data = hashlib.sha256()
        self._data.update(view)

    def result(self) -> FileHashes:
        if self._safetensors and self._skip == 0 and self._data is None:
            self._data = hashlib.sha256()  # the header ran to the end of the file
        return FileHashes(self._full.hexdigest(), self._data.hexdigest() if self._data else None)


def _key(path: Path) -> str:
    return os.path.realpath(path)


class HashCache:
    """Hashes of local files by real path, valid while size and mtime stay the same."""

    def __init__(self, data_path: Path) -> None:
        self.path = data_path / CACHE_FILE
        self._entries: dict[str, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()  # one hashing pass at a time: never a file twice

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            try:
                data = json.loads(self.path.read_bytes())
                self._entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def _save(self) -> None:
        data = json.dumps(self._load(), separators=(",", ":"), ensure_ascii=False).encode()
        atomic_write_bytes(self.path, data, mode=0o600)

    def _fresh(self, path: Path) -> FileHashes | None:
        entry = self._load().get(_key(path))
        if not entry:
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        if entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            return None
        return FileHashes(entry["sha256"], entry.get("autov3"))

    def _store(self, path: Path, hashes: FileHashes) -> None:
        stat = path.stat()
        self._load()[_key(path)] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": hashes.sha256,
            "autov3": hashes.autov3,
        }

    def known(self, paths: list[Path]) -> dict[Path, FileHashes]:
        """The cached hashes of `paths` that are still valid (no hashing). Blocking (stat)."""
        out = {}
        for path in paths:
            found = self._fresh(path)
            if found is not None:
                out[path] = found
        return out

    async def compute(self, paths: list[Path]) -> dict[Path, FileHashes]:
        """Hashes of `paths`, computing (in a thread) only those not cached; unreadable files
        are left out."""
        async with self._lock:
            return await asyncio.to_thread(self._compute, paths)

    def _compute(self, paths: list[Path]) -> dict[Path, FileHashes]:
        out, changed = {}, False
        for path in paths:
            found = self._fresh(path)
            if found is None:
                try:
                    found = hash_file(path)
                    self._store(path, found)
                except OSError as exc:
                    log.info("civitai: cannot hash %s (%s)", path, exc.strerror or exc)
                    continue
                changed = True
            out[path] = found
        if changed:
            self._save()
        return out

    async def remember(self, path: Path, hashes: FileHashes) -> None:
        """Record hashes computed elsewhere (a verified download)."""
        async with self._lock:
            await asyncio.to_thread(self._remember, path, hashes)

    def _remember(self, path: Path, hashes: FileHashes) -> None:
        self._store(path, hashes)
        self._save()
