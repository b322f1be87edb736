"""Local model library: the LoRA and checkpoint folders, scanned on request.

A scan walks the folder with `os.scandir` in a worker thread: hidden names are skipped, and a
symlink is followed only when it stays inside the folder. Each model file is reported with its
size, modification time and what a Civitai-style sidecar beside it says (name, base model,
trigger words) plus the relative path of a preview image; files are never served from here.

The answer always says whether the feature is on (`configured`) and whether the folder could be
read (`available`, with `error` naming the variable): a missing folder is never an empty list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LORA_EXTENSIONS = frozenset({".safetensors", ".ckpt", ".pt"})
CHECKPOINT_EXTENSIONS = frozenset({".safetensors", ".ckpt", ".gguf"})
# Sidecar metadata, first found wins: Civitai Helper's file, then a plain JSON file.
METADATA_SUFFIXES = (".civitai.info", ".json")
PREVIEW_SUFFIXES = (
    ".preview.png",
    ".preview.jpg",
    ".preview.jpeg",
    ".preview.webp",
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
)
MAX_SIDECAR_BYTES = 4 * 1024 * 1024  # a civitai.info is tens of KB; anything huge is not one


@dataclass(frozen=True)
class LibraryKind:
    variable: str  # the environment variable that configures the folder
    extensions: frozenset[str]


LORAS = LibraryKind("LORA_PATH", LORA_EXTENSIONS)
CHECKPOINTS = LibraryKind("CHECKPOINT_PATH", CHECKPOINT_EXTENSIONS)


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _read_metadata(path: str) -> dict[str, Any] | None:
    try:
        if os.path.getsize(path) > MAX_SIDECAR_BYTES:
            return None
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [w.strip() for w in value if isinstance(w, str) and w.strip()]


def _sidecar(
    folder: str, prefix: str, stem: str, names: dict[str, str], root: str
) -> dict[str, Any] | None:
    """What the files named after `stem` in `folder` say, or None when there are none.

    `names` maps each lower-cased name in the folder to its real spelling."""
    meta_name = next(
        (names[k] for s in METADATA_SUFFIXES if (k := (stem + s).lower()) in names), None
    )
    preview_name = next(
        (names[k] for s in PREVIEW_SUFFIXES if (k := (stem + s).lower()) in names), None
    )
    if meta_name is None and preview_name is None:
        return None
    data: dict[str, Any] = {}
    if meta_name is not None:
        meta_path = os.path.join(folder, meta_name)
        if _inside(os.path.realpath(meta_path), root):
            data = _read_metadata(meta_path) or {}
    raw_model = data.get("model")
    model = raw_model if isinstance(raw_model, dict) else {}
    return {
        "file": prefix + meta_name if meta_name else None,
        # Civitai's model-version JSON: model.name is the model, name is the version.
        "name": _text(model.get("name")) or _text(data.get("name")),
        "baseModel": _text(data.get("baseModel")),
        "trainedWords": _words(data.get("trainedWords")),
        "preview": prefix + preview_name if preview_name else None,
    }


def scan_folder(
    root: Path, extensions: frozenset[str], *, sidecars: bool = True
) -> list[dict[str, Any]]:
    """Every model file under `root` (raises OSError when `root` itself cannot be read).
    `sidecars=False` skips reading metadata files (the model sync index needs only paths)."""
    real_root = os.path.realpath(root)
    items: list[dict[str, Any]] = []
    seen_dirs: set[tuple[int, int]] = set()

    def walk(folder: str, prefix: str, top: bool) -> None:
        try:
            with os.scandir(folder) as listing:
                entries = [e for e in listing if not e.name.startswith(".")]
        except OSError:
            if top:
                raise
            log.info("library: skipping unreadable folder %s", folder)
            return
        names = {e.name.lower(): e.name for e in entries}
        subfolders: list[tuple[str, str]] = []
        for entry in entries:
            try:
                if entry.is_symlink() and not _inside(os.path.realpath(entry.path), real_root):
                    continue  # leads out of the library: not ours to list
                if entry.is_dir():
                    stat = entry.stat()
                    key = (stat.st_dev, stat.st_ino)
                    if key not in seen_dirs:  # a symlink loop or a second way in
                        seen_dirs.add(key)
                        subfolders.append((entry.path, prefix + entry.name + "/"))
                    continue
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() not in extensions or not entry.is_file():
                    continue
                stat = entry.stat()
            except OSError:
                continue  # vanished or unreadable meanwhile
            items.append(
                {
                    "filename": entry.name,
                    "relativePath": prefix + entry.name,
                    "size": stat.st_size,
                    "modified": _iso(stat.st_mtime),
                    "sidecar": (
                        _sidecar(folder, prefix, stem, names, real_root) if sidecars else None
                    ),
                }
            )
        for path, sub_prefix in subfolders:
            walk(path, sub_prefix, False)

    top_stat = os.stat(real_root)
    seen_dirs.add((top_stat.st_dev, top_stat.st_ino))
    walk(real_root, "", True)
    items.sort(key=lambda item: (item["relativePath"].lower(), item["relativePath"]))
    return items


def _scan(root: Path | None, kind: LibraryKind) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "configured": root is not None,
        "root": str(root) if root is not None else None,
        "available": False,
        "error": None,
        "items": [],
        "total": 0,
    }
    if root is None:
        return answer  # the feature is off: the variable is not set
    try:
        if not root.is_dir():
            reason = "does not exist" if not root.exists() else "is not a folder"
            answer["error"] = f"{kind.variable}: {root} {reason}"
            return answer
        items = scan_folder(root, kind.extensions)
    except OSError as exc:
        answer["error"] = f"{kind.variable}: {root} cannot be read ({exc.strerror or exc})"
        return answer
    answer.update(available=True, items=items, total=len(items))
    return answer


async def scan_library(root: Path | None, kind: LibraryKind) -> dict[str, Any]:
    """The library answer for `kind` (off, unavailable with the reason, or the files)."""
    return await asyncio.to_thread(_scan, root, kind)
