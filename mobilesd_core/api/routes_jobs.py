"""Generate and queue routes."""

from __future__ import annotations

from aiohttp import web

from ..schema import FieldProblem, InvalidInput, check_webhook_url, parse_params
from .errors import read_object
from .keys import CORE
from .params import int_param, status_param

routes = web.RouteTableDef()

_GENERATE_KEYS = {"target_server_alias", "generation_params", "webhook_url"}


@routes.post("/api/v1/generate")
async def generate(request: web.Request) -> web.Response:
    body = await read_object(request)
    problems = [
        FieldProblem(path=key, message="unknown field") for key in body if key not in _GENERATE_KEYS
    ]
    target = body.get("target_server_alias")
    if target is not None and not isinstance(target, str):
        problems.append(FieldProblem(path="target_server_alias", message="must be a string"))
    webhook_url = body.get("webhook_url")
    if webhook_url is not None:
        try:
            webhook_url = check_webhook_url(webhook_url)
        except ValueError as exc:
            problems.append(FieldProblem(path="webhook_url", message=str(exc)))
    if "generation_params" not in body:
        problems.append(FieldProblem(path="generation_params", message="is required"))
    params = None
    try:
        if "generation_params" in body:
            params = parse_params(body["generation_params"])
    except InvalidInput as exc:
        problems.extend(exc.problems)
    if problems or params is None:
        raise InvalidInput(problems)
    source = request.headers.get("X-MobileSD-Source", "api")
    if source not in ("tui", "web", "api", "cli"):
        source = "api"
    (job,) = await request.app[CORE].service.submit(
        [params],
        source=source,
        target_server_alias=target or None,
        # Stored on the job: every terminal state is POSTed there, signed.
        extra_fields={"webhook_url": webhook_url} if webhook_url else None,
    )
    return web.json_response({"mobilesd_job_id": job["mobilesd_job_id"], "job": job}, status=202)


_ARCHIVED = {
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
        archived=archived,  # type: ignore[arg-type]
    )
    return web.json_response({"jobs": jobs, "total": total})


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
    return web.json_response({"mobilesd_job_id": job["mobilesd_job_id"], "job": job}, status=202)


@routes.post("/api/v1/queue/jobs/{job_id}/move")
async def move_job(request: web.Request) -> web.Response:
    body = await read_object(request)
    problems = [
        FieldProblem(path=k, message="unknown field") for k in body if k not in ("to", "before")
    ]
    if ("to" in body) == ("before" in body):
        problems.append(FieldProblem(path="to", message="give exactly one of 'to' or 'before'"))
    if problems:
        raise InvalidInput(problems)
    for key in ("to", "before"):
        if key in body and not isinstance(body[key], str):
            raise InvalidInput([FieldProblem(path=key, message="must be a string")])
    job = await request.app[CORE].service.move(
        request.match_info["job_id"], to=body.get("to"), before=body.get("before")
    )
    return web.json_response(job)


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
    body = await read_object(request) if request.can_read_body else {}
    unknown = [FieldProblem(path=k, message="unknown field") for k in body if k != "status"]
    if unknown:
        raise InvalidInput(unknown)  # a typo must not clear every finished job
    statuses = body.get("status", ["completed", "failed", "cancelled"])
    if not isinstance(statuses, list) or not all(isinstance(s, str) for s in statuses):
        raise InvalidInput([FieldProblem(path="status", message="must be a list of statuses")])
    removed = await request.app[CORE].service.clear(set(statuses))
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
