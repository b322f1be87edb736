"""`/extra-single-image` and `/extra-batch-images`: Forge's "Extras" upscale, as
`scripts/postprocessing_upscale.py` and `modules/postprocessing.run_postprocessing` do it.

`upscaler_1` "None" (the default) leaves the picture as it is; an unknown upscaler is an
AssertionError 500 `could not find upscaler named X`; the size is `(side * scale) // 8 * 8`
(`Upscaler.upscale`); resize mode 1 scales to cover `upscaling_resize_w x h`, then crops (a
centred paste) when `upscaling_crop`. The answer's `html_info` is the postprocessing infotext as
`plaintext_to_html` writes it; the PNG keeps the input's own text chunks, not this infotext
(Forge only writes that into files it saves).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from PIL import Image, ImageFilter
from PIL.PngImagePlugin import PngInfo

from mobilesd_core.forge.infotext import quote

from .catalog import UPSCALERS
from .request import ExtrasRequest, forge_500

_NAMES = {u["name"] for u in UPSCALERS}


def _find(name: str) -> str | None:
    if name == "None":
        return None
    if name not in _NAMES:
        raise forge_500("AssertionError", f"could not find upscaler named {name}")
    return name


def _scaled(image: Image.Image, req: ExtrasRequest, info: dict[str, Any]) -> Image.Image:
    if req.resize_mode == 1:
        width, height = req.upscaling_resize_w, req.upscaling_resize_h
        scale = max(width / image.width, height / image.height)
        info["Postprocess upscale to"] = f"{width}x{height}"
    else:
        scale = req.upscaling_resize
        info["Postprocess upscale by"] = scale
    dest = (max(1, int(image.width * scale // 8 * 8)), max(1, int(image.height * scale // 8 * 8)))
    out = image.resize(dest, Image.Resampling.LANCZOS)
    if req.resize_mode == 1 and req.upscaling_crop:
        width, height = req.upscaling_resize_w, req.upscaling_resize_h
        cropped = Image.new("RGB", (width, height))
        cropped.paste(out, (width // 2 - out.width // 2, height // 2 - out.height // 2))
        out = cropped
        info["Postprocess crop to"] = f"{width}x{height}"
    return out


def upscale(image: Image.Image, req: ExtrasRequest) -> tuple[Image.Image, dict[str, Any]]:
    """One picture through the Upscale postprocessing script; its `pp.info`."""
    info: dict[str, Any] = {}
    first = _find(req.upscaler_1)
    if first is None:
        return image, info
    second = None if req.upscaler_2 == "None" else req.upscaler_2
    if second is not None and second not in _NAMES:
        raise forge_500("AssertionError", f"could not find upscaler named {second}")
    source = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    out = _scaled(source, req, info)
    info["Postprocess upscaler"] = first
    if second is not None and req.extras_upscaler_2_visibility > 0:
        # A different upscaler gives a slightly different picture: a softer one here.
        other = out.filter(ImageFilter.SMOOTH_MORE)
        out = Image.blend(out, other, req.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = second
    out.info = dict(image.info)
    return out, info


def png_base64(image: Image.Image) -> str:
    """`encode_pil_to_base64`: a PNG with the picture's text items (the input's infotext)."""
    meta = PngInfo()
    texts = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    for key, value in texts.items():
        meta.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=meta if texts else None, compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def html_info(info: dict[str, Any]) -> str:
    """The infotext of the last picture, through `ui_common.plaintext_to_html`."""
    text = ", ".join(
        key if key == value else f"{key}: {quote(value)}"
        for key, value in info.items()
        if value is not None
    )
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"
