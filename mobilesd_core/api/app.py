"""create_app: the core's aiohttp application, with the core as a cleanup context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from aiohttp import web
from aiohttp.web_response import ContentCoding

from .. import __version__
from ..config import Settings, load_or_create_token
from ..core import Core
from . import (
    routes_archive,
    routes_auth,
    routes_civitai,
    routes_docs,
    routes_events,
    routes_gallery,
    routes_jobs,
    routes_library,
    routes_notify,
    routes_page,
    routes_preview,
    routes_servers,
    routes_uploads,
)
from .auth import auth_middleware, init_auth
from .bodies import body_middleware, init_bodies
from .errors import error_middleware
from .keys import CORE, SETTINGS, TOKEN
from .security import security_headers

MAX_BODY = 1024 * 1024  # a job with a long prompt is a few KB; 1 MB leaves room for batches


GZIP_MIN_BYTES = 1024  # below this the header costs more than it saves

# A connection that has not sent a whole request within this time is closed, and so is an idle
# keep-alive one. aiohttp's default (an hour) would let a client that drips its headers a byte
# at a time hold a connection that long; a request being answered (an event stream) is not cut.
IDLE_CONNECTION_SECONDS = 75.0


def runner_options(idle_seconds: float = IDLE_CONNECTION_SECONDS) -> dict[str, Any]:
    """How `mobilesd serve` and `mobilesd demo` run the app (web.AppRunner keyword arguments)."""
    return {"handle_signals": False, "access_log": None, "keepalive_timeout": idle_seconds}


@web.middleware
async def compress_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Gzip JSON answers worth it (job lists over a phone link); streams are left alone."""
    response = await handler(request)
    if (
        isinstance(response, web.Response)
        and response.content_type == "application/json"
        and isinstance(response.body, bytes | bytearray)  # not a streamed Payload
        and len(response.body) >= GZIP_MIN_BYTES
        and "gzip" in request.headers.get("Accept-Encoding", "").lower()
    ):
        response.enable_compression(ContentCoding.gzip)
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


def create_app(
    settings: Settings,
    *,
    core: Core | None = None,
    forge_transport: httpx.AsyncBaseTransport | None = None,
) -> web.Application:
    """The app for `settings`. The core starts with the app and stops with it."""
    app = web.Application(
        # The access check comes before any body is read: protected routes read none for
        # strangers, and the public ones share a few slots (see bodies.py).
        middlewares=[compress_json, error_middleware, auth_middleware, body_middleware],
        client_max_size=MAX_BODY,
    )
    app[SETTINGS] = settings
    app[TOKEN] = load_or_create_token(settings)
    app[CORE] = core or Core(settings, forge_transport=forge_transport)
    init_auth(app)  # the guess throttle and the session list
    init_bodies(app)
    app.on_response_prepare.append(security_headers)

    async def core_ctx(app: web.Application) -> AsyncIterator[None]:
        await app[CORE].start()
        yield
        await app[CORE].stop()

    app.cleanup_ctx.append(core_ctx)
    app.router.add_get("/healthz", healthz)
    app.add_routes(routes_servers.routes)
    app.add_routes(routes_jobs.routes)
    app.add_routes(routes_preview.routes)
    app.add_routes(routes_gallery.routes)
    app.add_routes(routes_uploads.routes)
    app.add_routes(routes_archive.routes)
    routes_archive.setup(app)  # its own workers, and open downloads dropped on shutdown
    app.add_routes(routes_library.routes)
    app.add_routes(routes_civitai.routes)
    app.add_routes(routes_notify.routes)
    app.add_routes(routes_events.routes)
    routes_events.setup(app)  # stream settings, and open streams ended on shutdown
    app.add_routes(routes_auth.routes)
    app.add_routes(routes_docs.routes)
    app.add_routes(routes_page.routes)
    return app
