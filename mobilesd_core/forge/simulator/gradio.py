"""A person pressing Generate in Forge's web UI: the Gradio 4 queue (protocol `sse_v3`).

Only what a browser does for txt2img, so tests and the conformance run can use Forge "directly"
the way a person does: `GET /config` lists the components and the `txt2img` event with its
inputs; `POST /queue/join` queues one call (`{"data", "fn_index", "session_hash", ...}` ->
`{"event_id"}`); `GET /queue/data?session_hash=` streams `estimation`, `process_starts`,
`process_completed` (and `close_stream` once the session has nothing left). The call itself runs
as Forge's `wrap_gradio_gpu_call` does: its task id (the first input, made up by the page's
JavaScript as `task(...)`) is queued in `/internal/pending-tasks`, then it takes the generation
lock, `state.begin(job=<task id>)`, and afterwards `state.job_count` and `state.interrupted` are
reset. The real `txt2img` event has 137 inputs (every script's widgets); this one has the ones a
txt2img needs, with Forge's labels and defaults.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from aiohttp import web

from .request import SimHTTPError, detail_error, parse_json_body, parse_txt2img, require_object
from .state import SimulatedForge

GRADIO_VERSION = "4.40.0"

# (component id, type, label, default): the txt2img event's inputs, in Forge's order.
_INPUTS: list[tuple[int, str, str | None, Any]] = [
    (47, "textbox", None, None),  # the task id
    (5, "textbox", "Prompt", ""),
    (9, "textbox", "Negative prompt", ""),
    (27, "dropdown", "Styles", []),
    (108, "slider", "Batch count", 1),
    (109, "slider", "Batch size", 1),
    (113, "slider", "CFG Scale", 7.0),
    (103, "slider", "Height", 512),
    (102, "slider", "Width", 512),
    (57, "slider", "Sampling steps", 20),
    (55, "dropdown", "Sampling method", "DPM++ 2M"),
    (56, "dropdown", "Schedule type", "Automatic"),
    (116, "number", "Seed", -1.0),
]
_FIELDS = {
    "Prompt": "prompt",
    "Negative prompt": "negative_prompt",
    "Styles": "styles",
    "Batch count": "n_iter",
    "Batch size": "batch_size",
    "CFG Scale": "cfg_scale",
    "Height": "height",
    "Width": "width",
    "Sampling steps": "steps",
    "Sampling method": "sampler_name",
    "Schedule type": "scheduler",
    "Seed": "seed",
}
_OUTPUTS = [(200, "gallery"), (201, "json"), (202, "html"), (203, "html")]
_SUBMIT_BUTTON = 16
FN_INDEX = 0

GRADIO_SIM = web.AppKey("gradio_sim", SimulatedForge)
QUEUES = web.AppKey("gradio_queues", dict)
"""session hash -> asyncio.Queue of the messages its `/queue/data` stream sends."""


def config() -> dict[str, Any]:
    components = [
        {"id": cid, "type": kind, "props": {"label": label, "value": value}}
        for cid, kind, label, value in _INPUTS
    ] + [{"id": cid, "type": kind, "props": {"label": None}} for cid, kind in _OUTPUTS]
    components.append({"id": _SUBMIT_BUTTON, "type": "button", "props": {"value": "Generate"}})
    dependency = {
        "id": FN_INDEX,
        "targets": [[_SUBMIT_BUTTON, "click"]],
        "inputs": [cid for cid, *_ in _INPUTS],
        "outputs": [cid for cid, _ in _OUTPUTS],
        "api_name": "txt2img",
        "js": "submit",
        "queue": True,
        "trigger_mode": "once",
        "show_progress": "hidden",
    }
    return {
        "version": GRADIO_VERSION,
        "mode": "blocks",
        "protocol": "sse_v3",
        "enable_queue": True,
        "components": components,
        "dependencies": [dependency],
    }


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(config())


def _payload(data: list[Any]) -> tuple[str | None, dict[str, Any]]:
    payload: dict[str, Any] = {"save_images": True}
    for (_, _, label, _), value in zip(_INPUTS, data, strict=False):
        if label in _FIELDS:
            payload[_FIELDS[label]] = value
    if payload.get("scheduler") == "Automatic":
        payload["scheduler"] = None
    task_id = data[0] if data and isinstance(data[0], str) else None
    return task_id, payload


async def queue_join(request: web.Request) -> web.Response:
    sim = request.app[GRADIO_SIM]
    body = require_object(parse_json_body(await request.read()))
    data = body.get("data")
    session = body.get("session_hash")
    if body.get("fn_index") != FN_INDEX or not isinstance(data, list) or not session:
        raise detail_error(422, "fn_index, data and session_hash are required")
    task_id, payload = _payload(data)
    req = parse_txt2img(payload)
    event_id = secrets.token_hex(16)
    queues: dict[str, asyncio.Queue[dict[str, Any]]] = request.app[QUEUES]
    queue = queues.setdefault(str(session), asyncio.Queue())
    queue.put_nowait(
        {"msg": "estimation", "event_id": event_id, "rank": 0, "queue_size": 1, "rank_eta": None}
    )
    sim.submit_webui_txt2img(req, payload, task_id, _reporter(queue, event_id))
    return web.json_response({"event_id": event_id})


def _reporter(queue: asyncio.Queue[dict[str, Any]], event_id: str) -> Any:
    started = time.monotonic()

    def report(kind: str, result: dict[str, Any] | SimHTTPError | None) -> None:
        if kind == "start":
            queue.put_nowait({"msg": "process_starts", "event_id": event_id, "eta": None})
            return
        if isinstance(result, SimHTTPError) or result is None:
            message = result.body if isinstance(result, SimHTTPError) else "cancelled"
            queue.put_nowait(
                {
                    "msg": "process_completed",
                    "event_id": event_id,
                    "output": {"error": str(message)},
                    "success": False,
                }
            )
        else:
            gallery = [
                {"image": {"path": f"sim-output-{i}.png", "url": None}, "caption": None}
                for i, _ in enumerate(result["images"])
            ]
            info = result["info"]
            duration = time.monotonic() - started
            queue.put_nowait(
                {
                    "msg": "process_completed",
                    "event_id": event_id,
                    "output": {
                        "data": [gallery, info, "", ""],
                        "is_generating": False,
                        "duration": duration,
                        "average_duration": duration,
                    },
                    "success": True,
                }
            )
        queue.put_nowait({"msg": "close_stream", "event_id": None})

    return report


async def queue_data(request: web.Request) -> web.StreamResponse:
    session = request.query.get("session_hash", "")
    queues: dict[str, asyncio.Queue[dict[str, Any]]] = request.app[QUEUES]
    queue = queues.get(session)
    if queue is None:
        raise detail_error(404, "Session not found.")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    while True:
        try:
            async with asyncio.timeout(15):
                message = await queue.get()
        except TimeoutError:
            message = {"msg": "heartbeat"}
        await response.write(f"data: {json.dumps(message)}\n\n".encode())
        if message.get("msg") == "close_stream":
            queues.pop(session, None)
            break
    return response


def add_routes(app: web.Application, sim: SimulatedForge) -> None:
    app[GRADIO_SIM] = sim
    app[QUEUES] = {}
    app.router.add_get("/config", get_config)
    app.router.add_post("/queue/join", queue_join)
    app.router.add_get("/queue/data", queue_data)
