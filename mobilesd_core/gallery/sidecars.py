"""The JSON sidecar `<stem>.json` beside each image MobileSD saved: what it holds, reading one
MobileSD wrote (never a user's own JSON), and keeping delivery settings out of it."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..durable import FOR_PEOPLE, atomic_write_bytes
from ..schema import DELIVERY_FIELDS
from .files import open_regular

log = logging.getLogger(__name__)

SIDECAR_VERSION = 1
# Only names of this shape are ever deleted as orphan sidecars, so a user's own JSON is safe.
OWN_SIDECAR_RE = re.compile(r"\d{8}-\d{6}_[A-Za-z0-9-]{1,64}_\d{3,}\.json")
# Lists with one item per image: the sidecar keeps only this image's item.
_PER_IMAGE_LISTS = {
    "infotexts": None,
    "all_prompts": "prompt",
    "all_negative_prompts": "negative_prompt",
    "all_hr_prompts": "hr_prompt",
    "all_hr_negative_prompts": "hr_negative_prompt",
}


def read_own_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's data if it is one MobileSD wrote, else None (a user's JSON stays untouched).
    A sidecar that is a link is not read: its data would come from wherever the link points."""
    try:
        with open_regular(path) as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and "mobilesd_job_id" in data and "generation_params" in data:
        return data
    return None


def without_delivery(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """`data` (a sidecar) without delivery settings (webhook URLs: they often hold a key) at its
    top level or in its `job`; None when it holds none. A sidecar keeps what reproduces an image,
    not where news of the job went."""
    job = data.get("job")
    in_job = isinstance(job, Mapping) and not DELIVERY_FIELDS.isdisjoint(job)
    if DELIVERY_FIELDS.isdisjoint(data) and not in_job:
        return None
    cleaned = {key: value for key, value in data.items() if key not in DELIVERY_FIELDS}
    if in_job:
        cleaned["job"] = {k: v for k, v in job.items() if k not in DELIVERY_FIELDS}  # type: ignore[union-attr]
    return cleaned


def sidecar_bytes(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, indent=2, default=str).encode("utf-8")


def public_sidecar(raw: bytes) -> bytes:
    """A sidecar's bytes as they may leave the core (the zip): without delivery settings.
    Sidecars written before they were kept out still hold them; anything that is not a JSON
    object is passed on as it is."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    cleaned = without_delivery(data) if isinstance(data, dict) else None
    return raw if cleaned is None else sidecar_bytes(cleaned)


def scrub_sidecar(path: Path, data: Mapping[str, Any]) -> bool:
    """Rewrite a sidecar that an older version wrote with delivery settings in it (the file is
    world-readable on a share); True when it was. A gallery that cannot be written keeps them
    on disk, and the zip still leaves them out."""
    cleaned = without_delivery(data)
    if cleaned is None:
        return False
    try:
        atomic_write_bytes(path, sidecar_bytes(cleaned), mode=FOR_PEOPLE, sync_folder=False)
    except OSError as exc:
        log.warning("gallery: cannot remove the webhook URL from %s: %s", path.name, exc)
        return False
    return True


def sidecar_info(info: Mapping[str, Any], index: int, seed: int | None) -> dict[str, Any]:
    """Forge's `info` for one image of a batch: per-image lists cut down to this image's item."""
    trimmed = {key: value for key, value in info.items() if key not in _PER_IMAGE_LISTS}
    for key, single in _PER_IMAGE_LISTS.items():
        values = info.get(key)
        if single and isinstance(values, list) and index < len(values):
            trimmed[single] = values[index]
    subseeds = info.get("all_subseeds")
    if isinstance(subseeds, list) and index < len(subseeds):
        trimmed["subseed"] = subseeds[index]
    trimmed["seed"] = seed
    return trimmed
