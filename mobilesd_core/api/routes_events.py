"""GET /api/v1/events: the Server-Sent Events stream (filled in by the events work)."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
