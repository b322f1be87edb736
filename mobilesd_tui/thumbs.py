"""Gallery pictures for the terminal: fetched lazily, decoded off the loop, kept in a small LRU.

Which widget draws them is decided once, before the app starts (textual-image asks the terminal
what it can do at import: Sixel, Kitty graphics, else coloured half-blocks). Where that check
finds no terminal we still use half-blocks: Textual renders colour itself, on SSH and in tmux.
"""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict
from typing import Any, Protocol

from PIL import Image as PILImage
from textual.widget import Widget

from .api_client import CoreApi

THUMB_PIXELS = 192  # enough for a Sixel/Kitty tile; half-blocks scale further down
PREVIEW_PIXELS = 1024


class ImageWidget(Protocol):
    """What draws a picture: textual-image's widget classes (`HalfcellImage`, `Image`)."""

    def __call__(self, image: PILImage.Image, *, id: str | None = None) -> Widget: ...


def pick_image_widget() -> ImageWidget:
    """The best image widget for this terminal. Call before `App.run()` (it queries the tty)."""
    from textual_image.renderable import Image as Renderable
    from textual_image.renderable.unicode import Image as UnicodeRenderable
    from textual_image.widget import HalfcellImage, Image

    if Renderable is UnicodeRenderable:
        return HalfcellImage
    return Image


def halfcell_widget() -> ImageWidget:
    """Forced half-blocks: deterministic output for tests and snapshots."""
    from textual_image.widget import HalfcellImage

    return HalfcellImage


def decode(data: bytes, pixels: int) -> PILImage.Image:
    opened = PILImage.open(io.BytesIO(data))
    opened.draft("RGB", (pixels, pixels))  # JPEGs decode smaller for free
    image = opened.convert("RGB")
    image.thumbnail((pixels, pixels))
    return image


class ImageLoader:
    """Fetch and decode gallery images; at most `parallel` requests at once, each URL once."""

    def __init__(self, api: CoreApi, *, size: int = 300, parallel: int = 4) -> None:
        self.api = api
        self.size = size
        self._cache: OrderedDict[str, PILImage.Image] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[PILImage.Image]] = {}
        self._gate = asyncio.Semaphore(parallel)

    def cached(self, url: str) -> PILImage.Image | None:
        image = self._cache.get(url)
        if image is not None:
            self._cache.move_to_end(url)
        return image

    async def get(self, url: str, pixels: int = THUMB_PIXELS) -> PILImage.Image:
        image = self.cached(url)
        if image is not None:
            return image
        if url in self._inflight:
            return await asyncio.shield(self._inflight[url])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[url] = future
        try:
            async with self._gate:
                data = await self.api.fetch_bytes(url)
            image = await asyncio.to_thread(decode, data, pixels)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a failed thumbnail is not an unhandled error
            raise
        finally:
            self._inflight.pop(url, None)
        future.set_result(image)
        self._cache[url] = image
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return image

    def forget(self, url: str) -> None:
        self._cache.pop(url, None)
