"""Access control for /api/ routes and gallery files.

Two credentials are accepted:

- `Authorization: Bearer <token>` (TUI, `mobilesd submit`, scripts): the access token itself.
- the session cookie the page gets from `/login`: a random session id the core keeps (hashed)
  in its session list (see `sessions.py`), so logout and "sign out everywhere" revoke it. The
  raw token is not accepted as a cookie, and a session id is not accepted as a Bearer token.

A cookie is sent by the browser on its own, so a cookie-authenticated request that changes state
(anything but GET/HEAD/OPTIONS) must prove it comes from our own page: its `Origin` (or, when the
browser sent none, its `Referer`) must name this server (scheme, host and port as in the `Host`
header). Bearer requests are exempt: browsers never add that header by themselves. The page must
therefore call the API with `fetch()` in its default mode (which always sends the real Origin):
with our `Referrer-Policy: no-referrer`, a plain HTML form post carries `Origin: null` and is
refused.

Tokens are compared in constant time, as bytes (a header that is not UTF-8 is just a wrong
token), and are never logged or echoed. Wrong ones are throttled per client address without ever
refusing the right one (see `throttle.py`). The client address is the peer, or, when the peer is
one of `TRUSTED_PROXIES`, the address that proxy names in `X-Forwarded-For`.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from collections.abc import Awaitable, Callable

from aiohttp import web
from yarl import URL

from .bodies import PROTECTED_PREFIXES
from .errors import error_response
from .keys import SETTINGS, TOKEN
from .sessions import SESSION_LIFETIME, SESSIONS_FILE, Session, SessionStore
from .throttle import GuessThrottle, Verdict

SESSION_COOKIE = "mobilesd_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_TOKEN_LENGTH = 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

THROTTLE = web.AppKey("guess_throttle", GuessThrottle)
SESSIONS = web.AppKey("sessions", SessionStore)


def init_auth(app: web.Application) -> None:
    """Give `app` its guess throttle and session list (call once in create_app, after TOKEN)."""
    app[THROTTLE] = GuessThrottle()
    app[SESSIONS] = SessionStore(app[SETTINGS].data_path / SESSIONS_FILE, app[TOKEN])


# -- credentials ----------------------------------------------------------------------------


def _raw(value: str) -> bytes:
    # aiohttp hands undecodable header bytes over as surrogates: compare the bytes as sent.
    return value.encode("utf-8", "surrogateescape")


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(_raw(given), _raw(expected))


def bearer_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def session_cookie(request: web.Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or None


def session_ok(request: web.Request) -> bool:
    cookie = session_cookie(request)
    return cookie is not None and request.config_dict[SESSIONS].lookup(cookie) is not None


def set_session_cookie(request: web.Request, response: web.StreamResponse, session_id: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(SESSION_LIFETIME),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request_is_https(request) or None,
    )


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request_is_https(request) or None,
    )


# -- who is asking, and over what -----------------------------------------------------------


def _ip(value: str | None) -> IPAddress | None:
    try:
        address = ipaddress.ip_address((value or "").strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(request: web.Request, address: IPAddress | None) -> bool:
    if address is None:
        return False
    return any(address in network for network in request.config_dict[SETTINGS].trusted_proxies)


def _header_values(request: web.Request, name: str) -> list[str]:
    return [v.strip() for line in request.headers.getall(name, []) for v in line.split(",")]


def client_address(request: web.Request) -> IPAddress | None:
    """The peer, or the client a trusted proxy forwarded for (the nearest hop it does not
    trust, reading `X-Forwarded-For` from the right: entries further left are the client's
    own claims)."""
    address = _ip(request.remote)
    if not _trusted(request, address):
        return address
    for hop in reversed(_header_values(request, "X-Forwarded-For")):
        forwarded = _ip(hop)
        if forwarded is None:
            break
        address = forwarded
        if not _trusted(request, address):
            break
    return address


def address_key(address: IPAddress | None) -> str:
    """The throttle's key for an address: IPv6 counted per /64 (one host usually owns one)."""
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def client_key(request: web.Request) -> str:
    return address_key(client_address(request))


