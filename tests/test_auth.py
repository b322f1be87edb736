"""Access: the login link and its session cookie, cross-site request refusal, the wrong-token
limiter, security headers, and the phone link `mobilesd serve` prints.

Real sockets throughout (the Harness core on loopback); cookies are read from and sent as raw
headers so each attribute is checked exactly as a browser would see it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import sys
import time
from http.cookies import SimpleCookie
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from mobilesd_core.api.auth import SESSION_COOKIE, FailureLimiter, client_key, session_value
from mobilesd_core.phone_link import phone_url, print_phone_link

from .conftest import TOKEN, Harness

WRONG = "wrong-guess-SECRET-4711"
GENERATE = {"generation_params": {"prompt": "a fox", "steps": 4, "width": 64, "height": 64}}


def anonymous(harness: Harness, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=str(harness.api.base_url), timeout=30, **kwargs)


def own_origin(harness: Harness) -> str:
    return str(harness.api.base_url).rstrip("/")


def parse_set_cookie(response: httpx.Response) -> Any:
    headers = response.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    jar = SimpleCookie()
    jar.load(headers[0])
    return jar[SESSION_COOKIE], headers[0]


async def login(harness: Harness) -> str:
    """The session cookie's value, as a browser would get it from the login link."""
    async with anonymous(harness) as http:
        response = await http.get("/login", params={"token": TOKEN})
    assert response.status_code == 303
    morsel, _ = parse_set_cookie(response)
    return morsel.value


def cookie_header(value: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={value}"}


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
    assert morsel.value == session_value(TOKEN)
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
        assert parse_set_cookie(response)[0].value == session_value(TOKEN)
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


async def test_many_wrong_tokens_get_429_even_for_the_right_one(harness: Harness) -> None:
    async with anonymous(harness) as http:
        for _ in range(FailureLimiter.LIMIT):
            response = await http.get("/login", params={"token": WRONG})
            assert response.status_code == 401
        blocked = await http.get("/login", params={"token": WRONG})
        assert blocked.status_code == 429
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        assert WRONG not in blocked.text
        # While blocked, the answer does not reveal whether a guess was right.
        right = await http.get("/login", params={"token": TOKEN})
        assert right.status_code == 429 and "set-cookie" not in right.headers
        # The API is closed to this address too, for any presented credential.
        api = await http.get("/api/v1/servers", headers={"Authorization": f"Bearer {TOKEN}"})
        assert api.status_code == 429
    # Another client address is not affected (127.0.0.2 is loopback too, on Linux).
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with anonymous(harness, transport=transport) as other:
        response = await other.get("/login", params={"token": TOKEN})
    assert response.status_code == 303


async def test_wrong_bearer_tokens_count_and_a_stale_cookie_is_cleared(harness: Harness) -> None:
    async with anonymous(harness) as http:
        stale = await http.get("/api/v1/servers", headers=cookie_header("old-session"))
        assert stale.status_code == 401
        morsel, _ = parse_set_cookie(stale)
        assert morsel.value == "" and morsel["max-age"] == "0"
        for _ in range(FailureLimiter.LIMIT - 1):
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


def test_client_key_uses_the_peer_and_groups_ipv6_by_64() -> None:
    def key(remote: str | None) -> str:
        return client_key(SimpleNamespace(remote=remote))  # type: ignore[arg-type]

    assert key("127.0.0.1") == "127.0.0.1"
    assert key("::ffff:127.0.0.1") == "127.0.0.1"
    assert key("2001:db8:1:2:aaaa::1") == key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key(None) == "unknown"


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


async def test_serve_prints_a_working_link_to_stdout_and_never_logs_it(tmp_path: Path) -> None:
    token = "serve-token-" + "x" * 20
    port = _free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MOBILESD_TOKEN": token,
        "CONFIG_DATA_PATH": str(tmp_path / "data"),
        "STABLE_DIFFUSION_SAVE_PATH": str(tmp_path / "out"),
        "INBOX_PATH": str(tmp_path / "inbox"),
        "PYTHONIOENCODING": "utf-8",
    }
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
        while not any("Anyone with this link" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "serve exited early"
            lines.append(line.decode())
        link = f"http://127.0.0.1:{port}/login?token={token}"
        assert any(line.strip() == link for line in lines)
        assert any("█" in line for line in lines)
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.get(link)
            assert response.status_code == 303
            assert token not in response.headers.get("set-cookie", "")
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    assert token not in err.decode()  # stderr is where the log goes
