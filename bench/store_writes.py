"""The store's write cost with a small and a large history of finished jobs.

Two stores are built on disk: each has a live queue of `LIVE` pending jobs and an archive of
finished jobs (1,000 and 100,000 by default) in the current month's file, the one new finishes
are appended to. Records look like the dispatcher's (completed, with result details), written
straight into the archive with `AppendLog.append` in large batches. Both stores are then open at
once and the timed operations alternate between them, so drift on the disk hits both alike:

  submit  `store.add([job])`                       live file rewritten, fsynced
  claim   `store.update(id, processing)`           live file rewritten, fsynced
  finish  `store.update(id, completed)`            archive append + live file rewrite, fsynced

Each round submits one job and claims and finishes the oldest, so the live queue stays at LIVE.
A third store with a small history and DEEP queued jobs shows what a write's cost does grow with:
every write rewrites the whole live file. Opening a store and its resident memory are measured in
a fresh process (`--probe`), so the figures hold only what opening costs: twice, the first
open reading the archive whole (and writing its index cache), the second with that cache.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from mobilesd_core.durable import AppendLog
from mobilesd_core.jobs.store import JobStore
from mobilesd_core.jobs.types import Job
from mobilesd_core.schema import GenerationParams, new_job, new_job_id, utc_now_iso

from .report import Row, median, ms, percentile, say, times
from .simproc import REPO

AIM = 1.2  # write cost with the large history / with the small one
LIVE = 20
DEEP = 1000  # a deep live queue, to show what a write's cost does depend on
BATCH = 5000
OPERATIONS = ("submit", "claim", "finish")


def _template() -> dict[str, Any]:
    p = GenerationParams(
        prompt="a lighthouse at dusk, volumetric light, highly detailed",
        negative_prompt="blurry, lowres",
        width=832,
        height=1216,
        steps=28,
        checkpoint_name="sdxl/juggernautXL_v9",
        loras=[{"name": "add_detail", "weight": 0.6}],  # type: ignore[list-item]
    )
    return dict(new_job(p, source="api"))


def _finished(template: dict[str, Any], i: int, stamp: str) -> dict[str, Any]:
    job_id = new_job_id()
    return {
        **template,
        "mobilesd_job_id": job_id,
        "status": "completed",
        "creation_timestamp": stamp,
        "started_timestamp": stamp,
        "completion_timestamp": stamp,
        "assigned_server_alias": "gpu1",
        "attempts": 1,
        "generation_params": {**template["generation_params"], "seed": i},
        "result_details": {
            "images": [f"20250101-000000_{job_id}_000.png"],
            "info": {
                "seed": i,
                "all_seeds": [i],
                "subseed": i,
                "sd_model_name": "juggernautXL_v9",
                "sd_model_hash": "c6635da4fa",
                "checkpoint_title": "sdxl/juggernautXL_v9.safetensors [c6635da4fa]",
                "version": "f2.0.1v1.10.1-previous-669-gdfdcbab6",
            },
            "timings": {"prepare_s": 0.004, "generate_s": 9.512},
        },
    }


def build_history(data_path: Path, finished: int) -> float:
    """Write `finished` archived jobs into the current month's archive; returns seconds taken."""
    started = time.perf_counter()
    archive = data_path / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    stamp = utc_now_iso()
    log = AppendLog(archive / f"jobs-{stamp[:7]}.jsonl")
    template = _template()
    for first in range(0, finished, BATCH):
        log.append(
            [_finished(template, i, stamp) for i in range(first, min(finished, first + BATCH))]
        )
    return time.perf_counter() - started


class _Bench:
    def __init__(self, label: str, store: JobStore) -> None:
        self.label = label
        self.store = store
        self.times: dict[str, list[float]] = {op: [] for op in OPERATIONS}
        self.pending = _template()

    def new_pending(self) -> dict[str, Any]:
        return {
            **self.pending,
            "mobilesd_job_id": new_job_id(),
            "creation_timestamp": utc_now_iso(),
        }

    async def _timed(self, op: str, call: Callable[[], Awaitable[Any]], record: bool) -> None:
        started = time.perf_counter()
        await call()
        if record:
            self.times[op].append(time.perf_counter() - started)

    async def round(self, record: bool) -> None:
        store = self.store
        await self._timed("submit", lambda: store.add([cast(Job, self.new_pending())]), record)
        oldest = store.pending_in_order()[0]["mobilesd_job_id"]
        claim = {
            "status": "processing",
            "assigned_server_alias": "gpu1",
            "attempts": 1,
            "started_timestamp": utc_now_iso(),
            "retry_at": None,
        }
        await self._timed("claim", lambda: store.update(oldest, claim, expect={"pending"}), record)
        finish = {
            "status": "completed",
            "completion_timestamp": utc_now_iso(),
            "result_details": _finished(self.pending, 0, utc_now_iso())["result_details"],
        }
        await self._timed(
            "finish", lambda: store.update(oldest, finish, expect={"processing"}), record
        )


async def _open_with_live_queue(data_path: Path, live: int) -> JobStore:
    store = JobStore(data_path)
    await store.open()
    template = _template()
    missing = live - len(store.live_jobs())
    if missing > 0:
        await store.add(
            [cast(Job, {**template, "mobilesd_job_id": new_job_id()}) for _ in range(missing)]
        )
    return store


