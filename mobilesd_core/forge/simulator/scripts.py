"""Scripts and the two extensions a client drives through `alwayson_scripts`: ControlNet (built
into Forge as `extensions-builtin/sd_forge_controlnet`) and ADetailer (`Bing-su/adetailer`).

What is an HTTP error and what is not follows Forge:
- `Api.init_script_args` (`modules/api/api.py`): an `alwayson_scripts` name that is not
  installed is a 422 `always on script NAME not found`; a selectable script there is a 422
  `Cannot have a selectable script in the always on scripts params`; an unknown `script_name`
  is a 422 `Script 'NAME' not found`. Names match case-insensitively (`script.title().lower()`).
  An entry that is not an object and not iterable (`"args" in 5`) is a 500 TypeError; `args`
  that is not a list fails the same way (`len()`, indexing). Args beyond the script's slots
  are dropped; slots not sent keep the script's defaults.
- Everything the extension itself rejects (a ControlNet unit that is not an object, an unknown
  ControlNet model or module, a bad image, ADetailer args failing its `ADetailerArgs` model) is
  caught by Forge's `ScriptRunner` (`errors.report`, console only): the job answers 200 and
  runs without that extension. ControlNet writes its `ControlNet N` infotext before it fails
  (`Infotext.write_infotext` comes first in `process`); ADetailer writes nothing when its args
  do not validate, and writes its params but changes nothing when its model is unknown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .img2img import decode_image
from .request import SimHTTPError, detail_error, forge_500

log = logging.getLogger("mobilesd.forge.simulator")

CONTROLNET = "controlnet"
ADETAILER = "adetailer"
ADETAILER_VERSION = "24.11.1"
CONTROLNET_UNITS = 3
"""`control_net_unit_count`: slots of the ControlNet script."""
ADETAILER_TABS = 2
"""`ad_max_models`: ADetailer's slots are [enable, skip img2img, one dict per tab]."""

# Script names as `/sdapi/v1/scripts` lists them (`script.title().lower()`), selectable first.
_SELECTABLE_TXT2IMG = ["prompt matrix", "prompts from file or textbox", "x/y/z plot"]
_SELECTABLE_IMG2IMG = [
    "img2img alternative test",
    "loopback",
    "outpainting mk2",
    "poor man's outpainting",
    "prompt matrix",
    "prompts from file or textbox",
    "sd upscale",
    "x/y/z plot",
]
_ALWAYSON = [
    "extra options",
    "dynamicthresholding (cfg-fix) integrated",
    "freeu integrated (sd 1.x, sd 2.x, sdxl)",
    "kohya hrfix integrated",
    "latentmodifier integrated",
    "multidiffusion integrated",
    "never oom integrated",
    "perturbedattentionguidance integrated",
    "selfattentionguidance integrated (sd 1.x, sd 2.x, sdxl)",
    "stylealign integrated",
    "refiner",
    "sampler",
    "seed",
]

DEFAULT_CONTROLNET_MODELS = [
    "control_v11p_sd15_canny [d14c016b]",
    "control_v11f1p_sd15_depth [cfd03158]",
    "diffusers_xl_canny_mid [112a778d]",
]
DEFAULT_CONTROLNET_MODULES = [
    "None",
    "canny",
    "depth_midas",
    "lineart_realistic",
    "openpose_full",
    "reference_only",
    "tile_resample",
    "inpaint_only",
]
DEFAULT_ADETAILER_MODELS = [
    "face_yolov8n.pt",
    "face_yolov8s.pt",
    "hand_yolov8n.pt",
    "person_yolov8n-seg.pt",
    "person_yolov8s-seg.pt",
    "yolov8x-worldv2.pt",
    "mediapipe_face_full",
    "mediapipe_face_short",
    "mediapipe_face_mesh",
    "mediapipe_face_mesh_eyes_only",
]


