"""The notification status: Apprise targets and webhook deliveries, with their last errors.

Targets are shown by scheme and position only; their URLs hold tokens.
"""

from __future__ import annotations

from aiohttp import web

from .keys import CORE

routes = web.RouteTableDef()


@routes.get("/api/v1/notifications")
async def notifications(request: web.Request) -> web.Response:
    core = request.app[CORE]
    retention = core.retention
    return web.json_response(
        {
            **core.notifier.status(),
            "retention": {
                "archive_days": retention.archive_days,
                "prune_days": retention.prune_days,
                "pinned": len(retention.pins.ids),
                "pruned": retention.pruned_total,
            },
        }
    )
