"""A Civitai image's generation data turned into `generation_params` for a local Forge.

Civitai's flat `meta` (docs/civitai.md, "Image import") follows A1111's infotext with looser types:
numbers may be strings, the sampler may carry the scheduler ("DPM++ 2M Karras"), LoRAs sit in
the prompt as `<lora:name:weight>` tags, hashes name the files used. The mapping never fails on
a value that is merely out of range: it clamps, rounds to what our schema accepts, and says so
in `warnings`, so the person reviewing the form sees what changed.

Resources (checkpoint, LoRAs) are matched to the local library by hash first, then by name;
those not found locally are listed as `missing` with the model version to download.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..library import CHECKPOINTS, LORAS
from ..schema import SEED_MAX, FieldProblem, GenerationParams, InvalidInput, problems_from_error
from .client import CivitaiClient, CivitaiError
from .local import LocalModels, lora_name

log = logging.getLogger(__name__)

# Forge's scheduler labels (modules/sd_schedulers.py), longest first so "SGM Uniform" wins
# over "Uniform" when split off a combined sampler name.
SCHEDULER_LABELS = sorted(
    [
        "Automatic",
        "Uniform",
        "Karras",
        "Exponential",
        "Polyexponential",
        "SGM Uniform",
        "KL Optimal",
        "Align Your Steps",
        "Simple",
        "Normal",
        "DDIM",
        "Beta",
        "Turbo",
        "Align Your Steps GITS",
        "Align Your Steps 11",
        "Align Your Steps 32",
    ],
    key=len,
    reverse=True,
)
_SCHEDULER_BY_LOWER = {s.lower().replace(" ", "_"): s for s in SCHEDULER_LABELS}
_SCHEDULER_BY_LOWER.update({"sgmuniform": "SGM Uniform", "sgm_uniform": "SGM Uniform"})
# ComfyUI sampler names (on-site and Comfy workflows) -> Forge's.
COMFY_SAMPLERS = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpm_fast": "DPM fast",
    "dpm_adaptive": "DPM adaptive",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
    "lcm": "LCM",
}
LORA_TYPES = frozenset({"lora", "locon", "dora", "lycoris"})
_LORA_TAG = re.compile(r"<(?:lora|lyco):([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.I)


def number(value: Any) -> float | None:
    """A number from meta, where numbers may be strings ("7", "7.5", " 30 ")."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def split_sampler(sampler: str | None, schedule_type: str | None) -> tuple[str, str | None]:
    """Forge's (sampler, scheduler) from Civitai's `sampler` and `Schedule type`."""
    name = (sampler or "").strip()
    scheduler = None
    comfy = COMFY_SAMPLERS.get(name.lower())
    if comfy:
        name = comfy
    else:
        for label in SCHEDULER_LABELS:
            if name.lower().endswith(" " + label.lower()):
                name, scheduler = name[: -len(label) - 1].strip(), label
                break
    if schedule_type:
        given = str(schedule_type).strip()
        scheduler = _SCHEDULER_BY_LOWER.get(given.lower().replace(" ", "_"), given) or scheduler
    if scheduler == "Automatic":
        scheduler = None
    return name or "Euler", scheduler


def take_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float | None]]]:
    """The prompt without its `<lora:name:weight>` tags, and the tags' (name, weight)."""
    tags = [(m.group(1).strip(), number(m.group(2))) for m in _LORA_TAG.finditer(prompt)]
    clean = _LORA_TAG.sub(" ", prompt)
    clean = re.sub(r"[ \t]+", " ", clean)
    clean = re.sub(r"\s*,(\s*,)+", ",", clean)  # "a, <lora:x:1>, b" leaves "a, , b"
    clean = re.sub(r" +\n|\n +", "\n", clean).strip().strip(",").strip()
    return clean, tags


