"""Checkpoints and LoRAs on the simulated disk, with Forge's titles, hashes and aliases.

Follows `CheckpointInfo` in Forge's `modules/sd_models.py`: the alias list, the title that gains
` [hash]` when a never-hashed file is first loaded, and "last registered wins" for clashes.
Hashes are derived from the path, so they are stable across runs and OS separators.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from typing import Any

MODELS_ROOT = {"/": "/opt/forge/models", "\\": "C:\\forge\\models"}


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def lora_hash(name: str, salt: str = "") -> str:
    """The 12-hex AutoV3 hash Forge shows in `Lora hashes`."""
    return _digest(salt, "lora", name)[:12]


@dataclass
class Checkpoint:
    relpath: str
    """Path under `models/Stable-diffusion`, with `/`."""
    os_sep: str
    full_sha256: str
    hashed: bool
    old_hash: str = field(init=False)

    def __post_init__(self) -> None:
        # A1111's legacy 8-hex hash reads a different slice of the file, so it differs.
        self.old_hash = hashlib.sha256(b"old" + self.full_sha256.encode()).hexdigest()[:8]

    @property
    def name(self) -> str:
        return self.relpath.replace("/", self.os_sep)

    @property
    def basename(self) -> str:
        """`name_for_extra`: file name without extension; `Model:` in the infotext."""
        return posixpath.splitext(posixpath.basename(self.relpath))[0]

    @property
    def model_name(self) -> str:
        return posixpath.splitext(self.relpath.replace("/", "_"))[0]

    @property
    def sha256(self) -> str | None:
        return self.full_sha256 if self.hashed else None

    @property
    def shorthash(self) -> str | None:
        return self.full_sha256[:10] if self.hashed else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.hashed else self.name

    @property
    def filename(self) -> str:
        root = MODELS_ROOT[self.os_sep]
        return self.os_sep.join([root, "Stable-diffusion", self.name])

    @property
    def is_flux(self) -> bool:
        return "flux" in self.relpath.lower()

    def ids(self) -> list[str]:
        ids = [
            self.old_hash,
            self.model_name,
            self.title,
            self.name,
            self.basename,
            f"{self.name} [{self.old_hash}]",
        ]
        if self.hashed:
            short = self.full_sha256[:10]
            ids += [short, self.full_sha256, f"{self.name} [{short}]", f"{self.basename} [{short}]"]
        return ids

    def api_item(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.shorthash,
            "sha256": self.sha256,
            "filename": self.filename,
            "config": None,
        }


class CheckpointRegistry:
    """The checkpoint list Forge serves, and the files on disk it is refreshed from."""

    def __init__(
        self, relpaths: list[str], *, os_sep: str, unhashed: str | None, salt: str
    ) -> None:
        self._os_sep = os_sep
        self._salt = salt
        self._unhashed = self._normalise(unhashed) if unhashed else None
        self._hashed_paths: set[str] = set()
        self.on_disk: list[str] = [self._normalise(p) for p in relpaths]
        # Real files from `SimulatorConfig.models_dir`: relative path -> sha256 of their bytes.
        self.real_files: dict[str, str] = {}
        self._listed: list[Checkpoint] = []
        self._aliases: dict[str, Checkpoint] = {}
        self.refresh()

    @staticmethod
    def _normalise(relpath: str) -> str:
        return relpath.replace("\\", "/").strip("/")

    def _make(self, relpath: str) -> Checkpoint:
        real = self.real_files.get(relpath)
        # A real file is new to this Forge: never hashed until it is first loaded.
        unhashed = relpath == self._unhashed or real is not None
        hashed = not unhashed or relpath in self._hashed_paths
        return Checkpoint(
            relpath, self._os_sep, real or _digest(self._salt, "ckpt", relpath), hashed
        )

    def refresh(self) -> None:
        """`/refresh-checkpoints`: list what is on disk now; a file hashed once stays hashed."""
        paths = [*self.on_disk, *(p for p in self.real_files if p not in self.on_disk)]
        self._listed = [self._make(p) for p in paths]
        self._aliases = {}
        for ckpt in self._listed:
            self._register(ckpt)

    def _register(self, ckpt: Checkpoint) -> None:
        for alias in ckpt.ids():
            self._aliases[alias] = ckpt

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return list(self._listed)

    def lookup(self, name: str | None) -> Checkpoint | None:
        """Exact, case- and separator-sensitive match on any alias, as Forge does."""
        if not isinstance(name, str):
            return None
        return self._aliases.get(name)

    def first(self) -> Checkpoint | None:
        return self._listed[0] if self._listed else None

    def mark_loaded(self, ckpt: Checkpoint) -> None:
        """Forge hashes a file on first load; its title gains ` [hash]`, old ids stay aliases."""
        if ckpt.hashed:
            return
        ckpt.hashed = True
        self._hashed_paths.add(ckpt.relpath)
        self._register(ckpt)

    def add(self, relpath: str, *, pending: bool = False) -> None:
        relpath = self._normalise(relpath)
        if relpath not in self.on_disk:
            self.on_disk.append(relpath)
        if not pending:
            self.refresh()

    def remove(self, ckpt: Checkpoint, *, pending: bool = False) -> None:
        if ckpt.relpath in self.on_disk:
            self.on_disk.remove(ckpt.relpath)
        if not pending:
            self.refresh()


@dataclass(frozen=True)
class Lora:
    name: str
    salt: str = ""
    path: str | None = None
    """A real file (from `lora_dir`): listed with its path, its metadata and its hash."""
    sha256: str | None = None
    metadata: dict[str, Any] | None = None

    @property
    def alias(self) -> str:
        return self.name

    @property
    def hash(self) -> str:
        """`Lora hashes` in the infotext: this Forge writes the first 12 hex digits of the
        file's SHA-256 (`modules/hashes.sha256` ignores its `use_addnet_hash`), not AutoV3."""
        return self.sha256[:12] if self.sha256 else lora_hash(self.name, self.salt)

    def api_item(self, os_sep: str) -> dict[str, Any]:
        if self.path is not None:
            return {
                "name": self.name,
                "alias": self.alias,
                "path": self.path,
                "metadata": self.metadata or {},
            }
        path = os_sep.join([MODELS_ROOT[os_sep], "Lora", f"{self.name}.safetensors"])
        return {
            "name": self.name,
            "alias": self.alias,
            "path": path,
            "metadata": {"ss_output_name": self.name, "sshs_model_hash": self.hash},
        }
