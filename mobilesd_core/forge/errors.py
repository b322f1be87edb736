"""How a Forge failure is classified: retry elsewhere (transient) or fail now (permanent)."""

from __future__ import annotations


class ForgeError(Exception):
    """A Forge request failed. `message` is written for the person who has to act on it."""

    transient = False

    def __init__(self, message: str, *, status: int | None = None, offline: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        # True when the server could not be reached at all: it is marked offline at once.
        self.offline = offline


class ForgeTransientError(ForgeError):
    """Worth retrying, on this server later or on another: refused, timeout, 5xx, restart."""

    transient = True


class ForgePermanentError(ForgeError):
    """Retrying would fail the same way: wrong password, API off, bad field, unknown model."""


class ForgeStalled(ForgeTransientError):
    """The job stopped making progress on the server and was interrupted."""
