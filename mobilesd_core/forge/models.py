"""Matching a job's `checkpoint_name` to the exact title a Forge server reports.

Forge looks names up exactly (case and path separator matter) and silently ignores an override
that matches nothing, so MobileSD resolves the name itself and sends the server's own title.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ForgePermanentError

_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]\s*$")
_MODEL_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".gguf", ".bin", ".sft")


def strip_hash(name: str) -> str:
    return _HASH_SUFFIX.sub("", name).strip()


def normalise_path(name: str) -> str:
    return strip_hash(name).replace("\\", "/").strip("/")


def strip_ext(path: str) -> str:
    lower = path.lower()
    for ext in _MODEL_EXTS:
        if lower.endswith(ext):
            return path[: -len(ext)]
    return path


def model_key(name: str) -> str:
    """One spelling for the same model across servers and requests: path with '/', no hash,
    no extension, lower case ('sd15\\Dream.safetensors [abc123]' -> 'sd15/dream')."""
    return strip_ext(normalise_path(name)).lower()


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class CheckpointInfo:
    title: str
    path: str  # relative path with '/' separators, extension kept
    model_name: str
    hash: str | None
    sha256: str | None

    @classmethod
    def from_forge(cls, item: dict[str, Any]) -> CheckpointInfo:
        title = str(item.get("title", ""))
        return cls(
            title=title,
            path=normalise_path(title),
            model_name=str(item.get("model_name") or ""),
            hash=(item.get("hash") or None),
            sha256=(item.get("sha256") or None),
        )

    @property
    def stem(self) -> str:
        return strip_ext(basename(self.path))


class CheckpointNotFound(ForgePermanentError):
    def __init__(self, name: str, closest: list[str], *, server: str | None = None) -> None:
        where = f" on server '{server}'" if server else ""
        hint = (
            f"; closest: {', '.join(closest)}" if closest else "; the server lists no checkpoints"
        )
        super().__init__(f"checkpoint '{name}' not found{where}{hint}")
        self.name = name
        self.closest = closest


class CheckpointAmbiguous(ForgePermanentError):
    def __init__(self, name: str, matches: list[str]) -> None:
        super().__init__(
            f"checkpoint '{name}' matches several models: {', '.join(matches)}; "
            "give the path, e.g. 'sdxl/model.safetensors'"
        )
        self.matches = matches


def _tiers(wanted: str) -> list[Callable[[CheckpointInfo], bool]]:
    path = normalise_path(wanted)
    no_ext = strip_ext(path)
    base = basename(no_ext)
    hex_like = re.fullmatch(r"[0-9a-fA-F]{8,64}", wanted.strip()) is not None
    lower_path, lower_no_ext = path.lower(), no_ext.lower()
    return [
        lambda c: c.title == wanted,
        lambda c: c.path == path,
        lambda c: strip_ext(c.path) == no_ext,
        lambda c: c.model_name == wanted or c.model_name == no_ext.replace("/", "_"),
        lambda c: "/" not in no_ext and c.stem == base,
        # The server's folder nests the same relative path deeper (a sync folder inside
        # models/Stable-diffusion): 'sdxl/a' names 'mobilesd/sdxl/a.safetensors'.
        lambda c: "/" in no_ext and strip_ext(c.path).endswith("/" + no_ext),
        lambda c: (
            hex_like
            and any(h and h.lower().startswith(wanted.strip().lower()) for h in (c.hash, c.sha256))
        ),
        lambda c: c.path.lower() == lower_path or strip_ext(c.path).lower() == lower_no_ext,
        lambda c: "/" not in no_ext and c.stem.lower() == base.lower(),
    ]


def resolve_checkpoint(
    wanted: str, models: Sequence[CheckpointInfo], *, server: str | None = None
) -> CheckpointInfo:
    """The one model `wanted` names, trying stricter rules first; error naming the closest."""
    for rule in _tiers(wanted):
        matches = [m for m in models if rule(m)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CheckpointAmbiguous(wanted, [m.title for m in matches])
    raise CheckpointNotFound(wanted, closest_titles(wanted, models), server=server)


def closest_titles(wanted: str, models: Sequence[CheckpointInfo], n: int = 3) -> list[str]:
    key = strip_ext(normalise_path(wanted)).lower()
    by_key = {strip_ext(m.path).lower(): m.title for m in models}
    close = difflib.get_close_matches(key, list(by_key), n=n, cutoff=0.3)
    if not close:  # try the file name alone: folders often differ between machines
        stems = {m.stem.lower(): m.title for m in models}
        close_stems = difflib.get_close_matches(basename(key), list(stems), n=n, cutoff=0.3)
        return [stems[s] for s in close_stems]
    return [by_key[k] for k in close]


def title_matches_info(title: CheckpointInfo, info: dict[str, Any]) -> bool:
    """Whether txt2img's `info` says the job ran on this checkpoint."""
    ran_hash = (info.get("sd_model_hash") or "").lower()
    if ran_hash and title.hash:
        return ran_hash == title.hash.lower()[: len(ran_hash)]
    ran_name = info.get("sd_model_name")
    if ran_name:
        return ran_name == title.stem
    return True  # the server did not say; nothing to contradict
