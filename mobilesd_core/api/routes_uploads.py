"""Images for img2img, inpaint and upscale jobs: uploads, and the gallery's upscale action."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..gallery import GalleryError
from ..schema import FieldProblem, InvalidInput, parse_params
from ..uploads import UploadRejected
from .bodies import UPLOAD_PATH, read_body, read_object
from .errors import ApiError
from .keys import CORE
from .routes_jobs import _source

MAX_UPSCALE_NAMES = 100

routes = web.RouteTableDef()


@routes.post(UPLOAD_PATH)
async def upload(request: web.Request) -> web.Response:
    """The image as the raw body (any image type Pillow reads); stored as a PNG, upright."""
    data = await read_body(request) if request.body_exists else b""
    try:
        stored = await request.app[CORE].uploads.put(data)
    except UploadRejected as exc:
        problem = FieldProblem(path="file", message=str(exc))
        if exc.status == 413:
            raise ApiError(413, "too_large", f"file {exc}", [problem.model_dump()]) from None
        raise InvalidInput([problem], "invalid upload") from None
    return web.json_response(
        {
            "sha256": stored.sha256,
            "ref": stored.ref,
            "width": stored.width,
            "height": stored.height,
            "bytes": stored.bytes,
        },
        status=201,
    )


@routes.get(UPLOAD_PATH + "/{sha256}/thumbnail")
async def upload_thumbnail(request: web.Request) -> web.Response:
    uploads = request.app[CORE].uploads
    sha = request.match_info["sha256"]
    if not uploads.has(sha):
        raise ApiError(404, "upload_not_found", f"no upload with sha256 '{sha[:64]}'")
    body = await uploads.thumbnail(sha)
    return web.Response(
        body=body,
        content_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@routes.post("/api/v1/gallery/upscale")
async def upscale_images(request: web.Request) -> web.Response:
    """`{names, upscaler, scale, target_server_alias}`: one upscale job per gallery image, all
    in one batch."""
    body = await read_object(request)
    core = request.app[CORE]
    unknown = sorted(body.keys() - {"names", "upscaler", "scale", "target_server_alias"})
    problems = [FieldProblem(path=key, message="unknown field") for key in unknown]
    names = body.get("names")
    if (
        not isinstance(names, list)
        or not names
        or len(names) > MAX_UPSCALE_NAMES
        or not all(isinstance(n, str) for n in names)
    ):
        problems.append(
            FieldProblem(
                path="names", message=f"must be a list of 1 to {MAX_UPSCALE_NAMES} image names"
            )
        )
        names = []
    params_list = []
    for i, name in enumerate(dict.fromkeys(names)):
        try:
            entry = await core.gallery.get_entry(name)
        except GalleryError as exc:
            problems.append(FieldProblem(path=f"names[{i}]", message=str(exc)))
            continue
        data: dict[str, Any] = {
            "prompt": _label(entry, name),
            "upscale": {"image": f"gallery:{name}", "upscaler": body.get("upscaler")},
        }
        if "scale" in body:
            data["upscale"]["scale"] = body["scale"]
        try:
            params_list.append(parse_params(data, prefix=""))
        except InvalidInput as exc:
            # The same for every image: named by the body's fields (upscaler, scale).
            problems += [
                FieldProblem(path=p.path.removeprefix("upscale."), message=p.message)
                for p in exc.problems
                if p.path.startswith("upscale.")
            ]
    if problems:
        raise InvalidInput(list({p.path: p for p in problems}.values()))
    created = await core.service.submit(
        params_list,
        source=_source(request),
        target_server_alias=body.get("target_server_alias"),
    )
    return web.json_response(
        {
            "batch_id": created[0]["batch_id"],
            "mobilesd_job_ids": [j["mobilesd_job_id"] for j in created],
        },
        status=202,
    )


def _label(entry: dict[str, Any], name: str) -> str:
    """The upscale job's prompt: the source's own, so the queue and a search show what it is."""
    prompt = entry.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        return prompt[:20_000]
    return f"upscale of {name}"
