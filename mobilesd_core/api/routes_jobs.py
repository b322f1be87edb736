"""Generate and queue routes."""

from __future__ import annotations

import asyncio
from typing import Any, Literal, cast

from aiohttp import web

from ..jobs.types import JobSource
from ..schema import FieldProblem, InvalidInput, check_webhook_url
from .bodies import read_object
from .generate_body import expand_body
from .keys import CORE
from .params import int_param, status_param
from .requests import ClearRequest, JobEdit, parse_body, parse_move

routes = web.RouteTableDef()


def _source(request: web.Request) -> JobSource:
    source = request.headers.get("X-MobileSD-Source", "api")
    # (not "inbox": only the inbox makes those)
    return cast(JobSource, source) if source in ("tui", "web", "api", "cli") else "api"


@routes.post("/api/v1/generate")
async def generate(request: web.Request) -> web.Response:
    body = await read_object(request)
    service = request.app[CORE].service
    webhook_url = body.get("webhook_url")
    if webhook_url is not None:
        try:
            webhook_url = check_webhook_url(webhook_url)
        except ValueError as exc:
            raise InvalidInput([FieldProblem(path="webhook_url", message=str(exc))]) from None
    if body.keys() & {"matrix", "jobs", "expand"}:
        # In a thread: a 1,000-job sweep validates for a while, and wildcards are files.
        result = await asyncio.to_thread(expand_body, body, service.expander)
    else:
        result = expand_body(body, service.expander)  # one job: cheaper than a thread hop
    created = await service.submit_specs(
        result.jobs,
        source=_source(request),
        target_server_alias=body.get("target_server_alias"),
        # Stored on every job the request makes: each terminal state is POSTed there, signed.
        extra_fields={"webhook_url": webhook_url} if webhook_url else None,
    )
    answer: dict[str, Any] = {
        "batch_id": created[0]["batch_id"],
        "mobilesd_job_ids": [j["mobilesd_job_id"] for j in created],
    }
    if len(created) == 1:  # the answer single jobs always had
        answer = {"mobilesd_job_id": created[0]["mobilesd_job_id"], "job": created[0], **answer}
    return web.json_response(answer, status=202)


_ARCHIVED: dict[str, Literal["exclude", "include", "only"]] = {
    "0": "exclude",
    "false": "exclude",
    "no": "exclude",
    "1": "include",
    "true": "include",
    "yes": "include",
    "only": "only",
}


@routes.get("/api/v1/queue/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    raw = request.query.get("archived", "0").lower()
    archived = _ARCHIVED.get(raw)
    if archived is None:
        raise InvalidInput(
            [FieldProblem(path="archived", message=f"must be 0, 1 or only (found {raw!r})")]
        )
    jobs, total = await request.app[CORE].service.list(
        statuses=status_param(request),
        q=request.query.get("q") or None,
        limit=int_param(request, "limit", 100, lo=1, hi=1000),
        offset=int_param(request, "offset", 0, lo=0, hi=10**9),
        batch_id=request.query.get("batch_id") or None,
        archived=archived,
    )
    return web.json_response({"jobs": jobs, "total": total})


@routes.patch("/api/v1/queue/jobs/{job_id}")
async def edit_job(request: web.Request) -> web.Response:
    raw = await read_object(request)
    body = parse_body(JobEdit, raw)
    job = await request.app[CORE].service.edit(
        request.match_info["job_id"],
        body.generation_params,
        target=body.target_server_alias or None,
        set_target="target_server_alias" in raw,
    )
    return web.json_response(job)


@routes.get("/api/v1/queue/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CORE].service.get(request.match_info["job_id"]))


@routes.get("/api/v1/queue/jobs/{job_id}/status")
async def job_status(request: web.Request) -> web.Response:
    job = await request.app[CORE].service.get(request.match_info["job_id"])
    return web.json_response(
        {key: job.get(key) for key in ("mobilesd_job_id", "status", "progress", "result_details")}
    )


@routes.post("/api/v1/queue/jobs/{job_id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    job = await request.app[CORE].service.cancel(request.match_info["job_id"])
    return web.json_response(job)


@routes.post("/api/v1/queue/jobs/{job_id}/retry")
async def retry_job(request: web.Request) -> web.Response:
    job = await request.app[CORE].service.retry(request.match_info["job_id"])
    answer = {
        "mobilesd_job_id": job["mobilesd_job_id"],
        "job": job,
        "batch_id": job["batch_id"],
        "mobilesd_job_ids": [job["mobilesd_job_id"]],
    }
    return web.json_response(answer, status=202)


@routes.post("/api/v1/queue/jobs/{job_id}/move")
async def move_job(request: web.Request) -> web.Response:
    body = parse_move(await read_object(request))
    job = await request.app[CORE].service.move(
        request.match_info["job_id"], to=body.to, before=body.before
    )
    return web.json_response(job)


@routes.post("/api/v1/queue/batches/{batch_id}/cancel")
async def cancel_batch(request: web.Request) -> web.Response:
    service = request.app[CORE].service
    return web.json_response(await service.cancel_batch(request.match_info["batch_id"]))


@routes.post("/api/v1/queue/batches/{batch_id}/retry")
async def retry_batch(request: web.Request) -> web.Response:
    service = request.app[CORE].service
    answer = await service.retry_batch(request.match_info["batch_id"], source=_source(request))
    return web.json_response(answer, status=202)


@routes.post("/api/v1/queue/batches/{batch_id}/move")
async def move_batch(request: web.Request) -> web.Response:
    body = parse_move(await read_object(request))
    answer = await request.app[CORE].service.move_batch(
        request.match_info["batch_id"], to=body.to, before=body.before
    )
    return web.json_response(answer)


@routes.delete("/api/v1/queue/batches/{batch_id}")
async def delete_batch(request: web.Request) -> web.Response:
    service = request.app[CORE].service
    return web.json_response(await service.delete_batch(request.match_info["batch_id"]))


@routes.post("/api/v1/queue/jobs/{job_id}/pin")
async def pin_job(request: web.Request) -> web.Response:
    return web.json_response(
        await request.app[CORE].service.pin(request.match_info["job_id"], True)
    )


@routes.post("/api/v1/queue/jobs/{job_id}/unpin")
async def unpin_job(request: web.Request) -> web.Response:
    job = await request.app[CORE].service.pin(request.match_info["job_id"], False)
    return web.json_response(job)


@routes.delete("/api/v1/queue/jobs/{job_id}")
async def delete_job(request: web.Request) -> web.Response:
    await request.app[CORE].service.delete(request.match_info["job_id"])
    return web.Response(status=204)


@routes.post("/api/v1/queue/clear")
async def clear_jobs(request: web.Request) -> web.Response:
    # Unknown fields are refused: a typo must not clear every finished job.
    body = parse_body(ClearRequest, await read_object(request) if request.body_exists else {})
    removed = await request.app[CORE].service.clear(set(body.status))
    return web.json_response({"removed": removed})


@routes.post("/api/v1/queue/pause")
async def pause(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CORE].service.set_paused(True))


@routes.post("/api/v1/queue/resume")
async def resume(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CORE].service.set_paused(False))


@routes.get("/api/v1/queue")
async def queue_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[CORE].service.queue_state())
