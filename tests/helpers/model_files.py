"""Model files on disk: small safetensors-shaped files with deterministic bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

KB = 1024


def model_bytes(name: str, size: int) -> bytes:
    """A small safetensors-shaped file: header length, JSON header, deterministic data."""
    header = json.dumps({"__metadata__": {"name": name}}).encode()
    data = hashlib.shake_256(name.encode()).digest(size)
    return len(header).to_bytes(8, "little") + header + data


def put(root: Path, relpath: str, size: int = 64 * KB) -> bytes:
    data = model_bytes(relpath, size)
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data
