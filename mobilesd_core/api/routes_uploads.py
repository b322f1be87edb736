"""Images for img2img, inpaint and upscale jobs: uploads, and the gallery's upscale action."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from ..gallery import Gallery, GalleryError
from ..schema import FieldProblem, InvalidInput, parse_params
from ..uploads import UploadRejected
from .bodies import UPLOAD_PATH, read_body, read_object
from .errors import ApiError
from .keys import CORE
from .requests import UpscaleRequest, parse_body
from .routes_jobs import _source

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
    """`{names, upscaler, scale, mode, denoising_strength, target_server_alias}`: one job per
    gallery image, all in one batch. `mode` "extras" (the default) upscales the picture (Forge's
    Extras); "hires" runs the image's own job again with the hires fix, at its seed."""
    body = await read_object(request)
    core = request.app[CORE]
    asked = parse_body(UpscaleRequest, body)  # types, ranges, unknown fields
    problems = []
    if asked.mode == "extras" and "denoising_strength" in body:
        problems.append(FieldProblem(path="denoising_strength", message="only with mode hires"))
    names = asked.names
    mode = asked.mode
    params_list = []
    for i, name in enumerate(dict.fromkeys(names)):
        try:
            entry = await core.gallery.get_entry(name)
            data = (
                await _hires_rerun(core.gallery, name, body)
                if mode == "hires"
                else _extras(entry, name, body)
            )
        except (GalleryError, ValueError) as exc:
            problems.append(FieldProblem(path=f"names[{i}]", message=str(exc)))
            continue
        try:
            params_list.append(parse_params(data, prefix=""))
        except InvalidInput as exc:
            # Named by the body's fields (upscaler, scale, denoising_strength) where they are the
            # cause; by the image otherwise (its stored parameters no longer validate).
            for p in exc.problems:
                field = p.path.rpartition(".")[2]
                if p.path.startswith(("upscale.", "hires.")) and field in FIELDS | {"upscaler"}:
                    problems.append(FieldProblem(path=field, message=p.message))
                else:
                    problems.append(FieldProblem(path=f"names[{i}]", message=p.render()))
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


FIELDS = frozenset(UpscaleRequest.model_fields)


def _extras(entry: dict[str, Any], name: str, body: dict[str, Any]) -> dict[str, Any]:
    upscale: dict[str, Any] = {"image": f"gallery:{name}", "upscaler": body.get("upscaler")}
    if "scale" in body:
        upscale["scale"] = body["scale"]
    return {"prompt": _label(entry, name), "upscale": upscale}


async def _hires_rerun(gallery: Gallery, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """The image's own parameters (its sidecar), one image at its seed, with the hires fix."""
    path = gallery.sidecar_path(name)
    if path is None:
        raise ValueError("has no sidecar (its parameters are unknown): use mode extras")
    sidecar = json.loads(await asyncio.to_thread(path.read_bytes))
    params = sidecar.get("generation_params") if isinstance(sidecar, dict) else None
    if not isinstance(params, dict) or not params.get("prompt"):
        raise ValueError("its sidecar has no generation parameters: use mode extras")
    if params.get("init") or params.get("upscale"):
        raise ValueError("was not made by txt2img (no hires fix for it): use mode extras")
    hires: dict[str, Any] = {"upscaler": body.get("upscaler")}
    for field in ("scale", "denoising_strength"):
        if field in body:
            hires[field] = body[field]
    seed = sidecar.get("seed")
    return {
        **params,
        "seed": seed if isinstance(seed, int) else params.get("seed", -1),
        "batch_size": 1,
        "n_iter": 1,
        "hires": hires,
    }


def _label(entry: dict[str, Any], name: str) -> str:
    """The upscale job's prompt: the source's own, so the queue and a search show what it is."""
    prompt = entry.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        return prompt[:20_000]
    return f"upscale of {name}"
