"""One error shape for every route: {"error": {"code", "message", "details"}}.

Domain exceptions (the MobileSDError family, errors.py) are raised by services and answered
here, so routes stay free of try/except.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import MobileSDError

log = logging.getLogger(__name__)


class ApiError(MobileSDError):
    """An answer in the error shape, raised by the API itself. `hang_up`: close the connection
    after it (the rest of a body may still be trickling in, and aiohttp would linger reading
    it)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        *,
        hang_up: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self._details = details
        self.hang_up = hang_up
        self.headers = headers or {}

    @property
    def details(self) -> Any:
        return self._details


def error_response(status: int, code: str, message: str, details: Any = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return web.json_response({"error": body}, status=status)


def _map(exc: Exception) -> web.Response | None:
    """Every error of the family answers the same way; anything else is left to the caller."""
    if not isinstance(exc, MobileSDError):
        return None
    response = error_response(exc.status, exc.code, exc.public_message, exc.details)
    if isinstance(exc, ApiError):
        response.headers.update(exc.headers)
    return response


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "too_large", "request body is too large")
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            response = error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
            if "Allow" in exc.headers:  # a 405 names the methods that are allowed (RFC 9110)
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        raise
    except Exception as exc:
        mapped = _map(exc)
        if isinstance(exc, ApiError) and exc.hang_up and mapped is not None:
            mapped.force_close()
            with contextlib.suppress(ConnectionError):  # the client may be gone already
                await mapped.prepare(request)
                await mapped.write_eof()
            if request.transport is not None:
                request.transport.close()
        if mapped is not None:
            return mapped
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the core's log")
