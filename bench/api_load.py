"""API latency under load: 20 clients polling and following the event stream while jobs run.

The core runs as `mobilesd serve` runs it (`create_app`, `web.AppRunner` without access log,
production settings, real store and gallery on disk) on a loopback socket in this process, with
simulated servers in their own processes (`simproc`; in this one with --inline-sim). The clients
run in a separate process (`python -m bench.api_load --client CONFIG`), so their HTTP and SSE
parsing do not share the core's event loop or GIL. In that process, one asyncio loop:

- each of the `clients` clients is two tasks sharing its own httpx.AsyncClient: a stream reader
  (`GET /api/v1/events`, read continuously: it counts events, checks their ids are consecutive,
  notes every job it saw complete, and reconnects with Last-Event-ID if the stream ends) and a
  poller, every `interval` seconds (clients staggered) alternately
  `GET /api/v1/queue/jobs/{id}/status` (the newest job its stream announced) and
  `GET /api/v1/queue/jobs?limit=50`, each waiting for its answer before the next (closed loop);
- a submitter with its own client posts `POST /api/v1/generate` at a steady `rate` (open loop).

Phases: idle (the peer: one client, sequential requests 2 ms apart, no streams, nothing
running; half before the load, half after), load (`seconds`), drain (no more requests; until
every stream saw every submitted job complete, or `drain_timeout`).

Latency is taken in the client process around the request, up to the body read, so it includes
the client loop's own delays: a ticker there measures them ("client loop lag"). In the core
process a middleware times each handler, a ticker measures the core loop's lag and a gc callback
the collector's pauses, per phase, so a slow figure can be placed on one side or the other.
The core starts with `history` finished jobs in its archive (`store_writes.build_history`):
what a job list costs depends on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from mobilesd_core.api.app import create_app
from mobilesd_core.api.keys import CORE
from mobilesd_core.config import Settings

from .harness import PROMPT, params
from .report import Row, median, ms, percentile, say, times
from .simproc import REPO, Simulator, start_simulator
from .store_writes import build_history

TOKEN = "bench-token-0123456789"
AIM_P99_S = 0.100  # each polled route's p99 under load (our choice: a tap feels instant)
AIM_ERRORS = 0
KINDS = ("status", "list", "generate")
ROUTE_KINDS = {
    "/api/v1/queue/jobs/{job_id}/status": "status",
    "/api/v1/queue/jobs": "list",
    "/api/v1/generate": "generate",
}
LIST_LIMIT = 50
WARM_JOBS = 60  # finished before the idle phase, so ?limit=50 returns full pages throughout
SIZE = 64
STEPS = 10
STEP_MS = 20.0
TICK_S = 0.010  # loop lag ticker period
IDLE_PAUSE_S = 0.002
REQUEST_TIMEOUT_S = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- shared ---------------------------------------------------------------------------------


class Phase:
    """The phase a process is in: 'setup', 'idle', 'load', 'drain' or 'done'."""

    def __init__(self) -> None:
        self.name = "setup"


class LagMonitor:
    """How late a `TICK_S` sleep wakes up: what anything else on this loop waits at worst."""

    def __init__(self, phase: Phase) -> None:
        self.phase = phase
        self.samples: dict[str, list[float]] = {}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(TICK_S)
            lag = max(0.0, loop.time() - started - TICK_S)
            self.samples.setdefault(self.phase.name, []).append(lag)


class GcMonitor:
    """Pauses of the cyclic garbage collector, by phase: (generation, seconds)."""

    def __init__(self, phase: Phase) -> None:
        self.phase = phase
        self.pauses: dict[str, list[tuple[int, float]]] = {}
        self._started = 0.0

    def __call__(self, what: str, info: dict[str, int]) -> None:
        if what == "start":
            self._started = time.perf_counter()
        else:
            took = time.perf_counter() - self._started
            self.pauses.setdefault(self.phase.name, []).append((info["generation"], took))


@asynccontextmanager
async def lag_monitor(phase: Phase) -> AsyncIterator[tuple[LagMonitor, GcMonitor]]:
    monitor, collector = LagMonitor(phase), GcMonitor(phase)
    task = asyncio.create_task(monitor.run())
    gc.callbacks.append(collector)
    try:
        yield monitor, collector
    finally:
        gc.callbacks.remove(collector)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the core side (this process) -------------------------------------------------------------


@asynccontextmanager
async def serving_core(
    root: Path,
    sim_urls: list[str] | None = None,
    *,
    middleware: Callable[[web.Request, Handler], Awaitable[web.StreamResponse]] | None = None,
) -> AsyncIterator[tuple[web.Application, str]]:
    """The HTTP app as `mobilesd serve` runs it, on 127.0.0.1 (a free port), with `sim_urls`
    registered as servers bench1, bench2, ... and online. Yields (app, base URL)."""
    settings = Settings(
        data_path=root / "data",
        gallery_path=root / "outputs",
        inbox_path=root / "inbox",
        token=TOKEN,
    )
    for path in (settings.data_path, settings.gallery_path):
        path.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    if middleware is not None:
        app.middlewares.insert(0, middleware)  # outermost: times auth and errors too
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        core = app[CORE]
        for i, url in enumerate(sim_urls or [], start=1):
            alias = f"bench{i}"
            await core.service.add_server({"alias": alias, "api_url": url})
            deadline = time.monotonic() + 10
            while not core.registry.runtimes[alias].online:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the simulator at {url} did not come online")
                await asyncio.sleep(0.005)
        yield app, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def timing_middleware(
    phase: Phase, record: dict[str, dict[str, list[float]]]
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Handler time per phase and route kind (auth, handler, JSON encoding; not the socket)."""

    @web.middleware
    async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        name = phase.name
        try:
            return await handler(request)
        finally:
            resource = request.match_info.route.resource
            kind = ROUTE_KINDS.get(resource.canonical) if resource is not None else None
            if kind is not None:
                took = time.perf_counter() - started
                record.setdefault(name, {}).setdefault(kind, []).append(took)

    return timed


