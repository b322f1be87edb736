"""Local model library routes: the LORA_PATH and CHECKPOINT_PATH folders, scanned on request."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..library import CHECKPOINTS, LORAS, scan_library
from ..model_sync.index import Kind
from .keys import CORE, SETTINGS

routes = web.RouteTableDef()


def _with_servers(request: web.Request, answer: dict[str, Any], kind: Kind) -> dict[str, Any]:
    """Each item gains `on_servers`: the servers whose (cached) lists include it."""
    sync = request.app[CORE].model_sync
    for item in answer["items"]:
        item["on_servers"] = sync.on_servers(kind, item["relativePath"])
    return answer


@routes.get("/api/v1/checkpoints")
async def list_checkpoints(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    answer = await scan_library(settings.checkpoint_path, CHECKPOINTS)
    return web.json_response(_with_servers(request, answer, "checkpoint"))


@routes.get("/api/v1/loras")
async def list_loras(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    answer = await scan_library(settings.lora_path, LORAS)
    return web.json_response(_with_servers(request, answer, "lora"))
