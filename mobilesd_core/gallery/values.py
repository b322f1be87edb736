"""Loosely typed values read from sidecars, infotexts and Forge's `info`, made exact."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

_MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".gguf", ".sft", ".bin")


def iso(moment: datetime) -> str:
    # One fixed format for every `created`, so plain string order is time order in the index.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def model_name_from_title(title: Any) -> str | None:
    """`sdxl/juggernautXL_v9.safetensors [a1b2c3d4e5]` -> `juggernautXL_v9`, like sd_model_name."""
    if not isinstance(title, str) or not title.strip():
        return None
    name = re.sub(r"\s*\[[0-9a-fA-F]+\]\s*$", "", title.strip())
    name = re.split(r"[/\\]", name)[-1]
    for ext in _MODEL_EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name or None
