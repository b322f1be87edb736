"""`python -m bench`: every benchmark, then one table (figure | value | aim | ratio | verdict).

  python -m bench              the full suite (about a minute and a half on 2 cores)
  python -m bench --quick      a smoke run: fewer jobs, one round, 10,000 jobs of history
  python -m bench --only gap   one part: throughput, store, start, gap, sched, scale, api, page,
                               inbox, civitai, tui, power (repeatable)
  python -m bench --json F     also write the figures as JSON (default bench/results/latest.json)
  python -m bench --compare F  add a column with the figures of an earlier JSON run

Data goes to a temporary folder (removed afterwards) under --dir, default the system's temp
folder: fsync costs depend on that file system, so it is printed with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import (
    api_load,
    civitai_download,
    idle_gap,
    inbox_pickup,
    page_load,
    scheduling,
    serve_start,
    store_writes,
    sweep_zip,
    throughput,
    tui_start,
)
from .report import Row, load_results, say, table, write_results

PARTS = (
    "throughput",
    "store",
    "start",
    "gap",
    "sched",
    "scale",
    "api",
    "page",
    "inbox",
    "civitai",
    "tui",
    "power",
)
NOTES = """\
Notes:
- core figures include all of the core's per-job work: the claim and the finish written to the
  job store (journal lines; the finish also an archive line, fsynced by the group commit) and
  the images saved to the gallery as PNG + JSON sidecar (fsynced).
- throughput: step time 0; core timed from one submit of all jobs to the dispatcher idle, direct
  loop from its first request to its last answer decoded; medians over rounds that alternate.
  The 85 % aim is judged at 512x512, the default job size; 64x64 shows the fixed per-job cost.
- sched: 3 simulated servers in their own process, 60 jobs over 4 checkpoints in a seeded random
  order, a switch costing 4 jobs (200 ms jobs, 800 ms loads). Lower bound = (measured job time
  + one load per checkpoint) / 3; the best schedule is about 10 % above it.
- sched model: the real Scheduler on a clock counted in jobs (bench/sched_model.py): every job
  1, a load 4, each server starting on a checkpoint no job uses, asked again whenever a server
  frees up. 50 seeded mixes (each job's checkpoint drawn at random) against the best schedule
  an exhaustive search over every split of every checkpoint's jobs finds. The lower bound is
  out of reach: on these mixes the best schedule itself has a median of 1.105x it (3x60), so
  "median <= 1.10x the bound" cannot be met by any scheduler; the aim judged is <= 1.03x the
  best. "One greedy step" is the same scheduler with its lookahead off.
- scale: all simulated servers in one process of their own, sharing the 2 cores with the core;
  20 ms jobs of one model. Generating share = each server's generation time between the queue's
  release and the last job's start, over that window; CPU = this process, all threads.
- idle gap: the simulator's own clock, sampling start minus the previous job's encoded images.
- api load: the core over loopback HTTP as `mobilesd serve` runs it; the clients in their own
  process (one asyncio loop), latency from request sent to body read there, so it includes
  that loop's lag (its own row). Idle peer: one client, one request at a time, nothing running.
  The 100 ms p99 aim is our choice. Polls are closed-loop: a stalled core gets fewer requests.
  The core starts with 10,000 finished jobs (--api-history): a job list's cost grows with it.
- inbox: a real core watching a real folder with production settings (1 s quiet window); a
  file counts as picked up when its job is in the store. The quiet window is every pickup's
  floor. Polling mode polls every second, as for an SMB share.
- page: `/` and its <script src>/<link href> with Accept-Encoding: gzip; status line, headers
  and bodies as sent.
- civitai: the fake Civitai in its own process over loopback; plain copy = redirect + stream to
  a file, nothing else; core = submit to `completed` (SHA-256 checked, sidecar, preview, state
  file, events).
- tui: headless (Textual's test driver) against a real core over loopback HTTP. Cold start is a
  fresh interpreter from its first line to the first frame with the core's data (medians of 3);
  10,000 pending jobs, dispatching paused; scroll is page-down to the last row, each key timed
  from sent to handled (cursor and detail panel on the new job) and the frame composed, without
  Pilot.press's 40 ms of idle sleeps (median; the CPU time beside it is steadier when the
  machine is shared). The aims are our choice.
- power: sweep expansion is validation of every job included (medians of 5). The zip is a real
  core over loopback HTTP streaming stored entries to a client that counts bytes; the peer
  (`zip -r`, or `python -m zipfile -c` without zip) writes the same files to a local file.
  MB/s are of the files' bytes (images + sidecars). The aims are our choice."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a fast smoke run (smaller everything)")
    p.add_argument("--only", action="append", choices=PARTS, help="run only this part")
    p.add_argument("--jobs", type=int, help="throughput: jobs per round and side (default 200)")
    p.add_argument("--rounds", type=int, help="throughput: rounds per side (default 5)")
    p.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[64, 512],
        help="image edges for throughput and gap, comma-separated (default 64,512)",
    )
    p.add_argument("--history", type=int, help="store: the large history (default 100000)")
    p.add_argument(
        "--small-history", type=int, default=1000, help="store: the small history (default 1000)"
    )
    p.add_argument("--ops", type=int, help="store: timed rounds per store (default 200)")
    p.add_argument("--gap-jobs", type=int, help="gap: queued jobs (default 100)")
    p.add_argument("--gap-step-ms", type=float, default=5.0, help="gap: time per step (4 steps)")
    p.add_argument("--api-seconds", type=float, help="api: seconds of load (default 15)")
    p.add_argument("--api-clients", type=int, default=20, help="api: clients (default 20)")
    p.add_argument("--api-rate", type=float, default=5.0, help="api: jobs/s submitted")
    p.add_argument(
        "--api-interval", type=float, default=0.1, help="api: seconds between one client's polls"
    )
    p.add_argument(
        "--api-history", type=int, help="api: finished jobs in the history (default 10000)"
    )
    p.add_argument(
        "--api-servers", type=int, default=2, choices=(1, 2), help="api: simulated servers"
    )
    p.add_argument(
        "--inline-sim",
        action="store_true",
        help="run the simulator in this process (default: its own process, like a real server)",
    )
    p.add_argument("--inbox-files", type=int, help="inbox: files dropped at once (default 1000)")
    p.add_argument(
        "--civitai-mb", type=int, help="civitai: size of the downloaded file (default 256)"
    )
    p.add_argument("--dir", type=Path, default=None, help="where the temporary data goes")
    p.add_argument("--check", action="store_true", help="exit 1 when an aim is missed")
    p.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).parent / "results" / "latest.json",
        help="where the figures are written as JSON (default bench/results/latest.json)",
    )
    p.add_argument("--compare", type=Path, help="an earlier JSON run to show beside this one")
    return p


