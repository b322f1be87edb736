"""Cheap, deterministic pictures standing in for what Stable Diffusion would draw.

The picture depends only on seed, prompt and size (colours and shapes come from their sha256), so
a test can compare bytes. An image cut short by interrupt or skip is blended with blocky noise and
darkened, like a partly denoised latent. Encoding uses zlib level 1: the simulator must be fast.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import random

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

PREVIEW_EDGE = 64


def render(seed: int, prompt: str, width: int, height: int, completion: float = 1.0) -> Image.Image:
    digest = hashlib.sha256(f"{seed}\0{prompt}\0{width}x{height}".encode()).digest()
    corners = Image.new("RGB", (2, 2))
    corners.putdata([(digest[i], digest[i + 1], digest[i + 2]) for i in (0, 3, 6, 9)])
    image = corners.resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    for k in range(4):
        b = digest[12 + k * 4 : 16 + k * 4]
        cx, cy = b[0] * width // 255, b[1] * height // 255
        r = (b[2] % 48 + 16) * short // 255
        colour = (b[3], digest[31 - k], digest[27 - k])
        box = (cx - r, cy - r, cx + r, cy + r)
        if k % 2:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle((cx - r, cy - r // 2, cx + r, cy + r // 2), fill=colour)
    if completion < 1.0:
        image = _noisy(image, digest, max(0.0, completion))
    return image


def _noisy(image: Image.Image, digest: bytes, completion: float) -> Image.Image:
    width, height = image.size
    nw, nh = max(1, width // 8), max(1, height // 8)
    rng = random.Random(digest)
    noise = Image.frombytes("RGB", (nw, nh), rng.randbytes(nw * nh * 3))
    noise = noise.resize((width, height), Image.Resampling.NEAREST)
    mixed = Image.blend(image, noise, 0.85 * (1.0 - completion))
    return mixed.point(lambda v: int(v * (0.55 + 0.45 * completion)))


def encode_png(image: Image.Image, parameters: str | None = None) -> bytes:
    """PNG bytes; `parameters` goes into a tEXt chunk, or iTXt when it is not Latin-1."""
    info = None
    if parameters is not None:
        info = PngInfo()
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


def png_base64(image: Image.Image, parameters: str | None = None) -> str:
    return base64.b64encode(encode_png(image, parameters)).decode("ascii")


def preview_base64(seed: int, prompt: str, width: int, height: int, completion: float) -> str:
    """The live preview of `/progress`: small, since Forge's is an approximate decode."""
    scale = PREVIEW_EDGE / max(width, height, 1)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return png_base64(render(seed, prompt, w, h, completion))


def grid(images: list[Image.Image]) -> Image.Image:
    """Forge's `image_grid` with its default rows: round(sqrt(n)), as many columns as needed."""
    rows = max(1, min(len(images), round(math.sqrt(len(images)))))
    cols = math.ceil(len(images) / rows)
    w = max(i.width for i in images)
    h = max(i.height for i in images)
    sheet = Image.new("RGB", (cols * w, rows * h), "black")
    for index, image in enumerate(images):
        sheet.paste(image, ((index % cols) * w, (index // cols) * h))
    return sheet
