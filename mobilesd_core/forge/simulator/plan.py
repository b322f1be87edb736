"""A txt2img request resolved against the server: what runs, and what Forge reports about it.

Pure functions, no timing: sampler/scheduler/LoRA fallbacks, seeds, the checks Forge fails with
after the model load, the per-image infotext and the `info` object of the response.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from mobilesd_core.forge.infotext import quote

from .catalog import (
    HR_UPSCALERS,
    Sampler,
    apply_styles,
    effective_schedule_type,
    lora_names,
    resolve_sampler,
)
from .models import Checkpoint, Lora
from .request import Txt2ImgRequest, forge_500

log = logging.getLogger("mobilesd.forge.simulator")

MAX_PIXELS = 4096 * 4096
_NEEDED = ("steps", "width", "height", "batch_size", "n_iter", "cfg_scale")


@dataclass
class Plan:
    req: Txt2ImgRequest
    checkpoint: Checkpoint
    sampler: Sampler
    scheduler: str
    """Label after fallbacks; `Automatic` means the sampler's own default."""
    steps: int
    width: int
    height: int
    batch_size: int
    n_iter: int
    cfg_scale: float
    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    subseeds: list[int]
    loras: dict[str, Lora]
    clip_skip: int
    hr_size: tuple[int, int] | None = None
    hr_steps: int = 0
    extra_params: dict[str, Any] = field(default_factory=dict)
    img2img: bool = False
    script_params: dict[str, Any] = field(default_factory=dict)
    """What always-on scripts wrote (`process` runs before `init`: first among the extras)."""
    img2img_params: dict[str, Any] = field(default_factory=dict)
    """What img2img's `init()` wrote ("Mask blur", "Inpaint area", ...)."""
    modules: list[str] = field(default_factory=list)
    """`forge_additional_modules` (full paths) the job ran with: "Module N" in the infotext."""
    low_bits: str | None = None
    """`forge_unet_storage_dtype` unless Automatic: "Diffusion in Low Bits"."""
    extensions: list[str] = field(default_factory=list)
    """Always-on extensions that really ran."""
    init_images: list[Any] = field(default_factory=list)
    """img2img: the decoded init images (PIL)."""
    inpaint: Any = None
    """img2img: its `img2img.Inpaint` (mask handling); None for txt2img."""

    @property
    def sampling_steps(self) -> int:
        """Steps the sampler runs: img2img does `int(min(denoising, 0.999) * steps) + 1`
        (`setup_img2img_steps`, without `img2img_fix_steps`)."""
        if not self.img2img:
            return self.steps
        strength = min(float(self.req.denoising_strength or 0.0), 0.999)
        return int(strength * self.steps) + 1

    @property
    def denoising_strength(self) -> float | None:
        if self.img2img or self.hr_size is not None:
            return self.req.denoising_strength
        return None

    @property
    def schedule_type(self) -> str | None:
        return self.extra_params.get("Schedule type")


