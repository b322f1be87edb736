"""Names and file handling in the gallery folder: which names are images, opening without
following links, removing a directory entry."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import IO

from .errors import UnsafeName

# ':' is refused too: SMB shares and Windows clients cannot hold it, and `C:x.png` is a drive path.
_BAD_NAME_CHARS = re.compile(r"[/\\:\x00-\x1f\x7f]")


def check_name(filename: str) -> str:
    """Return `filename` if it is a bare, visible `.png` name; raise UnsafeName otherwise.

    Any characters but separators, control characters and ':' are allowed, because a user's own
    images in the folder ("Holiday (2).png") must stay listable and deletable.
    """
    if not isinstance(filename, str) or not filename or filename in (".", ".."):
        raise UnsafeName(f"not an image name: {filename!r}")
    if _BAD_NAME_CHARS.search(filename) or filename.startswith(".") or filename != filename.strip():
        raise UnsafeName(f"not a plain image name: {filename!r}")
    if not filename.lower().endswith(".png") or len(filename) <= 4:
        raise UnsafeName(f"not a .png image name: {filename!r}")
    try:
        too_long = len(filename.encode("utf-8")) > 255
    except UnicodeEncodeError:  # lone surrogates from a badly decoded URL
        raise UnsafeName(f"not a plain image name: {filename!r}") from None
    if too_long:
        raise UnsafeName("image name longer than 255 bytes")
    return filename


def is_listable_name(name: str) -> bool:
    try:
        check_name(name)
    except UnsafeName:
        return False
    return True


def sidecar_name(image_name: str) -> str:
    """`<stem>.json` beside `<stem>.png`."""
    return image_name[:-4] + ".json"


def open_regular(path: Path) -> IO[bytes]:
    """Open a gallery file for reading: never through a symlink, never anything but a regular
    file (O_NONBLOCK: a FIFO planted under a gallery name must not hang the thread)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def unlink_entry(path: Path) -> None:
    """Remove a directory entry (a file or a symlink itself), never following a link."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
