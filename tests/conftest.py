"""Shared fixtures: a real core (aiohttp on a loopback socket) and real simulated Forge servers.

Nothing is mocked: the core talks HTTP to SimServer instances, tests talk HTTP to the core.
Waiting is done by polling with a deadline, never by fixed sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from mobilesd_core.api.app import create_app
from mobilesd_core.api.keys import CORE
from mobilesd_core.config import Settings
from mobilesd_core.core import Core
from mobilesd_core.forge.simulator import SimServer, SimulatorConfig

TOKEN = "test-token-0123456789"


def fast_settings(root: Path, **overrides: Any) -> Settings:
    """Settings for tests: short intervals so faults play out in seconds."""
    base = Settings(
        data_path=root / "data",
        gallery_path=root / "outputs",
        inbox_path=root / "inbox",
        token=TOKEN,
        health_interval=0.2,
        progress_interval=0.02,
        stall_timeout=1.5,
        max_attempts=3,
        retry_backoff=0.05,
        retry_backoff_max=0.2,
    )
    for path in (base.data_path, base.gallery_path):
        path.mkdir(parents=True, exist_ok=True)
    return base.with_overrides(**overrides)


async def wait_for(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any],
    *,
    timeout: float = 20.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class Harness:
    """A running core with its HTTP client, plus helpers that speak the public API."""

    settings: Settings
    server: TestServer
    api: httpx.AsyncClient
    sims: dict[str, SimServer] = field(default_factory=dict)

    @property
    def core(self) -> Core:
        return self.server.app[CORE]

    async def add_sim(
        self, alias: str, config: SimulatorConfig | None = None, **server_fields: Any
    ) -> SimServer:
        sim = SimServer(config or SimulatorConfig(step_ms=5, switch_ms=20, name=alias))
        await sim.start()
        self.sims[alias] = sim
        response = await self.api.post(
            "/api/v1/servers", json={"alias": alias, "api_url": sim.url, **server_fields}
        )
        assert response.status_code == 201, response.text
        await wait_for(
            lambda: self.core.registry.runtimes[alias].online, what=f"{alias} to be online"
        )
        return sim

    async def submit(self, target: str | None = None, **params: Any) -> str:
        params.setdefault("prompt", "a lighthouse at dusk")
        params.setdefault("steps", 4)
        params.setdefault("width", 64)
        params.setdefault("height", 64)
        body: dict[str, Any] = {"generation_params": params}
        if target:
            body["target_server_alias"] = target
        response = await self.api.post("/api/v1/generate", json=body)
        assert response.status_code == 202, response.text
        return response.json()["mobilesd_job_id"]

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.api.get(f"/api/v1/queue/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    async def wait_status(
        self, job_id: str, *statuses: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            job = await self.job(job_id)
            return job if job["status"] in statuses else None

        return await wait_for(check, timeout=timeout, what=f"job {job_id} to be {statuses}")


async def start_harness(settings: Settings, *, core: Core | None = None) -> Harness:
    app = create_app(settings, core=core)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    api = httpx.AsyncClient(
        base_url=str(server.make_url("")).rstrip("/"),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    return Harness(settings=settings, server=server, api=api)


async def stop_harness(harness: Harness) -> None:
    await harness.api.aclose()
    await harness.server.close()
    for sim in harness.sims.values():
        await sim.stop()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = await start_harness(fast_settings(tmp_path))
    try:
        yield h
    finally:
        await stop_harness(h)
