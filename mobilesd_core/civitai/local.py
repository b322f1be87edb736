"""Finding a Civitai resource among the local model files: by hash first, then by name.

Hashes come, cheapest first, from the hash cache, from the Civitai sidecar beside the file
(`<stem>.civitai.info`: the model-version JSON whose `files[].hashes` name this file), and only
then from hashing the files not known yet (once; cached). Names are compared without extension
and case, with the file stem and with the sidecar's model name.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..forge.models import strip_ext
from ..library import MAX_SIDECAR_BYTES, LibraryKind, scan_folder
from .hashes import MIN_MATCH, FileHashes, HashCache

MatchKind = Literal["hash", "name"]


@dataclass
class LocalFile:
    relative_path: str
    path: Path
    stem: str
    model_name: str | None
    sidecar_hashes: list[str] = field(default_factory=list)
    hashes: FileHashes | None = None

    def hash_matches(self, given: str | None) -> bool:
        if self.hashes is not None and self.hashes.matches(given):
            return True
        wanted = (given or "").strip().lower()
        if len(wanted) < MIN_MATCH:
            return False
        for known in self.sidecar_hashes:
            short, long = sorted((known, wanted), key=len)
            if len(short) >= MIN_MATCH and long.startswith(short):
                return True
        return False


def _sidecar_hashes(root: Path, item: dict[str, Any]) -> list[str]:
    """The hashes the Civitai sidecar gives for this file (its `files[]` entry by name, else
    the primary model file)."""
    sidecar = item.get("sidecar") or {}
    name = sidecar.get("file")
    if not name or not str(name).endswith(".civitai.info"):
        return []
    path = root / name
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            return []
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    files = (
        [f for f in data.get("files") or [] if isinstance(f, dict)]
        if isinstance(data, dict)
        else []
    )
    chosen = next((f for f in files if f.get("name") == item["filename"]), None)
    chosen = chosen or next((f for f in files if f.get("primary")), None)
    hashes = (chosen or {}).get("hashes") or {}
    if not isinstance(hashes, dict):
        return []
    return [str(v).lower() for k, v in hashes.items() if k in ("SHA256", "AutoV2", "AutoV3") and v]


class LocalModels:
    """One kind of local model folder, loaded for one import."""

    def __init__(self, root: Path | None, kind: LibraryKind, cache: HashCache) -> None:
        self.root = root
        self.kind = kind
        self.cache = cache
        self.files: list[LocalFile] = []
        self._hashed_all = False

    @property
    def configured(self) -> bool:
        return self.root is not None

    async def load(self) -> LocalModels:
        if self.root is None:
            return self
        root = self.root
        cache = self.cache

        def work() -> list[LocalFile]:
            try:
                items = scan_folder(root, self.kind.extensions)
            except OSError:
                return []
            files = []
            for item in items:
                path = root / item["relativePath"]
                sidecar = item.get("sidecar") or {}
                files.append(
                    LocalFile(
                        relative_path=item["relativePath"],
                        path=path,
                        stem=strip_ext(item["filename"]),
                        model_name=sidecar.get("name"),
                        sidecar_hashes=_sidecar_hashes(root, item),
                    )
                )
            known = cache.known([f.path for f in files])
            for f in files:
                f.hashes = known.get(f.path)
            return files

        self.files = await asyncio.to_thread(work)
        return self

    async def _hash_the_rest(self) -> None:
        if self._hashed_all:
            return
        self._hashed_all = True
        todo = [f for f in self.files if f.hashes is None]
        if todo:
            computed = await self.cache.compute([f.path for f in todo])
            for f in todo:
                f.hashes = computed.get(f.path)

    async def find(self, hashes: list[str], names: list[str]) -> tuple[LocalFile, MatchKind] | None:
        """The local file these hashes (any kind) or names denote; hash first."""
        wanted = [h for h in hashes if h and len(h.strip()) >= MIN_MATCH]
        if wanted:
            for attempt in range(2):
                for f in self.files:
                    if any(f.hash_matches(h) for h in wanted):
                        return f, "hash"
                if attempt == 0:
                    await self._hash_the_rest()
        keys = {_name_key(n) for n in names if n and _name_key(n)}
        for f in self.files:
            if _name_key(f.stem) in keys:
                return f, "name"
        for f in self.files:
            if f.model_name and _name_key(f.model_name) in keys:
                return f, "name"
        return None


def _name_key(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return strip_ext(base).strip().lower()


def lora_name(f: LocalFile) -> str:
    """The name Forge lists a LoRA under: its file stem."""
    return os.path.basename(f.stem)
