"""The one way a failed call to the core reaches the person: `error_text` words it, and
`core_errors` turns it into a toast, so every call site says it alike.

A call site wraps its whole happy path: a refusal (`ApiError`) or an unreachable core
(`Unreachable`) skips the rest of the block, is toasted as `title` + `error_text`, and the worker
ends normally. Anything else is a bug and still reaches `on_worker_state_changed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from textual.notifications import SeverityLevel

from .api_client import ApiError, Unreachable

CoreError = ApiError | Unreachable
CORE_ERRORS = (ApiError, Unreachable)


class Notifier(Protocol):
    """Anything that can toast: the app, a screen, a widget (`DOMNode.notify`)."""

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None: ...


def error_text(exc: CoreError) -> str:
    """The core's message; on a 422 it names each field (`invalid fields: to: must be ...`).
    A field problem the message leaves out (a core that words it otherwise) is added, so the
    field is always named."""
    text = exc.message
    if isinstance(exc, ApiError):
        unnamed = [f"{path}: {why}" for path, why in exc.field_problems() if path not in text]
        if unnamed:
            text = f"{text} ({'; '.join(unnamed)})"
    return text


@contextmanager
def core_errors(
    target: Notifier,
    title: str,
    *,
    severity: SeverityLevel = "error",
    timeout: float | None = None,
    then: Callable[[], object] | None = None,
) -> Iterator[None]:
    """Toast a failed call to the core as `title` + `error_text`; `then` runs first (e.g. to
    mark a page as not loaded)."""
    try:
        yield
    except CORE_ERRORS as exc:
        if then is not None:
            then()
        target.notify(error_text(exc), title=title, severity=severity, timeout=timeout)
