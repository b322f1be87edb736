"""Sign-in helpers: a client without credentials, the login link's session cookie."""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

import httpx

from mobilesd_core.api.auth import SESSION_COOKIE

from ..conftest import TOKEN, Harness


def anonymous(harness: Harness, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=str(harness.api.base_url), timeout=30, **kwargs)


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
