"""Access: the login link and its session cookie, server-side sessions (logout, sign out
everywhere, restarts, expiry), cross-site request refusal, the guess throttle, trusted proxies,
security headers, and the phone link (`mobilesd serve` on first start, `mobilesd link`).

Real sockets throughout (the Harness core on loopback); cookies are read from and sent as raw
headers so each attribute is checked exactly as a browser would see it.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import itertools
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mobilesd_core.api.auth import SESSIONS, THROTTLE, address_key
from mobilesd_core.api.sessions import SESSION_LIFETIME, SESSIONS_FILE, SessionStore
from mobilesd_core.api.throttle import FailureLimiter
from mobilesd_core.config import split_networks
from mobilesd_core.phone_link import phone_url, print_phone_link

from .conftest import TOKEN, Harness, fast_settings, start_harness, stop_harness
from .helpers.auth import anonymous, cookie_header, login, parse_set_cookie

WRONG = "wrong-guess-SECRET-4711"
GENERATE = {"generation_params": {"prompt": "a fox", "steps": 4, "width": 64, "height": 64}}


def own_origin(harness: Harness) -> str:
    return str(harness.api.base_url).rstrip("/")


# -- login ----------------------------------------------------------------------------------


async def test_login_link_sets_a_strict_httponly_cookie_and_leaves_the_address_bar(
    harness: Harness,
) -> None:
    async with anonymous(harness) as http:
        response = await http.get("/login", params={"token": TOKEN})
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    assert TOKEN not in response.headers["location"]
    assert response.headers["cache-control"] == "no-store"
    morsel, raw = parse_set_cookie(response)
    assert morsel.value != TOKEN and TOKEN not in raw
    assert len(morsel.value) >= 43  # a random 256-bit session id, not derived from the token
    assert morsel.value != await login(harness)  # every sign-in is a session of its own
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    assert not morsel["secure"]  # plain HTTP: a Secure cookie would never come back
    assert int(morsel["max-age"]) > 30 * 24 * 3600  # the phone stays signed in


async def test_session_cookie_authenticates_reads(harness: Harness) -> None:
    session = await login(harness)
    async with anonymous(harness) as http:
        response = await http.get("/api/v1/servers", headers=cookie_header(session))
        assert response.status_code == 200
        assert response.json() == []
        # The raw token is not a session cookie, and the session value is not a Bearer token.
        raw = await http.get("/api/v1/servers", headers=cookie_header(TOKEN))
        assert raw.status_code == 401
        as_bearer = await http.get(
            "/api/v1/servers", headers={"Authorization": f"Bearer {session}"}
        )
        assert as_bearer.status_code == 401


async def test_signed_in_browser_opening_login_goes_home(harness: Harness) -> None:
    session = await login(harness)
    async with anonymous(harness) as http:
        response = await http.get("/login", headers=cookie_header(session))
    assert response.status_code == 303 and response.headers["location"] == "/"


async def test_login_form_post_sets_the_cookie(harness: Harness) -> None:
    async with anonymous(harness) as http:
        response = await http.post("/login", data={"token": f" {TOKEN}\n"})
        assert response.status_code == 303
        session = parse_set_cookie(response)[0].value
        servers = await http.get("/api/v1/servers", headers=cookie_header(session))
        assert servers.status_code == 200
        wrong = await http.post("/login", data={"token": WRONG})
        assert wrong.status_code == 401 and WRONG not in wrong.text


async def test_wrong_or_missing_token_is_refused_without_echo(harness: Harness) -> None:
    async with anonymous(harness) as http:
        as_json = await http.get("/login", params={"token": WRONG})
        assert as_json.status_code == 401
        assert as_json.json()["error"]["code"] == "unauthorized"
        assert WRONG not in as_json.text and "set-cookie" not in as_json.headers
        as_page = await http.get(
            "/login", params={"token": WRONG}, headers={"Accept": "text/html,*/*"}
        )
        assert as_page.status_code == 401
        assert as_page.headers["content-type"].startswith("text/html")
        assert WRONG not in as_page.text and TOKEN not in as_page.text
        assert '<form method="post" action="/login">' in as_page.text
        missing = await http.get("/login")
        assert missing.status_code == 401 and "set-cookie" not in missing.headers


async def test_wrong_tokens_never_lock_out_the_right_one(harness: Harness) -> None:
    """Issue 15 item 6: ten `<img src="/login?token=x">` on any page the phone opens used to
    give the right token 429 for a minute, from that address (behind a proxy: from everyone)."""
    session = await login(harness)
    async with anonymous(harness) as http:
        for _ in range(FailureLimiter.LIMIT):
            response = await http.get("/login", params={"token": WRONG})
            assert response.status_code == 401
        guesses = [http.get("/login", params={"token": WRONG}) for _ in range(3)]
        for blocked in await asyncio.gather(*guesses):
            assert blocked.status_code == 429
            assert 1 <= int(blocked.headers["retry-after"]) <= 60
            assert WRONG not in blocked.text and "set-cookie" not in blocked.headers
        # The right token still works, as a Bearer token, by link and by form; so does the
        # session the phone already had.
        bearer = await http.get("/api/v1/servers", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200, bearer.text
        by_link = await http.get("/login", params={"token": TOKEN})
        assert by_link.status_code == 303
        by_form = await http.post("/login", data={"token": TOKEN})
        assert by_form.status_code == 303
        cookie = await http.get("/api/v1/servers", headers=cookie_header(session))
        assert cookie.status_code == 200
        # ... and that did not reset the count: wrong ones are still throttled.
        again = await http.get("/login", params={"token": WRONG})
        assert again.status_code == 429


async def test_the_throttle_bounds_guessing(harness: Harness) -> None:
    """Past the limit an address's tokens are checked one at a time, a wrong one at most every
    `interval` seconds and at most `depth` waiting; the right one passes in its turn."""
    throttle = harness.server.app[THROTTLE]
    throttle.interval = 0.25
    wrong_bearer = {"Authorization": f"Bearer {WRONG}"}
    async with anonymous(harness) as http:
        for _ in range(FailureLimiter.LIMIT):
            assert (await http.get("/api/v1/queue", headers=wrong_bearer)).status_code == 401

        async def guess() -> tuple[int, str, float]:
            response = await http.get("/api/v1/queue", headers=wrong_bearer)
            return response.status_code, response.text, time.monotonic()

        started = time.monotonic()
        burst = await asyncio.gather(*(guess() for _ in range(throttle.depth + 4)))
        assert all(status == 429 for status, _, _ in burst)
        unchecked = [at for _, text, at in burst if "waiting to be checked" in text]
        checked = sorted(at for _, text, at in burst if "one at a time" in text)
        # One is checked at once, `depth` wait their turn; the rest (all sent together) are
        # refused unchecked, at once.
        assert len(checked) + len(unchecked) == len(burst) and unchecked
        assert throttle.depth <= len(checked) <= throttle.depth + 1, len(checked)
        assert max(unchecked) - started < throttle.interval
        gaps = [b - a for a, b in itertools.pairwise(checked)]
        assert min(gaps) >= throttle.interval * 0.9, gaps  # one check per interval
        right = await http.get("/api/v1/queue", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200
    # Every checked guess was counted. So an address gets at most LIMIT + WINDOW / interval
    # answers to guesses per window, however fast it sends them.
    assert throttle.limiter._failures["127.0.0.1"][1] == FailureLimiter.LIMIT + len(checked)


async def test_wrong_bearer_tokens_count_and_a_stale_cookie_is_cleared(harness: Harness) -> None:
    async with anonymous(harness) as http:
        stale = await http.get("/api/v1/servers", headers=cookie_header("old-session"))
        assert stale.status_code == 401
        morsel, _ = parse_set_cookie(stale)
        assert morsel.value == "" and morsel["max-age"] == "0"
        for _ in range(FailureLimiter.LIMIT):
            response = await http.get(
                "/api/v1/servers", headers={"Authorization": f"Bearer {WRONG}"}
            )
            assert response.status_code == 401
        blocked = await http.get("/api/v1/servers", headers={"Authorization": f"Bearer {WRONG}"})
        assert blocked.status_code == 429
        assert blocked.json()["error"]["code"] == "too_many_attempts"
        # Requests without any credential are not guesses: still a plain 401.
        bare = await http.get("/api/v1/servers")
        assert bare.status_code == 401


async def test_a_token_that_is_not_utf8_is_a_wrong_token(harness: Harness) -> None:
    """Issue 15 item 12: a non-UTF-8 Authorization header answered 500 with a traceback and was
    never counted. It is a wrong token like any other: 401 in the error shape, then 429."""

    async def raw_get(header: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(harness.server.host, harness.server.port)
        writer.write(
            b"GET /api/v1/servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + header
            + b"\r\n\r\n"
        )
        try:
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    for _ in range(FailureLimiter.LIMIT):
        answer = await raw_get(b"Authorization: Bearer \xff\xfe-not-utf8")
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b'"code": "unauthorized"' in answer
    answer = await raw_get(b"Authorization: Bearer \xff\xfe-not-utf8")
    assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
    cookie = await raw_get(b"Cookie: mobilesd_session=\xff\xfe")
    assert cookie.startswith(b"HTTP/1.1 401"), cookie[:200]


# -- cross-site requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/page"},
        {"Origin": "http://127.0.0.1:1"},  # same host, another port: another origin
    ],
    ids=["no-origin", "foreign-origin", "null-origin", "foreign-referer", "other-port"],
)
async def test_cookie_post_from_elsewhere_is_refused_and_changes_nothing(
    harness: Harness, headers: dict[str, str]
) -> None:
    session = await login(harness)
    async with anonymous(harness) as http:
        response = await http.post(
            "/api/v1/generate", json=GENERATE, headers={**cookie_header(session), **headers}
        )
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "csrf"
        delete = await http.delete(
            "/api/v1/queue/jobs/x", headers={**cookie_header(session), **headers}
        )
        assert delete.status_code == 403
    assert harness.core.store.live_jobs() == []


async def test_cookie_post_from_our_own_page_works(harness: Harness) -> None:
    session = await login(harness)
    origin = own_origin(harness)
    async with anonymous(harness) as http:
        by_origin = await http.post(
            "/api/v1/generate", json=GENERATE, headers={**cookie_header(session), "Origin": origin}
        )
        assert by_origin.status_code == 202, by_origin.text
        by_referer = await http.post(
            "/api/v1/generate",
            json=GENERATE,
            headers={**cookie_header(session), "Referer": f"{origin}/#queue"},
        )
        assert by_referer.status_code == 202, by_referer.text
        # TLS ended by a reverse proxy in front: the page is https, we see plain http.
        proxied = await http.post(
            "/api/v1/queue/pause",
            headers={**cookie_header(session), "Origin": origin.replace("http:", "https:")},
        )
        assert proxied.status_code == 200, proxied.text
    assert len(harness.core.store.live_jobs()) == 2


async def test_bearer_requests_need_no_origin(harness: Harness) -> None:
    response = await harness.api.post("/api/v1/generate", json=GENERATE)
    assert response.status_code == 202
    foreign = await harness.api.post(
        "/api/v1/generate", json=GENERATE, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status_code == 202
    assert len(harness.core.store.live_jobs()) == 2


async def test_logout_clears_the_cookie_only_from_our_page(harness: Harness) -> None:
    session = await login(harness)
    other = await login(harness)  # the same owner on another device
    async with anonymous(harness) as http:
        foreign = await http.post(
            "/logout", headers={**cookie_header(session), "Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
        response = await http.post(
            "/logout", headers={**cookie_header(session), "Origin": own_origin(harness)}
        )
        assert response.status_code == 204
        morsel, _ = parse_set_cookie(response)
        assert morsel.value == "" and morsel["max-age"] == "0" and morsel["path"] == "/"
        assert (await http.get("/logout")).status_code == 405  # GET never signs out
        # Issue 15 item 13: the cookie was a fixed value, so logout revoked nothing. A copy of
        # the signed-out cookie is refused now; the other device stays signed in.
        replay = await http.get("/api/v1/servers", headers=cookie_header(session))
        assert replay.status_code == 401
        assert (await http.get("/api/v1/servers", headers=cookie_header(other))).status_code == 200


# -- server-side sessions -------------------------------------------------------------------


@pytest.fixture
async def restartable(tmp_path: Path) -> AsyncIterator[list[Harness]]:
    """Harnesses the test starts and stops on one data folder (core restarts); whatever is
    left running is stopped here (stopping twice is harmless)."""
    started: list[Harness] = []
    try:
        yield started
    finally:
        for h in started:
            await stop_harness(h)


async def test_sessions_survive_a_restart_and_sign_out_everywhere_ends_them(
    tmp_path: Path, restartable: list[Harness]
) -> None:
    settings = fast_settings(tmp_path)
    first = await start_harness(settings)
    restartable.append(first)
    phone, laptop = await login(first), await login(first)
    path = settings.data_path / SESSIONS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert phone not in text and laptop not in text and TOKEN not in text  # hashes only
    assert len(json.loads(text)["sessions"]) == 2
    await stop_harness(first)

    second = await start_harness(settings)  # the core restarted
    restartable.append(second)
    async with anonymous(second) as http:
        for session in (phone, laptop):
            response = await http.get("/api/v1/servers", headers=cookie_header(session))
            assert response.status_code == 200
        listed = await http.get("/api/v1/sessions", headers=cookie_header(phone))
        assert [s["current"] for s in listed.json()["sessions"]].count(True) == 1
        assert len(listed.json()["sessions"]) == 2
        assert (await http.delete("/api/v1/sessions")).status_code == 401  # needs credentials
        foreign = await http.delete(
            "/api/v1/sessions", headers={**cookie_header(phone), "Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
    everywhere = await second.api.delete("/api/v1/sessions")  # the Bearer token
    assert everywhere.status_code == 200 and everywhere.json() == {"revoked": 2}
    await stop_harness(second)

    third = await start_harness(settings)
    restartable.append(third)
    async with anonymous(third) as http:
        for session in (phone, laptop):
            response = await http.get("/api/v1/servers", headers=cookie_header(session))
            assert response.status_code == 401
        fresh = await login(third)
        own = await http.delete(
            "/api/v1/sessions", headers={**cookie_header(fresh), "Origin": own_origin(third)}
        )
        assert own.status_code == 200 and own.json() == {"revoked": 1}
        assert parse_set_cookie(own)[0]["max-age"] == "0"  # this browser was one of them
        assert (await third.api.get("/api/v1/sessions")).json() == {"sessions": []}


async def test_a_new_token_signs_every_browser_out(
    tmp_path: Path, restartable: list[Harness]
) -> None:
    first = await start_harness(fast_settings(tmp_path))
    restartable.append(first)
    session = await login(first)
    await stop_harness(first)
    second = await start_harness(fast_settings(tmp_path, token="a-new-token-9876543210"))
    restartable.append(second)
    async with anonymous(second) as http:
        response = await http.get("/api/v1/servers", headers=cookie_header(session))
    assert response.status_code == 401


async def test_a_session_in_use_is_renewed_and_an_unused_one_expires(harness: Harness) -> None:
    session = await login(harness)
    store = harness.server.app[SESSIONS]
    now = [time.time() + 2 * 86400]  # two days after signing in
    store.clock = lambda: now[0]
    async with anonymous(harness) as http:
        renewed = await http.get("/api/v1/servers", headers=cookie_header(session))
        assert renewed.status_code == 200
        morsel, _ = parse_set_cookie(renewed)  # the browser's copy is extended too
        assert morsel.value == session and int(morsel["max-age"]) == SESSION_LIFETIME
        stored = json.loads((harness.settings.data_path / SESSIONS_FILE).read_text())
        assert stored["sessions"][0]["expires"] == pytest.approx(now[0] + SESSION_LIFETIME)
        again = await http.get("/api/v1/servers", headers=cookie_header(session))
        assert "set-cookie" not in again.headers  # at most one renewal (one write) a day
        now[0] += SESSION_LIFETIME + 1  # then left alone for the whole lifetime
        expired = await http.get("/api/v1/servers", headers=cookie_header(session))
        assert expired.status_code == 401
        assert parse_set_cookie(expired)[0]["max-age"] == "0"


async def test_sessions_expire_unless_used_and_a_bad_file_only_signs_out(tmp_path: Path) -> None:
    now = [1_000_000.0]
    path = tmp_path / SESSIONS_FILE
    store = SessionStore(path, TOKEN, lifetime=10 * 86400, clock=lambda: now[0])
    used, idle = await store.create(), await store.create()
    for _ in range(12):  # used daily for 12 days: renewed each day
        now[0] += 86400
        session = store.lookup(used)
        assert session is not None and store.renewal_due(session)
        assert await store.renew(session)
    assert store.lookup(idle) is None  # 10 days without use: expired
    reloaded = SessionStore(path, TOKEN, lifetime=10 * 86400, clock=lambda: now[0])
    assert reloaded.lookup(used) is not None and reloaded.lookup(idle) is None
    assert SessionStore(path, "another-token", clock=lambda: now[0]).lookup(used) is None
    path.write_text("{not json")
    assert len(SessionStore(path, TOKEN)) == 0  # everyone signs in again; the core starts


# -- behind a reverse proxy -----------------------------------------------------------------


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[Harness]:
    """A core that trusts the test's loopback address as its reverse proxy, with an https
    PUBLIC_URL."""
    settings = fast_settings(
        tmp_path / "proxied",
        trusted_proxies=split_networks("127.0.0.1"),
        public_url="https://sd.example.net",
    )
    h = await start_harness(settings)
    try:
        yield h
    finally:
        await stop_harness(h)


async def test_the_cookie_is_secure_when_the_page_is_reached_over_https(
    harness: Harness, proxied: Harness
) -> None:
    def secure(response: httpx.Response) -> bool:
        assert response.status_code == 303, response.text
        return bool(parse_set_cookie(response)[0]["secure"])

    login_link = {"token": TOKEN}
    https_proxy = {"X-Forwarded-Proto": "https"}
    async with anonymous(proxied) as http:
        assert secure(await http.get("/login", params=login_link, headers=https_proxy))
        # The proxy passes the Host on: it names the https PUBLIC_URL.
        assert secure(
            await http.get("/login", params=login_link, headers={"Host": "sd.example.net"})
        )
        # Plain http straight to the core (the LAN address): a Secure cookie would never return.
        assert not secure(await http.get("/login", params=login_link))
    async with anonymous(harness) as http:  # nobody trusted: the header is anyone's claim
        assert not secure(await http.get("/login", params=login_link, headers=https_proxy))


async def test_a_trusted_proxy_names_the_client_that_is_throttled(
    harness: Harness, proxied: Harness
) -> None:
    wrong = {"Authorization": f"Bearer {WRONG}"}

    async def status(h: Harness, client: str) -> int:
        async with anonymous(h) as http:
            headers = {**wrong, "X-Forwarded-For": f"198.51.100.1, {client}"}
            return (await http.get("/api/v1/queue", headers=headers)).status_code

    for _ in range(FailureLimiter.LIMIT):
        assert await status(proxied, "203.0.113.5") == 401
    assert await status(proxied, "203.0.113.5") == 429
    assert await status(proxied, "203.0.113.6") == 401  # another client behind the same proxy
    # The leftmost entry is the client's own claim: it does not give a fresh address.
    assert proxied.server.app[THROTTLE].retry_after("203.0.113.5") is not None
    # Not trusted: X-Forwarded-For is ignored, every guess counts against the peer.
    for _ in range(FailureLimiter.LIMIT):
        await status(harness, "203.0.113.7")
    assert await status(harness, "203.0.113.8") == 429


# -- headers --------------------------------------------------------------------------------


async def test_security_headers_on_every_response(harness: Harness) -> None:
    async with anonymous(harness) as http:
        responses = {
            "healthz": await http.get("/healthz"),
            "unauthorized": await http.get("/api/v1/servers"),
            "not found": await http.get("/nowhere"),
            "page": await http.get("/login", headers={"Accept": "text/html"}),
            "redirect": await http.get("/login", params={"token": TOKEN}),
        }
    responses["api"] = await harness.api.get("/api/v1/servers")
    for name, response in responses.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["referrer-policy"] == "no-referrer", name
        assert response.headers["x-frame-options"] == "DENY", name
    csp = responses["page"].headers["content-security-policy"]
    for directive in (
        "default-src 'self'",
        "img-src 'self' data: blob:",
        "style-src 'self'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert "content-security-policy" not in responses["api"].headers  # JSON needs none


# -- the limiter ----------------------------------------------------------------------------


def test_limiter_window_expiry_and_bounded_memory() -> None:
    now = [1000.0]
    limiter = FailureLimiter(limit=3, window=60, max_clients=5, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.fail("a")
    assert limiter.retry_after("a") == pytest.approx(60)
    now[0] += 59
    assert limiter.retry_after("a") == pytest.approx(1)
    now[0] += 1
    assert limiter.retry_after("a") is None
    limiter.fail("a")
    assert limiter.retry_after("a") is None  # a new window
    for n in range(100):
        limiter.fail(f"client{n}")
    assert len(limiter) == 5


def test_address_key_groups_ipv6_by_64() -> None:
    def key(address: str) -> str:
        return address_key(ipaddress.ip_address(address))

    assert key("127.0.0.1") == "127.0.0.1"
    assert key("2001:db8:1:2:aaaa::1") == key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert address_key(None) == "unknown"


# -- the phone link -------------------------------------------------------------------------


def test_phone_link_prints_the_url_and_a_qr_code(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    out = io.StringIO()
    url = print_phone_link("127.0.0.1", 8190, TOKEN, out=out)
    text = out.getvalue()
    assert url == f"http://127.0.0.1:8190/login?token={TOKEN}"
    assert url in text
    qr_lines = [line for line in text.splitlines() if "█" in line or "▀" in line]
    assert len(qr_lines) >= 15  # a compact QR block: half-block characters, two rows a line
    assert len({len(line) for line in qr_lines}) == 1  # square, every line equally wide
    assert "only this machine" in text  # loopback: says how to reach it from the phone
    assert TOKEN not in caplog.text

    plain = io.StringIO()
    print_phone_link("127.0.0.1", 8190, TOKEN, out=plain, qr=False)
    assert url in plain.getvalue() and "█" not in plain.getvalue()


def test_phone_link_host_forms() -> None:
    def lan() -> str:
        return "127.0.0.9"  # stands in for this machine's LAN address

    assert phone_url("0.0.0.0", 8188, "t", lan) == "http://127.0.0.9:8188/login?token=t"
    assert phone_url("::", 8188, "t", lan) == "http://127.0.0.9:8188/login?token=t"
    assert phone_url("::1", 8188, "t", lan) == "http://[::1]:8188/login?token=t"
    assert phone_url("mybox.local", 80, "t", lan) == "http://mybox.local:80/login?token=t"
    # A hand-picked MOBILESD_TOKEN may hold anything: it is quoted, not pasted.
    assert phone_url("localhost", 1, "a b&c=d/é", lan).endswith("?token=a%20b%26c%3Dd%2F%C3%A9")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MOBILESD_TOKEN"}
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        CONFIG_DATA_PATH=str(tmp_path / "data"),
        STABLE_DIFFUSION_SAVE_PATH=str(tmp_path / "out"),
        INBOX_PATH=str(tmp_path / "inbox"),
        PYTHONIOENCODING="utf-8",
        **extra,
    )
    return env


async def serve_banner(env: dict[str, str]) -> tuple[str, str]:
    """Start `mobilesd serve -v`, read its stdout to the end of the start banner (its last line
    names `mobilesd link`), check the sign-in link (if printed) works, stop it; return (stdout,
    stderr: the log)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mobilesd_core.cli",
        "serve",
        "-v",  # debug logging: still nothing with the token may reach the log
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not lines or "mobilesd link" not in lines[-1]:
            assert time.monotonic() < deadline, "".join(lines)
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "serve exited early"
            lines.append(line.decode())
        links = [line.strip() for line in lines if "/login?token=" in line]
        async with httpx.AsyncClient(timeout=30) as http:
            for link in links:
                response = await http.get(link)
                assert response.status_code == 303
            assert (await http.get(f"http://127.0.0.1:{env['PORT']}/healthz")).status_code == 200
    finally:
        proc.terminate()
        rest, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    return "".join(lines) + rest.decode(), err.decode()