def script_names(*, img2img: bool, controlnet: bool, adetailer: bool) -> list[str]:
    names = list(_SELECTABLE_IMG2IMG if img2img else _SELECTABLE_TXT2IMG)
    names += _ALWAYSON[:1]
    if controlnet:
        names.append(CONTROLNET)
    names += _ALWAYSON[1:]
    if img2img:
        names.append("soft inpainting")
    if adetailer:
        names.append(ADETAILER)
    return names


def selectable_names(img2img: bool) -> list[str]:
    return list(_SELECTABLE_IMG2IMG if img2img else _SELECTABLE_TXT2IMG)


@dataclass
class ScriptResult:
    """What the scripts of one job add: infotext params, and which extensions really ran."""

    params: dict[str, Any] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)


def _slots(name: str) -> list[Any]:
    if name == CONTROLNET:
        return [None] * CONTROLNET_UNITS
    if name == ADETAILER:
        return [False, False, *({} for _ in range(ADETAILER_TABS))]
    return []


def script_args(
    alwayson: dict[str, Any] | None,
    script_name: str | None,
    *,
    installed: list[str],
    img2img: bool,
) -> dict[str, list[Any]]:
    """`init_script_args`: the 422s and 500s Forge answers before the job is queued, and the
    args each installed always-on script will see."""
    selectable = selectable_names(img2img)
    if script_name and script_name.lower() not in selectable:
        raise detail_error(422, f"Script '{script_name}' not found")
    out: dict[str, list[Any]] = {}
    for name, entry in (alwayson or {}).items():
        key = name.lower()
        if key not in installed:
            raise detail_error(422, f"always on script {name} not found")
        if key in selectable:
            raise detail_error(
                422, "Cannot have a selectable script in the always on scripts params"
            )
        if not isinstance(entry, dict | list | str):
            raise forge_500("TypeError", f"argument of type '{_type_name(entry)}' is not iterable")
        slots = _slots(key)
        if isinstance(entry, dict) and "args" in entry:
            args = entry["args"]
            if not isinstance(args, list | str | dict):
                raise forge_500("TypeError", f"object of type '{_type_name(args)}' has no len()")
            for index in range(min(len(slots), len(args))):
                if isinstance(args, dict):
                    raise forge_500("KeyError", str(index))
                slots[index] = args[index]
        out[key] = slots
    return out


def _type_name(value: Any) -> str:
    return "NoneType" if value is None else type(value).__name__


# ---- ControlNet ---------------------------------------------------------------------------

_UNIT_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "module": "None",
    "model": "None",
    "weight": 1.0,
    "image": None,
    "resize_mode": "ResizeMode.INNER_FIT",
    "processor_res": -1,
    "threshold_a": -1,
    "threshold_b": -1,
    "guidance_start": 0.0,
    "guidance_end": 1.0,
    "pixel_perfect": False,
    "control_mode": "ControlMode.BALANCED",
    "hr_option": "HiResFixOption.BOTH",
}
_UNIT_FIELDS = (
    "module",
    "model",
    "weight",
    "resize_mode",
    "processor_res",
    "threshold_a",
    "threshold_b",
    "guidance_start",
    "guidance_end",
    "pixel_perfect",
    "control_mode",
    "hr_option",
)
_UNIT_KEYS = {
    *_UNIT_DEFAULTS,
    "input_mode",
    "use_preview_as_input",
    "batch_image_dir",
    "batch_mask_dir",
    "batch_input_gallery",
    "batch_mask_gallery",
    "generated_image",
    "mask_image",
    "mask_image_fg",
    "image_fg",
    "save_detected_map",
}


def _serialize_unit(unit: dict[str, Any]) -> str:
    """`lib_controlnet/infotext.serialize_unit`: hidden sliders (-1) are left out."""
    values = {
        " ".join(word.capitalize() for word in name.split("_")): unit[name]
        for name in _UNIT_FIELDS
        if unit[name] != -1
    }
    if not all("," not in str(v) and ":" not in str(v) for v in values.values()):
        return ""
    return ", ".join(f"{key}: {value}" for key, value in values.items())


