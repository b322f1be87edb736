"""MobileSD's public HTTP API as the conformance run uses it, and its event stream recorded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import httpx

from .direct import Answer

TERMINAL = {"completed", "failed", "cancelled"}


class CoreAPI:
    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(120.0, connect=5.0),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> Answer:
        started = time.monotonic()
        response = await self.http.request(method, path, **kwargs)
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return Answer(response.status_code, body, time.monotonic() - started)

    async def generate(self, params: dict[str, Any], server: str) -> str:
        answer = await self.call(
            "POST",
            "/api/v1/generate",
            json={"generation_params": params, "target_server_alias": server},
        )
        if answer.status != 202:
            raise AssertionError(f"generate answered {answer.status}: {answer.body}")
        return str(answer.body["mobilesd_job_id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        answer = await self.call("GET", f"/api/v1/queue/jobs/{job_id}")
        if answer.status != 200:
            raise AssertionError(f"job {job_id}: {answer.status} {answer.body}")
        return dict(answer.body)

    async def wait_job(
        self, job_id: str, statuses: set[str] | None = None, timeout: float = 300.0
    ) -> dict[str, Any]:
        statuses = statuses or TERMINAL
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} still {job['status']} after {timeout:.0f} s "
                    f"(waiting for {sorted(statuses)}); errors: {job.get('errors')}"
                )
            await asyncio.sleep(0.25)

    async def wait_until(
        self, job_id: str, predicate: Any, what: str, timeout: float = 300.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if predicate(job):
                return job
            if job["status"] in TERMINAL:
                raise AssertionError(f"job {job_id} ended {job['status']} before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: no {what} within {timeout:.0f} s")
            await asyncio.sleep(0.1)

    async def images(self, job_id: str) -> list[dict[str, Any]]:
        answer = await self.call("GET", "/api/v1/gallery/images", params={"job_id": job_id})
        return list(answer.body["images"])

    async def image_bytes(self, filename: str) -> bytes:
        response = await self.http.get(f"/gallery_files/{filename}")
        response.raise_for_status()
        return response.content

    async def server_status(self, alias: str) -> dict[str, Any]:
        return dict((await self.call("GET", f"/api/v1/servers/{alias}/status")).body)

    async def wait_server(self, alias: str, online: bool, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.server_status(alias)
            if status.get("online") is online and status.get("checked", True):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"server {alias} not {'online' if online else 'offline'} within "
                    f"{timeout:.0f} s: {status}"
                )
            await asyncio.sleep(0.25)


class EventLog:
    """Every event of `/api/v1/events` with the time it arrived; reconnects if cut."""

    def __init__(self, api: CoreAPI) -> None:
        self.api = api
        self.events: list[tuple[float, str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._last_id: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                await self._read()
            await asyncio.sleep(0.5)

    async def _read(self) -> None:
        headers = {"Last-Event-ID": self._last_id} if self._last_id else {}
        async with self.api.http.stream(
            "GET", "/api/v1/events", headers=headers, timeout=httpx.Timeout(None)
        ) as stream:
            name, data = "message", []
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line.startswith("id:"):
                    self._last_id = line[3:].strip()
                elif not line and data:
                    with contextlib.suppress(ValueError):
                        self.events.append((time.monotonic(), name, json.loads("\n".join(data))))
                    name, data = "message", []

    def progress(self, job_id: str) -> list[tuple[float, dict[str, Any]]]:
        """The live progress objects published for one job, in order."""
        out = []
        for t, name, data in self.events:
            if name != "job" or not isinstance(data, dict):
                continue
            if data.get("mobilesd_job_id") == job_id and isinstance(data.get("progress"), dict):
                out.append((t, data["progress"]))
        return out
