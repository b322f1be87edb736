"""Paths under the inbox that stay under it: no symbolic link is followed, at any depth.

A link in the inbox (`inbox/link -> /elsewhere`) would otherwise let the watcher read files
outside it, queue them and move them into `processed/`. The watcher skips such paths
(`first_link`), and a file is opened one folder at a time with O_NOFOLLOW (`open_inside`), so a
folder swapped for a link between the check and the read is refused too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

# O_NOFOLLOW makes open fail with ELOOP on a link; O_DIRECTORY with ENOTDIR on a non-folder.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class LinkOnPath(OSError):
    """A folder or file on the way is a symbolic link (or no longer a folder)."""


def first_link(root: Path, rel: str) -> str | None:
    """The first part of `rel` (e.g. `link` of `link/job.yaml`) that is a symbolic link, as a
    path relative to the inbox; None when there is none (or the path is gone)."""
    parts = rel.split("/")
    here = root
    for i, part in enumerate(parts):
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(mode):
            return "/".join(parts[: i + 1])
    return None


def open_inside(root: Path, rel: str) -> tuple[int, int]:
    """Open the file `rel` for reading without following a link anywhere below `root`.

    Returns (file fd, fd of its folder); the caller closes both. Raises LinkOnPath when a part
    is a link, FileNotFoundError when it is gone."""
    parts = rel.split("/")
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=folder)
            except OSError as exc:
                _reraise(exc, folder, part, rel)
            os.close(folder)
            folder = inner
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=folder)
        except OSError as exc:
            _reraise(exc, folder, parts[-1], rel)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(folder)
        raise
    return fd, folder


def _reraise(exc: OSError, folder: int, name: str, rel: str) -> None:
    # A link gives ELOOP (a file) or ENOTDIR (a folder, with O_DIRECTORY): tell it apart from a
    # folder that became a file meanwhile.
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            is_link = stat.S_ISLNK(os.lstat(name, dir_fd=folder).st_mode)
        except OSError:
            is_link = False
        if is_link:
            raise LinkOnPath(errno.ELOOP, "a symbolic link is on the way", rel) from None
    raise exc
