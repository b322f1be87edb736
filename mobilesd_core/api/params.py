"""Query-string parsing with the same error shape as bodies."""

from __future__ import annotations

from aiohttp import web

from ..schema import ALL_STATUSES, FieldProblem, InvalidInput


def int_param(request: web.Request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise InvalidInput(
            [FieldProblem(path=name, message=f"must be a whole number {lo}..{hi} (found {raw!r})")]
        )
    return value


def status_param(request: web.Request) -> set[str] | None:
    raw = request.query.get("status")
    if not raw:
        return None
    wanted = {s.strip() for s in raw.split(",") if s.strip()}
    bad = sorted(wanted - set(ALL_STATUSES))
    if bad:
        raise InvalidInput(
            [
                FieldProblem(
                    path="status",
                    message=f"unknown status {', '.join(bad)}; expected {', '.join(ALL_STATUSES)}",
                )
            ]
        )
    return wanted