@dataclass
class Resource:
    """A model the image used, as far as it is known, and where it is locally."""

    type: str  # checkpoint | lora | other
    name: str | None = None
    weight: float | None = None
    hashes: list[str] = field(default_factory=list)
    model_version_id: int | None = None
    model_id: int | None = None
    model_name: str | None = None
    version_name: str | None = None
    model_type: str | None = None
    base_model: str | None = None
    file_names: list[str] = field(default_factory=list)
    local_path: str | None = None
    local_name: str | None = None
    matched_by: str | None = None

    def apply_version(self, version: dict[str, Any]) -> None:
        raw_model = version.get("model")
        model = raw_model if isinstance(raw_model, dict) else {}
        self.model_version_id = _int(version.get("id")) or self.model_version_id
        self.model_id = _int(version.get("modelId")) or self.model_id
        self.model_name = model.get("name") or self.model_name
        self.version_name = version.get("name") or self.version_name
        self.model_type = model.get("type") or self.model_type
        self.base_model = version.get("baseModel") or self.base_model
        for f in version.get("files") or []:
            if not isinstance(f, dict) or f.get("type") not in (None, "Model", "Pruned Model"):
                continue
            if f.get("name"):
                self.file_names.append(str(f["name"]))
            for key in ("SHA256", "AutoV2", "AutoV3"):
                value = (f.get("hashes") or {}).get(key)
                if value and str(value).lower() not in self.hashes:
                    self.hashes.append(str(value).lower())
        if self.type == "other" and self.model_type:
            self.type = _kind(self.model_type)

    @property
    def downloadable(self) -> bool:
        return self.model_version_id is not None and self.type in ("checkpoint", "lora")

    def view(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "weight": self.weight,
            "hash": self.hashes[0] if self.hashes else None,
            "model_version_id": self.model_version_id,
            "model_id": self.model_id,
            "model_name": self.model_name,
            "version_name": self.version_name,
            "model_type": self.model_type,
            "base_model": self.base_model,
            "local": (
                {"relative_path": self.local_path, "matched_by": self.matched_by}
                if self.local_path
                else None
            ),
            "downloadable": self.downloadable,
        }


def _int(value: Any) -> int | None:
    n = number(value)
    return int(n) if n is not None and n.is_integer() and n > 0 else None


def _kind(civitai_type: str) -> str:
    lowered = civitai_type.lower()
    if lowered in ("checkpoint", "model"):
        return "checkpoint"
    if lowered in LORA_TYPES:
        return "lora"
    return "other"


def wanted_resources(
    meta: dict[str, Any], tags: list[tuple[str, float | None]]
) -> tuple[Resource | None, list[Resource], list[Resource], list[int]]:
    """What the meta names: (checkpoint, LoRAs, others, model version ids still to look up)."""
    raw_hashes = meta.get("hashes")
    hashes = raw_hashes if isinstance(raw_hashes, dict) else {}
    checkpoint: Resource | None = None
    model_hash = meta.get("Model hash") or hashes.get("model")
    if meta.get("Model") or model_hash:
        checkpoint = Resource("checkpoint", name=_text(meta.get("Model")))
        for h in (model_hash, hashes.get("model")):
            if h and str(h).lower() not in checkpoint.hashes:
                checkpoint.hashes.append(str(h).lower())
    loras: dict[str, Resource] = {}
    for name, weight in tags:
        lora = loras.setdefault(name.lower(), Resource("lora", name=name))
        lora.weight = weight if weight is not None else 1.0
    for key, value in hashes.items():
        if isinstance(key, str) and key.lower().startswith(("lora:", "lyco:")) and value:
            name = key.split(":", 1)[1]
            lora = loras.setdefault(name.lower(), Resource("lora", name=name, weight=1.0))
            lora.hashes.append(str(value).lower())
    others: list[Resource] = []
    for item in meta.get("resources") or []:
        if not isinstance(item, dict):
            continue
        kind = _kind(str(item.get("type") or ""))
        item_name, h = _text(item.get("name")), _text(item.get("hash"))
        if kind == "lora" and item_name:
            lora = loras.setdefault(item_name.lower(), Resource("lora", name=item_name))
            if lora.weight is None:
                lora.weight = number(item.get("weight")) or 1.0
            if h and h.lower() not in lora.hashes:
                lora.hashes.append(h.lower())
        elif kind == "checkpoint":
            checkpoint = checkpoint or Resource("checkpoint", name=item_name)
            if h and h.lower() not in checkpoint.hashes:
                checkpoint.hashes.append(h.lower())
    version_ids = []
    for item in meta.get("civitaiResources") or []:
        if isinstance(item, dict) and _int(item.get("modelVersionId")):
            version_ids.append(_int(item.get("modelVersionId")))
    return checkpoint, list(loras.values()), others, [v for v in version_ids if v]


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _weights(meta: dict[str, Any]) -> dict[int, float]:
    out = {}
    for item in meta.get("civitaiResources") or []:
        if isinstance(item, dict) and _int(item.get("modelVersionId")):
            w = number(item.get("weight") if "weight" in item else item.get("strength"))
            if w is not None:
                out[_int(item["modelVersionId"]) or 0] = w
    return out