@dataclass
class ClientConfig:
    url: str
    token: str
    clients: int
    seconds: float
    idle_seconds: float
    rate: float
    interval: float
    drain_timeout: float
    seed_job: str
    result_path: str
    generation_params: dict[str, Any] = field(default_factory=dict)


async def run(
    root: Path,
    *,
    seconds: float,
    idle_seconds: float,
    clients: int,
    rate: float,
    interval: float,
    servers: int,
    history: int,
    inline_sim: bool,
) -> list[Row]:
    say(
        f"api load: {clients} clients (stream + a poll every {ms(interval)}), "
        f"{rate:g} jobs/s submitted for {seconds:g} s on {servers} simulated server(s) "
        f"({SIZE}x{SIZE}, {STEPS} steps x {STEP_MS:g} ms), {history:,} finished jobs in the "
        "history, clients in their own process"
    )
    work = root / "api_load"
    if history:
        await asyncio.to_thread(build_history, work / "data", history)
    sims: list[Simulator] = []
    phase = Phase()
    handler_times: dict[str, dict[str, list[float]]] = {}
    try:
        for _ in range(servers):
            sims.append(await start_simulator(step_ms=STEP_MS, inline=inline_sim))
        async with (
            serving_core(
                work, [s.url for s in sims], middleware=timing_middleware(phase, handler_times)
            ) as (app, url),
            lag_monitor(phase) as (core_lag, core_gc),
        ):
            core = app[CORE]
            jobs = await core.service.submit([params(SIZE, 1)] * WARM_JOBS, source="api")
            await core.run_until_idle(timeout=120)
            config = ClientConfig(
                url=url,
                token=TOKEN,
                clients=clients,
                seconds=seconds,
                idle_seconds=idle_seconds,
                rate=rate,
                interval=interval,
                drain_timeout=max(20.0, seconds * 2),
                seed_job=jobs[-1]["mobilesd_job_id"],
                result_path=str(work / "clients.json"),
                generation_params={
                    "prompt": PROMPT,
                    "width": SIZE,
                    "height": SIZE,
                    "steps": STEPS,
                },
            )
            cpu: dict[str, float] = {}
            result = await _run_clients(config, phase, cpu)
            counts = core.store.count()
    finally:
        for sim in sims:
            await sim.stop()
    return _report(result, handler_times, core_lag.samples, core_gc.pauses, cpu, counts)