def controlnet(
    slots: list[Any],
    *,
    models: list[str],
    modules: list[str],
    has_init_image: bool,
    result: ScriptResult,
) -> None:
    """ControlNet's `process`: infotext for each enabled unit, then each unit's checks. Any
    failure only stops ControlNet (Forge logs it)."""
    units: list[dict[str, Any]] = []
    for slot in slots:
        if slot is None:
            continue  # a default, disabled unit
        if not isinstance(slot, dict):
            log.warning("ControlNet: a unit that is not an object; ControlNet skipped")
            return
        unit = {**_UNIT_DEFAULTS, **{k: v for k, v in slot.items() if k in _UNIT_KEYS}}
        if unit["image"] is not None and not isinstance(unit["image"], str):
            # Forge compares it as an array (`unit_image < 5`): a TypeError, caught.
            log.warning("ControlNet: unit image is not a base64 string; ControlNet skipped")
            return
        if isinstance(unit["image"], str) or isinstance(unit.get("mask_image"), str):
            try:
                for key in ("image", "mask_image"):
                    if isinstance(unit.get(key), str):
                        decode_image(unit[key])
            except SimHTTPError:
                log.warning("ControlNet: unit image is not an image; ControlNet skipped")
                return
        if unit["enabled"]:
            units.append(unit)
    for index, unit in enumerate(units):
        result.params[f"ControlNet {index}"] = _serialize_unit(unit)
    for unit in units:
        module, model = unit["module"], unit["model"]
        if module not in modules:
            log.warning("ControlNet: unknown module %r; ControlNet skipped", module)
            return
        if unit["image"] is None and not has_init_image:
            log.warning("ControlNet: enabled but no input image; ControlNet skipped")
            return
        if not str(module).startswith("reference"):  # reference_* need no model
            if model == "None":
                log.warning("ControlNet: You have not selected any control model!")
                return
            if model not in models:
                log.warning("ControlNet: unknown model %r; ControlNet skipped", model)
                return
    if units:
        result.applied.append(CONTROLNET)


# ---- ADetailer ----------------------------------------------------------------------------


class ADetailerArgs(BaseModel):
    """`adetailer/args.py` ADetailerArgs (pydantic v1 there, `extra=forbid`)."""

    model_config = ConfigDict(extra="forbid")

    ad_model: str = "None"
    ad_model_classes: str = ""
    ad_tap_enable: bool = True
    ad_prompt: str = ""
    ad_negative_prompt: str = ""
    ad_confidence: float = Field(default=0.3, ge=0.0, le=1.0)
    ad_mask_k_largest: int = Field(default=0, ge=0)
    ad_mask_min_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    ad_mask_max_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    ad_dilate_erode: int = 4
    ad_x_offset: int = 0
    ad_y_offset: int = 0
    ad_mask_merge_invert: Literal["None", "Merge", "Merge and Invert"] = "None"
    ad_mask_blur: int = Field(default=4, ge=0)
    ad_denoising_strength: float = Field(default=0.4, ge=0.0, le=1.0)
    ad_inpaint_only_masked: bool = True
    ad_inpaint_only_masked_padding: int = Field(default=32, ge=0)
    ad_use_inpaint_width_height: bool = False
    ad_inpaint_width: int = Field(default=512, gt=0)
    ad_inpaint_height: int = Field(default=512, gt=0)
    ad_use_steps: bool = False
    ad_steps: int = Field(default=28, gt=0)
    ad_use_cfg_scale: bool = False
    ad_cfg_scale: float = Field(default=7.0, ge=0.0)
    ad_use_checkpoint: bool = False
    ad_checkpoint: str | None = None
    ad_use_vae: bool = False
    ad_vae: str | None = None
    ad_use_sampler: bool = False
    ad_sampler: str = "DPM++ 2M Karras"
    ad_scheduler: str = "Use same scheduler"
    ad_use_noise_multiplier: bool = False
    ad_noise_multiplier: float = Field(default=1.0, ge=0.5, le=1.5)
    ad_use_clip_skip: bool = False
    ad_clip_skip: int = Field(default=1, ge=1, le=12)
    ad_restore_face: bool = False
    ad_controlnet_model: str = "None"
    ad_controlnet_module: str = "None"
    ad_controlnet_weight: float = Field(default=1.0, ge=0.0, le=1.0)
    ad_controlnet_guidance_start: float = Field(default=0.0, ge=0.0, le=1.0)
    ad_controlnet_guidance_end: float = Field(default=1.0, ge=0.0, le=1.0)
    is_api: Any = True


