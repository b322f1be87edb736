"""`mobilesd demo`: the core with two simulated Forge servers and the example jobs.

Everything goes through the real HTTP API and real loopback Forge servers; the demo only adds a
console view of the event stream. A second start reuses the same folder and finds its queue,
history and gallery as they were.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from .api.app import create_app, runner_options
from .api.keys import CORE, TOKEN
from .config import Settings
from .forge.simulator import SimServer, SimulatorConfig
from .jobfiles import load_job_file
from .phone_link import phone_url
from .runner import bind_listener, run_until_signalled
from .tasks import cancel_and_wait

# The repository's examples; an installed copy (Docker) names its own with MOBILESD_EXAMPLES.
EXAMPLES = Path(
    os.environ.get("MOBILESD_EXAMPLES")
    or Path(__file__).resolve().parent.parent / "examples" / "jobs"
)
SIMULATED = {
    "gpu1": ["sd15/dreamshaper_8.safetensors", "sdxl/juggernautXL_v9.safetensors"],
    "gpu2": ["sdxl/juggernautXL_v9.safetensors", "flux/flux1-dev-fp8.safetensors"],
}
QUEUED_MARKER = "demo_examples_queued"


def _short(text: str, width: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class ConsoleView:
    """Prints one line per job state change and throttled progress, from the event bus."""

    def __init__(self) -> None:
        self._last_status: dict[str, str] = {}
        self._last_progress: dict[str, float] = {}
        self._online: dict[str, bool] = {}

    def show(self, name: str, data: dict[str, Any]) -> None:
        if name == "job":
            self._job(data)
        elif name == "server" and "online" in data:
            if self._online.get(data["alias"]) != data["online"]:
                self._online[data["alias"]] = data["online"]
                state = "online" if data["online"] else f"offline ({data.get('error')})"
                print(f"  server {data['alias']}: {state}")
        elif name == "image" and "added" in data:
            print(f"  image saved: {data['added']['filename']}")

    def _job(self, job: dict[str, Any]) -> None:
        job_id = job["mobilesd_job_id"]
        status = job["status"]
        prompt = _short(job["generation_params"]["prompt"])
        server = job.get("assigned_server_alias") or "-"
        if status != self._last_status.get(job_id):
            self._last_status[job_id] = status
            extra = ""
            if status == "failed":
                extra = f"  error: {job['result_details']['error']}"
            print(f"{job_id[-8:]} {status:<10} {server:<5} {prompt}{extra}")
            return
        progress = job.get("progress")
        if status == "processing" and progress and progress.get("steps"):
            now = time.monotonic()
            if now - self._last_progress.get(job_id, 0) >= 1.0:
                self._last_progress[job_id] = now
                bar = "#" * int(progress["fraction"] * 20)
                print(
                    f"{job_id[-8:]} {'':<10} {server:<5} [{bar:<20}] "
                    f"step {progress['step']}/{progress['steps']}"
                )


async def _register_servers(http: httpx.AsyncClient, sims: dict[str, SimServer]) -> None:
    existing = {s["alias"]: s for s in (await http.get("/api/v1/servers")).json()}
    for alias, sim in sims.items():
        body = {"alias": alias, "api_url": sim.url}
        if alias in existing:
            # Simulator ports change between runs: point the saved server at today's.
            response = await http.put(f"/api/v1/servers/{alias}", json={"api_url": sim.url})
        else:
            response = await http.post("/api/v1/servers", json=body)
        response.raise_for_status()


def _drop_examples(inbox: Path) -> int:
    """Copy the example job files into the inbox, as a user would: the watcher queues them."""
    inbox.mkdir(parents=True, exist_ok=True)
    images = EXAMPLES / "images"  # the init images the img2img examples name, first
    if images.is_dir():
        shutil.copytree(images, inbox / "images", dirs_exist_ok=True)
    jobs = 0
    for path in sorted(EXAMPLES.glob("*.yaml")):
        jobs += len(load_job_file(path).jobs)
        tmp = inbox / f".{path.name}.tmp"  # hidden while it is written: never read half-done
        shutil.copyfile(path, tmp)
        tmp.rename(inbox / path.name)
    return jobs


async def _until_examples_done(core: Any, expected: int, timeout: float = 600) -> tuple[int, int]:
    """Wait until the example jobs are all terminal: (completed, not completed)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = core.store.count()
        done = counts["completed"] + counts["failed"] + counts["cancelled"]
        if done >= expected and counts["pending"] == 0 and counts["processing"] == 0:
            return counts["completed"], counts["failed"] + counts["cancelled"]
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {expected} example jobs finished in {timeout:g} s")
        await asyncio.sleep(0.1)