async def _run_clients(config: ClientConfig, phase: Phase, cpu: dict[str, float]) -> dict[str, Any]:
    """Start the client process; follow its phases (for this side's figures) until it is done."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.api_load",
        "--client",
        json.dumps(asdict(config)),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    budget = config.idle_seconds + config.seconds + config.drain_timeout + 60
    cpu_at: dict[str, float] = {}
    try:
        async with asyncio.timeout(budget):
            while line := await proc.stdout.readline():
                name = json.loads(line)["phase"]
                phase.name = name
                cpu_at[name] = time.process_time()
                if name in ("load", "drain"):
                    say(f"  clients: {name}")
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if code != 0:
        raise RuntimeError(f"the client process failed (exit {code})")
    if "load" in cpu_at and "drain" in cpu_at:
        cpu["core"] = cpu_at["drain"] - cpu_at["load"]
    return json.loads(await asyncio.to_thread(Path(config.result_path).read_text))


def _stats(values: list[float]) -> tuple[float, float, float]:
    return median(values), percentile(values, 99), max(values)


def _report(
    result: dict[str, Any],
    handler_times: dict[str, dict[str, list[float]]],
    core_lag: dict[str, list[float]],
    core_gc: dict[str, list[tuple[int, float]]],
    cpu: dict[str, float],
    counts: dict[str, int],
) -> list[Row]:
    load, idle = result["load"], result["idle"]
    elapsed = result["load_seconds"]
    rows: list[Row] = []
    total_requests = 0
    for kind in KINDS:
        values = load["latency"].get(kind, [])
        total_requests += len(values) + load["exceptions"].get(kind, 0)
        if not values:
            rows.append(Row(f"api load, {kind}, p99", "no answers", aim=f"< {ms(AIM_P99_S)}"))
            continue
        p50, p99, worst = _stats(values)
        idle_values = idle["latency"].get(kind, [])
        ratio = ""
        if idle_values:
            idle_p99 = percentile(idle_values, 99)
            ratio = f"{times(p99 / idle_p99)} idle p99"
        rows.append(
            Row(
                f"api load, {kind}, p99",
                ms(p99),
                aim=f"< {ms(AIM_P99_S)}",
                ratio=ratio or "(no idle peer)",
                ok=p99 < AIM_P99_S,
            )
        )
        rows.append(
            Row(
                f"api load, {kind}, req/s | p50 | max",
                f"{len(values) / elapsed:.0f}/s | {ms(p50)} | {ms(worst)}",
            )
        )
        say(
            f"  {kind}: {len(values)} answers ({len(values) / elapsed:.0f}/s), p50 {ms(p50)}, "
            f"p99 {ms(p99)}, max {ms(worst)}"
        )
    for kind in KINDS:
        idle_values = idle["latency"].get(kind, [])
        if idle_values:
            p50, p99, worst = _stats(idle_values)
            rows.append(
                Row(
                    f"api idle (1 client, no jobs), {kind}, p99",
                    f"{ms(p99)} (p50 {ms(p50)}, max {ms(worst)})",
                    ratio="peer",
                )
            )
    # Idle requests count too: an error is an error whatever the load.
    total_requests += sum(len(v) for v in idle["latency"].values())
    total_requests += sum(idle["exceptions"].values())
    errors = sum(load["errors"].values()) + sum(idle["errors"].values())
    errors += sum(s["errors"] for s in result["streams"])
    rows.append(
        Row(
            "api load, errors (non-2xx or exception)",
            str(errors),
            aim=f"= {AIM_ERRORS}",
            ratio=f"of {total_requests} requests + {len(result['streams'])} streams",
            ok=errors == AIM_ERRORS,
        )
    )
    for sample in result["error_samples"]:
        say(f"  error: {sample}")
    rows += _stream_rows(result)
    rows += _side_rows(result, handler_times, core_lag, core_gc, cpu, elapsed)
    say(f"  core store after the run: {counts}")
    return rows


def _stream_rows(result: dict[str, Any]) -> list[Row]:
    streams = result["streams"]
    submitted = result["submitted"]
    events = [s["events"] for s in streams]
    complete = [s for s in streams if s["missing"] == 0]
    gaps = sum(s["gaps"] for s in streams)
    reconnects = sum(s["reconnects"] for s in streams)
    consistent = len(complete) == len(streams) and gaps == 0 and submitted > 0
    say(
        f"  streams: {len(streams)}, events each min {min(events)} / median "
        f"{median(events):.0f} / max {max(events)}; {len(complete)} saw all {submitted} "
        f"completions; id gaps {gaps}, reconnects {reconnects}, drained in "
        f"{result['drain_seconds']:.1f} s{'' if result['drained'] else ' (TIMED OUT)'}"
    )
    rows = [
        Row(
            "api load, events received per stream",
            f"{median(events):.0f} (min {min(events)}, max {max(events)})",
            ratio=f"{median(events) / max(submitted, 1):.1f} per job submitted",
        ),
        Row(
            "api load, every stream saw every job complete",
            f"{len(complete)}/{len(streams)} streams x {submitted} jobs",
            aim="all; ids consecutive",
            ratio=f"{gaps} id gaps, {reconnects} reconnects",
            ok=consistent,
        ),
    ]
    delays = result["completion_delays"]
    if delays:
        p50, p99, worst = _stats(delays)
        rows.append(
            Row(
                "api load, job completed -> seen on a stream, p99",
                ms(p99),
                ratio=f"p50 {ms(p50)}, max {ms(worst)} (ms clock)",
            )
        )
    return rows


def _side_rows(
    result: dict[str, Any],
    handler_times: dict[str, dict[str, list[float]]],
    core_lag: dict[str, list[float]],
    core_gc: dict[str, list[tuple[int, float]]],
    cpu: dict[str, float],
    elapsed: float,
) -> list[Row]:
    rows: list[Row] = []
    loaded = handler_times.get("load", {})
    parts = [f"{k} {ms(percentile(loaded[k], 99))}" for k in KINDS if loaded.get(k)]
    if parts:
        rows.append(Row("api load, core handler time p99", ", ".join(parts), ratio="in the core"))
    lag_load, lag_idle = core_lag.get("load", []), core_lag.get("idle", [])
    if lag_load:
        p99 = percentile(lag_load, 99)
        ratio = f"max {ms(max(lag_load))}"
        if lag_idle:
            ratio += f"; idle p99 {ms(percentile(lag_idle, 99))}"
        rows.append(Row("api load, core event loop lag p99", ms(p99), ratio=ratio))
    pauses = core_gc.get("load", [])
    if pauses:
        full = [took for generation, took in pauses if generation == 2]
        rows.append(
            Row(
                "api load, core GC pauses, longest",
                ms(max(took for _, took in pauses)),
                ratio=f"{len(pauses)} collections, {len(full)} full"
                + (f" (longest {ms(max(full))})" if full else ""),
            )
        )
    client_lag = result["client_lag"].get("load", [])
    if client_lag:
        rows.append(
            Row(
                "api load, client process loop lag p99",
                ms(percentile(client_lag, 99)),
                ratio=f"max {ms(max(client_lag))} (inflates client figures)",
            )
        )
    if "core" in cpu:
        rows.append(
            Row(
                "api load, CPU time: core | clients",
                f"{cpu['core'] / elapsed:.0%} | {result['cpu_seconds'] / elapsed:.0%} of a core",
            )
        )
    return rows


# -- the client side (`python -m bench.api_load --client CONFIG`) ------------------------------


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.exceptions: dict[str, int] = {}
        self.samples: list[str] = []

    def fail(self, kind: str, what: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.samples) < 10:
            self.samples.append(what)

    async def timed(
        self, client: httpx.AsyncClient, kind: str, method: str, path: str, **kw: Any
    ) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = await client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            self.exceptions[kind] = self.exceptions.get(kind, 0) + 1
            self.fail(kind, f"{kind}: {type(exc).__name__}: {exc}")
            return None
        self.latency.setdefault(kind, []).append(time.perf_counter() - started)
        if not response.is_success:
            self.fail(kind, f"{kind}: HTTP {response.status_code}: {response.text[:200]}")
        return response

    def dump(self) -> dict[str, Any]:
        return {"latency": self.latency, "errors": self.errors, "exceptions": self.exceptions}


@dataclass
class StreamState:
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    events: int = 0
    gaps: int = 0
    resets: int = 0
    reconnects: int = 0
    errors: int = 0
    last_id: int | None = None
    latest_job: str | None = None
    seen: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)
    completion_delays: list[float] = field(default_factory=list)

    def on_event(self, event_id: int, name: str, data: str) -> None:
        self.events += 1
        if self.last_id is not None and event_id != self.last_id + 1:
            self.gaps += 1
        self.last_id = event_id
        if name == "reset":
            self.resets += 1
        if name != "job":
            return
        job = json.loads(data)
        job_id = job.get("mobilesd_job_id")
        if job_id not in self.seen:
            self.seen.add(job_id)
            self.latest_job = job_id
        if job.get("status") == "completed" and job_id not in self.completed:
            self.completed.add(job_id)
            stamp = job.get("completion_timestamp")
            if stamp:
                finished = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                self.completion_delays.append(time.time() - finished)


async def follow(client: httpx.AsyncClient, state: StreamState, stats: Stats) -> None:
    """Read the event stream until cancelled; reconnect (Last-Event-ID) if it ends."""
    while True:
        headers = {} if state.last_id is None else {"Last-Event-ID": str(state.last_id)}
        try:
            async with client.stream(
                "GET",
                "/api/v1/events",
                headers=headers,
                timeout=httpx.Timeout(REQUEST_TIMEOUT_S, read=None),
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    state.errors += 1
                    stats.samples.append(f"events: HTTP {response.status_code}")
                else:
                    fields: dict[str, str] = {}
                    async for line in response.aiter_lines():
                        if line:
                            if not line.startswith(":"):
                                key, _, value = line.partition(":")
                                fields[key] = value.removeprefix(" ")
                            continue
                        if "data" in fields:
                            state.on_event(int(fields["id"]), fields["event"], fields["data"])
                        elif "retry" in fields:
                            state.connected.set()
                        fields = {}
        except httpx.HTTPError as exc:
            state.errors += 1
            if len(stats.samples) < 10:
                stats.samples.append(f"events: {type(exc).__name__}: {exc}")
        state.reconnects += 1
        await asyncio.sleep(0.05)


def _client(config: ClientConfig) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=config.url,
        headers={"Authorization": f"Bearer {config.token}"},
        timeout=REQUEST_TIMEOUT_S,
    )


def _list_path() -> str:
    return f"/api/v1/queue/jobs?limit={LIST_LIMIT}"


async def _idle(config: ClientConfig, stats: Stats, seconds: float) -> None:
    status = f"/api/v1/queue/jobs/{config.seed_job}/status"
    async with _client(config) as client:
        for path in (status, _list_path()) * 3:  # connection and first-use costs, untimed
            (await client.get(path)).raise_for_status()
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        n = 0
        while loop.time() < end:
            if n % 2 == 0:
                await stats.timed(client, "status", "GET", status)
            else:
                await stats.timed(client, "list", "GET", _list_path())
            n += 1
            await asyncio.sleep(IDLE_PAUSE_S)


async def _poll(
    client: httpx.AsyncClient,
    state: StreamState,
    stats: Stats,
    config: ClientConfig,
    start: float,
    stop_at: float,
) -> None:
    loop = asyncio.get_running_loop()
    next_at, n = start, 0
    while next_at < stop_at:
        wait = next_at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if n % 2 == 0:
            job = state.latest_job or config.seed_job
            await stats.timed(client, "status", "GET", f"/api/v1/queue/jobs/{job}/status")
        else:
            await stats.timed(client, "list", "GET", _list_path())
        n += 1
        next_at = max(next_at + config.interval, loop.time())


async def _submit(
    config: ClientConfig, stats: Stats, submitted: dict[str, float], stop_at: float
) -> None:
    loop = asyncio.get_running_loop()
    body = {"generation_params": config.generation_params}

    async def one(client: httpx.AsyncClient) -> None:
        response = await stats.timed(client, "generate", "POST", "/api/v1/generate", json=body)
        if response is not None and response.status_code == 202:
            submitted[response.json()["mobilesd_job_id"]] = time.time()

    async with _client(config) as client:
        (await client.get(f"/api/v1/queue/jobs/{config.seed_job}/status")).raise_for_status()
        tasks: list[asyncio.Task[None]] = []
        start, i = loop.time(), 0
        while (at := start + i / config.rate) < stop_at:
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(client)))
            i += 1
        await asyncio.gather(*tasks)


def _emit(phase: Phase, name: str) -> None:
    phase.name = name
    print(json.dumps({"phase": name}), flush=True)


async def client_main(config: ClientConfig) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    phase = Phase()
    idle, load = Stats(), Stats()
    async with lag_monitor(phase) as (client_lag, _):
        _emit(phase, "idle")  # half before the load, half after: drift hits both sides
        await _idle(config, idle, config.idle_seconds / 2)

        clients = [_client(config) for _ in range(config.clients)]
        states = [StreamState() for _ in clients]
        streams = [
            asyncio.create_task(follow(c, s, load)) for c, s in zip(clients, states, strict=True)
        ]
        try:
            async with asyncio.timeout(15):
                await asyncio.gather(*(s.connected.wait() for s in states))
                status = f"/api/v1/queue/jobs/{config.seed_job}/status"
                for c in clients:  # the pollers' connections, untimed
                    (await c.get(status)).raise_for_status()
            for s in states:
                s.events = s.gaps = s.resets = s.reconnects = 0
                s.completion_delays.clear()
            submitted: dict[str, float] = {}
            _emit(phase, "load")
            cpu_start = time.process_time()
            start = loop.time()
            stop_at = start + config.seconds
            step = config.interval / config.clients
            await asyncio.gather(
                _submit(config, load, submitted, stop_at),
                *(
                    _poll(c, s, load, config, start + i * step, stop_at)
                    for i, (c, s) in enumerate(zip(clients, states, strict=True))
                ),
            )
            load_seconds = loop.time() - start
            cpu_seconds = time.process_time() - cpu_start
            _emit(phase, "drain")
            drain_start = loop.time()
            wanted = set(submitted)
            drained = False
            while loop.time() - drain_start < config.drain_timeout:
                if all(wanted <= s.completed for s in states):
                    drained = True
                    break
                await asyncio.sleep(0.02)
            drain_seconds = loop.time() - drain_start
        finally:
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
            for c in clients:
                await c.aclose()
        _emit(phase, "idle")
        await _idle(config, idle, config.idle_seconds / 2)
        _emit(phase, "done")
    return {
        "idle": idle.dump(),
        "load": load.dump(),
        "error_samples": idle.samples + load.samples,
        "load_seconds": load_seconds,
        "cpu_seconds": cpu_seconds,
        "submitted": len(wanted),
        "drained": drained,
        "drain_seconds": drain_seconds,
        "streams": [
            {
                "events": s.events,
                "gaps": s.gaps,
                "resets": s.resets,
                "reconnects": s.reconnects,
                "errors": s.errors,
                "missing": len(wanted - s.completed),
            }
            for s in states
        ],
        "completion_delays": [d for s in states for d in s.completion_delays],
        "client_lag": client_lag.samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="the client process of the API load benchmark")
    parser.add_argument("--client", required=True, help="a ClientConfig as JSON")
    args = parser.parse_args()
    config = ClientConfig(**json.loads(args.client))
    result = asyncio.run(client_main(config))
    Path(config.result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
