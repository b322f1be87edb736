"""A fake core for TUI snapshots: fixed jobs, servers and images, fixed clock, no network.

Everything on screen is deterministic: ids, timestamps, the clock, the pictures (drawn here).
The event stream opens and then stays silent, like an idle core.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from PIL import Image, ImageDraw

from mobilesd_tui.api_client import ApiError, ImagePage, JobPage, StreamEvent

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
PROMPTS = [
    "a lighthouse at dusk, oil painting, dramatic clouds",
    "portrait of an old sailor, charcoal sketch",
    "a red fox in snow, telephoto, golden hour",
    "a blue heron at dawn, mist over the lake",
    "isometric cozy library, warm light, plants",
    "cyberpunk street market at night, neon rain",
]


def fixed_clock() -> datetime:
    return NOW


def fake_job(n: int, status: str, **extra: Any) -> dict[str, Any]:
    minute = 59 - n
    job = {
        "mobilesd_job_id": f"01JD3FAKE{n:017d}",
        "batch_id": f"b01JD3FAKEBATCH{n // 2:011d}",  # jobs pair up in batches
        "status": status,
        "creation_timestamp": f"2026-11-24T11:{minute:02d}:00.000Z",
        "started_timestamp": None,
        "completion_timestamp": None,
        "target_server_alias": None,
        "assigned_server_alias": None,
        "source": "tui",
        "source_ref": None,
        "position": None,
        "attempts": 0,
        "progress": None,
        "generation_params": {
            "prompt": PROMPTS[n % len(PROMPTS)],
            "negative_prompt": "blurry",
            "checkpoint_name": "sdxl/juggernautXL_v9.safetensors",
            "loras": [],
            "seed": -1,
            "width": 832,
            "height": 1216,
            "steps": 28,
            "cfg_scale": 6.5,
            "sampler_name": "DPM++ 2M",
            "n_iter": 1,
        },
        "result_details": None,
    }
    job.update(extra)
    return job


def sample_jobs() -> list[dict[str, Any]]:
    return [
        fake_job(
            1,
            "processing",
            assigned_server_alias="gpu1",
            started_timestamp="2026-11-24T11:59:30.000Z",
            attempts=1,
            progress={"fraction": 0.45, "step": 9, "steps": 20, "eta_seconds": 6.0},
        ),
        fake_job(2, "pending", position=0),
        fake_job(3, "pending", position=1, target_server_alias="gpu2"),
        fake_job(4, "pending", position=2),
        fake_job(
            5,
            "completed",
            assigned_server_alias="gpu1",
            completion_timestamp="2026-11-24T11:56:00.000Z",
            result_details={"images": ["a.png", "b.png"], "info": {"seed": 1234567}},
        ),
        fake_job(
            6,
            "failed",
            assigned_server_alias="gpu2",
            completion_timestamp="2026-11-24T11:55:00.000Z",
            attempts=3,
            result_details={"error": "gpu2: checkpoint 'flux1-dev' is not on this server"},
        ),
        fake_job(
            7,
            "cancelled",
            completion_timestamp="2026-11-24T11:54:00.000Z",
            result_details={"error": "cancelled by user"},
        ),
    ]


def sample_servers() -> list[dict[str, Any]]:
    return [
        {
            "alias": "gpu1",
            "api_url": "http://10.0.0.21:7860",
            "username": None,
            "enabled": True,
            "max_concurrent": 1,
            "has_password": False,
            "status": {
                "alias": "gpu1",
                "online": True,
                "enabled": True,
                "checked": True,
                "latency_ms": 12.4,
                "current_checkpoint": "sdxl/juggernautXL_v9.safetensors [a1b2c3]",
                "busy": True,
                "active_jobs": 1,
                "max_concurrent": 1,
                "error": None,
            },
        },
        {
            "alias": "gpu2",
            "api_url": "http://10.0.0.22:7860",
            "username": "forge",
            "enabled": True,
            "max_concurrent": 2,
            "has_password": True,
            "status": {
                "alias": "gpu2",
                "online": False,
                "enabled": True,
                "checked": True,
                "latency_ms": None,
                "current_checkpoint": None,
                "busy": False,
                "active_jobs": 0,
                "max_concurrent": 2,
                "error": "connection refused",
            },
        },
    ]


def sample_images(count: int = 6) -> list[dict[str, Any]]:
    images = []
    for n in range(count):
        name = f"20261124-11{50 - n:02d}00-01JD3FAKE{n:04d}-0.png"
        url = f"/gallery_files/{name}"
        images.append(
            {
                "filename": name,
                "url": url,
                "thumb_url": f"{url}?thumb=1",
                "width": 832,
                "height": 1216,
                "created": f"2026-11-24T11:{50 - n:02d}:00Z",
                "mobilesd_job_id": "01JD3FAKE00000000000000005",
                "prompt": PROMPTS[n % len(PROMPTS)],
                "negative_prompt": "blurry",
                "seed": 1234567 + n,
                "checkpoint": "juggernautXL_v9",
            }
        )
    return images


def picture(seed: int, size: tuple[int, int] = (128, 128)) -> bytes:
    """A deterministic little picture: a gradient sky, a sun and a hill, colours by seed."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    hue = (seed * 47) % 255
    for y in range(height):
        shade = int(255 * y / height)
        draw.line(
            [(0, y), (width, y)], fill=(hue // 2 + shade // 3, 80 + shade // 4, 200 - shade // 2)
        )
    draw.ellipse([width // 3, height // 5, width // 3 + 40, height // 5 + 40], fill=(250, 220, 90))
    draw.polygon([(0, height), (width // 2, height * 2 // 3), (width, height)], fill=(40, 110, 60))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


MODELS = {
    "checkpoints": [
        {"title": "sd15/dreamshaper_8.safetensors", "model_name": "dreamshaper_8"},
        {"title": "sdxl/juggernautXL_v9.safetensors", "model_name": "juggernautXL_v9"},
    ],
    "loras": ["add_detail", "film_grain", "watercolor_v2"],
    "samplers": ["Euler", "Euler a", "DPM++ 2M", "DPM++ SDE"],
    "schedulers": ["Automatic", "Karras", "Exponential"],
    "styles": [],
    "current_checkpoint": "sdxl/juggernautXL_v9.safetensors",
}


class FakeApi:
    """CoreApi with fixed data. Records calls; `fail_submit` makes /generate answer 422."""

    url = "http://core.test:8188"

    def __init__(self, *, jobs: list[dict[str, Any]] | None = None, images: int = 6) -> None:
        self._jobs = sample_jobs() if jobs is None else jobs
        self._servers = sample_servers()
        self._images = sample_images(images)
        self.calls: list[tuple[str, Any]] = []
        self.fail_submit: list[dict[str, Any]] | None = None
        self._quiet = asyncio.Event()

    async def aclose(self) -> None:
        pass

    async def health(self) -> dict[str, Any]:
        return {"status": "ok"}

    async def jobs(self, *, limit: int = 1000, offset: int = 0) -> JobPage:
        return JobPage(jobs=self._jobs[offset : offset + limit], total=len(self._jobs))

    async def queue_state(self) -> dict[str, Any]:
        return {"paused": False, "counts": {}}

    async def submit(self, params: dict[str, Any], target: str | None) -> dict[str, Any]:
        self.calls.append(("submit", params))
        if self.fail_submit is not None:
            raise ApiError(422, "invalid_fields", "invalid fields", self.fail_submit)
        return fake_job(99, "pending", position=3, generation_params=params)

    async def submit_sweep(
        self, params: dict[str, Any], matrix: dict[str, list[Any]], target: str | None
    ) -> dict[str, Any]:
        self.calls.append(("sweep", (params, matrix, target)))
        return {
            "batch_id": "b01FAKEBATCH",
            "mobilesd_job_ids": ["x"] * len(matrix["checkpoint_name"]),
        }

    async def edit(self, job_id: str, params: dict[str, Any], target: str | None) -> dict[str, Any]:
        self.calls.append(("edit", (job_id, params, target)))
        job = next(j for j in self._jobs if j["mobilesd_job_id"] == job_id)
        return {**job, "generation_params": {**job["generation_params"], **params}}

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        self.calls.append(("cancel_batch", batch_id))
        return {"batch_id": batch_id, "cancelled": 0, "mobilesd_job_ids": []}

    async def cancel(self, job_id: str) -> dict[str, Any]:
        self.calls.append(("cancel", job_id))
        job = next(j for j in self._jobs if j["mobilesd_job_id"] == job_id)
        return {**job, "status": "cancelled"}

    async def retry(self, job_id: str) -> dict[str, Any]:
        self.calls.append(("retry", job_id))
        return fake_job(98, "pending", position=3)

    async def move(self, job_id: str, to: str) -> dict[str, Any]:
        self.calls.append(("move", (job_id, to)))
        return next(j for j in self._jobs if j["mobilesd_job_id"] == job_id)

    async def delete_job(self, job_id: str) -> None:
        self.calls.append(("delete", job_id))

    async def clear_finished(self) -> int:
        return 0

    async def set_paused(self, paused: bool) -> dict[str, Any]:
        return {"paused": paused}

    async def servers(self) -> list[dict[str, Any]]:
        return self._servers

    async def add_server(self, data: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("add_server", data))
        return {**data, "status": {"alias": data.get("alias"), "online": False}}

    async def update_server(self, alias: str, data: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("update_server", (alias, data)))
        server = next(s for s in self._servers if s["alias"] == alias)
        return {**server, **data}

    async def remove_server(self, alias: str) -> None:
        self.calls.append(("remove_server", alias))

    async def server_status(self, alias: str) -> dict[str, Any]:
        return next(s for s in self._servers if s["alias"] == alias)["status"]

    async def server_models(self, alias: str) -> dict[str, Any]:
        return MODELS

    async def images(self, *, limit: int = 100, offset: int = 0) -> ImagePage:
        return ImagePage(images=self._images[offset : offset + limit], total=len(self._images))

    async def delete_image(self, filename: str) -> None:
        self.calls.append(("delete_image", filename))

    async def job_preview(self, job_id: str, etag: str | None) -> tuple[bytes, str] | None:
        raise ApiError(404, "no_preview", "no preview")

    async def fetch_bytes(self, url: str) -> bytes:
        index = next(i for i, e in enumerate(self._images) if url in (e["url"], e["thumb_url"]))
        return picture(self._images[index]["seed"])

    async def events(self, last_event_id: int | None) -> AsyncIterator[StreamEvent]:
        yield StreamEvent("open")
        await self._quiet.wait()  # an idle core: nothing more, ever


async def settle(pilot: Any, *, timeout: float = 10.0) -> None:
    """Wait for the first load and every worker but the event stream, then for the screen."""
    app = pilot.app
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        busy = [w for w in app.workers if w.group != "events" and not w.is_finished]
        if app.loaded and not busy:
            break
        if loop.time() > deadline:
            raise AssertionError(f"app did not settle: loaded={app.loaded}, busy={busy}")
        await pilot.pause(0.02)
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


def fake_app(tab: str = "generator", api: FakeApi | None = None) -> Any:
    from mobilesd_tui.app import make_app
    from mobilesd_tui.thumbs import halfcell_widget

    return make_app(
        api or FakeApi(),
        clock=fixed_clock,
        initial_tab=tab,
        image_widget=halfcell_widget(),
        animations=False,
        age_refresh=None,
    )
