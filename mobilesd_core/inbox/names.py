"""Which names in the inbox are job files, and which belong to the tools that drop them.

The list comes from what SMB clients, sync tools and editors leave behind while they write
(docs/inbox.md): their temporary names must never be read as a job, and must not be reported
as "not a job file" either.
"""

from __future__ import annotations

import fnmatch
import re
from enum import Enum

PROCESSED = "processed"
FAILED = "failed"
JOB_SUFFIXES = (".yaml", ".yml")

# Folders never entered: our own outcome folders, NAS and sync-tool metadata, zip leftovers.
IGNORED_DIRS = frozenset(
    {PROCESSED, FAILED, "@eaDir", ".@__thumb", "#recycle", "#snapshot", "__MACOSX", "$RECYCLE.BIN"}
)

# Hidden names (leading ".") are covered as a whole; these are the others, matched without case.
_TEMPORARY_PATTERNS = (
    "~$*",  # Office lock files
    "~syncthing~*.tmp",
    "*.part",
    "*.partial",  # rclone, also `<name>.<random>.partial`
    "*.filepart",  # WinSCP
    "*.crdownload",
    "*.tmp",
    "*.temp",
    "*.swp",
    "*.swx",
    "*~",  # editor backups
    "thumbs.db",
    "desktop.ini",
    "readme.md",  # the source checkout's inbox/README.md: it says what to drop, it is no job
)
_TEMPORARY = re.compile("|".join(fnmatch.translate(p) for p in _TEMPORARY_PATTERNS), re.IGNORECASE)


class Kind(Enum):
    JOB = "job"  # a .yaml/.yml file to read once it is complete
    TEMPORARY = "temporary"  # hidden, a tool's temporary name, the README: left alone, silently
    OTHER = "other"  # some other file: left where it is, logged once


def classify(name: str) -> Kind:
    """What a file's base name is, from the name alone."""
    if name.startswith(".") or _TEMPORARY.fullmatch(name):
        return Kind.TEMPORARY
    if name.lower().endswith(JOB_SUFFIXES):
        return Kind.JOB
    return Kind.OTHER


def skip_dir(name: str) -> bool:
    """Folders the scan does not enter (hidden ones included: `.stfolder`, `.stversions`)."""
    return name.startswith(".") or name in IGNORED_DIRS
