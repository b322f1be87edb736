"""Local model library routes: the LORA_PATH and CHECKPOINT_PATH folders, scanned on request."""

from __future__ import annotations

from aiohttp import web

from ..library import CHECKPOINTS, LORAS, scan_library
from .keys import SETTINGS

routes = web.RouteTableDef()


@routes.get("/api/v1/checkpoints")
async def list_checkpoints(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.json_response(await scan_library(settings.checkpoint_path, CHECKPOINTS))


@routes.get("/api/v1/loras")
async def list_loras(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.json_response(await scan_library(settings.lora_path, LORAS))