def _same(a: Resource, b: Resource) -> bool:
    names = {n.lower() for n in [a.name, *(_stem(f) for f in a.file_names)] if n}
    other = {n.lower() for n in [b.name, *(_stem(f) for f in b.file_names)] if n}
    if names & other:
        return True
    return any(
        x.startswith(y) or y.startswith(x)
        for x in a.hashes
        for y in b.hashes
        if min(len(x), len(y)) >= 8
    )


def _stem(filename: str) -> str:
    return filename.rsplit(".", 1)[0] if "." in filename else filename


def _clamp(
    value: float | None, lo: float, hi: float, name: str, warnings: list[str]
) -> float | None:
    if value is None:
        return None
    if value < lo or value > hi:
        clamped = min(max(value, lo), hi)
        warnings.append(f"{name} {value:g} is outside {lo:g}..{hi:g}; set to {clamped:g}")
        return clamped
    return value


def _size(meta: dict[str, Any], item: dict[str, Any]) -> tuple[float | None, float | None]:
    size = meta.get("Size")
    if isinstance(size, str) and "x" in size.lower():
        w, _, h = size.lower().partition("x")
        if number(w) and number(h):
            return number(w), number(h)
    if number(meta.get("width")) and number(meta.get("height")):
        return number(meta.get("width")), number(meta.get("height"))
    return number(item.get("width")), number(item.get("height"))


def _edge(value: float | None, name: str, warnings: list[str]) -> int | None:
    if value is None:
        return None
    fixed = int(min(max(round(value / 8) * 8, 64), 4096))
    if fixed != value:
        warnings.append(f"{name} {value:g} is not a multiple of 8 in 64..4096; set to {fixed}")
    return fixed