def make_plan(
    req: Txt2ImgRequest,
    checkpoint: Checkpoint,
    *,
    loras_by_alias: dict[str, Lora],
    clip_skip: int,
    rng: random.Random,
    server_name: str = "sim",
    styles: list[dict[str, Any]] | None = None,
    img2img: bool = False,
) -> Plan:
    """Raises Forge's 500 for what fails once the model is loaded (nulls, hires mistakes)."""
    for name in _NEEDED:
        if getattr(req, name) is None:
            raise forge_500(
                "TypeError", f"unsupported operand type(s) for *: 'NoneType' and 'int' ({name})"
            )
    steps, width, height = int(req.steps or 0), int(req.width or 0), int(req.height or 0)
    batch_size, n_iter = int(req.batch_size or 0), int(req.n_iter or 0)
    if steps < 1:
        raise forge_500("IndexError", "index 0 is out of bounds for dimension 0 with size 0")
    if width < 8 or height < 8 or batch_size < 1 or n_iter < 1:
        raise forge_500("RuntimeError", "cannot reshape tensor of 0 elements")

    extra: dict[str, Any] = {}
    hr_size: tuple[int, int] | None = None
    hr_steps = 0
    if req.enable_hr and not img2img:
        if req.hr_upscaler is not None and req.hr_upscaler not in HR_UPSCALERS:
            raise forge_500("Exception", f"could not find upscaler named {req.hr_upscaler}")
        if req.hr_additional_modules is None:
            raise forge_500("TypeError", "argument of type 'NoneType' is not iterable")
        hr_size = hires_size(req, width, height)
        hr_steps = req.hr_second_pass_steps or steps
        hires_params = {
            "Denoising strength": req.denoising_strength,
            "Hires upscale": req.hr_scale,
            "Hires steps": req.hr_second_pass_steps or None,
            "Hires upscaler": req.hr_upscaler or "Latent",
        }
        extra.update({k: v for k, v in hires_params.items() if v is not None})
    biggest = hr_size or (width, height)
    if biggest[0] * biggest[1] > MAX_PIXELS or batch_size > 64:
        raise forge_500("OutOfMemoryError", "CUDA out of memory (simulated).")

    sampler, scheduler = resolve_sampler(req.sampler_name or req.sampler_index, req.scheduler)
    prompt, negative = apply_styles(req.prompt or "", req.negative_prompt or "", req.styles, styles)
    total = batch_size * n_iter
    seed = req.seed if req.seed is not None and req.seed != -1 else _random_seed(rng)
    subseed = req.subseed if req.subseed is not None and req.subseed != -1 else _random_seed(rng)
    strength = req.subseed_strength or 0
    seeds = [seed + (i if strength == 0 else 0) for i in range(total)]
    subseeds = [subseed + i for i in range(total)]

    loras: dict[str, Lora] = {}
    if not req.disable_extra_networks:
        names = lora_names(prompt)
        if all(n in loras_by_alias for n in names):
            loras = {n: loras_by_alias[n] for n in names}
        else:
            # Forge only says so on its console; the job runs without any of its LoRAs.
            log.warning("%s: LoRA not found among %s; all LoRAs dropped", server_name, names)
    schedule_type = effective_schedule_type(sampler, scheduler)
    if schedule_type:
        extra["Schedule type"] = schedule_type
    if loras:
        extra["Lora hashes"] = ", ".join(f"{k}: {v.hash}" for k, v in loras.items())
    return Plan(
        req=req,
        checkpoint=checkpoint,
        sampler=sampler,
        scheduler=scheduler,
        steps=steps,
        width=width,
        height=height,
        batch_size=batch_size,
        n_iter=n_iter,
        cfg_scale=float(req.cfg_scale or 0),
        prompts=[prompt] * total,
        negative_prompts=[negative] * total,
        seeds=seeds,
        subseeds=subseeds,
        loras=loras,
        clip_skip=clip_skip,
        hr_size=hr_size,
        hr_steps=hr_steps,
        extra_params=extra,
        img2img=img2img,
    )


def module_stem(path: str) -> str:
    """`os.path.splitext(os.path.basename(m))[0]`, whatever separator the path uses."""
    return PurePath(path.replace("\\", "/")).stem


def _random_seed(rng: random.Random) -> int:
    return rng.randrange(4294967294)


def hires_size(req: Txt2ImgRequest, width: int, height: int) -> tuple[int, int]:
    """Forge's `hr_upscale_to_x/y`: a scale, or a target that keeps the aspect if one side is 0."""
    rx, ry = req.hr_resize_x or 0, req.hr_resize_y or 0
    if rx == 0 and ry == 0:
        scale = req.hr_scale or 2.0
        return int(width * scale), int(height * scale)
    if ry == 0:
        return rx, rx * height // width
    if rx == 0:
        return ry * width // height, ry
    return rx, ry


