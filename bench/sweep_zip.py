"""Sweeps and batch zips: expanding a 1,000-job sweep, and streaming a 1,000-image zip.

Expansion: the same 10 x 10 x 10 matrix through a job file (`parse_job_text`, YAML parsing
included) and through the API's body (`expand_body`, what POST /api/v1/generate runs), plus a
10 x 10 matrix times a 10-prompt template (`expand: combinatorial`). Medians of 5.

Zip: a real core over loopback HTTP streams GET /api/v1/gallery/archive?batch_id= of 1,000
images (incompressible 128x128 PNGs, ~49 KB) with their JSON sidecars to a client that counts
bytes; the peer is `zip -r` of the same files into a file (`-0`: stored, like the core; and the
default deflate), or `python -m zipfile -c` where `zip` is not installed.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp.test_utils import TestServer
from PIL import Image, PngImagePlugin

from mobilesd_core.api.app import create_app
from mobilesd_core.api.generate_body import expand_body
from mobilesd_core.api.keys import CORE
from mobilesd_core.config import Settings
from mobilesd_core.gallery import Gallery
from mobilesd_core.jobfiles import parse_job_text
from mobilesd_core.prompt_variants import PromptExpander

from .report import Row, median, ms, say, times

TOKEN = "bench-token-0123456789"
SWEEP = """\
prompt: "a lighthouse, {style}, {light}"
steps: 20
matrix:
  seed: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  style: [oil, ink, charcoal, pastel, watercolour, gouache, pencil, crayon, fresco, tempera]
  light: [dawn, noon, dusk, night, fog, rain, snow, storm, haze, glow]