_AD_NAMES = [
    ("ad_model", "ADetailer model"),
    ("ad_model_classes", "ADetailer model classes"),
    ("ad_tap_enable", "ADetailer tap enable"),
    ("ad_prompt", "ADetailer prompt"),
    ("ad_negative_prompt", "ADetailer negative prompt"),
    ("ad_confidence", "ADetailer confidence"),
    ("ad_mask_k_largest", "ADetailer mask only top k largest"),
    ("ad_mask_min_ratio", "ADetailer mask min ratio"),
    ("ad_mask_max_ratio", "ADetailer mask max ratio"),
    ("ad_x_offset", "ADetailer x offset"),
    ("ad_y_offset", "ADetailer y offset"),
    ("ad_dilate_erode", "ADetailer dilate erode"),
    ("ad_mask_merge_invert", "ADetailer mask merge invert"),
    ("ad_mask_blur", "ADetailer mask blur"),
    ("ad_denoising_strength", "ADetailer denoising strength"),
    ("ad_inpaint_only_masked", "ADetailer inpaint only masked"),
    ("ad_inpaint_only_masked_padding", "ADetailer inpaint padding"),
    ("ad_use_inpaint_width_height", "ADetailer use inpaint width height"),
    ("ad_inpaint_width", "ADetailer inpaint width"),
    ("ad_inpaint_height", "ADetailer inpaint height"),
    ("ad_use_steps", "ADetailer use separate steps"),
    ("ad_steps", "ADetailer steps"),
    ("ad_use_cfg_scale", "ADetailer use separate CFG scale"),
    ("ad_cfg_scale", "ADetailer CFG scale"),
    ("ad_use_checkpoint", "ADetailer use separate checkpoint"),
    ("ad_checkpoint", "ADetailer checkpoint"),
    ("ad_use_vae", "ADetailer use separate VAE"),
    ("ad_vae", "ADetailer VAE"),
    ("ad_use_sampler", "ADetailer use separate sampler"),
    ("ad_sampler", "ADetailer sampler"),
    ("ad_scheduler", "ADetailer scheduler"),
    ("ad_use_noise_multiplier", "ADetailer use separate noise multiplier"),
    ("ad_noise_multiplier", "ADetailer noise multiplier"),
    ("ad_use_clip_skip", "ADetailer use separate CLIP skip"),
    ("ad_clip_skip", "ADetailer CLIP skip"),
    ("ad_restore_face", "ADetailer restore face"),
    ("ad_controlnet_model", "ADetailer ControlNet model"),
    ("ad_controlnet_module", "ADetailer ControlNet module"),
    ("ad_controlnet_weight", "ADetailer ControlNet weight"),
    ("ad_controlnet_guidance_start", "ADetailer ControlNet guidance start"),
    ("ad_controlnet_guidance_end", "ADetailer ControlNet guidance end"),
]
# ADetailerArgs.extra_params: (key, keys to pop, pop when the value equals; None: when falsy).
_NOTHING = object()
_AD_POPS: list[tuple[str, list[str] | None, Any]] = [
    ("ADetailer model classes", None, _NOTHING),
    ("ADetailer prompt", None, _NOTHING),
    ("ADetailer negative prompt", None, _NOTHING),
    ("ADetailer mask only top k largest", None, 0),
    ("ADetailer mask min ratio", None, 0.0),
    ("ADetailer mask max ratio", None, 1.0),
    ("ADetailer x offset", None, 0),
    ("ADetailer y offset", None, 0),
    ("ADetailer mask merge invert", None, "None"),
    ("ADetailer inpaint only masked", ["ADetailer inpaint padding"], _NOTHING),
    (
        "ADetailer use inpaint width height",
        [
            "ADetailer use inpaint width height",
            "ADetailer inpaint width",
            "ADetailer inpaint height",
        ],
        _NOTHING,
    ),
    ("ADetailer use separate steps", ["ADetailer use separate steps", "ADetailer steps"], _NOTHING),
    (
        "ADetailer use separate CFG scale",
        ["ADetailer use separate CFG scale", "ADetailer CFG scale"],
        _NOTHING,
    ),
    (
        "ADetailer use separate checkpoint",
        ["ADetailer use separate checkpoint", "ADetailer checkpoint"],
        _NOTHING,
    ),
    ("ADetailer use separate VAE", ["ADetailer use separate VAE", "ADetailer VAE"], _NOTHING),
    (
        "ADetailer use separate sampler",
        ["ADetailer use separate sampler", "ADetailer sampler", "ADetailer scheduler"],
        _NOTHING,
    ),
    ("ADetailer scheduler", None, "Use same scheduler"),
    (
        "ADetailer use separate noise multiplier",
        ["ADetailer use separate noise multiplier", "ADetailer noise multiplier"],
        _NOTHING,
    ),
    (
        "ADetailer use separate CLIP skip",
        ["ADetailer use separate CLIP skip", "ADetailer CLIP skip"],
        _NOTHING,
    ),
    ("ADetailer restore face", None, _NOTHING),
    (
        "ADetailer ControlNet model",
        [
            "ADetailer ControlNet model",
            "ADetailer ControlNet module",
            "ADetailer ControlNet weight",
            "ADetailer ControlNet guidance start",
            "ADetailer ControlNet guidance end",
        ],
        "None",
    ),
    ("ADetailer ControlNet module", None, "None"),
    ("ADetailer ControlNet weight", None, 1.0),
    ("ADetailer ControlNet guidance start", None, 0.0),
    ("ADetailer ControlNet guidance end", None, 1.0),
]


