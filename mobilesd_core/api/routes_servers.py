"""Forge server routes. Passwords go in, never out (`has_password` instead)."""

from __future__ import annotations

from aiohttp import web

from ..forge.errors import ForgeError
from .bodies import read_object
from .errors import ApiError
from .keys import CORE

routes = web.RouteTableDef()


@routes.get("/api/v1/servers")
async def list_servers(request: web.Request) -> web.Response:
    return web.json_response(request.app[CORE].service.servers())


@routes.post("/api/v1/servers")
async def add_server(request: web.Request) -> web.Response:
    server = await request.app[CORE].service.add_server(await read_object(request))
    return web.json_response(server, status=201)


@routes.get("/api/v1/servers/{alias}")
async def get_server(request: web.Request) -> web.Response:
    return web.json_response(request.app[CORE].service.server(request.match_info["alias"]))


@routes.put("/api/v1/servers/{alias}")
async def update_server(request: web.Request) -> web.Response:
    server = await request.app[CORE].service.update_server(
        request.match_info["alias"], await read_object(request)
    )
    return web.json_response(server)


@routes.delete("/api/v1/servers/{alias}")
async def delete_server(request: web.Request) -> web.Response:
    await request.app[CORE].service.remove_server(request.match_info["alias"])
    return web.Response(status=204)


@routes.get("/api/v1/servers/{alias}/status")
async def server_status(request: web.Request) -> web.Response:
    status = await request.app[CORE].service.check_server(request.match_info["alias"])
    return web.json_response(status)


@routes.get("/api/v1/servers/{alias}/models")
async def server_models(request: web.Request) -> web.Response:
    core = request.app[CORE]
    runtime = core.registry.get(request.match_info["alias"])
    refresh = request.query.get("refresh") in ("1", "true", "yes")
    try:
        checkpoints = await core.registry.checkpoints(runtime, refresh=refresh)
        catalog = await core.registry.catalog(runtime, refresh=refresh)
        styles = await runtime.client.styles()
        modules = await runtime.client.modules()
    except ForgeError as exc:
        reason = core.registry.shown_error(runtime, exc.message, runtime.client)
        raise ApiError(502, "server_unavailable", reason) from None
    # The library side is always read now: a folder walk (no sidecars) costs milliseconds.
    await core.library_index.refresh()
    return web.json_response(
        {
            "checkpoints": [
                {"title": c.title, "path": c.path, "model_name": c.model_name, "hash": c.hash}
                for c in checkpoints
            ],
            "loras": sorted(catalog.loras),
            "samplers": catalog.samplers,
            # Labels are what Forge's own UI shows ("Karras"); the core accepts either.
            "schedulers": list(catalog.scheduler_labels) or catalog.schedulers,
            "upscalers": catalog.upscalers,
            "styles": styles,
            "modules": modules,
            # None where the server has no such extension (or no list route for it).
            "adetailer_models": catalog.adetailer_models,
            "controlnet_models": catalog.controlnet_models,
            "controlnet_modules": catalog.controlnet_modules,
            "current_checkpoint": runtime.current_checkpoint,
            # In the master library but not on this server (a job for one needs model sync).
            "library_only": core.model_sync.library_only(runtime),
            "sync": core.model_sync.status(runtime),
        }
    )
