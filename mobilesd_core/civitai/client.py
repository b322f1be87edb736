"""Civitai's REST API over httpx: JSON lookups, the download redirect, and the storage fetch.

The API key goes in `Authorization: Bearer` on requests to Civitai only, never in a URL, never
in a log line or an error message. The 307 of `/api/download/models/<v>` is followed here, by a
second client that has never seen the key, so the signed storage URL gets no credentials.
Our own User-Agent keeps Civitai's answers JSON (a browser-like one gets HTML and redirects).

Every failure becomes a CivitaiError carrying the status our API answers, a stable code, a
message saying what to do (docs/civitai.md's table), and whether retrying may help.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urljoin

import httpx

from .. import __version__
from ..backoff import backoff_delay
from ..errors import MobileSDError

log = logging.getLogger(__name__)

USER_AGENT = f"MobileSD/{__version__} (self-hosted Forge queue; python-httpx)"
RETRY_AFTER_MAX = 600.0  # a longer Retry-After is treated as this: the user sees the wait


class _RedactSignedUrls(logging.Filter):
    """httpx logs every request URL at INFO; a signed storage URL is a short-lived credential,
    so its query string is replaced by `?<redacted>` (other URLs are left alone)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, httpx.URL) and _signed(a) for a in record.args
        ):
            record.args = tuple(
                a.copy_with(query=b"<redacted>") if isinstance(a, httpx.URL) and _signed(a) else a
                for a in record.args
            )
        return True


def _signed(url: httpx.URL) -> bool:
    query = url.query.lower()
    return b"signature" in query or b"token" in query


logging.getLogger("httpx").addFilter(_RedactSignedUrls())


class CivitaiError(MobileSDError):
    """A Civitai request failed. `status` and `code` are what our API answers for it."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int = 502,
        transient: bool = False,
        retry_after: float | None = None,
        civitai_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.transient = transient
        self.retry_after = retry_after
        self.civitai_status = civitai_status


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_MAX)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), RETRY_AFTER_MAX)


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _said(body: dict[str, Any]) -> str:
    """What Civitai's error body says, for the end of a message."""
    parts = [str(body[k]) for k in ("error", "message") if isinstance(body.get(k), str)]
    return ": ".join(dict.fromkeys(parts))[:300]


def download_error(response: httpx.Response, *, has_key: bool) -> CivitaiError:
    """docs/civitai.md's download error table, as messages that say what to do."""
    status = response.status_code
    body = _body(response)
    said = _said(body)
    text = " ".join(str(v) for v in body.values() if isinstance(v, str)).lower()
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    if status == 401:
        if "disabled" in text:
            return CivitaiError(
                "The creator has disabled downloads of this file on Civitai; it cannot be "
                f"downloaded ({said}).",
                code="civitai_download_disabled",
                status=403,
                civitai_status=401,
            )
        if has_key:
            message = (
                "Civitai refused the API key in CIVITAI_API_KEY for this download (401): check "
                "the key is valid (civitai.com > Account settings > API keys) and restart the "
                "core with the new one."
            )
        else:
            message = (
                "Civitai requires you to be logged in to download this file (401): create an API "
                "key at civitai.com > Account settings > API keys, set CIVITAI_API_KEY and "
                "restart the core."
            )
        return CivitaiError(message, code="civitai_login_required", status=403, civitai_status=401)
    if status == 403:
        if str(body.get("error", "")).lower() == "early access":
            deadline = body.get("deadline")
            until = f" until {deadline}" if deadline else ""
            return CivitaiError(
                f"This model version is in early access on Civitai{until}: wait until then and "
                "download it again, or get early access on civitai.com with the account of "
                "CIVITAI_API_KEY.",
                code="civitai_early_access",
                status=403,
                civitai_status=403,
            )
        return CivitaiError(
            "Civitai forbids this download for the account of CIVITAI_API_KEY (403"
            f"{': ' + said if said else ''}): check that the account has access to the model.",
            code="civitai_forbidden",
            status=403,
            civitai_status=403,
        )
    if status == 404:
        return CivitaiError(
            "Civitai has no such file (404): check the model version (and file) id; this type "
            "or format may not be offered.",
            code="civitai_not_found",
            status=404,
            civitai_status=404,
        )
    if status == 410:
        return CivitaiError(
            "Civitai archived this model: it is not available for download any more (410).",
            code="civitai_gone",
            status=410,
            civitai_status=410,
        )
    if status == 429:
        return CivitaiError(
            "Civitai is limiting downloads from this address (429): MobileSD waits and retries; "
            "if it keeps failing, try again later.",
            code="civitai_rate_limited",
            status=429,
            transient=True,
            retry_after=retry_after,
            civitai_status=429,
        )
    if status == 400:
        return CivitaiError(
            f"Civitai rejected the download request (400{': ' + said if said else ''}).",
            code="civitai_bad_request",
            status=422,
            civitai_status=400,
        )
    return CivitaiError(
        f"Civitai answered {status}{': ' + said if said else ''}; retrying may help.",
        code="civitai_unavailable",
        status=502,
        transient=status >= 500 or status == 408,
        retry_after=retry_after,
        civitai_status=status,
    )


