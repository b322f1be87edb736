"""Request bodies: read once, in one place, against a deadline.

aiohttp reads a body only when a handler asks, with no time limit: a client dripping its body a
byte a second would hold the handler, and its connection and file descriptor, for as long as it
likes. `body_middleware` reads every body before any handler runs, so no route can forget the
deadline; handlers then get the bytes from aiohttp's cache (`request.read()`, `read_json`,
`read_form`).

Requests nobody has authenticated (the public routes: `/login` above all) share a small number of
slots for bodies in flight; past it they are answered `503` and hung up on at once, so half-sent
login forms cannot take every file descriptor even within the deadline. Protected routes reach
this middleware only after the access check passed.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from ..uploads import MAX_UPLOAD_BYTES
from .errors import ApiError

BODY_READ_TIMEOUT = 30.0
"""Seconds a request body may take to arrive, on every route."""

MAX_JSON_DEPTH = 32
"""Nesting a JSON body may have; a job is about five levels deep. Deeper documents would fail
later, in validation or serialisation, with a recursion error instead of a clear answer."""

# Unauthenticated bodies in flight at once: a quarter of the file descriptors, within these bounds.
MIN_UNAUTHENTICATED_READS = 4
MAX_UNAUTHENTICATED_READS = 64

PROTECTED_PREFIXES = ("/api/", "/gallery_files/")
UPLOAD_PATH = "/api/v1/uploads"  # routes_uploads.py
FORM_TYPES = ("", "application/x-www-form-urlencoded")


class ReadGate:
    """Counts unauthenticated bodies being read; refuses one more past `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def enter(self) -> None:
        if self.active >= self.limit:
            raise ApiError(
                503,
                "busy",
                "too many unauthenticated requests are sending bodies right now; "
                "try again in a moment",
                hang_up=True,
                headers={"Retry-After": "1"},
            )
        self.active += 1

    def leave(self) -> None:
        self.active -= 1


def unauthenticated_limit() -> int:
    """A quarter of this process's file descriptors, within the bounds above."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_UNAUTHENTICATED_READS
    return max(MIN_UNAUTHENTICATED_READS, min(MAX_UNAUTHENTICATED_READS, soft // 4))


READ_GATE = web.AppKey("unauthenticated_read_gate", ReadGate)


def init_bodies(app: web.Application) -> None:
    app[READ_GATE] = ReadGate(unauthenticated_limit())


async def read_body(request: web.Request) -> bytes:
    """The whole body, or 408 (and the connection closed) when it takes too long."""
    try:
        return await asyncio.wait_for(request.read(), BODY_READ_TIMEOUT)
    except ConnectionError:
        # The client went away mid-body: nobody to answer, nothing worth a traceback.
        raise ApiError(
            400,
            "body_incomplete",
            "the connection closed before the body was complete",
            hang_up=True,
        ) from None
    except TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"the request body did not arrive within {BODY_READ_TIMEOUT:g} s",
            hang_up=True,
        ) from None


@web.middleware
async def body_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Read the body (if any) before the handler; must come after the access check."""
    if request.body_exists:
        if request.path == UPLOAD_PATH and request.method == "POST":
            # An image is bigger than any JSON body: its own limit, past it a 413 naming it.
            request = request.clone(client_max_size=MAX_UPLOAD_BYTES + 1)
            try:
                await read_body(request)
            except web.HTTPRequestEntityTooLarge:
                message = f"is larger than {MAX_UPLOAD_BYTES:,} bytes"
                raise ApiError(
                    413,
                    "too_large",
                    f"file {message}",
                    [{"path": "file", "message": message}],
                    hang_up=True,
                ) from None
        elif request.path.startswith(PROTECTED_PREFIXES):
            await read_body(request)  # the access check has passed: the owner's request
        else:
            gate = request.config_dict[READ_GATE]
            gate.enter()
            try:
                await read_body(request)
            finally:
                gate.leave()
    return await handler(request)


def _depth(value: Any) -> int:
    """How deeply `value` nests lists and objects (iteratively: no recursion to exhaust)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node)
    return deepest


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or 400 naming the problem."""
    if not request.body_exists:
        raise ApiError(400, "bad_json", "request body is empty; expected a JSON object")
    raw = await read_body(request)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"request body is not valid JSON ({exc})") from None
    except RecursionError:
        data = None  # nested far too deeply for the parser: the same answer as below
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = _depth(data)
    if depth > MAX_JSON_DEPTH:
        raise ApiError(
            400,
            "bad_json",
            f"request body nests lists and objects deeper than {MAX_JSON_DEPTH} levels",
        )
    return data


async def read_object(request: web.Request) -> dict[str, Any]:
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    return data


async def read_form(request: web.Request) -> dict[str, str]:
    """A urlencoded form body (what an HTML form posts), first value of each field."""
    if request.content_type not in FORM_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected a form (application/x-www-form-urlencoded), not {request.content_type}",
        )
    raw = await read_body(request) if request.body_exists else b""
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}
