"""The errors a caller is told about, as one family.

Each class says how the API answers it, in the one error shape
`{"error": {"code", "message", "details"}}`: an HTTP `status`, a `code`, the `public_message`
and `details`; api/errors.py maps every one of them the same way. An exception outside the family
is a bug: the API answers `500 internal` and logs it.

The generic kinds live here; the specific ones beside the code that raises them (JobNotFound in
the job store, ImageNotFound in the gallery ...).
"""

from __future__ import annotations

from typing import Any


class MobileSDError(Exception):
    status: int = 500
    code: str = "internal"

    @property
    def public_message(self) -> str:
        """The answer's message. By default the exception's text; a class whose text names
        things the caller did not send (paths, internal names) answers in fixed words."""
        return str(self)

    @property
    def details(self) -> Any:
        """The answer's `details` (left out when None)."""
        return None


class NotFound(MobileSDError):
    """No such thing; `args[0]` is the id or name the caller gave."""

    status = 404
    code = "not_found"


class Conflict(MobileSDError):
    """The job (or Civitai download) is not in a state that allows the operation. `state` is
    the state it is in (the answer's `details.status`)."""

    status = 409
    code = "wrong_state"

    def __init__(self, message: str, state: str | None = None) -> None:
        super().__init__(message)
        self.state = state

    @property
    def details(self) -> Any:
        return {"status": self.state}


class StorageUnavailable(MobileSDError, OSError):
    """A write did not reach the disk (full, read-only, gone) and nothing was changed; the same
    request works once there is room. Still an OSError, so callers that retry on I/O errors
    keep doing so."""

    status = 503
    code = "storage_unavailable"

    @property
    def public_message(self) -> str:
        return f"{self.strerror}; nothing was changed"
