"""Talking to a Forge directly, as a person or another program would (not through MobileSD):
its API, its web UI's Gradio queue, and a watcher that records `/sdapi/v1/progress`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Answer:
    status: int
    body: Any
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)


class ForgeDirect:
    def __init__(self, url: str, auth: tuple[str, str] | None = None) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, auth=auth, timeout=httpx.Timeout(None))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> Answer:
        started = time.monotonic()
        response = await self.http.request(method, path, **kwargs)
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return Answer(
            response.status_code, body, time.monotonic() - started, dict(response.headers)
        )

    async def progress(self) -> dict[str, Any]:
        answer = await self.call("GET", "/sdapi/v1/progress", params={"skip_current_image": "1"})
        return answer.body if isinstance(answer.body, dict) else {}

    async def txt2img(self, payload: dict[str, Any]) -> Answer:
        return await self.call("POST", "/sdapi/v1/txt2img", json=payload)

    async def interrupt_count(self, server_log_count: int) -> int:
        """The simulator counts interrupts in its state; a real Forge logs each one."""
        answer = await self.call("GET", "/_sim/state")
        if answer.status == 200 and isinstance(answer.body, dict):
            return int(answer.body.get("interrupt_count") or 0)
        return server_log_count

    async def webui_txt2img(self, fields: dict[str, Any]) -> tuple[str, asyncio.Task[Answer]]:
        """Queue a txt2img through the web UI's Gradio queue, as the browser does when Generate
        is pressed: the `txt2img` event of `/config`, every input at its default except
        `fields` (by label), the first input the task id the page's JavaScript makes up. Returns
        the task id and a task that ends with the `process_completed` message."""
        config = (await self.call("GET", "/config")).body
        components = {c["id"]: c for c in config["components"]}
        index, dependency = next(
            (i, d) for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "txt2img"
        )
        data = []
        for component_id in dependency["inputs"]:
            props = components[component_id].get("props") or {}
            data.append(fields.get(props.get("label"), props.get("value")))
        task_id = f"task(conformance-{secrets.token_hex(4)})"
        data[0] = task_id
        session = secrets.token_hex(6)
        trigger = (dependency.get("targets") or [[None]])[0][0]
        started = time.monotonic()
        joined = await self.call(
            "POST",
            "/queue/join",
            json={
                "data": data,
                "event_data": None,
                "fn_index": index,
                "trigger_id": trigger,
                "session_hash": session,
            },
        )
        if joined.status != 200:
            raise RuntimeError(f"/queue/join answered {joined.status}: {joined.body}")

        async def listen() -> Answer:
            async with self.http.stream(
                "GET", "/queue/data", params={"session_hash": session}
            ) as stream:
                async for line in stream.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return Answer(
                            200 if message.get("success") else 500,
                            message.get("output"),
                            time.monotonic() - started,
                        )
            raise RuntimeError("the Gradio queue stream ended without process_completed")

        return task_id, asyncio.create_task(listen())

    async def internal_progress(self, task_id: str) -> dict[str, Any]:
        answer = await self.call(
            "POST", "/internal/progress", json={"id_task": task_id, "live_preview": False}
        )
        return answer.body if isinstance(answer.body, dict) else {}


@dataclass
class Sample:
    t: float
    progress: dict[str, Any]

    @property
    def state(self) -> dict[str, Any]:
        return self.progress.get("state") or {}


class ProgressWatcher:
    """Records what `/sdapi/v1/progress` says, every `interval` seconds, for the whole run: the
    timing semantics (job_count while loading, what lingers after a job) are read from it."""

    def __init__(self, direct: ForgeDirect, interval: float = 0.2) -> None:
        self.direct = direct
        self.interval = interval
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                body = await self.direct.progress()
                if body:
                    self.samples.append(Sample(time.monotonic(), body))
            await asyncio.sleep(self.interval)

    def since(self, t: float) -> list[Sample]:
        return [s for s in self.samples if s.t >= t]
