"""The fixed lists a Forge server reports, and its silent name fallbacks.

Sampler and scheduler resolution follow `get_sampler_and_scheduler` in `modules/sd_samplers.py`;
styles follow `modules/styles.py`; LoRA tags follow `modules/extra_networks.py`.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sampler:
    name: str
    aliases: list[str]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def default_scheduler(self) -> str | None:
        return self.options.get("scheduler")


@dataclass(frozen=True)
class Scheduler:
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1.0
    need_inner_model: bool = False


# Forge's `/sdapi/v1/samplers` at dfdcbab6, in its order (the first one is what an unknown sampler
# name silently becomes), options with their JSON types, as the conformance run read them.
_SO, _BN, _ENSD = "second_order", "brownian_noise", "uses_ensd"
_DISCARD = "discard_next_to_last_sigma"
SAMPLERS = [
    Sampler("DPM++ 2M", ["k_dpmpp_2m"], {"scheduler": "karras"}),
    Sampler("DPM++ SDE", ["k_dpmpp_sde"], {"scheduler": "karras", _SO: True, _BN: True}),
    Sampler("DPM++ 2M SDE", ["k_dpmpp_2m_sde"], {"scheduler": "exponential", _BN: True}),
    Sampler(
        "DPM++ 2M SDE Heun",
        ["k_dpmpp_2m_sde_heun"],
        {"scheduler": "exponential", _BN: True, "solver_type": "heun"},
    ),
    Sampler("DPM++ 2S a", ["k_dpmpp_2s_a"], {"scheduler": "karras", _ENSD: True, _SO: True}),
    Sampler(
        "DPM++ 3M SDE", ["k_dpmpp_3m_sde"], {"scheduler": "exponential", _DISCARD: True, _BN: True}
    ),
    Sampler("Euler a", ["k_euler_a", "k_euler_ancestral"], {_ENSD: True}),
    Sampler("Euler", ["k_euler"]),
    Sampler("LMS", ["k_lms"]),
    Sampler("Heun", ["k_heun"], {_SO: True}),
    Sampler("DPM2", ["k_dpm_2"], {"scheduler": "karras", _DISCARD: True, _SO: True}),
    Sampler(
        "DPM2 a", ["k_dpm_2_a"], {"scheduler": "karras", _DISCARD: True, _ENSD: True, _SO: True}
    ),
    Sampler("DPM fast", ["k_dpm_fast"], {_ENSD: True}),
    Sampler("DPM adaptive", ["k_dpm_ad"], {_ENSD: True}),
    Sampler("Restart", ["restart"], {"scheduler": "karras", _SO: True}),
    Sampler("HeunPP2", ["heunpp2"]),
    Sampler("IPNDM", ["ipndm"]),
    Sampler("IPNDM_V", ["ipndm_v"]),
    Sampler("DEIS", ["deis"]),
    Sampler("DDIM", ["ddim"]),
    Sampler("DDIM CFG++", ["ddim_cfgpp"]),
    Sampler("PLMS", ["plms"]),
    Sampler("UniPC", ["unipc"]),
    Sampler("LCM", ["k_lcm"]),
    Sampler("DDPM", ["ddpm"]),
]
SAMPLERS_BY_NAME = {s.name: s for s in SAMPLERS}

SCHEDULERS = [
    Scheduler("automatic", "Automatic"),
    Scheduler("uniform", "Uniform", need_inner_model=True),
    Scheduler("karras", "Karras", default_rho=7.0),
    Scheduler("exponential", "Exponential"),
    Scheduler("polyexponential", "Polyexponential", default_rho=1.0),
    Scheduler("sgm_uniform", "SGM Uniform", aliases=["SGMUniform"], need_inner_model=True),
    Scheduler("kl_optimal", "KL Optimal"),
    Scheduler("align_your_steps", "Align Your Steps"),
    Scheduler("simple", "Simple", need_inner_model=True),
    Scheduler("normal", "Normal", need_inner_model=True),
    Scheduler("ddim", "DDIM", need_inner_model=True),
    Scheduler("beta", "Beta", need_inner_model=True),
    Scheduler("turbo", "Turbo", need_inner_model=True),
    Scheduler("align_your_steps_GITS", "Align Your Steps GITS"),
    Scheduler("align_your_steps_11", "Align Your Steps 11"),
    Scheduler("align_your_steps_32", "Align Your Steps 32"),
]
SCHEDULERS_MAP = {**{s.name: s for s in SCHEDULERS}, **{s.label: s for s in SCHEDULERS}}
AUTOMATIC = SCHEDULERS[0]

UPSCALERS: list[dict[str, Any]] = [
    {
        "name": name,
        "model_name": model,
        "model_path": path,
        "model_url": None,
        "scale": float(scale),
    }
    for name, model, path, scale in [
        ("None", None, None, 4),
        ("Lanczos", None, None, 4),
        ("Nearest", None, None, 4),
        ("DAT x2", None, None, 2),
        ("DAT x3", None, None, 3),
        ("DAT x4", None, None, 4),
        ("ESRGAN_4x", "ESRGAN_4x", "models/ESRGAN/ESRGAN_4x.pth", 4),
        ("R-ESRGAN 4x+", None, None, 4),
        ("R-ESRGAN 4x+ Anime6B", None, None, 4),
        ("ScuNET GAN", None, None, 4),
        ("SwinIR 4x", None, None, 4),
        ("4x-UltraSharp", "4x-UltraSharp", "models/ESRGAN/4x-UltraSharp.pth", 4),
    ]
]
LATENT_UPSCALE_MODES = [
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
]
HR_UPSCALERS = {u["name"] for u in UPSCALERS} | set(LATENT_UPSCALE_MODES)

PROMPT_STYLES: list[dict[str, str]] = [
    {
        "name": "cinematic",
        "prompt": "cinematic still of {prompt}, shallow depth of field, film grain",
        "negative_prompt": "cartoon, drawing, anime",
    },
    {"name": "watercolor", "prompt": "watercolor painting, soft edges", "negative_prompt": ""},
]

SD_MODULES = [
    {"model_name": name, "filename": f"/opt/forge/models/{folder}/{name}"}
    for folder, name in [
        ("VAE", "ae.safetensors"),
        ("VAE", "sdxl_vae.safetensors"),
        ("text_encoder", "clip_l.safetensors"),
        ("text_encoder", "t5xxl_fp8_e4m3fn.safetensors"),
    ]
]


MODULE_EXTS = (".ckpt", ".pt", ".bin", ".safetensors", ".gguf")


def read_styles_files(paths: list[str]) -> list[dict[str, str | None]]:
    """`--styles-file`s, as Forge's StyleDatabase reads them: with more than one file, a divider
    entry named after each (`---- STYLES ----`, no prompt at all) before its rows; a missing
    file adds only its divider."""
    styles: list[dict[str, str | None]] = []
    for path in paths:
        if len(paths) > 1:
            divider = f" {Path(path).stem.upper()} ".center(40, "-")
            styles.append({"name": divider, "prompt": None, "negative_prompt": None})
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8-sig", newline="") as f:
            for row in csv.DictReader(f, skipinitialspace=True):
                name = (row.get("name") or "").strip()
                if name:
                    styles.append(
                        {
                            "name": name,
                            "prompt": row.get("prompt") or "",
                            "negative_prompt": row.get("negative_prompt") or "",
                        }
                    )
    return styles


def list_modules(folder: str) -> list[dict[str, str]]:
    """`/sd-modules` of a real folder: every model file under it, by its base name."""
    found: dict[str, str] = {}
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            if name.lower().endswith(MODULE_EXTS):
                found.setdefault(name, os.path.abspath(os.path.join(root, name)))
    return [{"model_name": name, "filename": path} for name, path in found.items()]


def resolve_sampler(sampler_name: str | None, scheduler_name: str | None) -> tuple[Sampler, str]:
    """Sampler and scheduler label as Forge runs them: unknown names fall back without a word."""
    found = SCHEDULERS_MAP.get(scheduler_name or "", AUTOMATIC)
    name = sampler_name or SAMPLERS[0].name
    for scheduler in SCHEDULERS:
        for option in [scheduler.label, *(scheduler.aliases or [])]:
            if name.endswith(" " + option):
                found = scheduler
                name = name[: -(len(option) + 1)]
                break
    sampler = SAMPLERS_BY_NAME.get(name, SAMPLERS[0])
    if sampler.default_scheduler == found.name:
        found = AUTOMATIC
    return sampler, found.label


def effective_schedule_type(sampler: Sampler, scheduler_label: str) -> str | None:
    """The `Schedule type` written to the infotext: Automatic means the sampler's own default."""
    if scheduler_label != AUTOMATIC.label:
        return scheduler_label
    default = SCHEDULERS_MAP.get(sampler.default_scheduler or "")
    return default.label if default else None


