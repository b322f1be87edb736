"""Thumbnails: JPEGs in the gallery's `.thumbs` folder, made on first request and reused while
the image is unchanged (a thumbnail carries its image's mtime)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from ..durable import TMP_PREFIX
from ..images import open_capped
from .errors import GalleryError, NoThumbnail
from .png import IMAGE_ERRORS

log = logging.getLogger(__name__)

THUMBS_DIR = ".thumbs"
# Thumbnails decoded at once: each can take up to 256 MiB (an image at the pixel cap), and the
# work is CPU bound, so more would only add memory; the default executor stays free for saves.
THUMBNAIL_DECODES = 2


def thumbnail_name(image_name: str) -> str:
    return image_name + ".jpg"


class Thumbnails:
    """The thumbnails of one gallery folder. `resolve` gives an image's real path (raising
    ImageNotFound or UnsafeName); `root` the gallery folder's real path."""

    def __init__(
        self, *, size: int, root: Callable[[], Path], resolve: Callable[[str], Path]
    ) -> None:
        self.size = size
        self._root = root
        self._resolve = resolve
        self._tasks: dict[str, asyncio.Future[Path]] = {}
        self._slots = asyncio.Semaphore(THUMBNAIL_DECODES)
        # name -> (mtime of the image, why) when its thumbnail failed: the image is not decoded
        # again until it changes, and the log says it once, not on every request.
        self._failed: dict[str, tuple[int, str]] = {}

    async def path(self, name: str) -> Path:
        """A JPEG thumbnail of the checked image name `name` (longest side at most `size`),
        made once and then reused. Concurrent requests for one image share one piece of work."""
        task = self._tasks.get(name)
        if task is None:
            task = asyncio.ensure_future(self._in_thread(name))
            self._tasks[name] = task

            def _forget(done: asyncio.Future[Path], name: str = name) -> None:
                if self._tasks.get(name) is done:
                    del self._tasks[name]
                if not done.cancelled():
                    done.exception()  # retrieved, so an unawaited failure is not logged twice

            task.add_done_callback(_forget)
        # shield: one cancelled request must not cancel the work others are waiting for.
        return await asyncio.shield(task)

    async def _in_thread(self, name: str) -> Path:
        async with self._slots:
            return await asyncio.to_thread(self._ensure, name)

    def _ensure(self, name: str) -> Path:
        src = self._resolve(name)
        dst = thumbs_folder(self._root()) / thumbnail_name(name)
        try:
            src_mtime = src.stat().st_mtime_ns
            if _is_own_thumbnail(dst, src_mtime):
                return dst
        except OSError as exc:
            raise GalleryError(f"cannot make a thumbnail of {name!r}: {exc}") from exc
        failed = self._failed.get(name)
        if failed is not None and failed[0] == src_mtime:
            raise NoThumbnail(f"no thumbnail for {name!r}: {failed[1]}")
        try:
            _make_thumbnail(src, dst, self.size, src_mtime)
        except IMAGE_ERRORS as exc:  # ImageTooLarge is a ValueError
            if isinstance(exc, OSError) and exc.errno is not None:
                # The disk (full, read-only), not the image: try again next time. Pillow's own
                # decoding errors are OSErrors without an errno.
                raise GalleryError(f"cannot make a thumbnail of {name!r}: {exc}") from exc
            self._failed[name] = (src_mtime, str(exc))
            log.warning("gallery: no thumbnail for %s: %s", name, exc)
            raise NoThumbnail(f"no thumbnail for {name!r}: {exc}") from exc
        self._failed.pop(name, None)
        return dst


def thumbs_folder(root: Path) -> Path:
    """`.thumbs`, made if missing; a link there (made after start) is refused, as at start."""
    thumbs = root / THUMBS_DIR
    try:
        thumbs.mkdir(exist_ok=True)
        st = os.lstat(thumbs)
    except OSError as exc:
        raise GalleryError(f"cannot use {thumbs}: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise GalleryError(f"{thumbs} must be a folder inside the gallery, not a link")
    return thumbs


def remove_stale(root: Path, image_names: set[str]) -> int:
    """Remove temp files and thumbnails of images no longer there; return how many went."""
    removed = 0
    with os.scandir(root / THUMBS_DIR) as it:
        for entry in it:
            stale = entry.name.startswith(TMP_PREFIX) or (
                entry.name.endswith(".jpg") and entry.name[:-4] not in image_names
            )
            if stale and not entry.is_dir(follow_symlinks=False):
                try:
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
                except OSError as exc:
                    log.warning("gallery: cannot remove stale thumbnail %s: %s", entry.name, exc)
    return removed


def _make_thumbnail(src: Path, dst: Path, size: int, src_mtime_ns: int) -> None:
    """Write a JPEG thumbnail whose mtime is the mtime of the image it was made from.
    ImageTooLarge, before any pixel is decoded, when the image is over the pixel cap."""
    # draft: a JPEG decodes at a reduced scale (a no-op for PNG), so only that size is capped.
    with open_capped(src, draft=size) as im:
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        if "A" in im.getbands() or "transparency" in im.info:
            rgba = im.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
        else:
            flat = im.convert("RGB")
    out = io.BytesIO()
    flat.save(out, format="JPEG", quality=85, optimize=True)
    tmp = dst.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-{dst.name}")
    try:
        with open(tmp, "xb") as f:
            f.write(out.getvalue())
        # Stamped with the mtime read before the image was opened: if the image is replaced
        # while this runs, the thumbnail comes out older than the new image and is made again.
        os.utime(tmp, ns=(src_mtime_ns, src_mtime_ns))
        os.replace(tmp, dst)  # a cache: no fsync, a lost thumbnail is simply made again
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_own_thumbnail(dst: Path, src_mtime_ns: int) -> bool:
    """Whether `dst` is a thumbnail MobileSD made of the image as it is now. Only MobileSD
    writes `.thumbs`, and never a link: a link (or a FIFO, a socket) found under the name is
    removed, not followed, so a fresh thumbnail replaces it."""
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode):
        return st.st_mtime_ns >= src_mtime_ns
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{dst.name} in {THUMBS_DIR} is a folder")
    log.warning("gallery: removing %s from %s: not a thumbnail MobileSD made", dst.name, THUMBS_DIR)
    dst.unlink()
    return False
