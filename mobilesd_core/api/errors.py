"""One error shape for every route: {"error": {"code", "message", "details"}}.

Domain exceptions are raised by services and mapped here, so routes stay free of try/except.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..civitai.client import CivitaiError
from ..civitai.downloads import DownloadNotFound
from ..gallery import ImageNotFound, NoThumbnail, UnsafeName
from ..jobs.store import BatchNotFound, Conflict, JobNotFound, StoreWriteError
from ..schema import FieldProblem, InvalidInput
from ..servers import ServerExists, ServerNotFound
from .sessions import SessionWriteError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer in the error shape. `hang_up`: close the connection after it (the rest of a
    body may still be trickling in, and aiohttp would linger reading it)."""

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
        self.details = details
        self.hang_up = hang_up
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details: Any = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return web.json_response({"error": body}, status=status)


def problems_details(problems: list[FieldProblem]) -> list[dict[str, Any]]:
    return [p.model_dump(exclude_none=True) for p in problems]


def _map(exc: Exception) -> web.Response | None:
    if isinstance(exc, ApiError):
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        response.headers.update(exc.headers)
        return response
    if isinstance(exc, InvalidInput):
        summary = "; ".join(p.render() for p in exc.problems[:5])
        return error_response(
            422, "invalid_fields", f"invalid fields: {summary}", problems_details(exc.problems)
        )
    if isinstance(exc, JobNotFound):
        return error_response(404, "job_not_found", f"no job with id '{exc.args[0]}'")
    if isinstance(exc, BatchNotFound):
        return error_response(404, "batch_not_found", f"no job has batch_id '{exc.args[0]}'")
    if isinstance(exc, ServerNotFound):
        return error_response(404, "server_not_found", f"no server named '{exc.args[0]}'")
    if isinstance(exc, ServerExists):
        return error_response(409, "server_exists", f"a server named '{exc.args[0]}' exists")
    if isinstance(exc, Conflict):
        return error_response(409, "wrong_state", str(exc), {"status": exc.status})
    if isinstance(exc, DownloadNotFound):
        return error_response(404, "download_not_found", f"no download with id '{exc.args[0]}'")
    if isinstance(exc, ImageNotFound):
        return error_response(404, "image_not_found", "no such image in the gallery")
    if isinstance(exc, NoThumbnail):
        # The image itself is still served; only its thumbnail is missing (the page shows none).
        return error_response(404, "no_thumbnail", str(exc))
    if isinstance(exc, CivitaiError):
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, StoreWriteError):
        # Disk full or read-only: nothing was changed; the same request works once it has room.
        return error_response(503, "storage_unavailable", f"{exc.strerror}; nothing was changed")
    if isinstance(exc, SessionWriteError):
        return error_response(503, "storage_unavailable", f"{exc.strerror}; nothing was changed")
    if isinstance(exc, UnsafeName):
        return error_response(400, "bad_filename", "not a gallery file name")
    return None


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
