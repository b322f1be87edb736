"""The HTTP face of a SimulatedForge: Forge's routes, Basic auth, faults and error bodies.

Middlewares, outermost first: in-flight tracking (so a stop can cut connections), gzip of bodies of
1000+ bytes (Forge's GZipMiddleware), faults, Forge's error bodies, Basic auth.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import gzip
import http
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from aiohttp import web

from . import gradio, img2img, scripts
from .catalog import (
    LATENT_UPSCALE_MODES,
    UPSCALERS,
    samplers_api,
    schedulers_api,
)
from .extras import png_base64
from .faults import STATUS_KINDS, Fault
from .pnginfo import read_png_info
from .request import (
    ExtrasBatchImagesRequest,
    ExtrasSingleImageRequest,
    Img2ImgRequest,
    SimHTTPError,
    Txt2ImgRequest,
    detail_error,
    forge_500,
    parse_json_body,
    parse_model,
    parse_txt2img,
    require_object,
)
from .state import JobInputs, SimulatedForge

log = logging.getLogger("mobilesd.forge.simulator")

SIM = web.AppKey("sim", SimulatedForge)
INFLIGHT = web.AppKey("inflight", set)
"""(handler task, transport) of every request being answered."""

# How the faults middleware tells the txt2img handler to hang or hang up: ("hang", release event)
# or ("reset", None). A context variable, since each request runs in its own task.
_TXT2IMG_FAULT: ContextVar[tuple[str, asyncio.Event | None] | None] = ContextVar(
    "sim_txt2img_fault", default=None
)

API = "/sdapi/v1"
OPEN_ROUTES = {f"{API}/loras", f"{API}/refresh-loras"}
"""Registered by the LoRA extension without the API's auth dependency."""
GZIP_MIN_SIZE = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_dumps = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"))


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def _sim(request: web.Request) -> SimulatedForge:
    return request.app[SIM]


# ---- middlewares ---------------------------------------------------------------------------


@web.middleware
async def _track(request: web.Request, handler: Handler) -> web.StreamResponse:
    entry = (asyncio.current_task(), request.transport)
    inflight = request.app[INFLIGHT]
    inflight.add(entry)
    if not request.path.startswith("/_sim/"):
        _sim(request).request_counts[request.path] += 1
    try:
        return await handler(request)
    finally:
        inflight.discard(entry)