async def run_demo(
    settings: Settings,
    *,
    step_ms: float = 60.0,
    tui: bool = False,
    tab: str = "queue",
    image_widget: Any = None,
    once: bool = False,
) -> bool:
    """Core + simulated servers; with `tui`, the terminal UI on the same loop (through the API),
    else the console view until Ctrl-C. `once`: headless, until the example jobs are done;
    True if every one completed."""
    sims = {
        alias: SimServer(
            SimulatorConfig(checkpoints=ckpts, step_ms=step_ms, switch_ms=1500, name=alias)
        )
        for alias, ckpts in SIMULATED.items()
    }
    listener = bind_listener(settings.host, settings.port)
    app = create_app(settings)
    runner = web.AppRunner(app, **runner_options())
    view = ConsoleView()
    tasks: list[asyncio.Task[None]] = []
    base = f"http://{settings.host}:{settings.port}"
    expected = {"jobs": 0}

    async def start() -> None:
        for sim in sims.values():
            await sim.start()
        await runner.setup()
        await web.SockSite(runner, listener).start()
        core = app[CORE]
        headers = {"Authorization": f"Bearer {app[TOKEN]}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            await _register_servers(http, sims)
            marker = settings.data_path / QUEUED_MARKER
            if not marker.exists():
                expected["jobs"] = await asyncio.to_thread(_drop_examples, settings.inbox_path)
                marker.write_text("examples queued\n")
                if not tui:
                    print(
                        f"dropped the example job files ({expected['jobs']} jobs) into "
                        f"{settings.inbox_path}; the inbox watcher queues them"
                    )
            elif not tui:
                print("examples were queued on an earlier run; showing the queue as it is")
        if tui:
            return  # the TUI shows all of this; printing would scribble over its screen

        async def follow() -> None:
            sub, _ = core.bus.subscribe()
            with sub:
                while (event := await sub.get()) is not None:
                    view.show(event.name, event.data)

        tasks.append(asyncio.create_task(follow()))
        width = shutil.get_terminal_size((100, 24)).columns
        print("-" * min(width, 100))
        print(f"MobileSD demo: core on {base}, simulated Forge servers:")
        for alias, sim in sims.items():
            print(f"  {alias}: {sim.url}  ({', '.join(SIMULATED[alias])})")
        print(f"gallery: {settings.gallery_path}")
        print(f"phone page: {phone_url(settings.host, settings.port, app[TOKEN])}")
        print("Ctrl-C stops everything; run it again to find everything as it was.")
        print("-" * min(width, 100))
        sys.stdout.flush()

    async def stop() -> None:
        await cancel_and_wait(*tasks)
        await runner.cleanup()
        for sim in sims.values():
            await sim.stop()

    if once:
        await start()
        try:
            completed, other = await _until_examples_done(app[CORE], expected["jobs"])
        finally:
            await stop()
        print(f"demo: {completed} example jobs completed, {other} did not")
        return other == 0
    if not tui:
        await run_until_signalled(start, stop)
        return True

    from mobilesd_tui.api_client import CoreClient
    from mobilesd_tui.app import make_app
    from mobilesd_tui.prefs import default_path

    await start()
    try:
        tui_app = make_app(
            CoreClient(base, app[TOKEN]),
            prefs_path=default_path(),
            initial_tab=tab,
            image_widget=image_widget,
        )
        await tui_app.run_async()
    finally:
        await stop()
        print(f"MobileSD demo stopped. Data and gallery are kept in {settings.data_path.parent}.")
    return True
