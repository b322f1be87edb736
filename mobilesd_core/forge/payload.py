"""From GenerationParams to a txt2img request, checked against what the server offers.

Forge silently falls back on unknown samplers, schedulers and LoRAs (one unknown LoRA drops them
all), so each name is checked here first and an unknown one fails the job with the valid names.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ForgePermanentError, ForgeTransientError
from .infotext import prompt_with_loras, quote


@dataclass
class ServerCatalog:
    """What one server offers, as names. Empty lists mean "unknown": nothing is checked."""

    samplers: list[str] = field(default_factory=list)
    sampler_aliases: dict[str, str] = field(default_factory=dict)
    schedulers: list[str] = field(default_factory=list)
    scheduler_labels: dict[str, str] = field(default_factory=dict)
    loras: set[str] = field(default_factory=set)
    upscalers: list[str] = field(default_factory=list)
    loras_listed: bool = True
    """False when the server had no LoRA list (`/loras` answered 404): Forge still starting (its
    LoRA extension adds the route last) or the extension off."""
    # The lists below are None where the server had no route for them: unknown, not checked
    # (an old build, an extension without its list route).
    modules: list[str] | None = None
    """VAE and text-encoder file names (`/sd-modules`; A1111: its VAEs, `/sd-vae`)."""
    module_option: str | None = None
    """How the server takes them: `forge_additional_modules` (Forge) or `sd_vae` (A1111)."""
    styles: list[str] | None = None
    scripts: list[str] | None = None
    """txt2img script names, lower case, as `/sdapi/v1/scripts` lists them."""
    adetailer_models: list[str] | None = None
    controlnet_models: list[str] | None = None
    controlnet_modules: list[str] | None = None


def _suggest(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.4)
    shown = close or list(options)[:8]
    return ", ".join(repr(x) for x in shown)


def resolve_sampler(
    sampler: str, scheduler: str | None, catalog: ServerCatalog, server: str
) -> tuple[str, str | None]:
    if catalog.samplers and sampler not in catalog.samplers:
        if sampler in catalog.sampler_aliases:
            sampler = catalog.sampler_aliases[sampler]
        else:
            # "DPM++ 2M Karras": the old combined name, split into sampler + scheduler.
            head, _, tail = sampler.rpartition(" ")
            known = {s.lower(): s for s in catalog.schedulers}
            if head in catalog.samplers and tail.lower() in known and scheduler is None:
                sampler, scheduler = head, known[tail.lower()]
            else:
                raise ForgePermanentError(
                    f"sampler '{sampler}' is not offered by server '{server}'; "
                    f"try {_suggest(sampler, catalog.samplers)}"
                )
    if scheduler is not None and catalog.schedulers and scheduler not in catalog.schedulers:
        if scheduler in catalog.scheduler_labels:
            scheduler = catalog.scheduler_labels[scheduler]
        else:
            raise ForgePermanentError(
                f"scheduler '{scheduler}' is not offered by server '{server}'; "
                f"try {_suggest(scheduler, catalog.schedulers)}"
            )
    return sampler, scheduler


def check_loras(loras: list[dict[str, Any]], catalog: ServerCatalog, server: str) -> None:
    if loras and not catalog.loras_listed:
        raise ForgeTransientError(
            f"server '{server}' has no LoRA list yet (/sdapi/v1/loras answered 404: Forge is "
            "still starting, or its LoRA extension is off)"
        )
    if not loras or not catalog.loras:
        if loras and not catalog.loras:
            raise ForgePermanentError(
                f"server '{server}' lists no LoRAs, but the job asks for "
                f"{', '.join(repr(lora['name']) for lora in loras)}"
            )
        return
    missing = [lora["name"] for lora in loras if lora["name"] not in catalog.loras]
    if missing:
        hints = "; ".join(f"'{m}' (closest: {_suggest(m, sorted(catalog.loras))})" for m in missing)
        raise ForgePermanentError(f"LoRA not found on server '{server}': {hints}")


REFINER_SWITCH_AT = 0.8  # A1111's default, when a job names a refiner without a switch point


def adetailer_script(units: list[dict[str, Any]]) -> dict[str, Any]:
    """ADetailer's always-on args: [enable, skip img2img, one dict per tab]."""
    tabs = [
        {
            "ad_model": u["model"],
            "ad_prompt": u["prompt"],
            "ad_negative_prompt": u["negative_prompt"],
            "ad_confidence": u["confidence"],
            "ad_denoising_strength": u["denoising_strength"],
            "ad_mask_blur": u["mask_blur"],
            "ad_inpaint_only_masked": u["inpaint_only_masked"],
            "ad_inpaint_only_masked_padding": u["inpaint_padding"],
        }
        for u in units
    ]
    return {"args": [True, False, *tabs]}