def infotext(plan: Plan, index: int, version: str) -> str:
    """Forge's `create_infotext`, keys in its order and values as Python writes them (`CFG scale:
    7.0`), as the real Forge's PNGs read in the conformance run (docs/forge-conformance.md)."""
    req = plan.req
    pairs: list[tuple[str, Any]] = [
        ("Steps", plan.steps),
        ("Sampler", plan.sampler.name),
        # p.scheduler ("Automatic" unless one was chosen), overwritten in place by the label the
        # sampler really used when Automatic meant its own default (sd_samplers_kdiffusion).
        ("Schedule type", plan.schedule_type or "Automatic"),
        ("CFG scale", plan.cfg_scale),
    ]
    if plan.checkpoint.is_flux:
        pairs.append(("Distilled CFG Scale", float(req.distilled_cfg_scale or 0)))
    pairs += [
        ("Seed", plan.seeds[index]),
        ("Size", f"{plan.width}x{plan.height}"),
        ("Model hash", plan.checkpoint.shorthash),
        ("Model", plan.checkpoint.basename),
    ]
    if req.subseed_strength:
        pairs += [("Variation seed", plan.subseeds[index])]
        pairs += [("Variation seed strength", req.subseed_strength)]
    if plan.denoising_strength is not None:
        pairs.append(("Denoising strength", plan.denoising_strength))
    if plan.clip_skip > 1:
        pairs.append(("Clip skip", plan.clip_skip))
    pairs += list(plan.script_params.items())
    pairs += list(plan.img2img_params.items())
    if plan.hr_size is not None:
        pairs += _hires_pairs(plan)
    if plan.loras:
        pairs.append(("Lora hashes", ", ".join(f"{k}: {v.hash}" for k, v in plan.loras.items())))
    pairs.append(("Version", version))
    if plan.low_bits:
        pairs.append(("Diffusion in Low Bits", plan.low_bits))
    pairs += [(f"Module {i + 1}", module_stem(m)) for i, m in enumerate(plan.modules)]
    lines = [plan.prompts[index]]
    if plan.negative_prompts[index]:
        lines.append(f"Negative prompt: {plan.negative_prompts[index]}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in pairs if value is not None))
    return "\n".join(lines)


def _hires_pairs(plan: Plan) -> list[tuple[str, Any]]:
    """`extra_generation_params` of a hires fix, in the order Forge's init() and
    calculate_target_resolution() add them."""
    req = plan.req
    modules = req.hr_additional_modules or []
    pairs: list[tuple[str, Any]] = []
    if modules == []:
        pairs.append(("Hires Module 1", "Built-in"))
    elif "Use same choices" in modules:
        pairs.append(("Hires Module 1", "Use same choices"))
    else:
        pairs += [(f"Hires Module {i + 1}", PurePath(str(m)).stem) for i, m in enumerate(modules)]
    if req.hr_sampler_name and req.hr_sampler_name != plan.sampler.name:
        pairs.append(("Hires sampler", req.hr_sampler_name))
    pairs.append(("Hires CFG Scale", req.hr_cfg))
    if req.hr_resize_x or req.hr_resize_y:
        pairs.append(("Hires resize", f"{req.hr_resize_x or 0}x{req.hr_resize_y or 0}"))
    else:
        pairs.append(("Hires upscale", req.hr_scale))
    if req.hr_second_pass_steps:
        pairs.append(("Hires steps", req.hr_second_pass_steps))
    pairs.append(("Hires upscaler", req.hr_upscaler or "Latent"))
    return pairs


def info_object(
    plan: Plan,
    *,
    infotexts: list[str],
    index_of_first_image: int,
    job_timestamp: str,
    version: str,
) -> dict[str, Any]:
    """Forge's `Processed.js()`; `all_seeds` lists every planned image, even when interrupted."""
    req = plan.req
    return {
        "prompt": plan.prompts[0],
        "all_prompts": plan.prompts,
        "negative_prompt": plan.negative_prompts[0],
        "all_negative_prompts": plan.negative_prompts,
        "seed": plan.seeds[0],
        "all_seeds": plan.seeds,
        "subseed": plan.subseeds[0],
        "all_subseeds": plan.subseeds,
        "subseed_strength": req.subseed_strength,
        "width": plan.width,
        "height": plan.height,
        "sampler_name": plan.sampler.name,
        "cfg_scale": plan.cfg_scale,
        "steps": plan.steps,
        "batch_size": plan.batch_size,
        "restore_faces": bool(req.restore_faces),
        "face_restoration_model": None,
        "sd_model_name": plan.checkpoint.basename,
        "sd_model_hash": plan.checkpoint.shorthash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": req.seed_resize_from_w,
        "seed_resize_from_h": req.seed_resize_from_h,
        "denoising_strength": plan.denoising_strength,
        "extra_generation_params": {
            **plan.extra_params,
            **plan.script_params,
            **plan.img2img_params,
        },
        "index_of_first_image": index_of_first_image,
        "infotexts": infotexts,
        "styles": req.styles or [],
        "job_timestamp": job_timestamp,
        "clip_skip": plan.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": version,
    }
