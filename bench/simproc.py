"""A simulated Forge server for the benchmarks, in its own process or in this one.

In its own process (the default) the simulator's work (rendering, PNG and base64 encoding, JSON,
gzip) does not compete with the core for this interpreter's GIL and event loop, as a real Forge
on another machine would not. `python -m bench.simproc --step-ms 0` is that process: it prints
one JSON line with its URL and serves until its stdin closes (so it dies with its parent).

Generation timestamps come from the simulator (`GenerationRecord.started_at`/`finished_at`,
`time.time()` in the simulator's process); see `idle_gap.py` for what they mark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mobilesd_core.forge.simulator import SimServer, SimulatorConfig

REPO = Path(__file__).resolve().parent.parent  # where `-m bench.simproc` resolves


@dataclass(frozen=True)
class Span:
    """One generation on the simulator: sampling start and end of image encoding (seconds)."""

    started_at: float
    finished_at: float


class Simulator:
    """A running simulator, wherever it runs."""

    url: str

    async def spans(self) -> list[Span]:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class InlineSimulator(Simulator):
    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.url = server.url

    async def spans(self) -> list[Span]:
        return [Span(g.started_at, g.finished_at) for g in self.server.sim.generations]

    async def stop(self) -> None:
        await self.server.stop()


class ProcessSimulator(Simulator):
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url

    async def spans(self) -> list[Span]:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            response = await client.get("/_sim/state")
            response.raise_for_status()
            return [Span(g["started_at"], g["finished_at"]) for g in response.json()["generations"]]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def start_simulator(*, step_ms: float, inline: bool) -> Simulator:
    """A simulator with one checkpoint's worth of defaults and no checkpoint switch time."""
    if inline:
        server = SimServer(SimulatorConfig(step_ms=step_ms, switch_ms=0, name="bench"))
        await server.start()
        return InlineSimulator(server)
    _, simulator = await start_simulators([{"step_ms": step_ms, "switch_ms": 0, "name": "bench"}])
    return simulator


async def start_simulators(configs: list[dict[str, Any]]) -> tuple[list[str], Simulator]:
    """Several simulators in one process of their own (`SimulatorConfig` fields as dicts);
    returns their URLs and a handle that stops them all."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.simproc",
        "--configs",
        json.dumps(configs),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            line = await proc.stdout.readline()
        urls = json.loads(line)["urls"]
    except (TimeoutError, ValueError, KeyError):
        proc.kill()
        await proc.wait()
        raise RuntimeError("the simulator process did not start") from None
    return urls, ProcessSimulator(proc, urls[0])


async def serve_until_stdin_closes(announce: dict[str, Any]) -> None:
    """A benchmark's helper process: print what the parent needs (one JSON line), then run
    until the parent closes our stdin (it exits, or is done with us)."""
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()

    def wait_for_eof() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stdin_closed.set)

    threading.Thread(target=wait_for_eof, daemon=True).start()
    print(json.dumps(announce), flush=True)
    await stdin_closed.wait()


async def _serve(configs: list[SimulatorConfig]) -> None:
    servers = [SimServer(config) for config in configs]
    for server in servers:
        await server.start()
    try:
        await serve_until_stdin_closes({"url": servers[0].url, "urls": [s.url for s in servers]})
    finally:
        for server in servers:
            await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step-ms", type=float, default=0.0)
    parser.add_argument("--configs", help="JSON list of SimulatorConfig fields, one per server")
    args = parser.parse_args()
    if args.configs:
        configs = [SimulatorConfig(**c) for c in json.loads(args.configs)]
    else:
        configs = [SimulatorConfig(step_ms=args.step_ms, switch_ms=0, name="bench")]
    asyncio.run(_serve(configs))


if __name__ == "__main__":
    main()
