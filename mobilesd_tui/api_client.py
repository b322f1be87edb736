"""The TUI's only way to the core: its HTTP API and event stream.

One long-lived `httpx.AsyncClient` per core (never one per request), explicit timeouts, and typed
errors, so screens can say what went wrong in words a person understands. `CoreApi` is the
boundary the app receives (`MobileSDApp(api_client, ...)`): tests hand it a fake with fixed data.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, aconnect_sse

# The core sends a heartbeat comment at least every 15 s: three missed ones mean a dead path
# (SSH tunnel, NAT), which must become a reconnect rather than a stream that waits forever.
EVENT_READ_TIMEOUT = 45.0
TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)
EVENT_TIMEOUT = httpx.Timeout(connect=5.0, read=EVENT_READ_TIMEOUT, write=10.0, pool=5.0)


class ApiError(Exception):
    """The core answered with an error. `details` lists field problems on a 422."""

    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []

    def field_problems(self) -> list[tuple[str, str]]:
        """(path, message) per problem, e.g. ("generation_params.steps", "must be ≤ 150")."""
        out = []
        for item in self.details:
            if isinstance(item, dict) and "path" in item:
                out.append((str(item["path"]), str(item.get("message", "invalid"))))
        return out


class Unauthorized(ApiError):
    """The token is missing or wrong: retrying will not help."""


class Unreachable(Exception):
    """The core did not answer (down, restarting, wrong URL, network gone)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class StreamEvent:
    """One event from /api/v1/events; `name == "open"` marks a (re)established stream."""

    name: str
    data: Any = None
    id: int | None = None


@dataclass
class JobPage:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0


@dataclass
class ImagePage:
    images: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0


class CoreApi(Protocol):
    """What the app needs from the core. `CoreClient` speaks HTTP; tests use a fake."""

    url: str

    async def aclose(self) -> None: ...
    async def health(self) -> dict[str, Any]: ...
    async def jobs(self, *, limit: int = 1000, offset: int = 0) -> JobPage: ...
    async def queue_state(self) -> dict[str, Any]: ...
    async def submit(self, params: dict[str, Any], target: str | None) -> dict[str, Any]: ...
    async def submit_sweep(
        self, params: dict[str, Any], matrix: dict[str, list[Any]], target: str | None
    ) -> dict[str, Any]: ...
    async def edit(
        self, job_id: str, params: dict[str, Any], target: str | None
    ) -> dict[str, Any]: ...
    async def cancel_batch(self, batch_id: str) -> dict[str, Any]: ...
    async def cancel(self, job_id: str) -> dict[str, Any]: ...
    async def retry(self, job_id: str) -> dict[str, Any]: ...
    async def move(self, job_id: str, to: str) -> dict[str, Any]: ...
    async def delete_job(self, job_id: str) -> None: ...
    async def clear_finished(self) -> int: ...
    async def set_paused(self, paused: bool) -> dict[str, Any]: ...
    async def servers(self) -> list[dict[str, Any]]: ...
    async def add_server(self, data: dict[str, Any]) -> dict[str, Any]: ...
    async def update_server(self, alias: str, data: dict[str, Any]) -> dict[str, Any]: ...
    async def remove_server(self, alias: str) -> None: ...
    async def server_status(self, alias: str) -> dict[str, Any]: ...
    async def server_models(self, alias: str) -> dict[str, Any]: ...
    async def images(self, *, limit: int = 100, offset: int = 0) -> ImagePage: ...
    async def delete_image(self, filename: str) -> None: ...
    async def fetch_bytes(self, url: str) -> bytes: ...
    async def job_preview(self, job_id: str, etag: str | None) -> tuple[bytes, str] | None: ...
    async def civitai_image_info(self, body: dict[str, Any]) -> dict[str, Any]: ...
    async def civitai_download(self, model_version_id: int) -> dict[str, Any]: ...
    async def civitai_downloads(self) -> list[dict[str, Any]]: ...
    async def civitai_cancel(self, download_id: str) -> dict[str, Any]: ...
    def events(self, last_event_id: int | None) -> AsyncIterator[StreamEvent]: ...