def controlnet_script(units: list[dict[str, Any]]) -> dict[str, Any]:
    """ControlNet's always-on args: one unit object per slot."""
    args = []
    for u in units:
        unit = {
            "enabled": True,
            "module": u["module"],
            "model": u["model"],
            "weight": u["weight"],
            "guidance_start": u["guidance_start"],
            "guidance_end": u["guidance_end"],
            "control_mode": u["control_mode"],
            "resize_mode": u["resize_mode"],
            "pixel_perfect": u["pixel_perfect"],
        }
        if u.get("image") is not None:
            unit["image"] = u["image"]
        args.append(unit)
    return {"args": args}


def build_txt2img_payload(
    params: dict[str, Any],
    *,
    checkpoint_title: str | None,
    sampler: str,
    scheduler: str | None,
    catalog: ServerCatalog,
    server: str,
    refiner_title: str | None = None,
) -> dict[str, Any]:
    """Every field explicit (Forge's own defaults differ: steps 50, hr_cfg 1.0)."""
    payload: dict[str, Any] = {
        "prompt": prompt_with_loras(params["prompt"], params.get("loras") or []),
        "negative_prompt": params.get("negative_prompt", ""),
        "styles": list(params.get("styles") or []),
        "seed": params["seed"],
        "subseed": params["subseed"],
        "subseed_strength": params["subseed_strength"],
        "sampler_name": sampler,
        "scheduler": scheduler or "Automatic",
        "steps": params["steps"],
        "cfg_scale": params["cfg_scale"],
        "width": params["width"],
        "height": params["height"],
        "batch_size": params["batch_size"],
        "n_iter": params["n_iter"],
        "send_images": True,
        "save_images": False,
        "enable_hr": False,
    }
    if params.get("distilled_cfg_scale") is not None:
        payload["distilled_cfg_scale"] = params["distilled_cfg_scale"]
    hires = params.get("hires")
    if hires:
        if catalog.upscalers and hires["upscaler"] not in catalog.upscalers:
            raise ForgePermanentError(
                f"hires upscaler '{hires['upscaler']}' is not offered by server '{server}'; "
                f"try {_suggest(hires['upscaler'], catalog.upscalers)}"
            )
        payload.update(
            enable_hr=True,
            hr_scale=hires["scale"],
            hr_upscaler=hires["upscaler"],
            hr_second_pass_steps=hires["steps"],
            denoising_strength=hires["denoising_strength"],
            hr_cfg=params["cfg_scale"],
            hr_additional_modules=["Use same choices"],
        )
    if refiner_title:
        payload["refiner_checkpoint"] = refiner_title
        payload["refiner_switch_at"] = params.get("refiner_switch_at") or REFINER_SWITCH_AT
    extra = dict(params.get("extra") or {})
    overrides: dict[str, Any] = {}
    if checkpoint_title:
        overrides["sd_model_checkpoint"] = checkpoint_title
    if params.get("clip_skip"):
        overrides["CLIP_stop_at_last_layers"] = params["clip_skip"]
    modules = list(params.get("modules") or [])
    if catalog.module_option == "sd_vae":
        if modules:  # A1111: one VAE, no text encoders
            overrides["sd_vae"] = modules[0]
    elif modules or (checkpoint_title and catalog.module_option is not None):
        # On Forge a checkpoint comes with its modules: a job naming one sets them (none: the
        # checkpoint's own), else an earlier job's modules (kept selected, as the model is)
        # would be loaded with it: a Flux VAE and text encoders under an SDXL model.
        overrides["forge_additional_modules"] = modules
    if overrides:
        # The job's fields win on the keys they own; the user's other settings stay (the
        # schema refuses an `extra` key a field would replace).
        payload["override_settings"] = {**(extra.pop("override_settings", None) or {}), **overrides}
        # Keep the model selected afterwards: restoring would make the next job switch back.
        payload["override_settings_restore_afterwards"] = False
    scripts: dict[str, Any] = {}
    if params.get("adetailer"):
        scripts["ADetailer"] = adetailer_script(params["adetailer"])
    if params.get("controlnet"):
        scripts["ControlNet"] = controlnet_script(params["controlnet"])
    if scripts:
        payload["alwayson_scripts"] = {**(extra.pop("alwayson_scripts", None) or {}), **scripts}
    # `extra` passes anything else Forge accepts, but never overrides a schema field.
    return {**extra, **payload}