def request_is_https(request: web.Request) -> bool:
    """Whether the browser reached us over HTTPS: TLS here, `X-Forwarded-Proto: https` set by a
    trusted proxy, or a Host header naming the https `PUBLIC_URL` (a proxy passing Host on)."""
    if request.secure:
        return True
    if _trusted(request, _ip(request.remote)):
        protos = _header_values(request, "X-Forwarded-Proto")
        if protos and protos[-1].lower() == "https":  # the value the nearest proxy set
            return True
    public = request.config_dict[SETTINGS].public_url
    if not public:
        return False
    base = URL(public)
    if base.scheme != "https" or not base.host:
        return False
    try:
        host = URL(f"https://{request.host}")
    except (ValueError, TypeError):
        return False
    return (host.host or "").lower().rstrip(".") == base.host.lower().rstrip(".") and (
        host.port == base.port
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

    The request's own origin is its scheme and its Host header. A request that did not come over
    HTTPS as far as we know also matches an https Origin of the same host and port: that is TLS
    ended by a reverse proxy in front of us, and only a page served by that host can send it.
    """
    claimed = request.headers.get("Origin")
    if claimed is None:
        claimed = request.headers.get("Referer")
    if not claimed or claimed.strip() == "null":
        return False
    source = _origin(claimed.strip())
    if source is None:
        return False
    schemes = ("https",) if request_is_https(request) else ("http", "https")
    return any(_origin(f"{scheme}://{request.host}") == source for scheme in schemes)


def csrf_response() -> web.Response:
    return error_response(
        403,
        "csrf",
        "refused: a request authenticated by the session cookie must come from this server's "
        "own page (its Origin must match the Host; behind a reverse proxy, pass the Host header "
        "through). Scripts should use Authorization: Bearer <token>.",
    )


# -- answers --------------------------------------------------------------------------------


def retry_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


def too_many_response(verdict: Verdict, wait: float) -> web.Response:
    seconds = retry_seconds(wait)
    if verdict is Verdict.BUSY:
        message = (
            "too many access tokens from your address are waiting to be checked; "
            f"try again in {seconds} s"
        )
    else:
        message = (
            "too many wrong access tokens from your address: for the next "
            f"{seconds} s its tokens are checked one at a time, slowly (the right one still works)"
        )
    response = error_response(429, "too_many_attempts", message)
    response.headers["Retry-After"] = str(seconds)
    return response


def unauthorized_response() -> web.Response:
    response = error_response(
        401, "unauthorized", "missing or wrong access token (Authorization: Bearer <token>)"
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="mobilesd"'
    return response


async def judge_token(request: web.Request, given: str) -> tuple[Verdict, float]:
    """Check a presented access token through the throttle: (verdict, seconds to wait when
    refused with 429)."""
    expected = request.app[TOKEN]
    throttle = request.config_dict[THROTTLE]
    key = client_key(request)
    verdict = await throttle.judge(
        key, lambda: len(given) <= MAX_TOKEN_LENGTH and same_secret(given, expected)
    )
    if verdict is Verdict.BUSY:
        return verdict, throttle.interval
    return verdict, throttle.retry_after(key) or throttle.interval


# -- middleware -----------------------------------------------------------------------------


async def check_access(request: web.Request) -> tuple[web.Response | None, Session | None]:
    """(None, the cookie's session or None for a Bearer token) when the request may pass, else
    (the answer: 401, 403 csrf or 429; None)."""
    bearer = bearer_token(request)
    if bearer is not None:
        verdict, wait = await judge_token(request, bearer)
        if verdict is Verdict.RIGHT:
            return None, None
        if verdict is Verdict.WRONG:
            return unauthorized_response(), None
        return too_many_response(verdict, wait), None
    cookie = session_cookie(request)
    if cookie is None:
        return unauthorized_response(), None
    session = request.config_dict[SESSIONS].lookup(cookie)
    if session is None:
        # Signed out, expired, or made for another token: the browser stops sending it.
        response = unauthorized_response()
        clear_session_cookie(request, response)
        return response, None
    if request.method not in SAFE_METHODS and not same_origin(request):
        return csrf_response(), None
    return None, session


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if not request.path.startswith(PROTECTED_PREFIXES):
        return await handler(request)
    refused, session = await check_access(request)
    if refused is not None:
        return refused
    sessions = request.config_dict[SESSIONS]
    renewed = False
    if session is not None and sessions.renewal_due(session):
        renewed = await sessions.renew(session)
    response = await handler(request)
    cookie = session_cookie(request)
    if renewed and cookie and not response.prepared and SESSION_COOKIE not in response.cookies:
        set_session_cookie(request, response, cookie)  # the browser's copy lasts as long
    return response