def transport_error(exc: Exception, where: str) -> CivitaiError:
    if isinstance(exc, httpx.TimeoutException):
        reason = "timed out"
    elif isinstance(exc, httpx.ConnectError):
        reason = "cannot be reached"
    else:
        reason = f"dropped the connection ({type(exc).__name__})"
    return CivitaiError(f"{where} {reason}", code="civitai_unavailable", transient=True)


class CivitaiClient:
    """One long-lived client for the API and one for storage (no credentials ever)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = 3,
        backoff: float = 1.0,
        backoff_max: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key or None
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        timeout = httpx.Timeout(30.0, connect=10.0)
        self._api = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )
        self._storage = httpx.AsyncClient(
            # identity: byte ranges and Content-Length then count the file's own bytes.
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            timeout=httpx.Timeout(60.0, connect=15.0),
            transport=transport,
            follow_redirects=False,
        )

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._storage.aclose()

    # -- JSON lookups ------------------------------------------------------------------------

    async def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a JSON answer; 429/5xx and dropped connections are retried with backoff (a
        person is waiting, so only a few times and never longer than `backoff_max`)."""
        attempt = 0
        while True:
            try:
                response = await self._api.get(path, params=params, headers=self._auth())
            except httpx.HTTPError as exc:
                error = transport_error(exc, "Civitai")
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        error = CivitaiError(
                            "Civitai sent an answer that is not JSON",
                            code="civitai_unavailable",
                            transient=True,
                        )
                else:
                    error = self._lookup_error(response)
            if not error.transient or attempt >= self.retries:
                raise error
            delay = (
                min(error.retry_after, self.backoff_max)
                if error.retry_after
                else backoff_delay(attempt + 1, self.backoff, self.backoff_max)
            )
            attempt += 1
            log.info("civitai: %s; retry %d in %.1f s", error.message, attempt, delay)
            await asyncio.sleep(delay)

    def _lookup_error(self, response: httpx.Response) -> CivitaiError:
        status = response.status_code
        said = _said(_body(response))
        if status == 404:
            return CivitaiError(
                f"Civitai: {said or 'not found'}",
                code="civitai_not_found",
                status=404,
                civitai_status=404,
            )
        if status in (429, 500, 502, 503, 504):
            return CivitaiError(
                f"Civitai is busy ({status}); try again in a moment",
                code="civitai_unavailable",
                status=502,
                transient=True,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                civitai_status=status,
            )
        if status in (401, 403):
            return CivitaiError(
                f"Civitai refused the request ({status}{': ' + said if said else ''}); check "
                "CIVITAI_API_KEY",
                code="civitai_forbidden",
                status=403,
                civitai_status=status,
            )
        return CivitaiError(
            f"Civitai answered {status}{': ' + said if said else ''}",
            code="civitai_unavailable",
            status=502,
            civitai_status=status,
        )

    async def image(self, image_id: int) -> dict[str, Any] | None:
        """The image record with its flat `meta`, or None when Civitai lists no such image."""
        data = await self.get_json(
            "/api/v1/images",
            {"imageId": image_id, "withMeta": "true", "flatMeta": "true", "browsingLevel": 31},
        )
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            return None
        return items[0]

    async def model(self, model_id: int) -> dict[str, Any]:
        return await self.get_json(f"/api/v1/models/{model_id}")

    async def model_version(self, version_id: int) -> dict[str, Any]:
        return await self.get_json(f"/api/v1/model-versions/{version_id}")

    async def by_hash(self, hash_: str) -> dict[str, Any] | None:
        try:
            return await self.get_json(f"/api/v1/model-versions/by-hash/{hash_}")
        except CivitaiError as exc:
            if exc.civitai_status == 404:
                return None
            raise

    # -- downloads ---------------------------------------------------------------------------

    async def download_location(self, version_id: int, file_id: int | None) -> str:
        """The signed storage URL `/api/download/models/<v>` redirects to (one try; the
        download manager owns retrying)."""
        params = {"fileId": file_id} if file_id else None
        try:
            response = await self._api.get(
                f"/api/download/models/{version_id}", params=params, headers=self._auth()
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, "Civitai") from None
        if response.is_redirect and response.headers.get("Location"):
            return urljoin(str(response.url), response.headers["Location"])
        raise download_error(response, has_key=self.has_key)

    @contextlib.asynccontextmanager
    async def storage(self, url: str, *, start: int = 0) -> AsyncIterator[httpx.Response]:
        """The streamed answer of the storage URL, from byte `start` on (a Range request).
        No Authorization header and no key: this client never had one."""
        headers = {"Range": f"bytes={start}-"} if start else {}
        request = self._storage.build_request("GET", url, headers=headers)
        try:
            response = await self._storage.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, "Civitai's file storage") from None
        try:
            yield response
        finally:
            await response.aclose()

    async def fetch_small(self, url: str, limit: int) -> tuple[bytes, str]:
        """A small public file (a preview image), no credentials: (bytes, content type)."""
        request = self._storage.build_request("GET", url)
        try:
            # Redirects are safe to follow here: this client never carries credentials.
            response = await self._storage.send(request, stream=True, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, "the preview's host") from None
        try:
            if response.status_code != 200:
                raise CivitaiError(
                    f"preview answered {response.status_code}", code="civitai_unavailable"
                )
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > limit:
                    raise CivitaiError("preview is too large", code="civitai_unavailable")
            return bytes(data), response.headers.get("Content-Type", "")
        finally:
            await response.aclose()
