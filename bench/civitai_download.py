"""Civitai download throughput: the core's download manager against a plain copy of the same bytes.

The fake Civitai (`fakes/civitai.py`) runs in its own process, as Civitai's storage
would be another machine, serving one LoRA of `size` bytes. Both sides fetch it over loopback:

- plain copy: one httpx client asks `/api/download/models/<v>`, follows the 307 and streams the
  body into a file with plain writes; no hashing, no resume bookkeeping, no events. Once as is,
  once with an fsync at the end (what the core does before its rename).
- core: `DownloadManager.submit` to `completed`, as POST /api/v1/civitai/download-model runs it:
  the redirect, `.part` writes and SHA-256 in worker threads, the hash check, the final rename,
  the sidecar and preview, the state file, throttled `download` events.

Rounds alternate which side goes first; figures are medians. `python -m bench.civitai_download
--serve` is the fake's process: it prints one JSON line (url, version id) and serves until its
stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import httpx

from fakes.civitai import FakeCivitai, FakeCivitaiServer, safetensors_bytes
from mobilesd_core.civitai.client import CivitaiClient
from mobilesd_core.civitai.downloads import DownloadManager
from mobilesd_core.civitai.hashes import HashCache
from mobilesd_core.civitai.urls import ModelRef
from mobilesd_core.config import Settings
from mobilesd_core.events import EventBus

from .report import Row, median, percent, say
from .simproc import serve_until_stdin_closes

# Core MB/s over the plain copy with the same fsync: hashing, resume bookkeeping, sidecar and
# events may cost up to 30 %. Against the copy without fsync the ratio is shown, not judged:
# flushing the file before the rename is a cost the core pays on purpose.
AIM = 0.70
REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


async def _start_fake(size: int) -> tuple[asyncio.subprocess.Process, str, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.civitai_download",
        "--serve",
        "--size",
        str(size),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        info = json.loads(line)
    except (TimeoutError, ValueError):
        proc.kill()
        await proc.wait()
        raise RuntimeError("the fake Civitai process did not start") from None
    return proc, info["url"], info["version_id"]


async def _stop_fake(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def plain_copy(url: str, version_id: int, target: Path, *, sync: bool) -> float:
    """Seconds to fetch the file the plainest way: redirect, stream, write (and with `sync`,
    fsync at the end, as the core does before its rename so a crash never leaves a model file
    with a right name and wrong bytes)."""
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as client:
        redirect = await client.get(f"{url}/api/download/models/{version_id}")
        location = redirect.headers["Location"]
        async with client.stream("GET", location) as response:
            response.raise_for_status()
            with open(target, "wb") as fh:  # noqa: ASYNC230 - the plainest copy, on purpose
                async for chunk in response.aiter_bytes(MB):
                    fh.write(chunk)
                if sync:
                    fh.flush()
                    os.fsync(fh.fileno())
    return time.perf_counter() - started


async def core_download(manager: DownloadManager, bus: EventBus, version_id: int) -> float:
    """Seconds from submit to `completed` (the file verified and in place)."""
    sub, _ = bus.subscribe(queue_size=100_000)
    with sub:
        started = time.perf_counter()
        download = await manager.submit(ModelRef(model_version_id=version_id))
        while True:
            event = await sub.get(timeout=600)
            if event is None:
                raise RuntimeError("event stream ended")
            if event.name != "download" or event.data["download_id"] != download.download_id:
                continue
            if event.data["status"] == "completed":
                return time.perf_counter() - started
            if event.data["status"] == "failed":
                raise RuntimeError(event.data["error"])


async def run(root: Path, *, size_mb: int, rounds: int) -> list[Row]:
    size = size_mb * MB
    say(f"civitai download: {size_mb} MB file, {rounds} rounds per side, fake in its own process")
    proc, url, version_id = await _start_fake(size)
    work = root / "civitai"
    loras = work / "Lora"
    plain_dir = work / "plain"
    for folder in (loras, plain_dir, work / "data"):
        folder.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_path=work / "data", lora_path=loras, civitai_base_url=url)
    client = CivitaiClient(url, None)
    bus = EventBus()
    manager = DownloadManager(settings, client, bus, HashCache(settings.data_path))
    plain_s: list[float] = []
    synced_s: list[float] = []
    core_s: list[float] = []
    try:
        await manager.start()
        for round_no in range(rounds):
            order = ("plain", "synced", "core")
            for side in order if round_no % 2 == 0 else order[::-1]:
                if side == "plain":
                    target = plain_dir / "copy.bin"
                    plain_s.append(await plain_copy(url, version_id, target, sync=False))
                elif side == "synced":
                    target = plain_dir / "synced.bin"
                    synced_s.append(await plain_copy(url, version_id, target, sync=True))
                else:
                    shutil.rmtree(loras)
                    loras.mkdir()
                    core_s.append(await core_download(manager, bus, version_id))
            say(
                f"  round {round_no + 1}: plain {size_mb / plain_s[-1]:.0f} MB/s, "
                f"plain + fsync {size_mb / synced_s[-1]:.0f} MB/s, "
                f"core {size_mb / core_s[-1]:.0f} MB/s"
            )
    finally:
        await manager.stop()
        await client.aclose()
        await _stop_fake(proc)
    plain, core = size_mb / median(plain_s), size_mb / median(core_s)
    synced = size_mb / median(synced_s)
    return [
        Row(f"civitai download {size_mb} MB, plain copy", f"{plain:.0f} MB/s", ratio="peer"),
        Row(
            f"civitai download {size_mb} MB, plain copy + fsync",
            f"{synced:.0f} MB/s",
            ratio="peer (same durability as the core)",
        ),
        Row(
            f"civitai download {size_mb} MB, core (verified)",
            f"{core:.0f} MB/s",
            aim=f">= {percent(AIM)} of plain + fsync",
            ratio=f"{percent(core / synced)} of plain + fsync, {percent(core / plain)} of plain",
            ok=core / synced >= AIM,
        ),
    ]


async def _serve(size: int) -> None:
    fake = FakeCivitai(chunk_size=MB)
    version = fake.add_model(
        "Bench LoRA", files=[("bench_lora.safetensors", safetensors_bytes(size))]
    )
    server = FakeCivitaiServer(fake)
    await server.start()
    try:
        await serve_until_stdin_closes({"url": server.url, "version_id": version.id})
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help="be the fake Civitai process")
    parser.add_argument("--size", type=int, default=64 * MB, help="file size in bytes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.size))
        return
    import tempfile

    from .report import table

    with tempfile.TemporaryDirectory(prefix="mobilesd-bench-") as tmp:
        table(asyncio.run(run(Path(tmp), size_mb=args.size // MB, rounds=args.rounds)))


if __name__ == "__main__":
    main()
