"""How many pixels the core decodes: a cap that every image read in the core goes through.

A PNG of zeros compresses about a thousand to one, so a 400 KB file can be a 20000 x 20000
image that takes 1.6 GB once decoded (Pillow keeps RGB as four bytes a pixel). The cap is
8192 x 8192 (64 Mi pixels, 256 MiB decoded at most): it admits the largest images Forge makes in
practice (a 4x upscale of 2048 x 2048; GenerationParams allows at most 4096 x 4096 before hires),
and it is well below what Pillow refuses on its own (about 179 M pixels, twice its 89 M warning).

Importing this module also lowers Pillow's own process-wide guard to the cap, so an
`Image.open` anywhere in the process refuses what is more than twice the cap, and silences
Pillow's warning between the cap and that: the explicit check here refuses those images anyway.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

from PIL import Image, PngImagePlugin

MAX_PIXELS = 8192 * 8192

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageTooLarge(ValueError):
    """An image with more pixels than the core decodes."""

    @classmethod
    def of_size(cls, width: int, height: int) -> ImageTooLarge:
        return cls(
            f"{width}x{height} is {width * height / 1e6:.0f} M pixels, over the "
            f"{MAX_PIXELS / 1e6:.0f} M pixels the core decodes"
        )


def check_pixels(width: int, height: int) -> None:
    """Raise ImageTooLarge when a width x height image is over the cap."""
    if max(1, width) * max(1, height) > MAX_PIXELS:
        raise ImageTooLarge.of_size(width, height)


def _open(source: str | Path | IO[bytes]) -> Image.Image:
    """A PNG through Pillow's PNG reader itself, so its size is known (and named in the error)
    however big it is; anything else through `Image.open`, whose guard refuses what is over
    twice the cap before the size can be checked here."""
    try:
        return PngImagePlugin.PngImageFile(source)
    except SyntaxError:  # not a PNG
        if not isinstance(source, str | Path):
            source.seek(0)
    try:
        return Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{exc} (the core decodes at most {MAX_PIXELS / 1e6:.0f} M)") from None


def open_capped(source: str | Path | IO[bytes], *, draft: int | None = None) -> Image.Image:
    """The image, opened; ImageTooLarge when what would be decoded is over the cap.

    `draft`: ask for a reduced decode first (JPEG decodes at 1/2 to 1/8 scale for free), so a
    big JPEG that shrinks under the cap is still readable. Nothing is decoded here.
    """
    image = _open(source)
    try:
        if draft is not None:
            image.draft("RGB", (draft, draft))
        check_pixels(*image.size)
    except BaseException:
        image.close()
        raise
    return image