def _apply_style_text(text: str, style_text: str) -> str:
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", text)
    return ", ".join(part for part in (text.strip(), style_text.strip()) if part)


def apply_styles(
    prompt: str,
    negative: str,
    styles: list[str] | None,
    known: list[dict[str, Any]] | None = None,
) -> tuple[str, str]:
    """Server-side styles (`known`: the server's list); unknown names are ignored."""
    by_name = {s["name"]: s for s in (PROMPT_STYLES if known is None else known)}
    for name in styles or []:
        style = by_name.get(name)
        if style is None:
            continue
        prompt = _apply_style_text(prompt, style["prompt"] or "")
        negative = _apply_style_text(negative, style["negative_prompt"] or "")
    return prompt, negative


_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def lora_names(prompt: str) -> list[str]:
    """Names in `<lora:NAME>`, `<lora:NAME:W>` and `<lora:NAME:te:unet>`, in order, once each."""
    names: list[str] = []
    for kind, args in _EXTRA_NETWORK.findall(prompt):
        name = args.split(":")[0]
        if kind == "lora" and name not in names:
            names.append(name)
    return names


def samplers_api() -> list[dict[str, Any]]:
    return [{"name": s.name, "aliases": s.aliases, "options": s.options} for s in SAMPLERS]


def schedulers_api() -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": s.aliases,
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in SCHEDULERS
    ]
