"""Civitai routes: import an image's generation data, download models, list and cancel downloads."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..civitai.schema import DownloadRequest, ImageInfoRequest
from ..civitai.urls import BadReference, ModelRef, parse_image_ref, parse_model_ref
from ..schema import FieldProblem, InvalidInput, problems_from_error
from .bodies import read_object
from .keys import CORE

routes = web.RouteTableDef()

Body = TypeVar("Body", bound=BaseModel)


def _parse(model: type[Body], data: dict[str, Any]) -> Body:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(problems_from_error(exc, model=model)) from None


def _bad_url(exc: BadReference) -> InvalidInput:
    return InvalidInput([FieldProblem(path="url", message=str(exc))])


@routes.post("/api/v1/civitai/image-info")
async def image_info(request: web.Request) -> web.Response:
    body = _parse(ImageInfoRequest, await read_object(request))
    core = request.app[CORE]
    image_id = body.image_id
    if body.url is not None:
        try:
            image_id = parse_image_ref(body.url, base_url=core.settings.civitai_base_url)
        except BadReference as exc:
            raise _bad_url(exc) from None
    assert image_id is not None
    return web.json_response(await core.importer().image_info(image_id))


@routes.post("/api/v1/civitai/download-model")
async def download_model(request: web.Request) -> web.Response:
    body = _parse(DownloadRequest, await read_object(request))
    core = request.app[CORE]
    if body.url is not None:
        try:
            ref = parse_model_ref(body.url, base_url=core.settings.civitai_base_url)
        except BadReference as exc:
            raise _bad_url(exc) from None
        if body.file_id is not None:
            ref = ModelRef(ref.model_id, ref.model_version_id, body.file_id)
    else:
        ref = ModelRef(model_version_id=body.model_version_id, file_id=body.file_id)
    download = await core.downloads.submit(ref)
    return web.json_response(
        {"download_id": download.download_id, "download": download.view()}, status=202
    )


@routes.get("/api/v1/civitai/downloads")
async def list_downloads(request: web.Request) -> web.Response:
    return web.json_response({"downloads": request.app[CORE].downloads.views()})


@routes.post("/api/v1/civitai/downloads/{download_id}/cancel")
async def cancel_download(request: web.Request) -> web.Response:
    download = await request.app[CORE].downloads.cancel(request.match_info["download_id"])
    return web.json_response(download.view())
