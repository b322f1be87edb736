"""Moving a handled file out of the way, and the report beside a failed one.

Both folders live inside the inbox, so a move is a rename on the same share (atomic). A name
that is taken gets a timestamp (then a counter): a user's file is never overwritten, and never
deleted.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

from ..durable import FOR_PEOPLE, atomic_write_bytes
from ..schema import FieldProblem

REPORT_SUFFIX = ".error.txt"


def free_name(folder: Path, rel: str, *, also: str = "") -> Path:
    """A path under `folder` for `rel` that no file (nor `<name><also>`) holds yet."""
    wanted = folder / rel
    candidates = [wanted]
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    stem, suffix = os.path.splitext(wanted.name)
    candidates.append(wanted.with_name(f"{stem}.{stamp}{suffix}"))
    candidates += [wanted.with_name(f"{stem}.{stamp}-{n}{suffix}") for n in range(2, 1000)]
    for path in candidates:
        if not path.exists() and not (also and path.with_name(path.name + also).exists()):
            return path
    raise FileExistsError(f"no free name for {rel} in {folder}")


def move_into(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Checked again right before the rename: rename() would silently replace a file that
    # appeared since free_name chose this one.
    if dest.exists():
        raise FileExistsError(dest)
    os.rename(src, dest)


def render_report(rel: str, problems: list[FieldProblem]) -> str:
    """The text of `<file>.error.txt`: every problem, and what to do next."""
    count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
    lines = [f"{rel} was not queued: {count}.", ""]
    lines += [p.render_in(rel) for p in problems]
    checked = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    lines += [
        "",
        "No job was created from this file. Fix it and drop it into the inbox again;",
        "`mobilesd validate FILE` checks a file without queuing it.",
        f"(checked by MobileSD at {checked})",
        "",
    ]
    return "\n".join(lines)


def write_report(dest: Path, text: str) -> Path:
    report = dest.with_name(dest.name + REPORT_SUFFIX)
    report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(report, text.encode(), mode=FOR_PEOPLE)
    return report
