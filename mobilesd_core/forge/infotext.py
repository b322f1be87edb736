"""A1111/Forge "infotext": the `parameters` text chunk that PNG Info and Civitai read.

Follows `create_infotext` in Forge's `modules/processing.py`: prompt line(s), an optional
`Negative prompt:` line, then one line of `Key: value` pairs joined by `, ` in a fixed order.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

_NEEDS_QUOTE = re.compile(r"[,:\n]")


def quote(value: Any) -> str:
    text = str(value)
    if _NEEDS_QUOTE.search(text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _num(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def build_infotext(
    *,
    prompt: str,
    negative_prompt: str = "",
    steps: int,
    sampler_name: str,
    scheduler: str | None = None,
    cfg_scale: float,
    distilled_cfg_scale: float | None = None,
    seed: int,
    width: int,
    height: int,
    model_name: str | None = None,
    model_hash: str | None = None,
    subseed: int | None = None,
    subseed_strength: float = 0.0,
    clip_skip: int | None = None,
    hires: Mapping[str, Any] | None = None,
    lora_hashes: Mapping[str, str] | None = None,
    version: str | None = None,
    modules: Sequence[str] | None = None,
) -> str:
    """The infotext for one image, in Forge's key order; unset keys are left out."""
    pairs: list[tuple[str, Any]] = [("Steps", steps), ("Sampler", sampler_name)]
    if scheduler and scheduler.lower() != "automatic":
        pairs.append(("Schedule type", scheduler))
    pairs.append(("CFG scale", _num(cfg_scale)))
    if distilled_cfg_scale is not None:
        pairs.append(("Distilled CFG Scale", _num(distilled_cfg_scale)))
    pairs.append(("Seed", seed))
    pairs.append(("Size", f"{width}x{height}"))
    if model_hash:
        pairs.append(("Model hash", model_hash))
    if model_name:
        pairs.append(("Model", model_name))
    if subseed_strength and subseed is not None:
        pairs.append(("Variation seed", subseed))
        pairs.append(("Variation seed strength", _num(subseed_strength)))
    if hires:
        pairs.append(("Denoising strength", _num(hires.get("denoising_strength", 0.7))))
    if clip_skip and clip_skip > 1:
        pairs.append(("Clip skip", clip_skip))
    if hires:
        pairs.append(("Hires upscale", _num(hires.get("scale", 2.0))))
        if hires.get("steps"):
            pairs.append(("Hires steps", hires["steps"]))
        pairs.append(("Hires upscaler", hires.get("upscaler", "Latent")))
        pairs.append(("Hires CFG Scale", _num(cfg_scale)))
    if lora_hashes:
        pairs.append(("Lora hashes", ", ".join(f"{k}: {v}" for k, v in lora_hashes.items())))
    if version:
        pairs.append(("Version", version))
    # Forge: each of forge_additional_modules by its file name without extension, last.
    pairs += [(f"Module {i + 1}", PurePath(m).stem) for i, m in enumerate(modules or [])]

    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in pairs))
    return "\n".join(lines)


_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, Any]:
    """Split an infotext into `prompt`, `negative_prompt` and its `Key: value` pairs."""
    lines = text.strip().split("\n")
    params_line = lines[-1] if len(lines) > 1 or _PAIR.match(lines[-1] or "") else ""
    if params_line and len(_PAIR.findall(params_line)) < 3:
        params_line = ""
    body = lines[:-1] if params_line else lines
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in body:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:") :].strip()
        target.append(line)
    result: dict[str, Any] = {
        "prompt": "\n".join(prompt_lines).strip(),
        "negative_prompt": "\n".join(negative_lines).strip(),
    }
    for key, value in _PAIR.findall(params_line):
        value = value.strip()
        if value.startswith('"'):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        result[key.strip()] = value
    return result


def lora_tags(loras: list[Mapping[str, Any]]) -> str:
    """`<lora:name:weight>` tags, as Forge reads them from the prompt."""
    return " ".join(f"<lora:{lora['name']}:{_num(float(lora['weight']))}>" for lora in loras)


def prompt_with_loras(prompt: str, loras: list[Mapping[str, Any]]) -> str:
    tags = lora_tags(loras)
    return f"{prompt} {tags}" if tags else prompt
