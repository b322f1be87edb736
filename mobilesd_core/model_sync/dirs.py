"""Checks of a server's sync folders when the API sets them (422 naming the field).

The schema already insists on an absolute path without '..'. Here the folder must exist, be a
folder and be writable, and must not be one of the core's own folders: the library itself (a
server reading the library needs no sync, and the core would then be copying a file onto
itself), or CONFIG_DATA_PATH / the gallery.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Settings
from ..schema import FieldProblem, ServerConfig

SYNC_FIELDS = ("checkpoint_dir", "lora_dir")


def _overlaps(path: str, root: Path | None) -> bool:
    if root is None:
        return False
    real_root = os.path.realpath(root)
    return (
        path == real_root
        or path.startswith(real_root.rstrip(os.sep) + os.sep)
        or (real_root.startswith(path.rstrip(os.sep) + os.sep))
    )


def check_dirs(config: ServerConfig, settings: Settings, fields: set[str]) -> list[FieldProblem]:
    """Problems with the sync folders named in `fields` (blocking: stat calls)."""
    problems = []
    own = {
        "CHECKPOINT_PATH (the library)": settings.checkpoint_path,
        "LORA_PATH (the library)": settings.lora_path,
        "CONFIG_DATA_PATH": settings.data_path,
        "STABLE_DIFFUSION_SAVE_PATH": settings.gallery_path,
    }
    for name in SYNC_FIELDS:
        value = getattr(config, name)
        if value is None or name not in fields:
            continue
        path = Path(value)
        message = None
        if not path.exists():
            message = f"folder {value} does not exist"
        elif not path.is_dir():
            message = f"{value} is not a folder"
        elif not os.access(path, os.W_OK | os.X_OK):
            message = f"folder {value} is not writable by the core (uid {os.getuid()})"
        else:
            real = os.path.realpath(path)
            clash = next((label for label, root in own.items() if _overlaps(real, root)), None)
            if clash:
                message = f"folder {value} overlaps {clash}: one holds the other"
        if message:
            problems.append(FieldProblem(path=name, message=message))
    if (
        config.checkpoint_dir
        and config.checkpoint_dir == config.lora_dir
        and {"checkpoint_dir", "lora_dir"} & fields
    ):
        problems.append(FieldProblem(path="lora_dir", message="must differ from checkpoint_dir"))
    return problems
