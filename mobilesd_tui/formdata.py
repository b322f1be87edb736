"""The Generator form as data: `generation_params` into the texts its widgets show, and back.

Loading a job's params (a gallery image's `g`, a Civitai import, editing a pending job) must not
lose anything, so a re-run is the same job. Two rules make that so:

* Fields the form has no widget for (the ADetailer/ControlNet blocks, `extra`, keys a newer core
  knows) are carried unchanged: `Loaded.carried`.
* A shown field whose widgets still hold exactly what loading put there is sent as it was loaded,
  not re-parsed from its text: a float's text, a style name with a comma or a prompt with a
  `\\r` (which the text area normalises) come back as they went in. Only what the user changed
  is parsed from the text.

The TUI does not validate: text that is not a number is sent as typed, for the core's 422 to
name the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

INT_RE = re.compile(r"^[+-]?\d+$")
FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

# Widget values by key. Inputs hold text, the hires checkbox a bool, the pickers their value
# (None: "server's current" / "automatic"), `loras` a list of (name, weight text).
FormValues = dict[str, Any]

INT_FIELDS = ("width", "height", "steps", "seed", "n_iter", "batch_size", "subseed")
FLOAT_FIELDS = ("cfg_scale", "subseed_strength")
OPTIONAL_INT_FIELDS = ("clip_skip",)
OPTIONAL_FLOAT_FIELDS = ("distilled_cfg_scale", "refiner_switch_at")
LIST_FIELDS = ("styles", "modules")  # comma-separated in one input
HIRES_WIDGETS = ("hires", "hr_upscaler", "hr_scale", "hr_steps", "hr_denoising_strength")
# The first ADetailer unit's main settings; its other settings and further units are kept.
AD_WIDGETS = ("ad_model", "ad_prompt", "ad_confidence", "ad_denoising_strength")

# What the form shows of each params field: the widget keys that make it.
SHOWN: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt",),
    "negative_prompt": ("negative_prompt",),
    "checkpoint_name": ("checkpoint_name",),
    "loras": ("loras",),
    "sampler_name": ("sampler_name",),
    "scheduler": ("scheduler",),
    "refiner_checkpoint": ("refiner_checkpoint",),
    **{name: (name,) for name in INT_FIELDS + FLOAT_FIELDS},
    **{name: (name,) for name in OPTIONAL_INT_FIELDS + OPTIONAL_FLOAT_FIELDS + LIST_FIELDS},
    "hires": HIRES_WIDGETS,
    "adetailer": AD_WIDGETS,
}
# The schema's defaults (mobilesd_core/schema.py GenerationParams) for fields a partial dict
# (an old prefs file, a hand-made job) leaves out.
DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "checkpoint_name": None,
    "loras": [],
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0.0,
    "width": 512,
    "height": 512,
    "steps": 20,
    "cfg_scale": 7.0,
    "distilled_cfg_scale": None,
    "sampler_name": "Euler",
    "scheduler": None,
    "batch_size": 1,
    "n_iter": 1,
    "styles": [],
    "clip_skip": None,
    "hires": None,
    "modules": [],
    "refiner_checkpoint": None,
    "refiner_switch_at": None,
    "adetailer": None,
}
HIRES_DEFAULTS: dict[str, Any] = {
    "upscaler": "Latent",
    "scale": 2.0,
    "steps": 0,
    "denoising_strength": 0.7,
}
# Carried fields whose value is their default: not worth a "+ N more settings" line.
_EMPTY_CARRIED: tuple[Any, ...] = (None, {}, [])


def number(text: str, *, integer: bool) -> Any:
    """The typed text as a number when it is one; else the text, for the API to reject."""
    text = text.strip()
    if integer and INT_RE.match(text):
        return int(text)
    if not integer and FLOAT_RE.match(text):
        value = float(text)
        plain = "." not in text and "e" not in text.lower()
        return int(value) if value.is_integer() and plain else value
    return text


def optional_number(text: str, *, integer: bool) -> Any:
    """Blank is None (the field is off); else as number()."""
    return None if not text.strip() else number(text, integer=integer)


def show_number(value: Any) -> str:
    """A number as the user would type it: 7, not 7.0; exact (repr) otherwise."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def show_list(values: Any) -> str:
    return ", ".join(str(v) for v in values) if isinstance(values, list) else str(values or "")


def parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass
class Loaded:
    """What the form was last loaded with: the params, and the widgets' values right after."""

    params: dict[str, Any] = field(default_factory=dict)
    values: FormValues = field(default_factory=dict)

    @property
    def carried(self) -> dict[str, Any]:
        """Fields the form has no widget for, sent unchanged."""
        return {k: v for k, v in self.params.items() if k not in SHOWN}

    def more(self) -> list[str]:
        """Names of the carried fields that hold something (the "+ N more settings" line)."""
        return [k for k, v in self.carried.items() if v not in _EMPTY_CARRIED]


def to_form(params: dict[str, Any]) -> FormValues:
    """The widget values that show `params` (missing fields: the schema's defaults)."""
    p = {**DEFAULTS, **params}
    values: FormValues = {
        "prompt": str(p["prompt"] or ""),
        "negative_prompt": str(p["negative_prompt"] or ""),
        "checkpoint_name": p["checkpoint_name"],
        "sampler_name": p["sampler_name"],
        "scheduler": p["scheduler"],
        "refiner_checkpoint": str(p["refiner_checkpoint"] or ""),
        "loras": [
            (str(lora.get("name")), show_number(lora.get("weight", 1.0)))
            for lora in p["loras"] or []
            if isinstance(lora, dict) and lora.get("name")
        ],
    }
    for name in INT_FIELDS + FLOAT_FIELDS + OPTIONAL_INT_FIELDS + OPTIONAL_FLOAT_FIELDS:
        values[name] = show_number(p[name])
    for name in LIST_FIELDS:
        values[name] = show_list(p[name])
    hires = p["hires"]
    values["hires"] = isinstance(hires, dict)
    h = {**HIRES_DEFAULTS, **(hires if isinstance(hires, dict) else {})}
    values["hr_upscaler"] = str(h["upscaler"])
    values["hr_scale"] = show_number(h["scale"])
    values["hr_steps"] = show_number(h["steps"])
    values["hr_denoising_strength"] = show_number(h["denoising_strength"])
    first = _first_unit(p["adetailer"])
    values["ad_model"] = str(first.get("model", ""))
    values["ad_prompt"] = str(first.get("prompt", ""))
    values["ad_confidence"] = show_number(first.get("confidence", 0.3))
    values["ad_denoising_strength"] = show_number(first.get("denoising_strength", 0.4))
    return values


def _first_unit(units: Any) -> dict[str, Any]:
    return (
        dict(units[0]) if isinstance(units, list) and units and isinstance(units[0], dict) else {}
    )


def parse_field(name: str, values: FormValues, loaded: dict[str, Any] | None = None) -> Any:
    """One params field from the widgets' values (`loaded`: the params the form was loaded
    with, for what of a field the form does not show)."""
    if name in INT_FIELDS:
        return number(values[name], integer=True)
    if name in FLOAT_FIELDS:
        return number(values[name], integer=False)
    if name in OPTIONAL_INT_FIELDS:
        return optional_number(values[name], integer=True)
    if name in OPTIONAL_FLOAT_FIELDS:
        return optional_number(values[name], integer=False)
    if name in LIST_FIELDS:
        return parse_list(values[name])
    if name == "loras":
        return [
            {"name": lora_name, "weight": number(weight, integer=False)}
            for lora_name, weight in values["loras"]
        ]
    if name == "refiner_checkpoint":
        return values[name].strip() or None
    if name == "hires":
        if not values["hires"]:
            return None
        return {
            "upscaler": values["hr_upscaler"].strip(),
            "scale": number(values["hr_scale"], integer=False),
            "steps": number(values["hr_steps"], integer=True),
            "denoising_strength": number(values["hr_denoising_strength"], integer=False),
        }
    if name == "adetailer":
        model = values["ad_model"].strip()
        if not model:
            return None
        units = (loaded or {}).get("adetailer")
        first = _first_unit(units)
        first.update(
            model=model,
            prompt=values["ad_prompt"],
            confidence=number(values["ad_confidence"], integer=False),
            denoising_strength=number(values["ad_denoising_strength"], integer=False),
        )
        return [first, *(units[1:] if isinstance(units, list) else [])]
    return values[name]  # prompts and pickers: as they are


def from_form(values: FormValues, loaded: Loaded | None = None) -> dict[str, Any]:
    """The `generation_params` the form sends: every shown field (None where it is off, so an
    edit of a pending job clears it too), then the carried ones."""
    loaded = loaded or Loaded()
    params: dict[str, Any] = {}
    for name, keys in SHOWN.items():
        untouched = name in loaded.params and all(
            k in loaded.values and values.get(k) == loaded.values[k] for k in keys
        )
        params[name] = (
            loaded.params[name] if untouched else parse_field(name, values, loaded.params)
        )
    params.update(loaded.carried)
    return params
