"""Crash safety: the core SIGKILLed at random moments while jobs run, restarted each time.

The core runs as a real `mobilesd serve` subprocess against two SimServers living in the test
process (they keep their ports and their generation records across every restart of the core).
A seeded `random.Random` decides when the core dies: sometimes while it is still starting (store
open, gallery cleanup, requeue), often 50-600 ms after it answered /healthz, and sometimes a few
milliseconds after a sign of a narrow window (a POST in flight, a new file in the gallery, the
archive growing), so kills land between a job's images being saved and its completion being
recorded, and between its archive line and its removal from the live file. After each kill the
files are inspected as the kill left them, before the next start repairs anything.

What must hold, whatever the kill timing:

* every restart comes up healthy (the store and the archive load) and still lists every job that
  was ever answered with 202, and a job once seen terminal stays terminal with the same result;
* at the end every accepted job is in the store exactly once (one archive line, not in the live
  file) and completed; a POST that got no answer left zero or one job, never two;
* every completed job's images exist once under their recorded names, each with its sidecar, and
  the gallery holds no other image of that job (a re-run after a kill overwrites, never doubles);
* no leftover temp files; the simulators produced at least as many images as were saved.

The only sleeps are the deliberate random delays before a kill (the point of the test) and the
pacing of submissions; every wait for a state is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from mobilesd_core.forge.simulator import SimServer, SimulatorConfig
from mobilesd_core.forge.simulator.server import free_port
from mobilesd_core.jobs.store import read_live_jobs

from .helpers.processes import TOKEN, CoreProcess, read_archive

TERMINAL = {"completed", "failed", "cancelled"}
STATUSES = {"pending", "processing", *TERMINAL}

# gpu-b lacks flux and has a model gpu-a lacks: jobs naming either are targeted at the one
# server that has it; dreamshaper_8 is on both, so untargeted jobs may name it.
CHECKPOINTS_A = [
    "sd15/dreamshaper_8.safetensors",
    "sdxl/juggernautXL_v9.safetensors",
    "flux/flux1-dev-fp8.safetensors",
]
CHECKPOINTS_B = [
    "sd15/dreamshaper_8.safetensors",
    "sdxl/juggernautXL_v9.safetensors",
    "pony/ponyDiffusionV6XL.safetensors",
]


@dataclass
class Plan:
    jobs: int
    max_kills: int
    seed: int
    kill_phase_budget: float  # seconds of killing before the core is left to finish
    finish_deadline: float  # seconds for the last core to finish what is left


@dataclass
class Ledger:
    """What the test knows about its submissions: the answered ones and the unanswered ones."""

    accepted: dict[str, str] = field(default_factory=dict)  # job id -> unique prompt
    accepted_prompts: set[str] = field(default_factory=set)
    unanswered: set[str] = field(default_factory=set)  # prompts whose POST got no answer
    refused: set[str] = field(default_factory=set)  # connection refused: never reached the core
    expected_images: dict[str, int] = field(default_factory=dict)  # prompt -> images per job
    done: bool = False
    in_flight: int = 0
    posting: asyncio.Event = field(default_factory=asyncio.Event)  # set while a POST is out


@dataclass
class Stats:
    kills: int = 0
    kills_before_healthy: int = 0
    kills_with_jobs_running: int = 0
    kill_modes: Counter[str] = field(default_factory=Counter)
    starts: int = 0
    kill_phase_seconds: float = 0.0
    finish_seconds: float = 0.0
    jobs: int = 0
    images: int = 0
    reruns: int = 0  # claims beyond the first, i.e. attempts cut short by a kill
    generations: int = 0
    generated_images: int = 0
    unanswered_posts: int = 0
    unanswered_that_exist: int = 0
    refused_posts: int = 0
    torn_archive_lines: int = 0
    max_attempts: int = 0
    # What the kills left on disk, summed over all kills: shows which crash windows were hit.
    left_behind: Counter[str] = field(default_factory=Counter)


def new_client() -> httpx.AsyncClient:
    # No keep-alive: every request opens a fresh connection, so an error says what happened to
    # that request (refused: never reached the core; cut: may or may not have been handled).
    return httpx.AsyncClient(
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=httpx.Timeout(10.0, connect=2.0),
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def job_body(index: int, attempt: int, rng: random.Random) -> tuple[dict[str, Any], int]:
    """A small job with a prompt unique to this POST; returns the body and its image count."""
    params: dict[str, Any] = {
        "prompt": f"crash test job {index} try {attempt}",
        "steps": rng.randint(4, 12),
        "width": 64,
        "height": 64,
        "seed": 1000 + index * 10,
    }
    images = 1
    if rng.random() < 0.3:
        params["n_iter"] = 2
        images = 2
    body: dict[str, Any] = {"generation_params": params}
    roll = rng.random()
    if roll < 0.08:
        body["target_server_alias"] = "gpu-a"
        params["checkpoint_name"] = "flux1-dev-fp8"
    elif roll < 0.16:
        body["target_server_alias"] = "gpu-b"
        params["checkpoint_name"] = "ponyDiffusionV6XL"
    elif roll < 0.22:
        body["target_server_alias"] = rng.choice(["gpu-a", "gpu-b"])
    elif roll < 0.30:
        params["checkpoint_name"] = "dreamshaper_8"
    return body, images


async def submitter(
    core: CoreProcess, plan: Plan, ledger: Ledger, rng: random.Random, deadline: float
) -> None:
    """Submit until `plan.jobs` POSTs were answered 202, in small concurrent bursts."""
    attempt_of: Counter[int] = Counter()
    next_index = 0
    async with new_client() as client:

        async def post(index: int) -> None:
            attempt_of[index] += 1
            body, images = job_body(index, attempt_of[index], rng)
            prompt = body["generation_params"]["prompt"]
            ledger.expected_images[prompt] = images
            ledger.in_flight += 1
            ledger.posting.set()
            try:
                response = await client.post(f"{core.url}/api/v1/generate", json=body)
            except httpx.ConnectError:
                ledger.refused.add(prompt)
                raise
            except httpx.TransportError:
                ledger.unanswered.add(prompt)
                raise
            finally:
                ledger.in_flight -= 1
                if not ledger.in_flight:
                    ledger.posting.clear()
            assert response.status_code == 202, response.text
            job_id = response.json()["mobilesd_job_id"]
            assert job_id not in ledger.accepted, f"job id {job_id} handed out twice"
            ledger.accepted[job_id] = prompt
            ledger.accepted_prompts.add(prompt)

        retry: list[int] = []
        while len(ledger.accepted) < plan.jobs:
            assert time.monotonic() < deadline, "submitting took too long"
            burst = min(rng.randint(1, 6), plan.jobs - len(ledger.accepted))
            indexes, retry = retry[:burst], retry[burst:]
            while len(indexes) < burst:
                indexes.append(next_index)
                next_index += 1
            results = await asyncio.gather(*(post(i) for i in indexes), return_exceptions=True)
            failed = [i for i, r in zip(indexes, results, strict=True) if r is not None]
            for result in results:
                if result is not None and not isinstance(result, httpx.TransportError):
                    raise result
            if failed:
                # The core is down or dying: submit these again (under new prompts) once it is up.
                retry = failed + retry
                await wait_until_answering(client, core, deadline)
            else:
                await asyncio.sleep(rng.uniform(0.0, 0.12))  # pacing, not synchronisation
    ledger.done = True


async def wait_until_answering(
    client: httpx.AsyncClient, core: CoreProcess, deadline: float
) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(f"{core.url}/healthz", timeout=2)).status_code == 200:
                return
        await asyncio.sleep(0.02)
    raise AssertionError("the core did not come back for the submitter")


async def list_all_jobs(client: httpx.AsyncClient, core: CoreProcess) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    total = None
    while total is None or len(jobs) < total:
        response = await client.get(
            f"{core.url}/api/v1/queue/jobs", params={"limit": 1000, "offset": len(jobs)}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        total = page["total"]
        if not page["jobs"]:
            break
        jobs.extend(page["jobs"])
    assert len(jobs) == total, f"listing gave {len(jobs)} jobs but total {total}"
    return jobs


class Observer:
    """Checks what the API shows after every restart against what was seen before."""

    def __init__(self) -> None:
        self.terminal: dict[str, tuple[str, Any]] = {}

    def check(self, jobs: list[dict[str, Any]], must_include: set[str]) -> dict[str, dict]:
        ids = [job["mobilesd_job_id"] for job in jobs]
        doubled = [job_id for job_id, n in Counter(ids).items() if n > 1]
        assert not doubled, f"jobs listed more than once: {doubled}"
        by_id = {job["mobilesd_job_id"]: job for job in jobs}
        missing = must_include - by_id.keys()
        assert not missing, f"accepted jobs lost by the store: {sorted(missing)}"
        for job in jobs:
            job_id, status = job["mobilesd_job_id"], job["status"]
            assert status in STATUSES, job
            seen = self.terminal.get(job_id)
            if seen is not None:
                assert (status, job.get("result_details")) == seen, (
                    f"job {job_id} was {seen[0]} and is now {status}: a terminal job changed"
                )
            elif status in TERMINAL:
                self.terminal[job_id] = (status, job.get("result_details"))
        return by_id


async def kill_moment(rng: random.Random, core: CoreProcess, ledger: Ledger) -> str:
    """Wait for the moment of the next kill; returns which kind of moment it was.

    Plain random delays rarely land in the few milliseconds a job spends saving its images or
    being archived, so some kills wait for the first sign of that work on disk (a new gallery
    file, the archive growing, a POST in flight) and strike a random 0-4 ms later. Waiting for
    a sign has a deadline; without one the kill happens anyway.
    """
    if not ledger.done and rng.random() < 0.35:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ledger.posting.wait(), 2.0)
        await asyncio.sleep(rng.uniform(0.0, 0.006))  # deliberate: the kill moment
        return "at a POST"
    roll = rng.random()
    if roll < 0.30:
        gallery = core.gallery

        def names() -> frozenset[str]:
            try:
                return frozenset(os.listdir(gallery))
            except FileNotFoundError:
                return frozenset()

        await wait_for_change(names, 2.0)
        await asyncio.sleep(rng.uniform(0.0, 0.004))  # deliberate: the kill moment
        return "at an image save"
    if roll < 0.55:
        archive = core.data / "archive"

        def size() -> int:
            try:
                return sum(entry.stat().st_size for entry in os.scandir(archive))
            except FileNotFoundError:
                return 0

        await wait_for_change(size, 2.0)
        await asyncio.sleep(rng.uniform(0.0, 0.004))  # deliberate: the kill moment
        return "at an archive append"
    await asyncio.sleep(rng.uniform(0.05, 0.6))  # deliberate: the kill moment
    return "after a random delay"


async def wait_for_change(probe: Callable[[], object], timeout: float) -> bool:
    """Poll `probe` (a cheap look at the disk) until its value changes, or `timeout` passes."""
    before = probe()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.0005)
        if probe() != before:
            return True
    return False


# --- reading the files ---------------------------------------------------------------------------


def read_live_file(data: Path) -> list[dict[str, Any]]:
    """Live jobs: the snapshot (which must always parse: it is replaced atomically) plus the
    journal of changes since (a torn last line is allowed)."""
    path = data / "jobs.json"
    if path.exists():
        json.loads(path.read_text())
    return list(read_live_jobs(data).values())


def inspect_after_kill(core: CoreProcess, accepted: set[str]) -> Counter[str]:
    """The files as a kill left them, before the next start repairs anything.

    Asserts what must hold at every instant (the live file parses, no accepted job is missing from
    both the live file and the archive, no image without its sidecar) and counts the crash windows
    the kill landed in.
    """
    found: Counter[str] = Counter()
    live = {job["mobilesd_job_id"]: job for job in read_live_file(core.data)}
    archived, torn, _ = read_archive(core.data)
    archived_ids = {record["mobilesd_job_id"] for record in archived}
    lost = accepted - live.keys() - archived_ids
    assert not lost, f"accepted jobs in neither jobs.json nor the archive after a kill: {lost}"
    found["torn archive line"] += torn
    found["job both live and archived"] += len(live.keys() & archived_ids)
    found["job left processing"] += sum(j["status"] == "processing" for j in live.values())
    if not core.gallery.is_dir():
        return found
    names = {p.name for p in core.gallery.iterdir()}
    for name in names:
        if name.startswith(".tmp-"):
            found["gallery temp file"] += 1
        elif name.endswith(".png"):
            assert name[:-4] + ".json" in names, f"image {name} without its sidecar after a kill"
        elif name.endswith(".json") and name[:-5] + ".png" not in names:
            found["orphan sidecar"] += 1
    for job_id, job in live.items():
        if job["status"] == "processing" and any(f"_{job_id}_" in n for n in names):
            found["images saved, job not yet completed"] += 1
    return +found  # drops the zero counts


# --- the test ------------------------------------------------------------------------------------


async def run_crash_test(tmp_path: Path, plan: Plan) -> Stats:
    rng = random.Random(plan.seed)
    submit_rng = random.Random(plan.seed + 1)
    stats = Stats()
    ledger = Ledger()
    observer = Observer()
    sims = {
        "gpu-a": SimServer(
            SimulatorConfig(checkpoints=CHECKPOINTS_A, step_ms=8, switch_ms=20, name="gpu-a"),
            port=free_port(),
        ),
        "gpu-b": SimServer(
            SimulatorConfig(
                checkpoints=CHECKPOINTS_B,
                step_ms=10,
                switch_ms=20,
                name="gpu-b",
                seed_for_hashes="b",
            ),
            port=free_port(),
        ),
    }
    core = CoreProcess(tmp_path, free_port())
    submit_task: asyncio.Task[None] | None = None
    client = new_client()
    try:
        for sim in sims.values():
            await sim.start()
        await core.start()
        stats.starts += 1
        await core.wait_healthy(client)
        for alias, sim in sims.items():
            response = await client.post(
                f"{core.url}/api/v1/servers", json={"alias": alias, "api_url": sim.url}
            )
            assert response.status_code == 201, response.text

        # --- the kill phase ---------------------------------------------------------------------
        started = time.monotonic()
        budget_end = started + plan.kill_phase_budget
        submit_task = asyncio.create_task(
            submitter(core, plan, ledger, submit_rng, started + plan.kill_phase_budget + 30)
        )
        while stats.kills < plan.max_kills and time.monotonic() < budget_end:
            # The core is healthy here. Pick the kill moment: mostly a random while, sometimes
            # aimed at a narrow window (see kill_moment).
            stats.kill_modes[await kill_moment(rng, core, ledger)] += 1
            if submit_task.done():
                submit_task.result()
            running = sum(sim.sim.busy for sim in sims.values())
            accepted_before_kill = set(ledger.accepted)
            await core.kill()
            stats.kills += 1
            stats.kills_with_jobs_running += bool(running)
            stats.left_behind.update(inspect_after_kill(core, accepted_before_kill))
            await core.start()
            stats.starts += 1
            if stats.kills < plan.max_kills and rng.random() < 0.25:
                # Kill it again while it starts: store open, gallery cleanup, requeue.
                await asyncio.sleep(rng.uniform(0.0, 0.45))  # deliberate: the kill moment
                accepted_before_kill = set(ledger.accepted)
                await core.kill()
                stats.kills += 1
                stats.kills_before_healthy += 1
                stats.left_behind.update(inspect_after_kill(core, accepted_before_kill))
                await core.start()
                stats.starts += 1
            await core.wait_healthy(client)
            must_include = set(ledger.accepted)
            by_id = observer.check(await list_all_jobs(client, core), must_include)
            if ledger.done and all(by_id[j]["status"] in TERMINAL for j in ledger.accepted):
                break
        stats.kill_phase_seconds = time.monotonic() - started

        # --- the last core runs to the end, undisturbed -------------------------------------------
        finish_started = time.monotonic()
        await asyncio.wait_for(submit_task, plan.finish_deadline)
        deadline = finish_started + plan.finish_deadline
        while True:
            jobs = await list_all_jobs(client, core)
            by_id = observer.check(jobs, set(ledger.accepted))
            if all(job["status"] in TERMINAL for job in jobs):
                break
            if time.monotonic() > deadline:
                stuck = {
                    j["mobilesd_job_id"]: j["status"] for j in jobs if j["status"] not in TERMINAL
                }
                raise AssertionError(f"jobs not finished in time: {stuck}\n" + core.log_tail())
            await asyncio.sleep(0.05)
        stats.finish_seconds = time.monotonic() - finish_started

        check_api_view(jobs, ledger)
        gallery_total = (
            await client.get(f"{core.url}/api/v1/gallery/images", params={"limit": 1})
        ).json()["total"]

        # A clean stop, then the files are checked as they lie, then one more start must load them.
        assert await core.terminate() == 0, core.log_tail()
        check_files(core, jobs, ledger, sims, gallery_total)
        stats.jobs = len(jobs)
        stats.images = sum(len(j["result_details"]["images"]) for j in jobs)
        stats.reruns = sum(j["attempts"] - 1 for j in jobs)
        stats.max_attempts = max(j["attempts"] for j in jobs)
        stats.generations = sum(len(sim.sim.generations) for sim in sims.values())
        stats.generated_images = sum(
            g.n_images for sim in sims.values() for g in sim.sim.generations
        )
        stats.unanswered_posts = len(ledger.unanswered)
        prompts = {j["generation_params"]["prompt"] for j in jobs}
        stats.unanswered_that_exist = len(ledger.unanswered & prompts)
        stats.refused_posts = len(ledger.refused)
        stats.torn_archive_lines = read_archive(core.data)[1]
        await core.start()
        stats.starts += 1
        await core.wait_healthy(client)
        again = await list_all_jobs(client, core)
        assert sorted(again, key=lambda j: j["mobilesd_job_id"]) == sorted(
            jobs, key=lambda j: j["mobilesd_job_id"]
        ), "the store reloaded different jobs after a clean stop"
        assert await core.terminate() == 0, core.log_tail()
    except BaseException:
        print(f"core log tail:\n{core.log_tail(120)}", file=sys.stderr)
        raise
    finally:
        if submit_task is not None and not submit_task.done():
            submit_task.cancel()
            with contextlib.suppress(BaseException):
                await submit_task
        await core.kill()
        await client.aclose()
        for sim in sims.values():
            await sim.stop()
    return stats


def check_api_view(jobs: list[dict[str, Any]], ledger: Ledger) -> None:
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_prompt.setdefault(job["generation_params"]["prompt"], []).append(job)
    known = ledger.accepted_prompts | ledger.unanswered | ledger.refused
    strangers = set(by_prompt) - known
    assert not strangers, f"jobs nobody submitted: {sorted(strangers)}"
    for job_id, prompt in ledger.accepted.items():
        ids = [j["mobilesd_job_id"] for j in by_prompt.get(prompt, [])]
        assert ids == [job_id], f"accepted POST {prompt!r} ({job_id}) became jobs {ids}"
    for prompt in ledger.unanswered:
        assert len(by_prompt.get(prompt, [])) <= 1, f"unanswered POST {prompt!r} made 2+ jobs"
    for prompt in ledger.refused:
        assert prompt not in by_prompt, f"refused POST {prompt!r} made a job"
    for job in jobs:
        # No faults are injected, so a failure here would be the crash handling's fault.
        assert job["status"] == "completed", (job["mobilesd_job_id"], job["status"], job)
        images = job["result_details"]["images"]
        expected = ledger.expected_images[job["generation_params"]["prompt"]]
        assert len(images) == expected, (job["mobilesd_job_id"], images)
        assert len(set(images)) == len(images), images


def check_files(
    core: CoreProcess,
    jobs: list[dict[str, Any]],
    ledger: Ledger,
    sims: dict[str, SimServer],
    gallery_total: int,
) -> None:
    by_id = {job["mobilesd_job_id"]: job for job in jobs}

    # The store: nothing live, every job archived exactly once, as the API showed it.
    live = read_live_file(core.data)
    assert live == [], f"jobs left in jobs.json: {[j.get('mobilesd_job_id') for j in live]}"
    archived, _torn, tombstones = read_archive(core.data)
    assert tombstones == 0, "nothing was deleted, yet the archive holds tombstones"
    counts = Counter(record["mobilesd_job_id"] for record in archived)
    doubled = {job_id: n for job_id, n in counts.items() if n > 1}
    assert not doubled, f"terminal jobs archived more than once: {doubled}"
    assert set(counts) == set(by_id), (
        f"archive and API disagree: only archived {sorted(set(counts) - set(by_id))}, "
        f"only listed {sorted(set(by_id) - set(counts))}"
    )
    for record in archived:
        job = by_id[record["mobilesd_job_id"]]
        assert record["status"] == "completed"
        assert record["result_details"]["images"] == job["result_details"]["images"]

    # The gallery: each image once, under its recorded name, with its sidecar; nothing else.
    gallery = core.gallery
    leftovers = [p.name for p in gallery.iterdir() if p.name.startswith(".tmp-")]
    assert not leftovers, f"temp files left in the gallery: {leftovers}"
    pngs = sorted(p.name for p in gallery.glob("*.png"))
    sidecars = sorted(p.name for p in gallery.glob("*.json"))
    assert sorted(n[:-4] + ".json" for n in pngs) == sidecars, "images and sidecars do not pair"
    expected_names: list[str] = []
    for job_id, job in by_id.items():
        images = job["result_details"]["images"]
        on_disk = sorted(p.name for p in gallery.glob(f"*_{job_id}_*.png"))
        assert on_disk == sorted(images), f"job {job_id}: files {on_disk}, recorded {images}"
        for index, name in enumerate(images):
            assert name.endswith(f"_{job_id}_{index:03d}.png"), name
            with Image.open(gallery / name) as im:
                assert im.size == (64, 64)
                im.load()  # the whole file is there, not a torn write
            sidecar = json.loads((gallery / (name[:-4] + ".json")).read_text())
            assert sidecar["mobilesd_job_id"] == job_id and sidecar["index"] == index
        expected_names.extend(images)
    assert pngs == sorted(expected_names), (
        f"images of no listed job: {sorted(set(pngs) - set(expected_names))}"
    )
    assert gallery_total == len(pngs), f"gallery index lists {gallery_total}, disk has {len(pngs)}"

    # The simulators ran every saved image at least once (re-runs after kills are allowed).
    generations = [g for sim in sims.values() for g in sim.sim.generations]
    produced = Counter()
    for record in generations:
        produced[record.prompt] += record.n_images
    for job in jobs:
        prompt = job["generation_params"]["prompt"]
        assert produced[prompt] >= len(job["result_details"]["images"]), prompt
    assert sum(produced.values()) >= len(pngs)


def report(stats: Stats, plan: Plan) -> None:
    print(
        f"\ncrash test (seed {plan.seed}, {plan.jobs} jobs): {stats.kills} kills "
        f"({stats.kills_before_healthy} while starting, {stats.kills_with_jobs_running} with a "
        f"simulator busy), {stats.starts} starts; "
        f"kill phase {stats.kill_phase_seconds:.1f}s, finish {stats.finish_seconds:.1f}s; "
        f"{stats.jobs} jobs, {stats.images} images, "
        f"{stats.reruns} re-runs, {stats.generations} generations ({stats.generated_images} "
        f"images); POSTs cut {stats.unanswered_posts} ({stats.unanswered_that_exist} made a job), "
        f"refused {stats.refused_posts}; torn archive lines {stats.torn_archive_lines}; "
        f"most attempts of one job {stats.max_attempts}\n"
        f"kill moments: {dict(sorted(stats.kill_modes.items()))}\n"
        f"left behind by the kills: {dict(sorted(stats.left_behind.items()))}"
    )


async def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path: Path) -> None:
    plan = Plan(jobs=100, max_kills=24, seed=20240611, kill_phase_budget=35, finish_deadline=15)
    stats = await run_crash_test(tmp_path, plan)
    report(stats, plan)
    assert stats.kills >= 5, "the core finished before it could be killed often enough"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sigkill_soak(tmp_path: Path, seed: int) -> None:
    plan = Plan(jobs=300, max_kills=80, seed=seed, kill_phase_budget=200, finish_deadline=60)
    stats = await run_crash_test(tmp_path, plan)
    report(stats, plan)
    assert stats.kills >= 10
