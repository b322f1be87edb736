"""Start to serving: a real `mobilesd serve` process over a data folder with a year of history.

The data folder holds `HISTORY` finished jobs in the archive (as store_writes builds them) and an
empty gallery. Timed from the exec of the process to its first `/healthz` 200, and to its first
`GET /api/v1/queue/jobs` page that is correct (the newest jobs, the whole history counted). Resident
memory (VmRSS) is read once that page is served. The first start after the history was written
reads the archive whole (as the first start after an upgrade does) and leaves the archive's index
cache; the starts after it are what every later start costs (warm disk cache). The same start
over an empty data folder is the floor: what the interpreter, the imports and the rest cost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from mobilesd_core.durable import AppendLog

from .report import Row, median, say, times
from .simproc import REPO
from .store_writes import build_history

TOKEN = "bench-token-0123456789"
AIM_S = 1.0
AIM_RSS_MIB = 150
PAGE = 50
SERVE = "import sys; from mobilesd_core.cli import main; sys.exit(main())"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _newest_ids(data: Path, n: int) -> list[str]:
    (month,) = (data / "archive").glob("jobs-*.jsonl")
    ids = [r["mobilesd_job_id"] for _, _, r in AppendLog(month).iter_records()]
    return ids[-n:][::-1]


async def _start_once(root: Path, expected: list[str], total: int) -> dict[str, float]:
    port = _free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "CONFIG_DATA_PATH": str(root / "data"),
        "STABLE_DIFFUSION_SAVE_PATH": str(root / "gallery"),
        "INBOX_PATH": str(root / "inbox"),
        "LORA_PATH": str(root / "loras"),
        "CHECKPOINT_PATH": str(root / "checkpoints"),
        "MOBILESD_TOKEN": TOKEN,
    }
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVE,
        "serve",
        "--no-qr",
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as client:
            healthy = await _poll(client, "/healthz", proc, lambda r: r.status_code == 200)

            def page_ok(r: httpx.Response) -> bool:
                if 400 <= r.status_code < 500:
                    raise RuntimeError(f"jobs page: {r.status_code} {r.text[:200]}")
                if r.status_code != 200:
                    return False
                body = r.json()
                ids = [j["mobilesd_job_id"] for j in body["jobs"]]
                if body["total"] != total or ids != expected:
                    raise RuntimeError(f"wrong first page: total {body['total']}, {ids[:3]}")
                return True

            listed = await _poll(
                client, f"/api/v1/queue/jobs?limit={PAGE}&archived=1", proc, page_ok
            )
            rss = _rss_mib(proc.pid)
        return {"healthz_s": healthy - started, "jobs_s": listed - started, "rss_mib": rss}
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.wait()


async def _poll(
    client: httpx.AsyncClient,
    path: str,
    proc: asyncio.subprocess.Process,
    ok: Callable[[httpx.Response], bool],
) -> float:
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"mobilesd serve exited with {proc.returncode}")
        try:
            if ok(await client.get(path)):
                return time.perf_counter()
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.005)  # polling the socket: the start is what is timed
    raise RuntimeError(f"{path} did not answer within 60 s")


async def run(root: Path, *, history: int, starts: int = 3) -> list[Row]:
    say(f"serve start: `mobilesd serve` with {history:,} finished jobs, empty gallery")
    root = root / "serve_start"
    for sub in ("gallery", "inbox", "loras", "checkpoints"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    took = build_history(root / "data", history)
    say(f"  built {history:,} finished jobs in {took:.1f} s")
    expected = _newest_ids(root / "data", PAGE)
    first = await _start_once(root, expected, history)
    warm = [await _start_once(root, expected, history) for _ in range(starts)]
    for label, r in [("first start", first), *((f"start {i + 2}", r) for i, r in enumerate(warm))]:
        say(
            f"  {label}: /healthz {r['healthz_s']:.2f} s, first jobs page {r['jobs_s']:.2f} s, "
            f"{r['rss_mib']:.0f} MiB resident"
        )
    # The floor: the same start with no history (interpreter, imports, the other parts).
    empty = root.parent / "serve_start_empty"
    for sub in ("data", "gallery", "inbox", "loras", "checkpoints"):
        (empty / sub).mkdir(parents=True, exist_ok=True)
    floor = median([(await _start_once(empty, [], 0))["healthz_s"] for _ in range(starts)])
    say(f"  with no history: /healthz {floor:.2f} s (median of {starts})")
    health = median([r["healthz_s"] for r in warm])
    page = median([r["jobs_s"] for r in warm])
    rss = median([r["rss_mib"] for r in warm])
    label = f"{history:,} finished jobs, empty gallery"
    return [
        Row(
            f"serve start to /healthz 200, {label}, median",
            f"{health:.2f} s",
            aim=f"<= {AIM_S:.0f} s",
            ratio=f"first start {first['healthz_s']:.2f} s",
            ok=health <= AIM_S,
        ),
        Row(
            "serve start to /healthz 200 with no history, median",
            f"{floor:.2f} s",
            ratio=f"{times(health / floor)} with {history:,}",
        ),
        Row(
            f"serve start to first correct jobs page, {label}, median",
            f"{page:.2f} s",
            aim=f"<= {AIM_S:.0f} s",
            ratio=f"first start {first['jobs_s']:.2f} s",
            ok=page <= AIM_S,
        ),
        Row(
            f"serve resident memory after start, {label}, median",
            f"{rss:.0f} MiB",
            aim=f"<= {AIM_RSS_MIB} MiB",
            ratio=f"first start {first['rss_mib']:.0f} MiB",
            ok=rss <= AIM_RSS_MIB,
        ),
    ]
