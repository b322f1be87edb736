"""Login by link (/login?token=...), the session cookie, and the session list.

The link is printed by `mobilesd serve` on its first start and by `mobilesd link` on demand (with
a QR code). Opening it with the right token makes a session, sets its cookie and answers 303 to
`/`, so the token leaves the address bar and history at once. The page's sign-in form posts the
token instead (it then never is in a URL). Tokens go through the guess throttle (`throttle.py`)
and are never echoed. Logout revokes the browser's session; `DELETE /api/v1/sessions` revokes
every session ("sign out everywhere").
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import TypeVar

from aiohttp import web

from .auth import (
    SESSIONS,
    Verdict,
    bearer_token,
    clear_session_cookie,
    csrf_response,
    judge_token,
    retry_seconds,
    same_origin,
    session_cookie,
    session_ok,
    set_session_cookie,
    too_many_response,
)
from .bodies import read_form
from .errors import error_response

routes = web.RouteTableDef()

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
<p>Open the link <code>mobilesd link</code> prints (or scan its QR code), or paste the token kept
in <code>CONFIG_DATA_PATH/access_token</code>.</p>
</body>
</html>
"""


def _wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


_R = TypeVar("_R", bound=web.StreamResponse)


def _no_store(response: _R) -> _R:
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
    verdict, wait = await judge_token(request, given)
    if verdict is Verdict.WRONG:
        return _no_store(_refusal(request, 401, "unauthorized", "That access token is not right."))
    if verdict is not Verdict.RIGHT:
        refused = too_many_response(verdict, wait)
        if _wants_html(request):
            seconds = retry_seconds(wait)
            message = (
                f"Too many wrong tokens from your address; try again in {seconds} s "
                "(the right one still works)."
            )
            refused = _refusal(request, 429, "too_many_attempts", message)
            refused.headers["Retry-After"] = str(seconds)
        return _no_store(refused)
    session_id = await request.config_dict[SESSIONS].create()
    response = _see_home()
    set_session_cookie(request, response, session_id)
    return _no_store(response)


@routes.get("/login")
async def login_link(request: web.Request) -> web.StreamResponse:
    return await _login(request, request.query.get("token"))


@routes.post("/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    token = (await read_form(request)).get("token")
    return await _login(request, token.strip() if token else None)


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    # A foreign page must not be able to sign the phone out either.
    if not same_origin(request):
        return csrf_response()
    cookie = session_cookie(request)
    if cookie:
        await request.config_dict[SESSIONS].revoke(cookie)
    response = web.Response(status=204)
    clear_session_cookie(request, response)
    return _no_store(response)


def _iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


@routes.get("/api/v1/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    store = request.config_dict[SESSIONS]
    cookie = None if bearer_token(request) is not None else session_cookie(request)
    current = store.lookup(cookie) if cookie else None
    sessions = [
        {
            "created": _iso(s.created),
            "expires": _iso(s.expires),
            "current": current is not None and s.key == current.key,
        }
        for s in store.active()
    ]
    return _no_store(web.json_response({"sessions": sessions}))


@routes.delete("/api/v1/sessions")
async def sign_out_everywhere(request: web.Request) -> web.Response:
    revoked = await request.config_dict[SESSIONS].revoke_all()
    response = web.json_response({"revoked": revoked})
    if session_cookie(request):
        clear_session_cookie(request, response)  # this browser was one of them
    return _no_store(response)
