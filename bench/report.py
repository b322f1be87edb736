"""Rows of figures, the statistics behind them, and the one table `python -m bench` prints."""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class Row:
    """One figure. `ratio` is the value against its peer or limit, measured in the same run.

    `ok` is the verdict against the aim: None when the figure has no aim (information only).
    """

    figure: str
    value: str
    aim: str = ""
    ratio: str = ""
    ok: bool | None = None


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in 0..100."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def times(ratio: float) -> str:
    return f"{ratio:.2f}×"


def percent(ratio: float) -> str:
    return f"{ratio * 100:.0f} %"


def verdict(ok: bool | None) -> str:
    return {True: "ok", False: "MISSED", None: ""}[ok]


def say(text: str = "") -> None:
    """Progress lines while the benchmarks run (the table comes at the end)."""
    print(text, flush=True)


def table(rows: Iterable[Row], out: object = None, *, earlier: dict[str, str] | None = None) -> str:
    """The one table; with `earlier` (figure -> value of another run) a column for it."""
    headers: tuple[str, ...] = ("figure", "value", "aim", "ratio", "verdict")
    if earlier is not None:
        headers += ("earlier run",)
    cells = [headers]
    for r in rows:
        row: tuple[str, ...] = (r.figure, r.value, r.aim, r.ratio, verdict(r.ok))
        if earlier is not None:
            row += (earlier.get(r.figure, "-"),)
        cells.append(row)
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))

    rule = "-+-".join("-" * width for width in widths)
    text = "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])
    print(text, file=out or sys.stdout, flush=True)
    return text


def write_results(path: Path, rows: Iterable[Row], *, context: dict[str, str]) -> None:
    """The figures as JSON, for comparing runs between commits (`--compare`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        **context,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "figures": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def load_results(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text())
    return {f["figure"]: f["value"] for f in data.get("figures", [])}