def build_params(
    meta: dict[str, Any],
    item: dict[str, Any],
    prompt: str,
    checkpoint: Resource | None,
    loras: list[Resource],
    warnings: list[str],
) -> GenerationParams:
    params: dict[str, Any] = {"prompt": prompt}
    negative = meta.get("negativePrompt") or meta.get("Negative prompt")
    if isinstance(negative, str):
        params["negative_prompt"] = negative.strip()[:20_000]
    seed = number(meta.get("seed") if "seed" in meta else meta.get("Seed"))
    if seed is not None:
        if seed.is_integer() and -1 <= seed <= SEED_MAX:
            params["seed"] = int(seed)
        else:
            warnings.append(f"seed {seed:g} is not usable by Forge; a random seed is used")
    steps = _clamp(number(meta.get("steps") or meta.get("Steps")), 1, 150, "steps", warnings)
    if steps is not None:
        params["steps"] = round(steps)
    cfg = _clamp(number(meta.get("cfgScale") or meta.get("CFG scale")), 0, 30, "CFG", warnings)
    if cfg is not None:
        params["cfg_scale"] = cfg
    distilled = number(meta.get("Distilled CFG Scale"))
    if distilled is not None:
        params["distilled_cfg_scale"] = _clamp(distilled, 0, 30, "distilled CFG", warnings)
    sampler, scheduler = split_sampler(
        _text(meta.get("sampler")) or _text(meta.get("Sampler")),
        _text(meta.get("Schedule type")) or _text(meta.get("scheduler")),
    )
    params["sampler_name"] = sampler[:128]
    if scheduler:
        params["scheduler"] = scheduler[:128]
    width, height = _size(meta, item)
    for name, value in (("width", width), ("height", height)):
        edge = _edge(value, name, warnings)
        if edge is not None:
            params[name] = edge
    clip = number(meta.get("clipSkip") or meta.get("Clip skip"))
    if clip is not None:
        params["clip_skip"] = round(_clamp(clip, 1, 12, "clip skip", warnings) or 1)
    hires_scale = number(meta.get("Hires upscale") or meta.get("hiresUpscale"))
    if hires_scale is not None:
        params["hires"] = {
            "scale": _clamp(hires_scale, 1, 4, "hires upscale", warnings),
            "steps": round(
                _clamp(number(meta.get("Hires steps")) or 0, 0, 150, "hires steps", warnings) or 0
            ),
            "upscaler": _text(meta.get("Hires upscaler")) or "Latent",
            "denoising_strength": _clamp(
                number(meta.get("Denoising strength")) or 0.7, 0, 1, "denoising", warnings
            ),
        }
    if checkpoint is not None:
        checkpoint_name = (
            checkpoint.local_path
            or checkpoint.name
            or (_stem(checkpoint.file_names[0]) if checkpoint.file_names else None)
        )
        if checkpoint_name:
            params["checkpoint_name"] = checkpoint_name[:512]
    specs = []
    for lora in loras[:32]:
        lora_name = (
            lora.local_name or lora.name or (_stem(lora.file_names[0]) if lora.file_names else None)
        )
        if not lora_name:
            continue
        name = re.sub(r"[<>:\n]", "_", lora_name)[:255]
        weight = _clamp(lora.weight if lora.weight is not None else 1.0, -5, 5, "weight", warnings)
        specs.append({"name": name, "weight": weight})
    params["loras"] = specs
    try:
        return GenerationParams.model_validate(params)
    except ValidationError as exc:
        raise InvalidInput(
            problems_from_error(exc, prefix="generation_params", model=GenerationParams),
            "the image's generation data does not fit MobileSD's parameters",
        ) from None