async def test_serve_prints_the_link_only_on_first_start_and_link_prints_it_again(
    tmp_path: Path,
) -> None:
    """Issue 15 item 14: the token went to stdout at every start, which in Docker is the kept
    container log. Now only the start that makes the token prints the link; later starts say
    where to get it, and `mobilesd link` prints it on demand."""
    port = _free_port()
    env = serve_env(tmp_path, port)
    first, log = await serve_banner(env)
    token = (tmp_path / "data" / "access_token").read_text().strip()
    link = f"http://127.0.0.1:{port}/login?token={token}"
    assert f"  {link}" in first
    assert "█" in first  # the QR code
    assert "printed only on this first start" in first and "mobilesd link" in first
    assert token not in log

    again, log = await serve_banner(env)
    assert token not in again and token not in log
    assert "mobilesd link" in again and str(tmp_path / "data" / "access_token") in again

    command = [sys.executable, "-m", "mobilesd_core.cli", "link"]
    shown = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert f"  {link}" in shown.stdout and "█" in shown.stdout
    plain = await asyncio.to_thread(
        subprocess.run, [*command, "--no-qr"], env=env, capture_output=True, text=True, timeout=60
    )
    assert f"  {link}" in plain.stdout and "█" not in plain.stdout

    nowhere = await asyncio.to_thread(
        subprocess.run,
        [*command, "--data", str(tmp_path / "elsewhere")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nowhere.returncode == 2
    assert "mobilesd serve" in nowhere.stderr and "access_token" in nowhere.stderr


async def test_serve_with_a_configured_token_never_prints_it(tmp_path: Path) -> None:
    token = "serve-token-" + "x" * 20
    out, log = await serve_banner(serve_env(tmp_path, _free_port(), MOBILESD_TOKEN=token))
    assert token not in out and token not in log
    assert "from MOBILESD_TOKEN" in out and "mobilesd link" in out
