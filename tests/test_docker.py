"""The Docker image, built from the real Dockerfile and run as the README runs it.

The image is built once (tests/helpers/docker_lane.py: daemon, base image, build). Each container
runs with the README's volumes and variables, as user 1234:1234 (PUID/PGID) so that ownership means
something, on the host's network (the daemon here has no bridge): the Forge simulator
(`mobilesd forge-sim`, a subprocess) and the fake Civitai listen on the host's loopback and the
core in the container reaches them there. Checked: the health check, the sign-in link, jobs from
the inbox and the API, Civitai downloads and model sync, the owner and mode of every file the
core makes for people under UMASK 002 and 022 (secrets 0600), `docker stop` during a job,
`docker rm` + `docker run` on the same volumes, the TUI over `docker exec -it` in tmux, and an
inbox the container's user cannot write.

`./dev test -m "not docker"` leaves the lane out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes.civitai import FakeCivitaiServer, safetensors_bytes
from mobilesd_core.forge.simulator.server import free_port
from mobilesd_core.jobs.store import read_live_jobs

from .conftest import wait_for
from .helpers.docker_lane import IMAGE, Lane, base_image, build, choose_cli, daemon
from .helpers.model_files import put
from .helpers.tmux import Tmux, tmux

__all__ = ["tmux"]  # the fixture

# The fixtures build the image once (minutes the first time); each test keeps its own limit.
# Root: the folders are handed to user 1234, and dockerd is started when none answers (as for
# Samba, CI runs as root; elsewhere the lane is skipped, saying so).
pytestmark = [
    pytest.mark.docker,
    pytest.mark.timeout(120, func_only=True),
    pytest.mark.skipif(os.geteuid() != 0, reason="the Docker lane needs root (chown, dockerd)"),
]

PUID = PGID = 1234
SIM_AUTH = ("forge", "forge-password")
VOLUMES = {
    "config": "/config",
    "outputs": "/outputs",
    "inbox": "/inbox",
    "lora": "/models/lora",
    "checkpoints": "/models/checkpoints",
}
LIBRARY_MODEL = "sdxl/libonly_v1.safetensors"


@pytest.fixture(scope="module")
def lane(request: pytest.FixtureRequest) -> Iterator[Lane]:
    lane = choose_cli()
    with daemon(lane):
        lane.base = base_image(lane)
        build(lane)
        size = int(lane.run("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
        lane.timings["image"] = f"{size / 1e6:.0f} MB"
        # Printed past pytest's capture: how long the lane's set-up took, on every run.
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            parts = ", ".join(f"{k}: {v}" for k, v in lane.timings.items())
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\ndocker lane: {parts}")
        yield lane


# --- the simulator and the container --------------------------------------------------------


class ForgeSim:
    """`mobilesd forge-sim` on the host's loopback, reading real model folders."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models = root / "forge" / "Stable-diffusion"
        self.loras = root / "forge" / "Lora"
        self.log = root / "forge-sim.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for folder in (self.models, self.loras):
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, PUID, PGID)  # a sync folder the container's user may write
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "mobilesd_core.cli", "forge-sim"),
                    *("--port", str(self.port), "--step-ms", "20", "--switch-ms", "50"),
                    *("--auth", ":".join(SIM_AUTH)),
                    *("--models-dir", str(self.models), "--lora-dir", str(self.loras)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/sdapi/v1/options", auth=SIM_AUTH).status_code == 200:
                    return
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@dataclass
class Container:
    """One `docker run` of the image with the README's volumes, under host folders."""

    lane: Lane
    name: str
    root: Path
    umask: str = "002"
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Path] = field(default_factory=list)  # mounted at the same path inside
    sim: ForgeSim | None = None
    port: int = field(default_factory=free_port)
    civitai_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        for name in VOLUMES:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        # The shares (inbox, model libraries) belong to the user; the entrypoint hands over
        # only /config and /outputs.
        for name in ("inbox", "lora", "checkpoints"):
            os.chown(self.root / name, PUID, PGID)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def path(self, volume: str) -> Path:
        return self.root / volume

    def docker(self, *args: str, timeout: float = 60) -> str:
        return self.lane.run(*args, timeout=timeout).stdout

    def run(self) -> None:
        env = {
            "PUID": str(PUID),
            "PGID": str(PGID),
            "UMASK": self.umask,
            "HOST": "127.0.0.1",  # the host's network: keep it on loopback
            "PORT": str(self.port),
            "INBOX_POLL_SECONDS": "0.3",
            "INBOX_SETTLE_SECONDS": "0.2",
            "CIVITAI_BASE_URL": f"http://127.0.0.1:{self.civitai_port}",
            "CIVITAI_SUBFOLDERS": "1",
            **self.env,
        }
        args = ["run", "-d", "--name", self.name, "--network", "host", "--health-interval", "1s"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        for volume, target in VOLUMES.items():
            args += ["-v", f"{self.root / volume}:{target}"]
        for path in self.mounts:
            args += ["-v", f"{path}:{path}"]
        self.docker(*args, IMAGE)

    def remove(self) -> None:
        self.lane.run("rm", "-f", "-v", self.name, check=False)

    def inspect(self) -> dict[str, Any]:
        return json.loads(self.docker("inspect", self.name))[0]

    def logs(self) -> str:
        result = self.lane.run("logs", self.name)
        return result.stdout + result.stderr

    @property
    def token(self) -> str:
        return (self.root / "config" / "access_token").read_text().strip()

    async def api(self) -> httpx.AsyncClient:
        await wait_for(self.answers, timeout=60, interval=0.1, what=f"{self.name} to answer")
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    async def answers(self) -> bool:
        async with httpx.AsyncClient(timeout=2) as client:
            try:
                return (await client.get(f"{self.url}/healthz")).status_code == 200
            except httpx.TransportError:
                assert self.inspect()["State"]["Running"], f"{self.name} exited:\n{self.logs()}"
                return False


async def add_server(api: httpx.AsyncClient, sim: ForgeSim) -> None:
    """gpu1 on the simulator, with its password and sync folders; once per container's data."""
    if (await api.get("/api/v1/servers")).json():
        return
    response = await api.post(
        "/api/v1/servers",
        json={
            "alias": "gpu1",
            "api_url": sim.url,
            "username": SIM_AUTH[0],
            "password": SIM_AUTH[1],
            "checkpoint_dir": str(sim.models),
            "lora_dir": str(sim.loras),
        },
    )
    assert response.status_code == 201, response.text

    async def online() -> bool:
        servers = (await api.get("/api/v1/servers")).json()
        return servers[0]["status"]["online"]

    await wait_for(online, what="gpu1 online")


async def submit(api: httpx.AsyncClient, **params: Any) -> str:
    body = {"generation_params": {"steps": 2, "width": 64, "height": 64, **params}}
    response = await api.post("/api/v1/generate", json=body)
    assert response.status_code == 202, response.text
    return response.json()["mobilesd_job_id"]


async def wait_job(api: httpx.AsyncClient, job_id: str, timeout: float = 30) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        job = (await api.get(f"/api/v1/queue/jobs/{job_id}")).json()
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    job = await wait_for(done, timeout=timeout, what=f"job {job_id}")
    assert job["status"] == "completed", job
    return job


async def jobs_from(api: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    jobs = (await api.get("/api/v1/queue/jobs", params={"limit": 200})).json()["jobs"]
    return [j for j in jobs if j["source_ref"] == name]


@contextlib.contextmanager
def stack(
    lane: Lane, root: Path, name: str, **options: Any
) -> Iterator[tuple[Container, ForgeSim]]:
    """A simulator, a library model, and a container started on them; removed afterwards."""
    sim = ForgeSim(root)
    put(root / "checkpoints", LIBRARY_MODEL)
    container = Container(lane, name, root, mounts=[sim.models, sim.loras], sim=sim, **options)
    sim.start()
    try:
        container.run()
        yield container, sim
    finally:
        container.remove()
        sim.stop()


@pytest.fixture(scope="module")
def main(lane: Lane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The container most tests share (UMASK 002), with gpu1 added by the first test."""
    root = tmp_path_factory.mktemp("docker-main")
    with stack(lane, root, f"mobilesd-test-{os.getpid()}") as (container, _):
        yield container


# --- the image --------------------------------------------------------------------------------


def test_the_image_is_one_layer_over_its_base_without_the_build_settings(
    lane: Lane, main: Container
) -> None:
    image = json.loads(lane.run("image", "inspect", IMAGE).stdout)[0]
    base = json.loads(lane.run("image", "inspect", lane.base).stdout)[0]
    assert len(image["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1
    assert image["Size"] - base["Size"] < 150e6, image["Size"] - base["Size"]
    # The pip index and certificate were the build stage's only: not in the image's settings,
    # its history, or its files.
    config = json.dumps(image["Config"])
    history = lane.run("history", "--no-trunc", IMAGE).stdout
    assert "PIP_" not in config and "PIP_INDEX_URL=" not in history
    assert "BEGIN CERTIFICATE" not in history and "/etc/ssl" not in history
    files = main.docker("exec", main.name, "sh", "-c", "ls /run/secrets /root/.cache 2>&1; true")
    assert "No such file" in files and "pip_cert" not in files
    assert image["Config"]["Healthcheck"]["Test"][-1].endswith("/healthz', timeout=4)")


# --- the running container -------------------------------------------------------------------


async def test_the_container_gets_healthy_and_gives_its_sign_in_link(main: Container) -> None:
    def healthy() -> bool:
        health = main.inspect()["State"]["Health"]
        assert health["Status"] != "unhealthy", health
        return health["Status"] == "healthy"

    await wait_for(healthy, timeout=60, interval=0.2, what="the HEALTHCHECK to pass")
    async with await main.api() as api:
        health = await api.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        # Where the README says: `mobilesd link` in the container where there is one, else the
        # container's log.
        linked = main.lane.run("exec", main.name, "mobilesd", "link", check=False)
        text = linked.stdout if linked.returncode == 0 else main.logs()
        match = re.search(r"http://\S+/login\?token=(\S+)", text)
        assert match, text
        assert match.group(1) == main.token
    async with httpx.AsyncClient(timeout=10) as phone:
        login = await phone.get(match.group(0))
        assert login.status_code in (302, 303) and "set-cookie" in login.headers, login.text


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


async def exercise(container: Container, sim: ForgeSim) -> list[Path]:
    """Everything that makes files for people: a job from the API and one from the inbox, an
    invalid inbox file, a thumbnail, a Civitai download and a model-sync copy. Returns them."""
    civitai = FakeCivitaiServer()
    civitai.port = container.civitai_port
    version = civitai.fake.add_model(
        "Ink Wash",
        base_model="SDXL 1.0",
        files=[("inkwash.safetensors", safetensors_bytes(8192, seed=3))],
    )
    await civitai.start()
    try:
        async with await container.api() as api:
            await add_server(api, sim)
            inbox = container.path("inbox")
            (inbox / "good.yaml").write_text("prompt: from the inbox\nsteps: 2\nwidth: 64\n")
            (inbox / "bad.yaml").write_text("prompt: typo\nstesp: 2\n")
            api_job = await submit(api, prompt="from the API")
            synced_job = await submit(api, prompt="needs a copy", checkpoint_name=LIBRARY_MODEL)
            download = await api.post(
                "/api/v1/civitai/download-model",
                json={"url": f"https://civitai.com/models/{version.model_id}"},
            )
            assert download.status_code == 202, download.text
            images = []
            for job_id in (api_job, synced_job):
                images += (await wait_job(api, job_id))["result_details"]["images"]
            inbox_jobs = await wait_for(
                lambda: jobs_from(api, "good.yaml"), what="the inbox file's job"
            )
            images += (await wait_job(api, inbox_jobs[0]["mobilesd_job_id"]))["result_details"][
                "images"
            ]
            for image in images:
                thumb = await api.get(f"/gallery_files/{image}?thumb=1")
                assert thumb.status_code == 200, thumb.text

            async def downloaded() -> bool:
                downloads = (await api.get("/api/v1/civitai/downloads")).json()["downloads"]
                assert downloads[0]["status"] not in ("failed", "cancelled"), downloads
                return downloads[0]["status"] == "completed"

            await wait_for(downloaded, what="the Civitai download")
            lora = container.path("lora") / "SDXL 1.0"
            await wait_for(lambda: (lora / "inkwash.preview.png").exists(), what="its preview")
            await wait_for(
                lambda: (
                    (inbox / "failed" / "bad.yaml.error.txt").exists()
                    and (inbox / "processed" / "good.yaml").exists()
                ),
                what="the inbox files to move",
            )
    finally:
        await civitai.stop()
    outputs = container.path("outputs")
    made = [outputs / ".thumbs"]
    for image in images:
        made += [outputs / image, outputs / (image[:-4] + ".json")]
        made += [outputs / ".thumbs" / (image + ".jpg")]
    made += [inbox / "processed", inbox / "failed", inbox / "failed" / "bad.yaml.error.txt"]
    made += [lora, lora / "inkwash.safetensors", lora / "inkwash.civitai.info"]
    made += [lora / "inkwash.preview.png"]
    made += [sim.models / "sdxl", sim.models / LIBRARY_MODEL]
    return made


def wrong_files(container: Container, made: list[Path], umask: int) -> list[str]:
    """Files not owned by PUID:PGID with the mode `umask` gives (secrets: 0600)."""
    wrong = []
    for path in made:
        want = (PUID, PGID, (0o777 if path.is_dir() else 0o666) & ~umask)
        if owner_and_mode(path) != want:
            wrong.append(f"{path}: {owner_and_mode(path)}, expected {want}")
    config = container.path("config")
    assert {"access_token", "webhook_secret", "servers.json"} <= {p.name for p in config.iterdir()}
    for path in config.rglob("*"):
        if path.is_file() and owner_and_mode(path) != (PUID, PGID, 0o600):
            wrong.append(f"{path}: {owner_and_mode(path)}, expected {(PUID, PGID, 0o600)}")
    return wrong


async def test_files_for_people_are_group_writable_under_umask_002(main: Container) -> None:
    assert main.sim is not None
    made = await exercise(main, main.sim)
    assert wrong_files(main, made, 0o002) == []


async def test_files_for_people_follow_umask_022(lane: Lane, tmp_path: Path) -> None:
    with stack(lane, tmp_path, f"mobilesd-test-{os.getpid()}-022", umask="022") as (c, sim):
        made = await exercise(c, sim)
    assert wrong_files(c, made, 0o022) == []


async def test_the_tui_renders_the_queue_over_docker_exec(main: Container, tmux: Tmux) -> None:
    assert main.sim is not None
    async with await main.api() as api:
        await add_server(api, main.sim)
        await wait_job(api, await submit(api, prompt="shown in the terminal"))
    command = f"{main.lane.cli} exec -it -e TERM=tmux-256color {main.name} mobilesd tui --tab queue"
    await tmux.run("new-session", "-d", "-s", "tui", "-x", "100", "-y", "30", command)
    await tmux.run("set-option", "-t", "tui", "escape-time", "10")
    await tmux.wait_for("F2 Queue", "online", "shown in the terminal", "done")
    await tmux.run("send-keys", "-t", "tui", "C-q")


async def test_docker_stop_during_a_job_loses_nothing(main: Container) -> None:
    assert main.sim is not None
    async with await main.api() as api:
        await add_server(api, main.sim)
        job_id = await submit(api, prompt="stopped and started", steps=150)  # 3 s at 20 ms

        async def running() -> bool:
            job = (await api.get(f"/api/v1/queue/jobs/{job_id}")).json()
            progress = job.get("progress") or {}
            return progress.get("phase") == "sampling" and progress["fraction"] > 0

        await wait_for(running, what="the job to be generating")
    started = time.monotonic()
    main.docker("stop", main.name, timeout=30)
    stopped_in = time.monotonic() - started
    state = main.inspect()["State"]
    assert state["ExitCode"] == 0, main.logs()
    assert stopped_in < 9, stopped_in  # cleanly, not killed after Docker's 10 s
    # Stopped mid-job: on disk it is still `processing`, to be queued again first.
    assert read_live_jobs(main.path("config"))[job_id]["status"] == "processing"
    main.docker("start", main.name)
    async with await main.api() as api:
        job = await wait_job(api, job_id)
        assert job["status"] == "completed"
        (image,) = job["result_details"]["images"]
        names = [p.name for p in main.path("outputs").glob(f"*{job_id}*.png")]
        assert names == [image]


async def test_docker_rm_and_run_keeps_the_queue_servers_and_gallery(main: Container) -> None:
    assert main.sim is not None
    async with await main.api() as api:
        await add_server(api, main.sim)
        await wait_job(api, await submit(api, prompt="in the gallery before"))
        assert (await api.post("/api/v1/queue/pause")).status_code == 200
        pending = await submit(api, prompt="waits across a new container")
        before_jobs = {
            j["mobilesd_job_id"]: j["status"]
            for j in (await api.get("/api/v1/queue/jobs", params={"limit": 200})).json()["jobs"]
        }
        before_servers = (await api.get("/api/v1/servers")).json()
        before_images = (await api.get("/api/v1/gallery/images", params={"limit": 200})).json()
    main.docker("stop", main.name, timeout=30)
    main.docker("rm", main.name)
    main.run()
    async with await main.api() as api:
        jobs = (await api.get("/api/v1/queue/jobs", params={"limit": 200})).json()["jobs"]
        assert {j["mobilesd_job_id"]: j["status"] for j in jobs} == before_jobs
        servers = (await api.get("/api/v1/servers")).json()
        assert [(s["alias"], s["api_url"], s["has_password"]) for s in servers] == [
            (s["alias"], s["api_url"], s["has_password"]) for s in before_servers
        ]
        images = (await api.get("/api/v1/gallery/images", params={"limit": 200})).json()
        assert images == before_images
        assert (await api.post("/api/v1/queue/resume")).status_code == 200
        await wait_job(api, pending)


async def test_an_inbox_the_container_cannot_write(lane: Lane, tmp_path: Path) -> None:
    container = Container(
        lane, f"mobilesd-test-{os.getpid()}-ro", tmp_path, env={"INBOX_SETTLE_SECONDS": "0.1"}
    )
    inbox = container.path("inbox")
    os.chown(inbox, 0, 0)  # readable by everyone, writable by root only
    inbox.chmod(0o755)
    try:
        container.run()
        async with await container.api() as api:
            assert (await api.post("/api/v1/queue/pause")).status_code == 200
            (inbox / "two.yaml").write_text(
                "defaults: {steps: 2}\njobs: [{prompt: a}, {prompt: b}]\n"
            )
            (inbox / "bad.yaml").write_text("prompt: typo\nstesp: 2\n")
            await wait_for(lambda: jobs_from(api, "two.yaml"), what="the jobs of two.yaml")
            # The moves are retried after 0.2, 0.4 and 0.8 s (backing off): over that time
            # nothing may be queued again, nor said again.
            await asyncio.sleep(1.6)
            assert len(await jobs_from(api, "two.yaml")) == 2
        log = container.logs()
        about_two = [line for line in log.splitlines() if "two.yaml" in line]
        assert len(about_two) == 1, log
        assert "2 job(s) queued, but the file cannot be moved to processed/" in about_two[0]
        assert f"user {PUID}, group {PGID} and needs write access to /inbox" in about_two[0]
        about_bad = [line for line in log.splitlines() if "bad.yaml" in line]
        assert len(about_bad) == 1 and "stesp: unknown field" in about_bad[0], log
        assert "restart" not in log
    finally:
        container.remove()
