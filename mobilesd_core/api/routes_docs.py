"""GET /api/v1/openapi.json: the OpenAPI 3.1 document of the API (see openapi.py)."""

from __future__ import annotations

from aiohttp import web

from .openapi import openapi_json

routes = web.RouteTableDef()


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=openapi_json(), content_type="application/json")
