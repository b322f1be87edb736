"""Security headers on every response of the app.

Added in `on_response_prepare`, so they are on every answer: handler responses, errors, 404s,
file responses and streams (SSE) alike, right before the headers go out.
"""

from __future__ import annotations

from aiohttp import web

# For the phone page: no framework, no inline script or style, everything from this server.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # The login link carries the token: it must never travel in a Referer.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

HTML_TYPES = ("text/html", "application/xhtml+xml", "image/svg+xml")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if response.content_type in HTML_TYPES:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
