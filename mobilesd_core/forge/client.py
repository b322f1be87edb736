"""HTTP client for one Forge / A1111 server (`/sdapi/v1`), on one long-lived httpx.AsyncClient.

Each failure becomes a ForgeTransientError (retry) or ForgePermanentError (fail with a message
that says what to fix). Credentials go in the Basic auth header only; nothing here logs them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from .errors import ForgeError, ForgePermanentError, ForgeTransientError
from .models import CheckpointInfo
from .payload import ServerCatalog

API = "/sdapi/v1"
MODULES_OPTION = "forge_additional_modules"


def _detail(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("message", "detail", "error", "errors"):
            value = body.get(key)
            if value:
                if isinstance(value, list):
                    return "; ".join(_problem(item) for item in value)
                return str(value)
    return ""


def _connect_failure(exc: BaseException) -> str:
    """Why a connection failed, in words: httpx's own message ("All connection attempts
    failed") hides the OS error in its cause chain."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        seen = seen.__cause__ or seen.__context__
    return "cannot connect"


def _problem(item: Any) -> str:
    """One item of a 422 `detail` list: `field: message`, or the message alone for the body."""
    if not isinstance(item, dict):
        return str(item)
    loc = item.get("loc")
    field = ".".join(str(p) for p in loc[1:]) if isinstance(loc, list) else ""
    message = str(item.get("msg") or "invalid")
    return f"{field}: {message}" if field else message