class ImageImporter:
    """`image_info(image_id)`: the answer of POST /api/v1/civitai/image-info."""

    def __init__(self, client: CivitaiClient, loras: LocalModels, checkpoints: LocalModels) -> None:
        self.client = client
        self.loras = loras
        self.checkpoints = checkpoints

    async def image_info(self, image_id: int) -> dict[str, Any]:
        item = await self.client.image(image_id)
        if item is None:
            raise CivitaiError(
                f"Civitai has no image {image_id} (it may have been deleted, or be hidden from "
                "the public API)",
                code="civitai_image_not_found",
                status=404,
            )
        meta = item.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("meta"), dict):
            meta = meta["meta"]  # the nested form, should flatMeta ever be ignored
        if not isinstance(meta, dict) or not meta:
            raise CivitaiError(
                f"Civitai image {image_id} has no generation data: its creator did not share it, "
                "or the tool that made it did not record it",
                code="civitai_no_meta",
                status=422,
            )
        raw_prompt = meta.get("prompt")
        prompt, tags = take_lora_tags(raw_prompt if isinstance(raw_prompt, str) else "")
        if not prompt:
            raise InvalidInput(
                [FieldProblem(path="prompt", message="the image's generation data has no prompt")],
                f"Civitai image {image_id} has no prompt in its generation data",
            )
        warnings: list[str] = []
        checkpoint, loras, others, version_ids = wanted_resources(meta, tags)
        weights = _weights(meta)
        await self._add_civitai_resources(version_ids, weights, checkpoint, loras, others)
        checkpoint = checkpoint or next((r for r in others if r.type == "checkpoint"), None)
        others = [r for r in others if r is not checkpoint and r.type != "lora"]
        await self._locate(checkpoint, loras)
        await self._look_up_missing([r for r in [checkpoint, *loras] if r is not None])
        params = build_params(meta, item, prompt[:20_000], checkpoint, loras, warnings)
        resources = [r for r in [checkpoint, *loras, *others] if r is not None]
        if checkpoint is not None and checkpoint.local_path is None:
            warnings.append(
                f"checkpoint {checkpoint.name or checkpoint.model_name} is not in "
                "CHECKPOINT_PATH: download it below, or pick another"
            )
        return {
            "image": {
                "id": image_id,
                "url": item.get("url") if isinstance(item.get("url"), str) else None,
                "width": _int(item.get("width")),
                "height": _int(item.get("height")),
                "base_model": _text(item.get("baseModel")),
            },
            "generation_params": params.model_dump(mode="json"),
            "resources": [r.view() for r in resources],
            "missing": [r.view() for r in resources if r.local_path is None],
            "warnings": warnings,
        }

    async def _versions(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        async def one(v: int) -> tuple[int, dict[str, Any] | None]:
            try:
                return v, await self.client.model_version(v)
            except CivitaiError as exc:
                log.info("civitai: model version %d: %s", v, exc.message)
                return v, None

        found = await asyncio.gather(*(one(v) for v in dict.fromkeys(ids)))
        return {v: data for v, data in found if isinstance(data, dict)}

    async def _add_civitai_resources(
        self,
        ids: list[int],
        weights: dict[int, float],
        checkpoint: Resource | None,
        loras: list[Resource],
        others: list[Resource],
    ) -> None:
        """On-site generations name their resources by model version: fetch each, and merge
        it with what the prompt and hashes already named."""
        versions = await self._versions(ids)
        for v in ids:
            version = versions.get(v)
            resource = Resource("other", model_version_id=v, weight=weights.get(v))
            if version is None:
                others.append(resource)
                continue
            resource.apply_version(version)
            resource.name = _stem(resource.file_names[0]) if resource.file_names else None
            if resource.type == "checkpoint" and checkpoint is not None:
                checkpoint.apply_version(version)
                continue
            if resource.type == "lora":
                same = next((lo for lo in loras if _same(lo, resource)), None)
                if same is not None:
                    same.apply_version(version)
                    if same.weight is None:
                        same.weight = resource.weight
                    continue
                resource.weight = resource.weight if resource.weight is not None else 1.0
                loras.append(resource)
                continue
            others.append(resource)

    async def _locate(self, checkpoint: Resource | None, loras: list[Resource]) -> None:
        if checkpoint is not None:
            await self.checkpoints.load()
            found = await self.checkpoints.find(
                checkpoint.hashes, [checkpoint.name or "", *checkpoint.file_names]
            )
            if found:
                checkpoint.local_path, checkpoint.matched_by = found[0].relative_path, found[1]
        if loras:
            await self.loras.load()
            for lora in loras:
                found = await self.loras.find(lora.hashes, [lora.name or "", *lora.file_names])
                if found:
                    lora.local_path, lora.matched_by = found[0].relative_path, found[1]
                    lora.local_name = lora_name(found[0])

    async def _look_up_missing(self, resources: list[Resource]) -> None:
        """For what is missing locally, find the model version to download by hash."""

        async def one(resource: Resource) -> None:
            for h in resource.hashes:
                try:
                    version = await self.client.by_hash(h)
                except CivitaiError as exc:
                    log.info("civitai: by-hash lookup failed: %s", exc.message)
                    return
                if isinstance(version, dict):
                    resource.apply_version(version)
                    return

        todo = [r for r in resources if r.local_path is None and r.model_version_id is None]
        await asyncio.gather(*(one(r) for r in todo))


def new_importer(client: CivitaiClient, settings: Any, cache: Any) -> ImageImporter:
    return ImageImporter(
        client,
        LocalModels(settings.lora_path, LORAS, cache),
        LocalModels(settings.checkpoint_path, CHECKPOINTS, cache),
    )
