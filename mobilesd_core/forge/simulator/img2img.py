"""img2img and inpaint pictures: the init image, resized and masked as Forge does, blended with
the simulated generation so a test can see that the init image and the mask were used.

Follows `StableDiffusionProcessingImg2Img.init` (`modules/processing.py`): the mask is made
binary (`create_binary_mask`), inverted with `inpainting_mask_invert`, blurred by `mask_blur`;
with `inpaint_full_res` ("Only masked") the output keeps the init image's size and only the
masked area changes; a blank mask there falls back to a plain img2img of the whole picture.
Without it, init image and mask are resized to width x height by `resize_mode`
(`images.resize_image`: 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent = 0).
The picture outside the mask is the init image, byte for byte, as Forge's overlay makes it.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from . import images
from .request import detail_error, forge_500

MASKED_CONTENT = {0: "fill", 2: "latent noise", 3: "latent nothing"}
"""`inpainting_fill` -> "Masked content" in the infotext (1, "original", writes nothing)."""


def decode_image(encoding: Any) -> Image.Image:
    """Forge's `decode_base64_to_image`: a data URL prefix is dropped; anything that is not an
    image is a 500 with `{"detail": "Invalid encoded image"}` (an HTTPException there). URLs are
    fetched by Forge unless they point at local resources; the simulator fetches nothing and
    answers what Forge answers for a local one."""
    if not isinstance(encoding, str):
        raise detail_error(500, "Invalid encoded image")
    if encoding.startswith(("http://", "https://")):
        raise detail_error(500, "Request to local resource not allowed")
    if encoding.startswith("data:image/"):
        try:
            encoding = encoding.split(";")[1].split(",")[1]
        except IndexError:
            raise detail_error(500, "Invalid encoded image") from None
    try:
        with Image.open(io.BytesIO(base64.b64decode(encoding))) as image:
            image.load()
            return image.copy()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise detail_error(500, "Invalid encoded image") from None


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """`modules/images.resize_image` for the modes an API client sends."""
    if mode == 1:
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    if mode == 2:
        ratio, src_ratio = width / height, image.width / image.height
        w = width if ratio < src_ratio else image.width * height // image.height
        h = height if ratio >= src_ratio else image.height * width // image.width
        resized = image.resize((max(1, w), max(1, h)), Image.Resampling.LANCZOS)
        canvas = Image.new(image.mode, (width, height))
        canvas.paste(resized, ((width - resized.width) // 2, (height - resized.height) // 2))
        return canvas
    return image.resize((width, height), Image.Resampling.LANCZOS)


@dataclass
class Inpaint:
    """What the mask settings mean for one img2img, and the infotext keys `init()` adds."""

    mask: Image.Image | None
    """Final mask (L, 255 = repaint) at the output size; None: the whole picture changes."""
    full_res: bool
    params: dict[str, Any] = field(default_factory=dict)


def _binary_mask(mask: Image.Image, round_: bool) -> Image.Image:
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.split()[-1].convert("L")
        return alpha.point(lambda x: 255 if x > 128 else 0) if round_ else alpha
    return mask.convert("L")


def plan_inpaint(req: Any, init_size: tuple[int, int], mask: Image.Image | None) -> Inpaint:
    """The mask handling of `init()`, and its infotext keys in Forge's order."""
    if mask is None:
        return Inpaint(None, False)
    params: dict[str, Any] = {}
    blur_x = req.mask_blur_x if req.mask_blur_x is not None else 4
    blur_y = req.mask_blur_y if req.mask_blur_y is not None else 4
    if isinstance(req.mask_blur, int):
        blur_x = blur_y = req.mask_blur
    final = _binary_mask(mask, req.mask_round is not False)
    if req.inpainting_mask_invert:
        final = ImageOps.invert(final)
        params["Mask mode"] = "Inpaint not masked"
    if blur_x > 0 or blur_y > 0:
        final = final.filter(ImageFilter.GaussianBlur(max(blur_x, blur_y)))
        params["Mask blur"] = blur_x if blur_x == blur_y else None
    full_res = req.inpaint_full_res is not False
    if full_res:
        if final.getbbox() is None:
            # Forge: 'Unable to perform "Inpaint Only mask" because mask is blank, switch to
            # img2img mode.' The whole picture is redone, without a mask.
            return Inpaint(None, False, params)
        params["Inpaint area"] = "Only masked"
        params["Masked area padding"] = req.inpaint_full_res_padding or 0
        final = final.resize(init_size, Image.Resampling.NEAREST)
    fill = req.inpainting_fill if req.inpainting_fill is not None else 0
    if fill in MASKED_CONTENT:
        params["Masked content"] = MASKED_CONTENT[fill]
    return Inpaint(final, full_res, params)


def render(
    init: Image.Image,
    inpaint: Inpaint,
    *,
    req: Any,
    seed: int,
    prompt: str,
    width: int,
    height: int,
    completion: float,
) -> Image.Image:
    """One output picture: the generation blended into the init image by denoising strength,
    inside the mask only when there is one."""
    base = init.convert("RGB")
    mode = req.resize_mode if req.resize_mode is not None else 0
    if not inpaint.full_res:
        base = resize_image(mode, base, width, height)
    size = base.size
    strength = min(max(float(req.denoising_strength or 0.0), 0.0), 1.0)
    mask = inpaint.mask
    if mask is not None and mask.size != size:
        # Resized like the picture (a mask of another size is not an error in Forge).
        mask = resize_image(mode, mask, *size)
    source = base
    fill = req.inpainting_fill if req.inpainting_fill is not None else 0
    if mask is not None and fill != 1:
        source = _masked_source(base, fill, seed)
    generated = images.render(seed, prompt, *size, completion)
    mixed = Image.blend(source, generated, strength)
    if mask is None:
        return mixed
    return Image.composite(mixed, base, mask)


def _masked_source(base: Image.Image, fill: int, seed: int) -> Image.Image:
    """What the sampler starts from under the mask: `masking.fill` (0), latent noise (2),
    nothing (3)."""
    if fill == 0:
        return base.filter(ImageFilter.BoxBlur(max(base.size) // 4 or 1))
    if fill == 2:
        return images.render(seed, "latent noise", *base.size, 0.0)
    return Image.new("RGB", base.size)


def validate_batch(count: int, batch_size: int) -> int:
    """Forge's batch rule for init images: one is repeated, up to batch_size are the batch."""
    if count == 0:
        raise forge_500("IndexError", "list index out of range")
    if count == 1:
        return batch_size
    if count <= batch_size:
        return count
    raise forge_500(
        "RuntimeError", f"bad number of images passed: {count}; expecting {batch_size} or less"
    )