# Fields of `/img2img` that the init block sets (GenerationParams.init, schema.py).
INPAINT_FIELDS = (
    "resize_mode",
    "mask_blur",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
)


def build_img2img_payload(
    params: dict[str, Any], txt2img: dict[str, Any], image_b64: str, mask_b64: str | None
) -> dict[str, Any]:
    """The txt2img payload of the same job turned into an `/img2img` one: the init image (and
    mask) as base64 PNGs, and the init block's fields under Forge's names."""
    init = params["init"]
    payload = {k: v for k, v in txt2img.items() if k != "enable_hr" and not k.startswith("hr_")}
    payload.update(
        init_images=[image_b64],
        denoising_strength=init["denoising_strength"],
        **{name: init[name] for name in INPAINT_FIELDS},
    )
    if mask_b64 is not None:
        payload["mask"] = mask_b64
    return payload


def build_extras_payload(
    params: dict[str, Any], image_b64: str, catalog: ServerCatalog, server: str
) -> dict[str, Any]:
    """`/extra-single-image` for an upscale job; the upscaler checked against the server's."""
    upscale = params["upscale"]
    name = upscale["upscaler"]
    if catalog.upscalers and name not in catalog.upscalers:
        raise ForgePermanentError(
            f"upscaler '{name}' is not offered by server '{server}'; "
            f"try {_suggest(name, catalog.upscalers)}"
        )
    return {
        "image": image_b64,
        "resize_mode": 0,
        "upscaling_resize": upscale["scale"],
        "upscaler_1": name,
        "show_extras_results": True,
    }


def upscale_infotext(params: dict[str, Any]) -> str:
    """What Forge's Extras tab writes as a saved image's text (the postprocessing keys), after
    the job's prompt and with the source image by name and hash."""
    upscale = params["upscale"]
    fields = {
        "Postprocess upscale by": f"{upscale['scale']:g}",
        "Postprocess upscaler": upscale["upscaler"],
        "Source image": upscale["image"],
        "Source image hash": upscale.get("image_sha256") or "",
    }
    line = ", ".join(f"{key}: {quote(value)}" for key, value in fields.items())
    return f"{params['prompt']}\n{line}"


def sampler_steps(params: dict[str, Any]) -> int:
    """Steps Forge's sampler runs for the job (what its progress counts): img2img runs
    `int(min(denoising, 0.999) * steps) + 1` (`setup_img2img_steps`); an upscale none (1)."""
    if params.get("upscale"):
        return 1
    init = params.get("init")
    if init:
        return int(min(float(init["denoising_strength"]), 0.999) * int(params["steps"])) + 1
    return int(params["steps"])
