"""Access control for /api/ routes and gallery files.

Two credentials are accepted:

- `Authorization: Bearer <token>` (TUI, `mobilesd submit`, scripts): the access token itself.
- the session cookie the page gets from `/login`: its value is `session_value(token)`, an HMAC
  derived from the token, so a leaked cookie jar does not hand out the API token. The raw token
  is not accepted as a cookie, and the session value is not accepted as a Bearer token.

A cookie is sent by the browser on its own, so a cookie-authenticated request that changes state
(anything but GET/HEAD/OPTIONS) must prove it comes from our own page: its `Origin` (or, when the
browser sent none, its `Referer`) must name this server (scheme, host and port as in the `Host`
header). Bearer requests are exempt: browsers never add that header by themselves. The page must
therefore call the API with `fetch()` in its default mode (which always sends the real Origin):
with our `Referrer-Policy: no-referrer`, a plain HTML form post carries `Origin: null` and is
refused.

Wrong credentials are counted per client address; after `LIMIT` within `WINDOW` seconds the
address gets 429 until the window ends (see `FailureLimiter`). Tokens are compared in constant
time and are never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import lru_cache

from aiohttp import web
from yarl import URL

from .errors import error_response
from .keys import TOKEN

SESSION_COOKIE = "mobilesd_session"
SESSION_MAX_AGE = 400 * 24 * 3600  # the longest lifetime browsers keep a cookie
PROTECTED_PREFIXES = ("/api/", "/gallery_files/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SESSION_CONTEXT = b"mobilesd-session-v1"


# -- credentials ----------------------------------------------------------------------------


@lru_cache(maxsize=8)
def session_value(token: str) -> str:
    """The session cookie's value for `token`: stable across restarts, changes with the token."""
    return hmac.new(token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def session_cookie(request: web.Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or None


def session_ok(request: web.Request) -> bool:
    cookie = session_cookie(request)
    return cookie is not None and same_secret(cookie, session_value(request.app[TOKEN]))


def token_ok(request: web.Request) -> bool:
    """A right Bearer token, or (without an Authorization header) a right session cookie."""
    given = bearer_token(request)
    if given is not None:
        return same_secret(given, request.app[TOKEN])
    return session_ok(request)


def set_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session_value(request.app[TOKEN]),
        max_age=SESSION_MAX_AGE,
        path="/",
        httponly=True,
        samesite="Strict",
        # Only when the request itself came over TLS: X-Forwarded-Proto is not trusted.
        secure=request.secure or None,
    )


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="Strict", secure=request.secure or None
    )


# -- cross-site request check ---------------------------------------------------------------


def _origin(value: str) -> tuple[str, str, int | None] | None:
    try:
        url = URL(value)
    except (ValueError, TypeError):
        return None
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return url.scheme, url.host.lower().rstrip("."), url.port


def same_origin(request: web.Request) -> bool:
    """Whether the request's Origin (or Referer) is this server, as the browser addressed it.

    The request's own origin is its scheme and its Host header. A plain-HTTP request also
    matches an https Origin of the same host and port: that is TLS ended by a reverse proxy in
    front of us, and only a page served by that host can send it.
    """
    claimed = request.headers.get("Origin")
    if claimed is None:
        claimed = request.headers.get("Referer")
    if not claimed or claimed.strip() == "null":
        return False
    source = _origin(claimed.strip())
    if source is None:
        return False
    schemes = ("https",) if request.secure else ("http", "https")
    return any(_origin(f"{scheme}://{request.host}") == source for scheme in schemes)


def csrf_response() -> web.Response:
    return error_response(
        403,
        "csrf",
        "refused: a request authenticated by the session cookie must come from this server's "
        "own page (its Origin must match the Host; behind a reverse proxy, pass the Host header "
        "through). Scripts should use Authorization: Bearer <token>.",
    )


# -- wrong-token limiter --------------------------------------------------------------------


class FailureLimiter:
    """Counts wrong tokens per client address in fixed windows; bounded in memory.

    After `limit` failures within `window` seconds of the first one, `retry_after` tells how
    long that address must wait. IPv6 clients are counted per /64 (one host usually owns a whole
    /64). At most `max_clients` addresses are tracked; the least recently failing are dropped.
    """

    LIMIT = 10
    WINDOW = 60.0
    MAX_CLIENTS = 4096

    def __init__(
        self,
        limit: int = LIMIT,
        window: float = WINDOW,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, key: str) -> float | None:
        """Seconds until `key` may try again, or None when it is not blocked."""
        entry = self._failures.get(key)
        if entry is None:
            return None
        start, count = entry
        left = start + self.window - self.clock()
        if left <= 0:
            del self._failures[key]
            return None
        return left if count >= self.limit else None

    def fail(self, key: str) -> None:
        now = self.clock()
        start, count = self._failures.pop(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        self._failures[key] = (start, count + 1)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)


LIMITER = web.AppKey("wrong_token_limiter", FailureLimiter)


def init_auth(app: web.Application) -> None:
    """Give `app` its wrong-token limiter (call once in create_app)."""
    app[LIMITER] = FailureLimiter()


def client_key(request: web.Request) -> str:
    """The peer address (never X-Forwarded-For), IPv6 reduced to its /64."""
    remote = request.remote or ""
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def too_many_response(wait: float) -> web.Response:
    seconds = max(1, int(wait + 0.999))
    response = error_response(
        429,
        "too_many_attempts",
        f"too many wrong access tokens from your address; try again in {seconds} s",
    )
    response.headers["Retry-After"] = str(seconds)
    return response


def unauthorized_response() -> web.Response:
    response = error_response(
        401, "unauthorized", "missing or wrong access token (Authorization: Bearer <token>)"
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="mobilesd"'
    return response


# -- middleware -----------------------------------------------------------------------------


def check_access(request: web.Request) -> web.Response | None:
    """None when the request may pass, else the answer (401, 403 csrf or 429)."""
    bearer = bearer_token(request)
    cookie = None if bearer is not None else session_cookie(request)
    if bearer is None and cookie is None:
        return unauthorized_response()
    limiter = request.config_dict[LIMITER]
    key = client_key(request)
    wait = limiter.retry_after(key)
    if wait is not None:
        return too_many_response(wait)
    expected = request.app[TOKEN]
    if bearer is not None:
        if same_secret(bearer, expected):
            return None
        limiter.fail(key)
        return unauthorized_response()
    assert cookie is not None
    if not same_secret(cookie, session_value(expected)):
        limiter.fail(key)
        response = unauthorized_response()
        # A stale cookie (the token changed) stops being sent, so it is counted only once.
        clear_session_cookie(request, response)
        return response
    if request.method not in SAFE_METHODS and not same_origin(request):
        return csrf_response()
    return None


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path.startswith(PROTECTED_PREFIXES):
        refused = check_access(request)
        if refused is not None:
            return refused
    return await handler(request)
