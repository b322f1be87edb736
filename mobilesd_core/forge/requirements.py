"""What a job needs from a server besides its checkpoint and LoRAs: modules (VAE, text
encoders), styles, extensions and their models, a refiner checkpoint.

Forge drops each of these without a word when it does not know the name (an unknown style or
module is ignored, an unknown extension model skips the extension), so the names are checked
against the server's own lists before a job goes there. A list the server did not give (an old
build without the route) is unknown: nothing is checked against it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ForgePermanentError
from .models import CheckpointInfo, closest_titles, resolve_checkpoint
from .payload import ServerCatalog

EXTENSIONS = {"adetailer": "ADetailer", "controlnet": "ControlNet"}


@dataclass(frozen=True)
class Need:
    """One name a job needs: `path` is its field (`modules[1]`), `kind` what it is."""

    path: str
    kind: str
    name: str


@dataclass(frozen=True)
class Missing:
    need: Need
    options: tuple[str, ...]
    """What the server offers instead (empty for a missing extension or module list)."""

    def message(self, where: str) -> str:
        need = self.need
        if need.kind == "extension":
            return f"the {need.name} extension is not installed on {where}"
        if need.kind == "module" and not self.options:
            return (
                f"module '{need.name}' cannot be used on {where}: it lists no modules "
                "(no /sdapi/v1/sd-modules or /sd-vae)"
            )
        if need.kind == "refiner checkpoint":  # already the closest titles
            hint = ", ".join(self.options)
        else:
            hint = closest(need.name, self.options)
        return f"{need.kind} '{need.name}' is not on {where}" + (
            f"; closest: {hint}" if hint else ""
        )


def closest(name: str, options: Sequence[str]) -> str:
    found = difflib.get_close_matches(name, list(options), n=3, cutoff=0.4)
    return ", ".join(repr(x) for x in found)


def needs(params: Mapping[str, Any]) -> list[Need]:
    """The names of a job (its `generation_params`) that a server must list."""
    out = [Need(f"modules[{i}]", "module", m) for i, m in enumerate(params.get("modules") or [])]
    out += [Need(f"styles[{i}]", "style", s) for i, s in enumerate(params.get("styles") or [])]
    for field, label in EXTENSIONS.items():
        units = params.get(field) or []
        if units:
            out.append(Need(field, "extension", label))
        for i, unit in enumerate(units):
            if field == "adetailer":
                out.append(Need(f"adetailer[{i}].model", "ADetailer model", unit["model"]))
            else:
                out.append(Need(f"controlnet[{i}].module", "ControlNet module", unit["module"]))
                if unit["model"] != "None":
                    out.append(Need(f"controlnet[{i}].model", "ControlNet model", unit["model"]))
    if params.get("refiner_checkpoint"):
        out.append(Need("refiner_checkpoint", "refiner checkpoint", params["refiner_checkpoint"]))
    return out


def _offered(need: Need, catalog: ServerCatalog) -> list[str] | None:
    if need.kind == "module":
        return catalog.modules if catalog.module_option is not None else []
    return {
        "style": catalog.styles,
        "ADetailer model": catalog.adetailer_models,
        "ControlNet module": catalog.controlnet_modules,
        "ControlNet model": catalog.controlnet_models,
    }.get(need.kind)


def missing(
    wanted: list[Need],
    catalog: ServerCatalog | None,
    checkpoints: list[CheckpointInfo] | None,
) -> list[Missing]:
    """The needs a server is known not to meet (an unknown list meets everything)."""
    out: list[Missing] = []
    absent: set[str] = set()  # extensions the server does not have: their models are moot
    for need in wanted:
        if need.kind == "refiner checkpoint":
            if checkpoints is None:
                continue
            try:
                resolve_checkpoint(need.name, checkpoints)
            except ForgePermanentError:
                out.append(Missing(need, tuple(closest_titles(need.name, checkpoints))))
            continue
        if catalog is None:
            continue
        if need.kind == "extension":
            if catalog.scripts is not None and need.path not in catalog.scripts:
                absent.add(need.path)
                out.append(Missing(need, ()))
            continue
        if need.path.split("[", 1)[0] in absent:
            continue
        offered = _offered(need, catalog)
        if need.kind == "module" and offered == []:
            out.append(Missing(need, ()))
        elif offered is not None and need.name not in offered:
            out.append(Missing(need, tuple(offered)))
    return out


def check(
    params: dict[str, Any],
    catalog: ServerCatalog,
    checkpoints: list[CheckpointInfo] | None,
    server: str,
) -> None:
    """Fail a job the server cannot run as asked, naming what is missing and the closest."""
    found = missing(needs(params), catalog, checkpoints)
    if found:
        where = f"server '{server}'"
        raise ForgePermanentError("; ".join(m.message(where) for m in found))
