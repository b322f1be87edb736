"""A real core in this process, one simulated server registered over loopback HTTP.

The core runs with its production settings (progress polled every 0.5 s, health every 10 s) and
its real store and gallery on disk: every job's claim and finish are fsynced store writes, and
its image is saved as a PNG with a JSON sidecar, fsynced. Jobs are submitted through
`core.service.submit`, as the HTTP API does after parsing the request; the API itself is not
involved, so the figures are the queue's own cost.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from mobilesd_core.config import Settings
from mobilesd_core.core import Core
from mobilesd_core.forge.payload import ServerCatalog, build_txt2img_payload
from mobilesd_core.schema import GenerationParams

ALIAS = "bench"
PROMPT = "a lighthouse at dusk, volumetric light, highly detailed"
# What ForgeClient sends with every request.
FORGE_HEADERS = {"User-Agent": "MobileSD", "Accept-Encoding": "gzip"}


def params(size: int, steps: int) -> GenerationParams:
    return GenerationParams(prompt=PROMPT, width=size, height=size, steps=steps)


def txt2img_payload(p: GenerationParams) -> dict[str, Any]:
    """The request body the core sends for `p` (sampler 'Euler' is the simulator's own name)."""
    return build_txt2img_payload(
        p.model_dump(mode="json"),
        checkpoint_title=None,
        sampler=p.sampler_name,
        scheduler=p.scheduler,
        catalog=ServerCatalog(),
        server=ALIAS,
    )


@asynccontextmanager
async def running_core(root: Path, sim_url: str) -> AsyncIterator[Core]:
    settings = Settings(
        data_path=root / "data",
        gallery_path=root / "outputs",
        inbox_path=root / "inbox",
        token="bench-token-0123456789",
    )
    for path in (settings.data_path, settings.gallery_path):
        path.mkdir(parents=True, exist_ok=True)
    core = Core(settings)
    await core.start()
    try:
        await core.service.add_server({"alias": ALIAS, "api_url": sim_url})
        deadline = time.monotonic() + 10
        while not core.registry.runtimes[ALIAS].online:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator at {sim_url} did not come online")
            await asyncio.sleep(0.005)
        yield core
    finally:
        await core.stop()


async def run_jobs(core: Core, p: GenerationParams, n: int, *, timeout: float = 600) -> float:
    """Queue `n` jobs in one submit and wait until all are done: seconds from submit to idle."""
    before = core.store.count()["completed"]
    started = time.perf_counter()
    await core.service.submit([p] * n, source="api")
    await core.run_until_idle(timeout=timeout)
    elapsed = time.perf_counter() - started
    done = core.store.count()["completed"] - before
    if done != n:
        raise RuntimeError(f"{n - done} of {n} jobs did not complete: {core.store.count()}")
    return elapsed


async def direct_loop(url: str, payload: dict[str, Any], n: int, *, warmup: int = 3) -> float:
    """The peer: one client posting the same txt2img `n` times in a row, decoding the images.

    Seconds from the first request to the last answer decoded (after `warmup` untimed ones).
    """
    async with httpx.AsyncClient(
        base_url=url, headers=FORGE_HEADERS, timeout=httpx.Timeout(None, connect=10)
    ) as client:

        async def one() -> None:
            response = await client.post("/sdapi/v1/txt2img", json=payload)
            response.raise_for_status()
            images = [base64.b64decode(i) for i in response.json()["images"]]
            if not images:
                raise RuntimeError("the simulator answered without images")

        for _ in range(warmup):
            await one()
        started = time.perf_counter()
        for _ in range(n):
            await one()
        return time.perf_counter() - started
