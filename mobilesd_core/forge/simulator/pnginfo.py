"""`POST /sdapi/v1/png-info`: what Forge's PNG Info reads from an image.

Follows `pnginfoapi` (`decode_base64_to_image`, `images.read_info_from_image`,
`infotext_utils.parse_generation_parameters`): the `parameters` text chunk, the image's other
text items, and the text split into fields. Forge's parser also fills in ~20 defaults for
fields the text does not have ("Clip skip", "Hires sampler", ...); the simulator gives only the
fields the text has, values as the strings Forge keeps them as.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..infotext import parse_infotext
from .request import detail_error

# Forge's IGNORED_INFO_KEYS: image facts, not generation info.
_IGNORED = {
    "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
    "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity",
    "photoshop",
}  # fmt: skip


def parse_generation_parameters(text: str) -> dict[str, Any]:
    raw = parse_infotext(text)
    out: dict[str, Any] = {
        "Prompt": raw.pop("prompt"),
        "Negative prompt": raw.pop("negative_prompt"),
    }
    for key, value in raw.items():
        out[key] = value
        if key in ("Size", "Hires resize") and "x" in str(value):
            first, _, second = str(value).partition("x")
            out[f"{key}-1"], out[f"{key}-2"] = first, second
            del out[key]
    return out


def read_png_info(encoded: Any) -> dict[str, Any]:
    if not isinstance(encoded, str):
        raise detail_error(
            422,
            [{"type": "missing", "loc": ["body", "image"], "msg": "Field required", "input": None}],
        )
    encoded = encoded.strip()
    if encoded.startswith("data:image/"):
        encoded = encoded.split(";")[1].split(",")[1]
    try:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            items = dict(image.info or {})
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise detail_error(500, "Invalid encoded image") from None
    text = items.pop("parameters", None) or ""
    for key in _IGNORED:
        items.pop(key, None)
    items = {k: v if isinstance(v, str | int | float) else str(v) for k, v in items.items()}
    return {"info": text, "items": items, "parameters": parse_generation_parameters(text)}