def _error_from(response: httpx.Response) -> ApiError:
    try:
        body = response.json().get("error", {})
    except (ValueError, AttributeError):
        body = {}
    code = str(body.get("code") or f"http_{response.status_code}")
    message = str(body.get("message") or response.reason_phrase or "error")
    details = body.get("details") if isinstance(body.get("details"), list) else None
    cls = Unauthorized if response.status_code == 401 else ApiError
    if response.status_code == 401:
        message = "the core refused the access token (set --token or MOBILESD_TOKEN)"
    return cls(response.status_code, code, message, details)


def _unreachable(url: str, exc: httpx.HTTPError) -> Unreachable:
    if isinstance(exc, httpx.ConnectTimeout):
        why = "connecting timed out"
    elif isinstance(exc, httpx.ConnectError):
        why = "connection refused or host unreachable"
    elif isinstance(exc, httpx.ReadTimeout):
        why = "no answer in time"
    elif isinstance(exc, httpx.RemoteProtocolError):
        why = "the connection closed mid-answer"
    else:
        why = type(exc).__name__
    return Unreachable(f"cannot reach the core at {url}: {why}")


class CoreClient:
    """CoreApi over HTTP. The token goes in the Authorization header only, never a URL."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"X-MobileSD-Source": "tui", "User-Agent": "MobileSD-TUI"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._call(method, path, **kwargs)).json()

    async def health(self) -> dict[str, Any]:
        return await self._json("GET", "/healthz")

    async def jobs(self, *, limit: int = 1000, offset: int = 0) -> JobPage:
        body = await self._json(
            "GET", "/api/v1/queue/jobs", params={"limit": limit, "offset": offset}
        )
        return JobPage(jobs=body["jobs"], total=body["total"])

    async def queue_state(self) -> dict[str, Any]:
        return await self._json("GET", "/api/v1/queue")

    async def submit(self, params: dict[str, Any], target: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"generation_params": params}
        if target:
            body["target_server_alias"] = target
        return (await self._json("POST", "/api/v1/generate", json=body))["job"]

    async def submit_sweep(
        self, params: dict[str, Any], matrix: dict[str, list[Any]], target: str | None
    ) -> dict[str, Any]:
        """One job per combination of `matrix` (e.g. every checkpoint): one batch, all or none.
        Returns the answer: `batch_id` and `mobilesd_job_ids`."""
        body: dict[str, Any] = {"generation_params": params, "matrix": matrix}
        if target:
            body["target_server_alias"] = target
        return await self._json("POST", "/api/v1/generate", json=body)

    async def edit(self, job_id: str, params: dict[str, Any], target: str | None) -> dict[str, Any]:
        """PATCH a pending job: the form's fields merged onto its params, and its target."""
        body = {"generation_params": params, "target_server_alias": target}
        return await self._json("PATCH", f"/api/v1/queue/jobs/{quote(job_id)}", json=body)

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/api/v1/queue/batches/{quote(batch_id)}/cancel")

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/api/v1/queue/jobs/{quote(job_id)}/cancel")

    async def retry(self, job_id: str) -> dict[str, Any]:
        return (await self._json("POST", f"/api/v1/queue/jobs/{quote(job_id)}/retry"))["job"]

    async def move(self, job_id: str, to: str) -> dict[str, Any]:
        return await self._json("POST", f"/api/v1/queue/jobs/{quote(job_id)}/move", json={"to": to})

    async def delete_job(self, job_id: str) -> None:
        await self._call("DELETE", f"/api/v1/queue/jobs/{quote(job_id)}")

    async def clear_finished(self) -> int:
        body = await self._json(
            "POST", "/api/v1/queue/clear", json={"status": ["completed", "failed", "cancelled"]}
        )
        return int(body["removed"])

    async def set_paused(self, paused: bool) -> dict[str, Any]:
        return await self._json("POST", f"/api/v1/queue/{'pause' if paused else 'resume'}")

    async def servers(self) -> list[dict[str, Any]]:
        return await self._json("GET", "/api/v1/servers")

    async def add_server(self, data: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", "/api/v1/servers", json=data)

    async def update_server(self, alias: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self._json("PUT", f"/api/v1/servers/{quote(alias, safe='')}", json=data)

    async def remove_server(self, alias: str) -> None:
        await self._call("DELETE", f"/api/v1/servers/{quote(alias, safe='')}")

    async def server_status(self, alias: str) -> dict[str, Any]:
        return await self._json("GET", f"/api/v1/servers/{quote(alias, safe='')}/status")

    async def server_models(self, alias: str) -> dict[str, Any]:
        return await self._json("GET", f"/api/v1/servers/{quote(alias, safe='')}/models")

    async def images(self, *, limit: int = 100, offset: int = 0) -> ImagePage:
        body = await self._json(
            "GET", "/api/v1/gallery/images", params={"limit": limit, "offset": offset}
        )
        return ImagePage(images=body["images"], total=body["total"])

    async def delete_image(self, filename: str) -> None:
        await self._call("DELETE", f"/api/v1/gallery/images/{quote(filename, safe='')}")

    async def fetch_bytes(self, url: str) -> bytes:
        # Gallery URLs are relative to the core (`/gallery_files/...`); never follow elsewhere.
        if not url.startswith("/"):
            raise ValueError(f"not a core-relative URL: {url!r}")
        return (await self._call("GET", url)).content

    async def job_preview(self, job_id: str, etag: str | None) -> tuple[bytes, str] | None:
        """A running job's live preview and its ETag; None when it is still the one `etag`
        names (304, no body). ApiError 404 `no_preview` when there is none."""
        headers = {"If-None-Match": etag} if etag else None
        path = f"/api/v1/queue/jobs/{quote(job_id, safe='')}/preview"
        response = await self._call("GET", path, headers=headers)
        if response.status_code == 304:
            return None
        return response.content, response.headers.get("ETag", "")

    async def civitai_image_info(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", "/api/v1/civitai/image-info", json=body)

    async def civitai_download(self, model_version_id: int) -> dict[str, Any]:
        body = {"model_version_id": model_version_id}
        return await self._json("POST", "/api/v1/civitai/download-model", json=body)

    async def civitai_downloads(self) -> list[dict[str, Any]]:
        return (await self._json("GET", "/api/v1/civitai/downloads"))["downloads"]

    async def civitai_cancel(self, download_id: str) -> dict[str, Any]:
        """Stop a queued or running download; returns it, now cancelled (409: it finished)."""
        return await self._json(
            "POST", f"/api/v1/civitai/downloads/{quote(download_id, safe='')}/cancel"
        )

    async def events(self, last_event_id: int | None) -> AsyncIterator[StreamEvent]:
        """The event stream from `last_event_id` on; ends (or raises) when the stream does."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        try:
            async with aconnect_sse(
                self._http, "GET", "/api/v1/events", headers=headers, timeout=EVENT_TIMEOUT
            ) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    raise _error_from(source.response)
                source.response.raise_for_status()
                yield StreamEvent("open")
                async for sse in source.aiter_sse():
                    if not sse.event or sse.event == "message":
                        continue
                    try:
                        data = json.loads(sse.data) if sse.data else None
                    except ValueError:
                        continue  # not ours to interpret; the next event carries on
                    event_id = int(sse.id) if sse.id and sse.id.isdigit() else None
                    yield StreamEvent(sse.event, data, event_id)
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from None
        except SSEError as exc:
            raise Unreachable(f"the core at {self.url} sent no event stream ({exc})") from None
