"""The OpenAPI document of the API (filled in by the OpenAPI work)."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
