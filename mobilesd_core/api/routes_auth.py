"""Login by link (/login?token=...) and the session cookie.

`mobilesd serve` prints the link (and a QR code of it). Opening it with the right token sets the
session cookie and answers 303 to `/`, so the token leaves the address bar and history at once.
The page's sign-in form posts the token instead (it then never is in a URL). A wrong token is
counted against the client's address (429 after too many) and is never echoed.
"""

from __future__ import annotations

import html

from aiohttp import web

from .auth import (
    LIMITER,
    clear_session_cookie,
    client_key,
    csrf_response,
    same_origin,
    same_secret,
    session_ok,
    set_session_cookie,
    too_many_response,
)
from .errors import error_response
from .keys import TOKEN

routes = web.RouteTableDef()

MAX_TOKEN_LENGTH = 1024

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>MobileSD: sign in</title>
</head>
<body>
<h1>MobileSD</h1>
<p>{message}</p>
<form method="post" action="/login">
<label>Access token <input name="token" type="password" autocomplete="current-password"
 required></label>
<button type="submit">Sign in</button>
</form>
<p>Scan the QR code that <code>mobilesd serve</code> prints, or paste the token kept in
<code>CONFIG_DATA_PATH/access_token</code>.</p>
</body>
</html>
"""


def _wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def _no_store(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Cache-Control"] = "no-store"
    return response


def _refusal(request: web.Request, status: int, code: str, message: str) -> web.Response:
    if _wants_html(request):
        response = web.Response(
            status=status,
            text=_PAGE.format(message=html.escape(message)),
            content_type="text/html",
        )
    else:
        response = error_response(status, code, message)
    return response


def _see_home() -> web.Response:
    return web.Response(status=303, headers={"Location": "/"})


async def _login(request: web.Request, given: str | None) -> web.StreamResponse:
    if not given:
        if session_ok(request):
            return _no_store(_see_home())
        return _no_store(_refusal(request, 401, "unauthorized", "Sign in with the access token."))
    limiter = request.config_dict[LIMITER]
    key = client_key(request)
    wait = limiter.retry_after(key)
    if wait is not None:
        refused = too_many_response(wait)
        if _wants_html(request):
            seconds = refused.headers["Retry-After"]
            message = f"Too many wrong tokens from your address; try again in {seconds} s."
            refused = _refusal(request, 429, "too_many_attempts", message)
            refused.headers["Retry-After"] = seconds
        return _no_store(refused)
    if len(given) > MAX_TOKEN_LENGTH or not same_secret(given, request.app[TOKEN]):
        limiter.fail(key)
        return _no_store(_refusal(request, 401, "unauthorized", "That access token is not right."))
    limiter.forget(key)
    response = _see_home()
    set_session_cookie(request, response)
    return _no_store(response)


@routes.get("/login")
async def login_link(request: web.Request) -> web.StreamResponse:
    return await _login(request, request.query.get("token"))


@routes.post("/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = form.get("token")
    return await _login(request, token.strip() if isinstance(token, str) else None)


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    # A foreign page must not be able to sign the phone out either.
    if not same_origin(request):
        return csrf_response()
    response = web.Response(status=204)
    clear_session_cookie(request, response)
    return _no_store(response)