async def _probe(data_path: Path) -> dict[str, float]:
    """In a fresh process: seconds to open the store and resident memory it added."""
    probe = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.store_writes",
        "--probe",
        str(data_path),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    out, _ = await probe.communicate()
    if probe.returncode != 0:
        raise RuntimeError(f"the open probe of {data_path} failed")
    return json.loads(out)


async def run(root: Path, *, small: int, large: int, ops: int) -> list[Row]:
    say(f"store writes: history {small:,} vs {large:,} finished jobs, {LIVE} live, {ops} rounds")
    paths = {small: root / "store_small" / "data", large: root / "store_large" / "data"}
    for finished, path in paths.items():
        took = build_history(path, finished)
        size = sum(f.stat().st_size for f in (path / "archive").iterdir())
        say(f"  built {finished:,} finished jobs in {took:.1f} s ({size / 2**20:.1f} MiB archive)")
    # The first open reads the archive whole and leaves its index cache (archive/index.bin),
    # as the first start after an upgrade does; every later start opens with that cache.
    first = {finished: await _probe(path) for finished, path in paths.items()}
    probes = {finished: await _probe(path) for finished, path in paths.items()}
    for finished in paths:
        say(
            f"  open with {finished:,}: {probes[finished]['open_s']:.2f} s, "
            f"+{probes[finished]['rss_mib']:.1f} MiB resident (first open, no index cache: "
            f"{first[finished]['open_s']:.2f} s, +{first[finished]['rss_mib']:.1f} MiB)"
        )
    benches = [
        _Bench(f"{finished:,} in history", await _open_with_live_queue(path, LIVE))
        for finished, path in paths.items()
    ]
    await _alternate(benches, ops)
    small_bench, large_bench = benches

    # The live queue, not the history, is what a write rewrites: the same with a deep queue.
    build_history(root / "store_deep" / "data", small)
    deep = _Bench(
        f"{DEEP:,} queued", await _open_with_live_queue(root / "store_deep" / "data", DEEP)
    )
    await _alternate([deep], max(10, ops // 4))

    rows: list[Row] = []
    for op in OPERATIONS:
        s, b = median(small_bench.times[op]), median(large_bench.times[op])
        rows.append(Row(f"store {op}, {small:,} in history, median", ms(s), ratio="peer"))
        aimed = op != "claim"  # the aim names submit and finish; claim is information
        rows.append(
            Row(
                f"store {op}, {large:,} in history, median",
                ms(b),
                aim=f"<= {times(AIM)} the {small:,} figure" if aimed else "",
                ratio=f"{times(b / s)} {small:,}",
                ok=(b / s <= AIM) if aimed else None,
            )
        )
    claim_live, claim_deep = median(small_bench.times["claim"]), median(deep.times["claim"])
    rows.append(
        Row(
            f"store claim, {DEEP:,} queued, median",
            ms(claim_deep),
            ratio=f"{times(claim_deep / claim_live)} {LIVE} queued",
        )
    )
    rows.append(
        Row(
            f"store open, {large:,} in history",
            f"{probes[large]['open_s']:.2f} s",
            ratio=f"{times(probes[large]['open_s'] / probes[small]['open_s'])} {small:,}",
        )
    )
    rows.append(
        Row(
            f"store open, {large:,} in history, first open (no index cache)",
            f"{first[large]['open_s']:.2f} s",
            ratio=f"{times(first[large]['open_s'] / probes[large]['open_s'])} cached",
        )
    )
    rows.append(
        Row(
            f"store resident memory while open, {large:,} in history",
            f"{probes[large]['rss_mib']:.0f} MiB",
            ratio=f"{probes[large]['rss_mib'] * 2**20 / large:,.0f} B/job",
        )
    )
    return rows


async def _alternate(benches: list[_Bench], ops: int) -> None:
    """Warm up, then `ops` timed rounds per store, alternating which store goes first."""
    try:
        for bench in benches:
            for _ in range(10):
                await bench.round(record=False)
        for i in range(ops):
            for bench in benches if i % 2 == 0 else reversed(benches):
                await bench.round(record=True)
    finally:
        for bench in benches:
            await bench.store.close()
    for op in OPERATIONS:
        say(
            f"  {op}: "
            + "; ".join(
                f"{b.label} median {ms(median(b.times[op]))} p90 {ms(percentile(b.times[op], 90))}"
                for b in benches
            )
        )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _probe_main(data_path: Path) -> None:
    gc.collect()
    before = _rss_bytes()
    store = JobStore(data_path)
    started = time.perf_counter()
    await store.open()
    took = time.perf_counter() - started
    gc.collect()
    grown = _rss_bytes() - before
    await store.close()
    print(json.dumps({"open_s": took, "rss_mib": grown / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description="open a job store and report time and memory")
    parser.add_argument("--probe", type=Path, required=True, metavar="DATA_PATH")
    args = parser.parse_args()
    asyncio.run(_probe_main(args.probe))


if __name__ == "__main__":
    main()
