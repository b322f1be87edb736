"""Gallery routes and the image files themselves (path-checked by the Gallery)."""

from __future__ import annotations

import re

from aiohttp import web

from ..schema import FieldProblem, InvalidInput
from .keys import CORE
from .params import int_param

_JOB_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def _jobs_param(request: web.Request) -> tuple[str, str] | None:
    """`jobs=<id>` or `jobs=<first id>..<last id>` (a batch: the links notices carry)."""
    raw = request.query.get("jobs")
    if not raw:
        return None
    first, _, last = raw.partition("..")
    last = last or first
    if not (_JOB_ID.match(first) and _JOB_ID.match(last)):
        raise InvalidInput(
            [FieldProblem(path="jobs", message="must be a job id or <first id>..<last id>")]
        )
    return (first, last) if first <= last else (last, first)


routes = web.RouteTableDef()


@routes.get("/api/v1/gallery/images")
async def list_images(request: web.Request) -> web.Response:
    images, total = await request.app[CORE].gallery.list_images(
        limit=int_param(request, "limit", 50, lo=1, hi=1000),
        offset=int_param(request, "offset", 0, lo=0, hi=10**9),
        q=request.query.get("q") or None,
        job_id=request.query.get("job_id") or None,
        job_range=_jobs_param(request),
    )
    return web.json_response({"images": images, "total": total})


@routes.delete("/api/v1/gallery/images/{filename}")
async def delete_image(request: web.Request) -> web.Response:
    core = request.app[CORE]
    entry = await core.gallery.delete_image(request.match_info["filename"])
    core.bus.publish("image", {"removed": entry})
    return web.Response(status=204)


@routes.get("/gallery_files/{filename}")
async def gallery_file(request: web.Request) -> web.FileResponse:
    gallery = request.app[CORE].gallery
    name = request.match_info["filename"]
    if request.query.get("thumb") in ("1", "true"):
        path = await gallery.thumbnail_path(name)
    else:
        path = gallery.image_path(name)
    response = web.FileResponse(path)
    # A gallery name is never reused for other pixels (it holds the job id), and a thumbnail
    # is made from its image once: both are immutable. Private: they are behind the token.
    response.headers["Cache-Control"] = "private, max-age=31536000, immutable"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
