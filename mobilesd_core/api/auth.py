"""The access token: `Authorization: Bearer <token>` (or the page's session cookie) on every
/api/ route and on gallery files. Compared in constant time; never logged."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from .errors import error_response
from .keys import TOKEN

SESSION_COOKIE = "mobilesd_session"
PROTECTED_PREFIXES = ("/api/", "/gallery_files/")


def presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(SESSION_COOKIE)


def token_ok(request: web.Request) -> bool:
    given = presented_token(request)
    expected = request.app[TOKEN]
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path.startswith(PROTECTED_PREFIXES) and not token_ok(request):
        response = error_response(
            401, "unauthorized", "missing or wrong access token (Authorization: Bearer <token>)"
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="mobilesd"'
        return response
    return await handler(request)
