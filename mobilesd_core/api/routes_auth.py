"""Login by link (/login?token=...) and the session cookie (filled in by the access work)."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
