"""The copies the core made into servers' sync folders: the only files it may ever delete, and
only while they still are those copies (same size and SHA-256; see sync.py's eviction).

Kept in CONFIG_DATA_PATH/model_sync.json, written atomically (temp file, fsync, rename), per
server alias and keyed by the copy's absolute path:

    {"version": 1, "servers": {"gpu1": {"/mnt/gpu1/models/sdxl/a.safetensors": {
        "kind": "checkpoint", "relpath": "sdxl/a.safetensors", "size": 6938078334,
        "sha256": "...", "copied_at": "2026-...Z", "last_used": 1764000000.25,
        "mtime_ns": 1764000000123456789}}}}

`last_used` orders eviction (least recently used first); it only ever grows, so two uses in the
same clock tick still have an order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..durable import atomic_write_bytes

log = logging.getLogger(__name__)

LEDGER_FILE = "model_sync.json"


@dataclass
class SyncedFile:
    kind: str  # "checkpoint" | "lora"
    relpath: str  # under the library folder (and under the sync folder), with '/'
    path: str  # absolute path of the copy
    size: int
    sha256: str
    copied_at: str
    last_used: float
    # The copy's mtime when it was made: size and mtime unchanged means it is still our copy
    # without reading it (None in ledgers written before it was kept: then it is hashed).
    mtime_ns: int | None = None


class SyncLedger:
    def __init__(self, data_path: Path) -> None:
        self.path = data_path / LEDGER_FILE
        self._servers: dict[str, dict[str, SyncedFile]] = {}
        self._clock = 0.0
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read the file (blocking). A missing or unreadable ledger is empty: the core then
        forgets its copies and never deletes them, which is the safe side."""
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning(
                "model sync: %s unreadable (%s); starting with no tracked copies", self.path, exc
            )
            return
        servers = data.get("servers") if isinstance(data, dict) else None
        if not isinstance(servers, dict):
            log.warning(
                "model sync: %s holds no server table; starting with no tracked copies", self.path
            )
            return
        for alias, entries in servers.items():
            if not isinstance(entries, dict):
                continue
            for path, raw in entries.items():
                try:
                    entry = SyncedFile(**{**raw, "path": path})
                except TypeError:
                    continue
                self._servers.setdefault(alias, {})[path] = entry
                self._clock = max(self._clock, entry.last_used)

    def _dump(self) -> bytes:
        servers = {
            alias: {
                path: {k: v for k, v in asdict(e).items() if k != "path"}
                for path, e in sorted(entries.items())
            }
            for alias, entries in sorted(self._servers.items())
            if entries
        }
        return json.dumps({"version": 1, "servers": servers}, indent=1).encode()

    async def save(self) -> None:
        async with self._lock:  # one writer at a time; each write has the latest state
            await asyncio.to_thread(atomic_write_bytes, self.path, self._dump(), mode=0o600)

    def tick(self) -> float:
        """A use time later than every one recorded before."""
        self._clock = max(time.time(), self._clock + 1e-6)
        return self._clock

    def entries(self, alias: str) -> list[SyncedFile]:
        """The copies on `alias`, least recently used first."""
        return sorted(self._servers.get(alias, {}).values(), key=lambda e: e.last_used)

    def get(self, alias: str, path: str) -> SyncedFile | None:
        return self._servers.get(alias, {}).get(path)

    def owner(self, path: str) -> str | None:
        """Which server's copy a file is (two servers may share one folder)."""
        return next((a for a, entries in self._servers.items() if path in entries), None)

    def add(self, alias: str, entry: SyncedFile) -> None:
        self._servers.setdefault(alias, {})[entry.path] = entry

    def touch(self, alias: str, path: str) -> bool:
        entry = self.get(alias, path)
        if entry is None:
            return False
        entry.last_used = self.tick()
        return True

    def remove(self, alias: str, path: str) -> None:
        self._servers.get(alias, {}).pop(path, None)

    def rename(self, old: str, new: str) -> None:
        if old in self._servers and old != new:
            self._servers.setdefault(new, {}).update(self._servers.pop(old))

    def used_bytes(self, alias: str) -> int:
        return sum(e.size for e in self._servers.get(alias, {}).values())

    def view(self, alias: str) -> list[dict[str, Any]]:
        # Most recent first; the mtime is the ledger's own bookkeeping, not part of the answer.
        return [
            {k: v for k, v in asdict(e).items() if k != "mtime_ns"}
            for e in reversed(self.entries(alias))
        ]