def _commit() -> str:
    """The git commit measured, so JSON runs can be compared across commits."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _filesystem(path: Path) -> str:
    """The mount and type holding `path`, from /proc/mounts (Linux); '' elsewhere."""
    try:
        mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return ""
    resolved = str(path.resolve())
    best = max(
        (m for m in mounts if resolved == m[1] or resolved.startswith(m[1].rstrip("/") + "/")),
        key=lambda m: len(m[1]),
        default=None,
    )
    return f"{best[2]} on {best[1]}" if best else ""


def _load() -> str:
    """Other work on the machine skews every figure here; the load average says if there was."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load average {one:.2f} / {five:.2f} over 1 / 5 min"


async def _main(args: argparse.Namespace) -> list[Row]:
    quick = args.quick
    parts = args.only or list(PARTS)
    root = Path(tempfile.mkdtemp(prefix="mobilesd-bench-", dir=args.dir))
    say(
        f"MobileSD benchmarks: Python {platform.python_version()}, {os.cpu_count()} CPUs "
        f"({_load()}), data in {root} ({_filesystem(root) or 'unknown file system'}), "
        f"simulator {'in this process' if args.inline_sim else 'in its own process'}"
    )
    rows: list[Row] = []
    try:
        if "throughput" in parts:
            rows += await throughput.run(
                root,
                jobs=args.jobs or (50 if quick else 200),
                rounds=args.rounds or (1 if quick else 5),
                sizes=args.sizes,
                inline_sim=args.inline_sim,
            )
        if "store" in parts:
            rows += await store_writes.run(
                root,
                small=args.small_history,
                large=args.history or (10_000 if quick else 100_000),
                ops=args.ops or (40 if quick else 200),
            )
        if "start" in parts:
            rows += await serve_start.run(
                root, history=args.history or (10_000 if quick else 100_000)
            )
        if "gap" in parts:
            rows += await idle_gap.run(
                root,
                jobs=args.gap_jobs or (30 if quick else 100),
                step_ms=args.gap_step_ms,
                sizes=args.sizes,
                inline_sim=args.inline_sim,
            )
        if "sched" in parts:
            rows += await scheduling.run_mix(root / "sched")
            rows += scheduling.model_rows(seeds=10 if quick else 50)
        if "scale" in parts:
            rows += await scheduling.run_scale(
                root / "scale",
                jobs=300 if quick else 2000,
                sizes=(1, 4, 16) if quick else (1, 4, 16, 32),
            )
        if "api" in parts:
            rows += await api_load.run(
                root,
                seconds=args.api_seconds or (5 if quick else 15),
                idle_seconds=1.5 if quick else 3,
                clients=args.api_clients,
                rate=args.api_rate,
                interval=args.api_interval,
                servers=args.api_servers,
                history=args.api_history if args.api_history is not None else 10_000,
                inline_sim=args.inline_sim,
            )
        if "page" in parts:
            rows += await page_load.run(root)
        if "inbox" in parts:
            rows += await inbox_pickup.run(
                root / "inbox", files=args.inbox_files or (200 if quick else 1000)
            )
        if "civitai" in parts:
            rows += await civitai_download.run(
                root,
                size_mb=args.civitai_mb or (64 if quick else 256),
                rounds=1 if quick else 3,
            )
        if "tui" in parts:
            rows += await tui_start.run(
                root, jobs=2_000 if quick else 10_000, rounds=1 if quick else 3
            )
        if "power" in parts:
            rows += await sweep_zip.run(
                root / "power", images=200 if quick else 1000, rounds=1 if quick else 3
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> int:
    args = _parser().parse_args()
    started = time.perf_counter()
    rows = asyncio.run(_main(args))
    say()
    earlier = load_results(args.compare) if args.compare else None
    table(rows, earlier=earlier)
    write_results(args.json, rows, context={"load": _load(), "commit": _commit()})
    say(f"(figures written to {args.json})")
    say(NOTES)
    missed = [r.figure for r in rows if r.ok is False]
    took = time.perf_counter() - started
    say(f"\n{len(rows)} figures in {took:.0f} s ({_load()}); aims missed: {len(missed)}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