@web.middleware
async def _gzip(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if (
        isinstance(response, web.Response)
        and isinstance(response.body, bytes)
        and len(response.body) >= GZIP_MIN_SIZE
        and "gzip" in request.headers.get("Accept-Encoding", "")
        and "Content-Encoding" not in response.headers
    ):
        body = response.body
        compress = functools.partial(gzip.compress, compresslevel=1, mtime=0)
        # Level 1, not Forge's 9: same protocol, and the simulator has to be fast.
        response.body = (
            await asyncio.to_thread(compress, body) if len(body) > 2**16 else compress(body)
        )
        response.headers["Content-Encoding"] = "gzip"
        response.headers["Vary"] = "Accept-Encoding"
    return response


@web.middleware
async def _faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/_sim/"):
        return await handler(request)
    sim = _sim(request)
    fault = sim.take_fault(request.path)
    if fault is None:
        return await handler(request)
    release = sim.faults.release_event
    log.info("%s: fault %r on %s %s", sim.config.name, fault.kind, request.method, request.path)
    if fault.delay_ms:
        await asyncio.sleep(fault.delay_ms / 1000)
    kind = fault.kind
    txt2img = request.path in (f"{API}/txt2img", f"{API}/img2img")
    if kind in STATUS_KINDS:
        return _status_fault(fault)
    if kind in ("hang", "reset") and txt2img:
        token = _TXT2IMG_FAULT.set((kind, release))
        try:
            return await handler(request)
        finally:
            _TXT2IMG_FAULT.reset(token)
    if kind == "hang":
        await release.wait()
        return await handler(request)
    if kind == "reset":
        return _hang_up(request)
    response = await handler(request)
    if kind == "slow" or not isinstance(response, web.Response):
        return response
    body = response.body if isinstance(response.body, bytes) else b""
    status = fault.status or response.status
    if kind == "truncated":
        return web.Response(
            body=body[: max(1, len(body) // 2)], status=status, content_type="application/json"
        )
    if kind == "nonjson":
        return web.Response(
            text=_html_page(status, "Welcome"), status=status, content_type="text/html"
        )
    if kind == "stall":
        return await _stall(request, body, status, release)
    return await _drop(request, body, status)


def _status_fault(fault: Fault) -> web.Response:
    status = fault.status or int(fault.kind)
    if fault.kind == "500":
        body = forge_500("RuntimeError", "CUDA error: an illegal memory access was encountered")
        return _json(body.body, status)
    if fault.kind in ("502", "503"):
        return web.Response(text=_html_page(status), status=status, content_type="text/html")
    if fault.kind == "422":
        item = {
            "type": "value_error",
            "loc": ["body"],
            "msg": "Value error, simulated",
            "input": None,
        }
        return _json({"detail": [item]}, status)
    if fault.kind == "401":
        return _json(
            {"detail": "Incorrect username or password"}, status, {"WWW-Authenticate": "Basic"}
        )
    return _json({"detail": "Not Found"}, status)


def _html_page(status: int, title: str | None = None) -> str:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    title = title or f"{status} {phrase}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


def _hang_up(request: web.Request) -> web.Response:
    """Close the connection without a byte of answer; the returned response is never sent."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


async def _drop(request: web.Request, body: bytes, status: int) -> web.StreamResponse:
    """Promise the whole body, send half of it, close: a proxy or network dying mid-answer."""
    response = web.StreamResponse(status=status)
    response.content_type = "application/json"
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return response


async def _stall(
    request: web.Request, body: bytes, status: int, release: asyncio.Event
) -> web.StreamResponse:
    """Promise the whole body, send half of it, then send nothing more until the faults are
    cleared: an answer that never ends (a wedged proxy, a half-dead link)."""
    response = web.StreamResponse(status=status)
    response.content_type = "application/json"
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    await release.wait()
    if request.transport is not None:
        request.transport.close()
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SimHTTPError as exc:
        return _json(exc.body, exc.status, exc.headers)
    except web.HTTPNotFound:
        return _json({"detail": "Not Found"}, 404)
    except web.HTTPMethodNotAllowed:
        return _json({"detail": "Method Not Allowed"}, 405)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("%s: error in %s", _sim(request).config.name, request.path)
        return _json(forge_500(type(exc).__name__, str(exc)).body, 500)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    credentials = _sim(request).config.auth
    if (
        credentials is not None
        and request.path.startswith(f"{API}/")
        and request.path not in OPEN_ROUTES
        and request.match_info.http_exception is None
    ):
        _check_basic(request.headers.get("Authorization"), credentials)
    return await handler(request)


def _check_basic(header: str | None, credentials: tuple[str, str]) -> None:
    """FastAPI's HTTPBasic, then A1111's comparison; the three 401 bodies Forge sends."""
    challenge = {"WWW-Authenticate": "Basic"}
    scheme, _, param = (header or "").partition(" ")
    if not header or not scheme or not param or scheme.lower() != "basic":
        raise detail_error(401, "Not authenticated", challenge)
    try:
        decoded = base64.b64decode(param).decode("ascii")
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise detail_error(401, "Invalid authentication credentials", challenge) from None
    user, separator, password = decoded.partition(":")
    if not separator:
        raise detail_error(401, "Invalid authentication credentials", challenge)
    want_user, want_password = credentials
    user_ok = secrets.compare_digest(user.encode(), want_user.encode())
    password_ok = secrets.compare_digest(password.encode(), want_password.encode())
    if not (user_ok and password_ok):
        raise detail_error(401, "Incorrect username or password", challenge)


# ---- /sdapi/v1 -----------------------------------------------------------------------------


async def _read_body(request: web.Request) -> Any:
    return parse_json_body(await request.read())


async def sd_models(request: web.Request) -> web.Response:
    return _json([c.api_item() for c in _sim(request).checkpoints])


async def get_options(request: web.Request) -> web.Response:
    return _json(_sim(request).options)


async def set_options(request: web.Request) -> web.Response:
    _sim(request).set_options(require_object(await _read_body(request)))
    return _json(None)


async def loras(request: web.Request) -> web.Response:
    sim = _sim(request)
    return _json([lora.api_item(sim.config.os_sep) for lora in sim.lora_list])


async def refresh_checkpoints(request: web.Request) -> web.Response:
    await _sim(request).refresh_checkpoints()
    return _json(None)


async def refresh_loras(request: web.Request) -> web.Response:
    await _sim(request).refresh_loras()
    return _json(None)


def _static(data: Any) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return _json(data)

    return handler


async def prompt_styles(request: web.Request) -> web.Response:
    return _json(_sim(request).styles)


async def sd_modules_list(request: web.Request) -> web.Response:
    return _json(_sim(request).modules())


async def png_info(request: web.Request) -> web.Response:
    body = require_object(await _read_body(request))
    return _json(read_png_info(body.get("image")))


async def cmd_flags(request: web.Request) -> web.Response:
    sim = _sim(request)
    transport = request.transport  # None once the client has gone
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    host, port = (sockname or ("127.0.0.1", 0))[:2]
    return _json(
        {
            "api": True,
            "nowebui": not sim.config.webui,
            "listen": host not in ("127.0.0.1", "localhost", "::1"),
            "port": port,
            # Forge echoes `--api-auth` here in clear text; a simulator should not teach that.
            "api_auth": None,
            "ckpt_dir": None,
            "lora_dir": None,
            "skip_version_check": True,
        }
    )


MEMORY = {
    "ram": {"free": 21.5e9, "used": 10.5e9, "total": 32e9},
    "cuda": {
        "system": {"free": 14.2e9, "used": 10.8e9, "total": 25e9},
        "active": {"current": 6.1e9, "peak": 9.7e9},
        "allocated": {"current": 6.1e9, "peak": 9.7e9},
        "reserved": {"current": 7.3e9, "peak": 10.2e9},
        "inactive": {"current": 1.2e9, "peak": 2.4e9},
        "events": {"retries": 0, "oom": 0},
    },
}


async def progress(request: web.Request) -> web.Response:
    flag = request.query.get("skip_current_image", "false").lower()
    skip = flag in ("1", "true", "yes", "on")
    return _json(_sim(request).progress(skip_current_image=skip))


async def interrupt(request: web.Request) -> web.Response:
    _sim(request).interrupt()
    return _json({})


async def skip(request: web.Request) -> web.Response:
    _sim(request).skip()
    return _json(None)


def installed_scripts(sim: SimulatedForge, *, img2img: bool) -> list[str]:
    return scripts.script_names(
        img2img=img2img, controlnet=sim.config.controlnet, adetailer=sim.config.adetailer
    )


async def txt2img(request: web.Request) -> web.Response:
    body = await _read_body(request)
    req = parse_txt2img(body)
    return await _generate(request, req, body, JobInputs())


async def img2img_route(request: web.Request) -> web.Response:
    """`img2imgapi`: no init_images is a 404; the mask is decoded at once (a bad one is a 500
    before anything is queued); the init images are decoded once the lock is taken."""
    body = await _read_body(request)
    req = parse_model(Img2ImgRequest, body)
    if req.init_images is None:
        raise detail_error(404, "Init image not found")
    mask = await asyncio.to_thread(img2img.decode_image, req.mask) if req.mask else None
    return await _generate(request, req, body, JobInputs(mask=mask))


async def _generate(
    request: web.Request, req: Txt2ImgRequest, body: Any, inputs: JobInputs
) -> web.Response:
    sim = _sim(request)
    inputs.scripts = scripts.script_args(
        req.alwayson_scripts,
        req.script_name,
        installed=installed_scripts(sim, img2img=isinstance(req, Img2ImgRequest)),
        img2img=isinstance(req, Img2ImgRequest),
    )
    kind, release = _TXT2IMG_FAULT.get() or (None, None)
    started = asyncio.Event() if kind == "reset" else None
    hang = release if kind == "hang" else None
    task = sim.submit_txt2img(req, body, hang=hang, started=started, inputs=inputs)
    if started is not None:
        waiter = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        return _hang_up(request)
    # Shielded: Forge finishes a job whose client went away.
    return _json(await asyncio.shield(task))


async def extra_single_image(request: web.Request) -> web.Response:
    req = parse_model(ExtrasSingleImageRequest, await _read_body(request))
    pictures, html_info = await _sim(request).extras(req, [req.image])
    image = await asyncio.to_thread(png_base64, pictures[0]) if pictures else None
    return _json({"html_info": html_info, "image": image})


async def extra_batch_images(request: web.Request) -> web.Response:
    req = parse_model(ExtrasBatchImagesRequest, await _read_body(request))
    pictures, html_info = await _sim(request).extras(req, [f.data for f in req.imageList])
    encoded = await asyncio.to_thread(lambda: [png_base64(p) for p in pictures])
    return _json({"html_info": html_info, "images": encoded})


async def scripts_list(request: web.Request) -> web.Response:
    sim = _sim(request)
    return _json(
        {
            "txt2img": installed_scripts(sim, img2img=False),
            "img2img": installed_scripts(sim, img2img=True),
        }
    )


async def sd_vae_list(request: web.Request) -> web.Response:
    """A1111's `/sd-vae`: the VAE files only (Forge lists them with the text encoders)."""
    modules = _sim(request).modules()
    return _json([m for m in modules if "text_encoder" not in m["filename"]])


# ---- extensions (their own routes, outside /sdapi and its auth) ---------------------------


async def controlnet_model_list(request: web.Request) -> web.Response:
    return _json({"model_list": ["None", *_sim(request).config.controlnet_models]})


async def controlnet_module_list(request: web.Request) -> web.Response:
    return _json({"module_list": list(_sim(request).config.controlnet_modules)})


async def adetailer_models(request: web.Request) -> web.Response:
    return _json({"ad_model": list(_sim(request).config.adetailer_models)})


# ---- /internal (web UI only) ---------------------------------------------------------------


async def internal_progress(request: web.Request) -> web.Response:
    body = require_object(await _read_body(request))
    id_task = body.get("id_task")
    if not isinstance(id_task, str):
        raise detail_error(
            422,
            [
                {
                    "type": "missing",
                    "loc": ["body", "id_task"],
                    "msg": "Field required",
                    "input": body,
                }
            ],
        )
    live = bool(body.get("live_preview", True))
    try:
        id_live = int(body.get("id_live_preview", -1))
    except (TypeError, ValueError):
        id_live = -1
    return _json(_sim(request).internal_progress(id_task, live, id_live))


async def pending_tasks(request: web.Request) -> web.Response:
    tasks = list(_sim(request).pending_tasks)
    return _json({"size": len(tasks), "tasks": tasks})


# ---- /_sim (control, never behind auth) ----------------------------------------------------


async def sim_state(request: web.Request) -> web.Response:
    return _json(_sim(request).summary())


async def sim_set_fault(request: web.Request) -> web.Response:
    sim = _sim(request)
    try:
        body = require_object(await _read_body(request))
        sim.set_fault(
            str(body.get("kind")),
            count=body.get("count"),
            path=body.get("path"),
            delay_ms=float(body.get("delay_ms") or 0),
            status=body.get("status"),
        )
    except (ValueError, TypeError) as exc:
        return _json({"detail": str(exc)}, 400)
    return _json({"faults": sim.faults.summary()})


async def sim_clear_faults(request: web.Request) -> web.Response:
    sim = _sim(request)
    sim.clear_faults()
    return _json({"faults": sim.faults.summary()})


async def sim_get_faults(request: web.Request) -> web.Response:
    return _json({"faults": _sim(request).faults.summary()})


def create_simulator_app(sim: SimulatedForge) -> web.Application:
    app = web.Application(middlewares=[_track, _gzip, _faults, _errors, _auth])
    app[SIM] = sim
    app[INFLIGHT] = set()
    r = app.router
    r.add_get(f"{API}/sd-models", sd_models)
    r.add_get(f"{API}/options", get_options)
    r.add_post(f"{API}/options", set_options)
    r.add_get(f"{API}/loras", loras)
    r.add_post(f"{API}/refresh-checkpoints", refresh_checkpoints)
    r.add_post(f"{API}/refresh-loras", refresh_loras)
    r.add_get(f"{API}/samplers", _static(samplers_api()))
    r.add_get(f"{API}/schedulers", _static(schedulers_api()))
    r.add_get(f"{API}/prompt-styles", prompt_styles)
    listed = sim.config.upscalers
    r.add_get(
        f"{API}/upscalers",
        _static([u for u in UPSCALERS if listed is None or u["name"] in listed]),
    )
    r.add_get(f"{API}/latent-upscale-modes", _static([{"name": m} for m in LATENT_UPSCALE_MODES]))
    r.add_get(f"{API}/sd-modules", sd_modules_list)
    r.add_post(f"{API}/png-info", png_info)
    r.add_get(f"{API}/cmd-flags", cmd_flags)
    r.add_get(f"{API}/memory", _static(MEMORY))
    r.add_get(f"{API}/progress", progress)
    r.add_post(f"{API}/interrupt", interrupt)
    r.add_post(f"{API}/skip", skip)
    r.add_post(f"{API}/txt2img", txt2img)
    r.add_post(f"{API}/img2img", img2img_route)
    r.add_post(f"{API}/extra-single-image", extra_single_image)
    r.add_post(f"{API}/extra-batch-images", extra_batch_images)
    r.add_get(f"{API}/scripts", scripts_list)
    if sim.config.sd_vae_route:
        r.add_get(f"{API}/sd-vae", sd_vae_list)
    if sim.config.controlnet:
        r.add_get("/controlnet/model_list", controlnet_model_list)
        r.add_get("/controlnet/module_list", controlnet_module_list)
    if sim.config.adetailer:
        r.add_get("/adetailer/v1/version", _static({"version": scripts.ADETAILER_VERSION}))
        r.add_get("/adetailer/v1/ad_model", adetailer_models)
    if sim.config.webui:
        gradio.add_routes(app, sim)
        r.add_post("/internal/progress", internal_progress)
        r.add_get("/internal/pending-tasks", pending_tasks)
        r.add_get("/internal/ping", _static({}))
    r.add_get("/_sim/state", sim_state)
    r.add_get("/_sim/faults", sim_get_faults)
    r.add_post("/_sim/faults", sim_set_fault)
    r.add_delete("/_sim/faults", sim_clear_faults)
    return app