def _ordinal(n: int) -> str:
    suffixes = {1: "st", 2: "nd", 3: "rd"}
    return str(n) + ("th" if 11 <= n % 100 <= 13 else suffixes.get(n % 10, "th"))


def _ad_params(args: ADetailerArgs, n: int) -> dict[str, Any]:
    if args.ad_model == "None" or args.ad_tap_enable is False:
        return {}
    p = {name: getattr(args, attr) for attr, name in _AD_NAMES}
    p.pop("ADetailer tap enable", None)
    for key, pops, cond in _AD_POPS:
        if key not in p:
            continue
        value = p[key]
        if (not bool(value)) if cond is _NOTHING else value == cond:
            for k in pops or [key]:
                p.pop(k, None)
    suffix = "" if n == 0 else " " + _ordinal(n + 1)
    return {k + suffix: v for k, v in p.items()}


def adetailer(slots: list[Any], *, models: list[str], result: ScriptResult) -> None:
    """ADetailer's `process` (infotext) and `postprocess_image` (the inpaint passes)."""
    dicts = [arg for arg in slots if isinstance(arg, dict)]
    if not slots or not dicts:
        log.warning("ADetailer: Invalid arguments passed to ADetailer; ADetailer disabled")
        return
    enabled = slots[0] if isinstance(slots[0], bool) else True
    if not (enabled and any(d.get("ad_model", "None") != "None" for d in dicts)):
        return
    try:
        parsed = [ADetailerArgs(**d) for d in dicts]
    except (ValidationError, TypeError) as exc:
        log.warning("ADetailer: ValidationError when validating arguments: %s", exc)
        return
    for n, args in enumerate(parsed):
        result.params.update(_ad_params(args, n))
    result.params["ADetailer version"] = ADETAILER_VERSION
    wanted = [a.ad_model for a in parsed if a.ad_model != "None"]
    if all(m in models or m.lower().startswith("mediapipe") for m in wanted):
        result.applied.append(ADETAILER)
    else:
        log.warning("ADetailer: Model not found among %s; image left as it was", models)
