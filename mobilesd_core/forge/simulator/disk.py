"""Real model folders behind a simulated Forge server (`SimulatorConfig.models_dir`, `lora_dir`).

Forge lists the files under `models/Stable-diffusion` and `models/Lora` when it starts and again
on `/refresh-checkpoints` / `/refresh-loras`, never in between: a file copied there is invisible
until the refresh. The simulator does the same with a real folder, so the core's model sync can
be tested end to end (copy, refresh, generate) against real files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# Forge's model extensions; a temp name like `x.safetensors.part` is not one of them, so a copy
# in progress is never listed (as with the real server).
CHECKPOINT_EXTS = (".safetensors", ".ckpt", ".gguf")
LORA_EXTS = (".safetensors", ".ckpt", ".pt")
_BLOCK = 1024 * 1024


def scan(root: Path, exts: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Relative path (with '/') -> (size, mtime_ns) of every model file under `root`; hidden
    names are skipped. Blocking: call from a thread."""
    found: dict[str, tuple[int, int]] = {}
    if not root.is_dir():
        return found
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(exts):
                continue
            path = Path(folder, name)
            try:
                stat = path.stat()
            except OSError:
                continue
            found[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return found


class FileHasher:
    """sha256 of real files, recomputed only when size or mtime changed."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int], str]] = {}

    def sha256(self, path: Path, stamp: tuple[int, int]) -> str:
        key = str(path)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                digest.update(block)
        value = digest.hexdigest()
        self._cache[key] = (stamp, value)
        return value

    def scan_hashed(self, root: Path, exts: tuple[str, ...]) -> dict[str, str]:
        """Relative path -> sha256 of the model files under `root`. Blocking."""
        out = {}
        for relpath, stamp in scan(root, exts).items():
            try:
                out[relpath] = self.sha256(root / relpath, stamp)
            except OSError:
                continue  # vanished meanwhile
        return out


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors header (what Forge lists as a LoRA's metadata); empty
    for other files or a header that does not read."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size <= 100_000_000:
                return {}
            header = json.loads(fh.read(size))
    except (OSError, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
