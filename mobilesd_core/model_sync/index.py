"""What the master library holds, kept in memory so routing can ask without touching the disk.

The Router asks on every scheduling pass whether a job's checkpoint or LoRA is in the library
(a server with a sync folder can then run it). Those answers must be dictionary lookups, so the
folders are scanned in a thread at start, after a download, when a job looks unroutable, and in
the background once a lookup finds the scan older than `ttl`.
Names are matched with the same rules as a server's list (forge.models.resolve_checkpoint), so a
job name means the same file here as on a Forge server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..forge.errors import ForgePermanentError
from ..forge.models import CheckpointInfo, model_key, resolve_checkpoint, strip_ext
from ..library import CHECKPOINT_EXTENSIONS, LORA_EXTENSIONS, scan_folder

log = logging.getLogger(__name__)

Kind = Literal["checkpoint", "lora"]
LIBRARY_TTL = 60.0


@dataclass(frozen=True)
class LibraryFile:
    kind: Kind
    relpath: str  # under the library folder, with '/'
    path: Path  # absolute
    size: int

    @property
    def stem(self) -> str:
        return strip_ext(self.relpath.rsplit("/", 1)[-1])

    @property
    def key(self) -> str:
        return model_key(self.relpath)


def listed_as(file: LibraryFile, models: list[CheckpointInfo]) -> CheckpointInfo | None:
    """The server checkpoint that is this library file: the same relative path, or one ending in
    it (the server's folder may nest it deeper), compared without case or extension."""
    key = file.key
    for model in models:
        other = model_key(model.path)
        if other == key or other.endswith("/" + key):
            return model
    return None


class LibraryIndex:
    def __init__(
        self, checkpoint_root: Path | None, lora_root: Path | None, *, ttl: float = LIBRARY_TTL
    ) -> None:
        self.roots: dict[Kind, Path | None] = {"checkpoint": checkpoint_root, "lora": lora_root}
        self.ttl = ttl
        self.files: dict[Kind, list[LibraryFile]] = {"checkpoint": [], "lora": []}
        self._infos: list[tuple[CheckpointInfo, LibraryFile]] = []
        self._loras: dict[str, list[LibraryFile]] = {}
        self._checkpoint_cache: dict[str, LibraryFile | None] = {}
        self._scanned_at = 0.0
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    @property
    def configured(self) -> bool:
        return any(self.roots.values())

    async def refresh(self) -> None:
        """Scan both folders again (in a thread); an unreadable folder counts as empty."""
        async with self._lock:
            scanned = await asyncio.to_thread(self._scan)
            self._install(scanned)

    def _scan(self) -> dict[Kind, list[LibraryFile]]:
        out: dict[Kind, list[LibraryFile]] = {"checkpoint": [], "lora": []}
        kinds: dict[Kind, frozenset[str]] = {
            "checkpoint": CHECKPOINT_EXTENSIONS,
            "lora": LORA_EXTENSIONS,
        }
        for kind, extensions in kinds.items():
            root = self.roots[kind]
            if root is None:
                continue
            try:
                items = scan_folder(root, extensions, sidecars=False)
            except OSError as exc:
                log.info("model sync: cannot read the %s library %s (%s)", kind, root, exc)
                continue
            out[kind] = [
                LibraryFile(kind, i["relativePath"], root / i["relativePath"], i["size"])
                for i in items
            ]
        return out

    def _install(self, scanned: dict[Kind, list[LibraryFile]]) -> None:
        self.files = scanned
        self._infos = [
            (
                CheckpointInfo(
                    title=f.relpath,
                    path=f.relpath,
                    model_name=strip_ext(f.relpath).replace("/", "_"),
                    hash=None,
                    sha256=None,
                ),
                f,
            )
            for f in scanned["checkpoint"]
        ]
        self._loras = {}
        for lora in scanned["lora"]:
            self._loras.setdefault(lora.stem, []).append(lora)
        self._checkpoint_cache = {}
        self._scanned_at = time.monotonic()

    def _refresh_if_stale(self) -> None:
        if not self.configured or time.monotonic() - self._scanned_at < self.ttl:
            return
        if self._background is None or self._background.done():
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule on
                self._background = asyncio.get_running_loop().create_task(self.refresh())

    def checkpoint(self, name: str) -> LibraryFile | None:
        """The library checkpoint a job's `checkpoint_name` names; None when none or several."""
        self._refresh_if_stale()
        if name in self._checkpoint_cache:
            return self._checkpoint_cache[name]
        found: LibraryFile | None = None
        if self._infos:
            try:
                info = resolve_checkpoint(name, [i for i, _ in self._infos])
            except ForgePermanentError:  # not found or ambiguous
                info = None
            if info is not None:
                found = next(f for i, f in self._infos if i is info)
        self._checkpoint_cache[name] = found
        return found

    def lora(self, name: str) -> LibraryFile | None:
        """The library LoRA whose file stem is `name` (Forge's LoRA name); None when none or
        several (two folders holding the same name: which one Forge would pick is unclear)."""
        self._refresh_if_stale()
        # Exact, as Forge looks LoRA names up: a copy under another spelling would not match.
        found = self._loras.get(name)
        return found[0] if found and len(found) == 1 else None