class ForgeClient:
    def __init__(
        self,
        alias: str,
        api_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.alias = alias
        self.api_url = api_url.rstrip("/")
        auth = httpx.BasicAuth(username, password or "") if username else None
        self._read_timeout = read_timeout
        self.has_internal_progress: bool | None = None  # Forge's web UI route; None: not tried
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            auth=auth,
            transport=transport,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            headers={"User-Agent": "MobileSD", "Accept-Encoding": "gzip"},
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport and error mapping ---------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
        on_headers: Callable[[], Awaitable[None]] | None = None,
        body_timeout: float | None = None,
        prefix: str = API,
    ) -> Any:
        """One request, its failures mapped. `on_headers` runs once a 200 answer has begun,
        before its body is read; `body_timeout` then bounds the reading of that body."""
        where = f"server '{self.alias}'"
        try:
            request = self._http.build_request(
                method,
                prefix + path,
                json=body,
                params=params,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            response = await self._http.send(request, stream=True)
            try:
                if on_headers is not None and response.status_code == 200:
                    await on_headers()
                async with asyncio.timeout(body_timeout):
                    await response.aread()
            finally:
                await response.aclose()
        except TimeoutError:
            raise ForgeTransientError(f"{where} stopped sending its answer to {path}") from None
        except httpx.ConnectTimeout:
            raise ForgeTransientError(
                f"{where} did not answer (connect timeout)", offline=True
            ) from None
        except httpx.ConnectError as exc:
            raise ForgeTransientError(
                f"{where} is unreachable ({_connect_failure(exc)})", offline=True
            ) from None
        except httpx.TimeoutException:
            raise ForgeTransientError(f"{where} timed out on {path}") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # A dropped connection mid-request: often the server restarting.
            raise ForgeTransientError(
                f"{where} closed the connection during {path} ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise ForgeTransientError(f"{where}: {type(exc).__name__} on {path}") from None
        return self._decode(response, path, prefix)

    def _decode(self, response: httpx.Response, path: str, prefix: str = API) -> Any:
        where = f"server '{self.alias}'"
        status = response.status_code
        try:
            body: Any = response.json() if response.content else None
            is_json = True
        except (json.JSONDecodeError, UnicodeDecodeError):
            body, is_json = None, False
        if 200 <= status < 300:
            if not is_json:
                raise ForgeTransientError(
                    f"{where} sent an unreadable answer to {path} (not JSON, or cut short)",
                    status=status,
                )
            return body
        detail = _detail(body) if is_json else ""
        if status == 401:
            raise ForgePermanentError(
                f"{where} refused the login: wrong or missing username/password "
                "(Forge's --api-auth); fix them in the server settings",
                status=status,
            )
        if status == 403:
            raise ForgePermanentError(f"{where} forbids {path}: {detail}", status=status)
        if status == 404:
            raise ForgePermanentError(
                f"{where} has no {prefix}{path}: start Forge with --api "
                "(or the server is too old for this call)",
                status=status,
            )
        if status == 422:
            raise ForgePermanentError(
                f"{where} rejected the request: {detail or 'invalid fields'}", status=status
            )
        if status == 500 and detail:
            lowered = detail.lower()
            if "not found" in lowered or "could not find" in lowered:
                raise ForgePermanentError(f"{where}: {detail}", status=status)
        if status >= 500:
            reason = detail or response.reason_phrase or "server error"
            raise ForgeTransientError(f"{where} answered {status}: {reason}", status=status)
        raise ForgePermanentError(f"{where} answered {status}: {detail}", status=status)

    # -- calls -------------------------------------------------------------------------------

    async def probe(self) -> tuple[dict[str, Any], float]:
        """GET options: proves `--api` and the credentials. Returns (options, latency ms)."""
        started = time.perf_counter()
        options = await self._call("GET", "/options")
        if not isinstance(options, dict):
            raise ForgeTransientError(f"server '{self.alias}' sent options that are not an object")
        return options, (time.perf_counter() - started) * 1000

    async def checkpoints(self, *, refresh: bool = False) -> list[CheckpointInfo]:
        if refresh:
            # refresh-checkpoints waits for Forge's generation lock: allow for a running job.
            await self._call(
                "POST", "/refresh-checkpoints", timeout=httpx.Timeout(600.0, connect=5.0)
            )
        items = await self._call("GET", "/sd-models")
        return [CheckpointInfo.from_forge(i) for i in items or [] if isinstance(i, dict)]

    async def catalog(self, *, refresh_loras: bool = False) -> ServerCatalog:
        # The LoRA routes come from Forge's LoRA extension, which adds them once the web UI is
        # up: a Forge that has just started answers /options but 404s them for a moment.
        if refresh_loras:
            await self._optional("POST", "/refresh-loras")
        samplers = await self._call("GET", "/samplers") or []
        try:
            schedulers = await self._call("GET", "/schedulers") or []
        except ForgePermanentError as exc:
            if exc.status != 404:  # A1111 before 1.9 has no schedulers
                raise
            schedulers = []
        loras = await self._optional("GET", "/loras")
        upscalers = await self._call("GET", "/upscalers") or []
        try:
            latent = await self._call("GET", "/latent-upscale-modes") or []
        except ForgePermanentError:
            latent = []
        catalog = ServerCatalog(loras_listed=loras is not None)
        for s in samplers:
            catalog.samplers.append(s["name"])
            for alias in s.get("aliases") or []:
                catalog.sampler_aliases[alias] = s["name"]
        for s in schedulers:
            catalog.schedulers.append(s["name"])
            if s.get("label"):
                catalog.scheduler_labels[s["label"]] = s["name"]
        for lora in loras or []:
            catalog.loras.add(lora.get("name", ""))
            if lora.get("alias"):
                catalog.loras.add(lora["alias"])
        catalog.loras.discard("")
        catalog.upscalers = [u["name"] for u in [*upscalers, *latent] if u.get("name")]
        await self._extension_lists(catalog)
        return catalog

    async def _extension_lists(self, catalog: ServerCatalog) -> None:
        """Modules, styles, scripts and the extensions' own model lists (None where a route
        is missing: that list is unknown). Independent reads go out together."""
        modules, vaes, styles, scripts, ad_models, cn_models, cn_modules = await asyncio.gather(
            self._optional("GET", "/sd-modules"),
            self._optional("GET", "/sd-vae"),
            self._optional("GET", "/prompt-styles"),
            self._optional("GET", "/scripts"),
            self._optional("GET", "/adetailer/v1/ad_model", prefix=""),
            self._optional("GET", "/controlnet/model_list", prefix=""),
            self._optional("GET", "/controlnet/module_list", prefix=""),
        )
        if modules is not None:
            catalog.modules, catalog.module_option = _names(modules, "model_name"), MODULES_OPTION
        elif vaes is not None:  # A1111 (or a Forge older than /sd-modules): its VAEs
            catalog.modules, catalog.module_option = _names(vaes, "model_name"), "sd_vae"
        if styles is not None:
            catalog.styles = _style_names(styles)
        if isinstance(scripts, dict):
            catalog.scripts = [str(n).lower() for n in scripts.get("txt2img") or []]
        if isinstance(ad_models, dict):
            catalog.adetailer_models = [str(m) for m in ad_models.get("ad_model") or []]
        if isinstance(cn_models, dict):
            listed = [str(m) for m in cn_models.get("model_list") or []]
            catalog.controlnet_models = [m for m in listed if m != "None"]
        if isinstance(cn_modules, dict):
            catalog.controlnet_modules = [str(m) for m in cn_modules.get("module_list") or []]

    async def modules(self) -> list[str]:
        """VAE and text-encoder files Forge can add to a checkpoint (`/sd-modules`); A1111,
        which has no such list, offers its VAEs (`/sd-vae`)."""
        for path in ("/sd-modules", "/sd-vae"):
            items = await self._optional("GET", path)
            if items is not None:
                return _names(items, "model_name")
        return []

    async def styles(self) -> list[str]:
        return _style_names(await self._call("GET", "/prompt-styles") or [])

    async def _optional(self, method: str, path: str, *, prefix: str = API) -> Any:
        """A call whose route may be missing: None on a 404."""
        try:
            return await self._call(method, path, prefix=prefix) or []
        except ForgePermanentError as exc:
            if exc.status != 404:
                raise
            return None

    async def raw(self, path: str) -> Any:
        """Any GET list endpoint, for the model browser (styles, modules, ...)."""
        return await self._call("GET", path)

    async def progress(self, *, with_preview: bool = True) -> dict[str, Any]:
        params = None if with_preview else {"skip_current_image": "true"}
        result = await self._call(
            "GET", "/progress", params=params, timeout=httpx.Timeout(10.0, connect=5.0)
        )
        if not isinstance(result, dict):
            raise ForgeTransientError(f"server '{self.alias}' sent a malformed progress answer")
        return result

    async def internal_progress(self, task_id: str) -> dict[str, Any] | None:
        """Forge's web UI's progress of one task (`POST /internal/progress`): whether it holds
        the generation lock (`active`), waits for it (`queued`) or is done (`completed`). None
        where the server has no web UI (`--nowebui`), or keeps it behind a login."""
        if self.has_internal_progress is False:
            return None
        try:
            result = await self._call(
                "POST",
                "/internal/progress",
                body={"id_task": task_id, "id_live_preview": -1, "live_preview": False},
                timeout=httpx.Timeout(10.0, connect=5.0),
                prefix="",
            )
        except ForgePermanentError:
            self.has_internal_progress = False  # 404 (no web UI), 401/403 (Gradio's login)
            return None
        if not isinstance(result, dict) or "active" not in result:
            self.has_internal_progress = False
            return None
        self.has_internal_progress = True
        return result

    async def interrupt(self) -> None:
        await self._call("POST", "/interrupt", timeout=httpx.Timeout(10.0, connect=5.0))

    async def txt2img(
        self,
        payload: dict[str, Any],
        *,
        on_answer: Callable[[], Awaitable[None]] | None = None,
        body_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run one generation. No read timeout before the answer begins: liveness is watched
        through /progress. Forge has released its generation lock once it answers, so
        `on_answer` may hand the server to the next job while this answer downloads."""
        return await self.generate(
            "/txt2img", payload, on_answer=on_answer, body_timeout=body_timeout
        )

    async def generate(
        self,
        path: str,
        payload: dict[str, Any],
        *,
        on_answer: Callable[[], Awaitable[None]] | None = None,
        body_timeout: float | None = None,
    ) -> dict[str, Any]:
        """`/txt2img`, `/img2img` or `/extra-single-image` (its one `image` answered as the
        others' `images`), as `txt2img` says."""
        result = await self._call(
            "POST",
            path,
            body=payload,
            timeout=httpx.Timeout(None, connect=10.0),
            on_headers=on_answer,
            body_timeout=body_timeout,
        )
        if path == "/extra-single-image" and isinstance(result, dict):
            image = result.get("image")
            result = {"images": [image] if image else None, "info": {}}
        name = path.strip("/")
        if not isinstance(result, dict) or not isinstance(result.get("images"), list):
            raise ForgeTransientError(f"server '{self.alias}' sent a {name} answer without images")
        info = result.get("info")
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except json.JSONDecodeError:
                info = {}
        result["info"] = info if isinstance(info, dict) else {}
        return result


def _names(items: Any, key: str) -> list[str]:
    return [str(i[key]) for i in items or [] if isinstance(i, dict) and i.get(key)]


def _style_names(items: Any) -> list[str]:
    """Style names. Forge puts a divider entry per styles file in the list (a name of dashes,
    no prompt at all): it is not a style, and a job naming it makes Forge fail."""
    return [
        str(s["name"])
        for s in items or []
        if isinstance(s, dict)
        and s.get("name")
        and (s.get("prompt") is not None or s.get("negative_prompt") is not None)
    ]


def generated_images(result: dict[str, Any]) -> list[bytes]:
    """The generated images of a txt2img answer: past any grid, as many as there are seeds."""
    info = result.get("info") or {}
    images = result.get("images") or []
    first = int(info.get("index_of_first_image") or 0)
    count = len(info.get("all_seeds") or []) or len(images) - first
    out = []
    for item in images[first : first + count]:
        if not isinstance(item, str):
            continue
        if item.startswith("data:"):
            item = item.split(",", 1)[-1]
        try:
            out.append(base64.b64decode(item, validate=False))
        except ValueError as exc:
            raise ForgeError(f"an image in the answer is not valid base64 ({exc})") from None
    return out
