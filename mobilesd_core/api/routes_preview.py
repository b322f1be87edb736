"""The live preview of a running job: the image Forge's `/progress` last sent (ProgressBoard)."""

from __future__ import annotations

import hashlib

from aiohttp import web

from ..errors import NotFound
from .keys import CORE

routes = web.RouteTableDef()

# Forge's `live_previews_image_format` is png, jpeg or webp; the bytes say which one came.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"WEBP", 8, "image/webp"),
    (b"GIF8", 0, "image/gif"),
)


class NoPreview(NotFound):
    code = "no_preview"

    @property
    def public_message(self) -> str:
        return f"job '{self.args[0]}' has no live preview (it is not running, or none came yet)"


def image_type(data: bytes) -> str:
    for magic, at, kind in _MAGIC:
        if data[at : at + len(magic)] == magic:
            return kind
    return "application/octet-stream"


@routes.get("/api/v1/queue/jobs/{job_id}/preview")
async def job_preview(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    core = request.app[CORE]
    data = core.service.board.preview(job_id)
    if data is None:
        await core.service.get(job_id)  # job_not_found for an unknown id
        raise NoPreview(job_id)
    # A new preview every few steps: the client asks each time a progress event says one
    # exists, and unchanged bytes come back as a bodiless 304.
    etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    asked = request.headers.get("If-None-Match", "")
    if etag in (tag.strip() for tag in asked.split(",")) or asked.strip() == "*":
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, headers=headers, content_type=image_type(data))
