"""What the token holder learns about a URL it chose. A server address that never answered as
Forge, and a webhook that was not delivered, get one coarse reason whatever went wrong
(refused, timeout, unknown host, any HTTP status), so these URLs cannot be used to scan the
owner's network; the exact reason goes to the core's log (the owner's). Once an address has
answered as Forge, its failures are shown as they are (README fault table).

Real sockets throughout: a closed loopback port, a listener whose accept queue is full, an
unresolvable name, and a loopback HTTP server answering 401, 404, 500 or an HTML page."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mobilesd_core.notify.webhooks import NOT_DELIVERED
from mobilesd_core.servers import not_forge_yet

from .conftest import Harness, fast_settings, start_harness, stop_harness, wait_for
from .helpers.net import (
    closed_port,
    full_accept_queue,
    short_connect_timeout,  # noqa: F401 - fixture
)


async def not_forge(request: web.Request) -> web.StreamResponse:
    """Some other web server: its answer depends on the first path segment."""
    kind = request.path.strip("/").split("/", 1)[0]
    if kind == "login":
        return web.json_response({"detail": "Not authenticated"}, status=401)
    if kind == "broken":
        return web.json_response({"error": "boom"}, status=500)
    if kind == "page":
        return web.Response(text="<html>a router's admin page</html>", content_type="text/html")
    return web.json_response({"detail": "Not Found"}, status=404)


@contextlib.asynccontextmanager
async def other_web_server() -> Any:
    """A loopback web server that is not Forge (see `not_forge`); yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_forge)
    other = TestServer(app, host="127.0.0.1")
    await other.start_server(access_log=None)
    try:
        yield f"http://127.0.0.1:{other.port}"
    finally:
        await other.close()


async def server_state(harness: Harness, alias: str) -> dict[str, Any]:
    runtime = harness.core.registry.runtimes[alias]
    await wait_for(lambda: runtime.checked and runtime.error, what=f"{alias} checked")
    status = await harness.api.get(f"/api/v1/servers/{alias}/status")  # probes now
    models = await harness.api.get(f"/api/v1/servers/{alias}/models")
    listed = (await harness.api.get(f"/api/v1/servers/{alias}")).json()["status"]
    assert status.status_code == 200 and models.status_code == 502
    return {
        "status": status.json()["error"],
        "models": models.json()["error"]["message"],
        "listed": listed["error"],
    }


@pytest.mark.usefixtures("short_connect_timeout")
async def test_an_address_never_seen_as_forge_gets_one_coarse_reason(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mobilesd_core.servers")
    async with other_web_server() as web_url:
        with full_accept_queue() as silent, harness.core.bus.subscribe()[0] as events:
            urls = {
                "refused": f"http://127.0.0.1:{closed_port()}",
                "timeout": f"http://127.0.0.1:{silent}",
                "nxdomain": "http://forge.mobilesd-test.invalid:7860",
                "http401": f"{web_url}/login",
                "http404": f"{web_url}/missing",
                "http500": f"{web_url}/broken",
                "webpage": f"{web_url}/page",
            }
            for alias, url in urls.items():
                response = await harness.api.post(
                    "/api/v1/servers", json={"alias": alias, "api_url": url}
                )
                assert response.status_code == 201, response.text
            for alias in urls:
                seen = await server_state(harness, alias)
                assert seen == dict.fromkeys(seen, not_forge_yet(alias)), (alias, seen)
            errors = set()
            while not events.queue.empty():
                event = events.queue.get_nowait()
                if event is not None and event.name == "server" and event.data.get("error"):
                    errors.add(event.data["error"].replace(f"'{event.data['alias']}'", "'x'"))
            assert errors == {not_forge_yet("x")}  # the event stream says no more
    # The owner's log names each reason.
    logged = caplog.text
    for words in (
        "is unreachable (connection refused)",
        "did not answer (connect timeout)",
        "is unreachable (host name not found)",
        "refused the login",
        "has no /sdapi/v1/options",
        "answered 500",
        "sent an unreadable answer to /options",
    ):
        assert words in logged, words


async def test_an_address_that_answered_as_forge_keeps_its_detailed_reasons(
    harness: Harness,
) -> None:
    sim = await harness.add_sim("gpu1")
    await sim.stop()
    runtime = harness.core.registry.runtimes["gpu1"]
    await wait_for(lambda: not runtime.online, what="gpu1 offline")
    status = (await harness.api.get("/api/v1/servers/gpu1/status")).json()
    assert "is unreachable (connection refused)" in status["error"], status
    models = await harness.api.get("/api/v1/servers/gpu1/models")
    assert "is unreachable (connection refused)" in models.json()["error"]["message"]
    # Another address is a new one: coarse again until it answers as Forge.
    moved = await harness.api.put(
        "/api/v1/servers/gpu1", json={"api_url": f"http://127.0.0.1:{closed_port()}"}
    )
    assert moved.status_code == 200, moved.text
    status = (await harness.api.get("/api/v1/servers/gpu1/status")).json()
    assert status["error"] == not_forge_yet("gpu1")
    # Back on the address Forge answered at: detailed again; and once it is up, online.
    moved = await harness.api.put("/api/v1/servers/gpu1", json={"api_url": sim.url})
    status = (await harness.api.get("/api/v1/servers/gpu1/status")).json()
    assert "is unreachable (connection refused)" in status["error"], status
    await sim.start()
    status = (await harness.api.get("/api/v1/servers/gpu1/status")).json()
    assert status["online"] is True and status["error"] is None


async def test_an_undelivered_webhook_reads_the_same_whatever_the_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mobilesd_core.notify.webhooks")
    settings = fast_settings(
        tmp_path,
        webhook_secret="whsec-test-0123456789",
        webhook_max_attempts=1,
        webhook_timeout=0.5,
    )
    harness = await start_harness(settings)
    try:
        await harness.add_sim("gpu1")
        async with other_web_server() as web_url:
            with full_accept_queue() as silent:
                hooks = {
                    f"http://127.0.0.1:{closed_port()}/hook": "cannot connect",
                    f"http://127.0.0.1:{silent}/hook": "no answer within 0.5s",
                    "http://hook.mobilesd-test.invalid/hook": "cannot connect",
                    f"{web_url}/missing/hook": "HTTP 404",
                    f"{web_url}/broken/hook": "HTTP 500",
                }
                reasons = []
                for failed, url in enumerate(hooks, start=1):
                    response = await harness.api.post(
                        "/api/v1/generate",
                        json={
                            "generation_params": {"prompt": "x", "width": 64, "height": 64},
                            "webhook_url": url,
                        },
                    )
                    assert response.status_code == 202, response.text

                    async def given_up(count: int = failed) -> dict[str, Any] | None:
                        status = (await harness.api.get("/api/v1/notifications")).json()
                        hook = status["webhooks"]
                        return hook if hook["failed"] == count and not hook["pending"] else None

                    status = await wait_for(given_up, what=f"the webhook to {url} given up")
                    reasons.append(status["last_error"]["message"])
        assert reasons == [NOT_DELIVERED] * len(hooks)
        outbox = (settings.data_path / "webhook_outbox.jsonl").read_text()
        for detail in hooks.values():
            assert detail in caplog.text, detail  # the owner's log tells them apart
            assert detail not in outbox
    finally:
        await stop_harness(harness)