"""


def noise_png(edge: int = 128) -> bytes:
    """An incompressible PNG with a `parameters` chunk (the gallery keeps such bytes as-is)."""
    image = Image.frombytes("RGB", (edge, edge), os.urandom(edge * edge * 3))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse\nSteps: 20, Seed: 1, Size: 128x128")
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, compress_level=0)
    return out.getvalue()


def fill_gallery(root: Path, jobs: list[dict[str, Any]], per_job: int, png: bytes) -> int:
    """Write `per_job` images and sidecars for each job as the gallery names them; bytes
    written. (Faster than saving through the gallery: no fsync per file, no re-encoding.)"""
    gallery = Gallery(root)
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    for job in jobs:
        for index in range(per_job):
            name = gallery.image_name(job, index)
            sidecar = json.dumps(
                {
                    "sidecar_version": 1,
                    "filename": name,
                    "mobilesd_job_id": job["mobilesd_job_id"],
                    "index": index,
                    "created": job["creation_timestamp"],
                    "width": 128,
                    "height": 128,
                    "seed": index,
                    "generation_params": job["generation_params"],
                    "job": job,
                },
                indent=2,
            ).encode()
            (root / name).write_bytes(png)
            (root / (name[:-4] + ".json")).write_bytes(sidecar)
            total += len(png) + len(sidecar)
    return total


def _expansion_rows(rounds: int) -> list[Row]:
    expander = PromptExpander(None)
    body = {
        "generation_params": {"prompt": "a lighthouse, {style}, {light}", "steps": 20},
        "matrix": {
            "seed": list(range(1, 11)),
            "style": SWEEP.split("style: [")[1].split("]")[0].split(", "),
            "light": SWEEP.split("light: [")[1].split("]")[0].split(", "),
        },
    }
    variants = {
        "generation_params": {"prompt": "a lighthouse, {1|2|3|4|5|6|7|8|9|10}", "steps": 20},
        "matrix": {"seed": list(range(1, 11)), "cfg_scale": [float(c) for c in range(1, 11)]},
        "expand": "combinatorial",
    }
    timings: dict[str, list[float]] = {"file": [], "api": [], "variants": []}
    for _ in range(rounds):
        start = time.perf_counter()
        result = parse_job_text(SWEEP)
        timings["file"].append(time.perf_counter() - start)
        assert len(result.jobs) == 1000, result.problems
        start = time.perf_counter()
        assert len(expand_body(body, expander).jobs) == 1000
        timings["api"].append(time.perf_counter() - start)
        start = time.perf_counter()
        assert len(expand_body(variants, expander).jobs) == 1000
        timings["variants"].append(time.perf_counter() - start)
    file_s, api_s, var_s = (median(timings[k]) for k in ("file", "api", "variants"))
    say(f"  expansion: file {ms(file_s)}, API body {ms(api_s)}, with variants {ms(var_s)}")
    return [
        Row("sweep 1,000 jobs: job file (YAML + expansion)", ms(file_s), "< 1 s", ok=file_s < 1),
        Row("sweep 1,000 jobs: API body", ms(api_s), "< 1 s", ok=api_s < 1),
        Row(
            "sweep 100 x template of 10 (combinatorial)",
            ms(var_s),
            "< 2 s",
            ok=var_s < 2,
        ),
    ]


async def _download(url: str) -> tuple[int, float]:
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
    ) as client:
        start = time.perf_counter()
        size = 0
        async with client.stream("GET", url) as response:
            response.raise_for_status()
            async for chunk in response.aiter_raw():
                size += len(chunk)
        return size, time.perf_counter() - start


def _peer(folder: Path, out: Path, stored: bool) -> tuple[str, float]:
    out.unlink(missing_ok=True)
    if shutil.which("zip"):
        cmd = ["zip", "-r", "-q", *(["-0"] if stored else []), str(out), folder.name]
        name = f"zip -r{' -0' if stored else ''}"
    else:
        cmd = [sys.executable, "-m", "zipfile", "-c", str(out), folder.name]
        name = "python -m zipfile -c"
    start = time.perf_counter()
    subprocess.run(cmd, cwd=folder.parent, check=True)
    return name, time.perf_counter() - start


async def _zip_rows(root: Path, images: int, rounds: int) -> list[Row]:
    settings = Settings(
        data_path=root / "data",
        gallery_path=root / "outputs",
        inbox_path=root / "inbox",
        token=TOKEN,
    )
    for path in (settings.data_path, settings.inbox_path):
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        core = server.app[CORE]
        await core.service.set_paused(True)
        per_job = 8
        body = {
            "generation_params": {"prompt": "a lighthouse", "batch_size": per_job},
            "matrix": {"seed": list(range(images // per_job))},
        }
        specs = expand_body(body, core.service.expander).jobs
        created = await core.service.submit_specs(specs, source="api")
        batch = created[0]["batch_id"]
        png = noise_png()
        total = await asyncio.to_thread(fill_gallery, settings.gallery_path, created, per_job, png)
        await core.gallery.rescan()
        url = str(server.make_url(f"/api/v1/gallery/archive?batch_id={batch}"))
        core_times, size = [], 0
        for _ in range(rounds):
            size, seconds = await _download(url)
            core_times.append(seconds)
        core_s = median(core_times)
        # The peer zips the same files, copied to a folder of their own (images + sidecars).
        folder = root / "peer" / f"mobilesd-{batch}"
        folder.mkdir(parents=True)
        for path in settings.gallery_path.iterdir():
            if path.is_file():
                shutil.copy(path, folder / path.name)
        rows = []
        mb = total / 1e6
        say(
            f"  zip: {images} images + sidecars, {mb:.1f} MB of files, "
            f"zip {size / 1e6:.1f} MB, core {core_s:.2f} s"
        )
        rows.append(
            Row(
                f"zip stream {images} images ({mb:.0f} MB), core over HTTP",
                f"{mb / core_s:.0f} MB/s",
                "",
            )
        )
        for stored in (True, False):
            name, peer_times = "", []
            for _ in range(rounds):
                name, seconds = _peer(folder, root / "peer.zip", stored)
                peer_times.append(seconds)
            peer_s = median(peer_times)
            say(f"  {name}: {peer_s:.2f} s")
            rows.append(
                Row(
                    f"  peer: {name} to a file",
                    f"{mb / peer_s:.0f} MB/s",
                    "core ≥ 0.5× stored peer" if stored else "",
                    times(peer_s / core_s),
                    ok=(peer_s / core_s >= 0.5) if stored else None,
                )
            )
            if name.startswith("python"):
                break  # only one peer without zip
        return rows
    finally:
        await server.close()


async def run(root: Path, *, images: int = 1000, rounds: int = 3) -> list[Row]:
    say(f"sweeps and zip: expansion of 1,000 jobs, a {images}-image batch zip")
    rows = await asyncio.to_thread(_expansion_rows, 5 if rounds > 1 else 2)
    rows += await _zip_rows(root, images, rounds)
    return rows
