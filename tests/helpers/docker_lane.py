"""The Docker lane's machinery: a daemon, a base image, and the image built from the Dockerfile.

- **Daemon:** the one that answers; else, as root, `dockerd` started here (overlay2 storage,
  else vfs; no bridge or iptables, so it runs inside a container too; containers use the host's
  network) and stopped again when the tests are done.
- **Base image:** `python:3.11-slim-bookworm` when it is here or can be pulled; else the
  stand-in `docker/debian-base.sh` makes from Debian's packages, tagged with that script's
  checksum so it is made once (its root filesystem is also kept in ~/.cache/mobilesd).
- **Build:** the real Dockerfile with BuildKit; this machine's pip index and CA certificate go
  in as a build argument and a secret, used by the build stage only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "mobilesd:test"
OFFICIAL_BASE = "python:3.11-slim-bookworm"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mobilesd"
# No bridge or iptables (inside a container it may not make them): containers use the host's
# network. overlay2 where the kernel lets us mount it, else vfs, which copies a whole image for
# every container (several seconds each on 2 cores, against half a second).
DOCKERD_ARGS = ["--iptables=false", "--bridge=none"]
STORAGE_DRIVERS = ("overlay2", "vfs")


class LaneError(AssertionError):
    """The lane cannot run here: the message says what to install or start."""


@dataclass
class Lane:
    cli: str
    env: dict[str, str]
    base: str = ""
    timings: dict[str, str] = field(default_factory=dict)

    def run(
        self, *args: str, timeout: float = 60, check: bool = True, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.cli, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,  # type: ignore[call-overload]
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args[:3])} ... exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def has_image(self, name: str) -> bool:
        return self.run("image", "inspect", name, check=False).returncode == 0


def _client_major(cli: str) -> int:
    result = subprocess.run(
        [cli, "version", "--format", "{{.Client.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    try:
        return int(result.stdout.strip().split(".")[0])
    except ValueError:
        return 0


def choose_cli() -> Lane:
    """A docker CLI that builds with BuildKit: one with buildx, or one older than 23 (whose
    built-in BuildKit client DOCKER_BUILDKIT=1 turns on; Debian's docker.io is 20.10)."""
    seen = []
    for cli in (shutil.which("docker"), "/usr/bin/docker"):
        if not cli or cli in seen or not os.access(cli, os.X_OK):
            continue
        seen.append(cli)
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        buildx = subprocess.run([cli, "buildx", "version"], capture_output=True, timeout=30)
        if buildx.returncode == 0 or 0 < _client_major(cli) < 23:
            return Lane(cli, env)
    if not seen:
        raise LaneError("no docker command: apt-get install docker.io (./dev test does)")
    raise LaneError(
        f"the docker CLI ({', '.join(seen)}) cannot build with BuildKit: install the buildx "
        "plugin, or Debian's docker.io (its /usr/bin/docker builds with DOCKER_BUILDKIT=1)"
    )


def daemon_answers(lane: Lane) -> bool:
    try:
        return (
            lane.run("info", "--format", "{{.ServerVersion}}", timeout=20, check=False).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False


@contextlib.contextmanager
def daemon(lane: Lane) -> Iterator[None]:
    """A daemon for the lane: the running one, or `dockerd` started (as root) and stopped."""
    if daemon_answers(lane):
        lane.timings["daemon"] = "already running"
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("no Docker daemon answers, and only root can start one here")
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not os.access(dockerd, os.X_OK):
        raise LaneError("dockerd is not installed: apt-get install docker.io (./dev test does)")
    CACHE.mkdir(parents=True, exist_ok=True)
    log_path = CACHE / "dockerd.log"
    for driver in STORAGE_DRIVERS:
        started = time.monotonic()
        proc = _start_dockerd(dockerd, driver, log_path)
        if _wait_for_daemon(lane, proc):
            lane.timings["daemon"] = (
                f"dockerd ({driver}) started in {time.monotonic() - started:.1f} s"
            )
            break
        _stop_dockerd(proc)
    else:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise LaneError(f"dockerd did not start with {' or '.join(STORAGE_DRIVERS)}:\n{tail}")
    try:
        yield
    finally:
        _stop_dockerd(proc)


def _start_dockerd(dockerd: str, driver: str, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [dockerd, "--storage-driver", driver, *DOCKERD_ARGS],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_daemon(lane: Lane, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 60
    while not daemon_answers(lane):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _stop_dockerd(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def base_image(lane: Lane) -> str:
    """The official base when it is here or can be pulled, else the stand-in, made once."""
    started = time.monotonic()
    if lane.has_image(OFFICIAL_BASE):
        lane.timings["base"] = f"{OFFICIAL_BASE} (present)"
        return OFFICIAL_BASE
    pulled = lane.run("pull", "-q", OFFICIAL_BASE, timeout=600, check=False)
    if pulled.returncode == 0:
        lane.timings["base"] = f"{OFFICIAL_BASE} pulled in {time.monotonic() - started:.0f} s"
        return OFFICIAL_BASE
    script = REPO / "docker" / "debian-base.sh"
    tag = "mobilesd-debian-base:" + hashlib.sha256(script.read_bytes()).hexdigest()[:12]
    if lane.has_image(tag):
        lane.timings["base"] = f"{tag} (cached; {OFFICIAL_BASE} cannot be pulled)"
        return tag
    env = {**lane.env, "PATH": f"{Path(lane.cli).parent}:{lane.env.get('PATH', '')}"}
    made = subprocess.run(
        [str(script), tag, str(CACHE)], env=env, capture_output=True, text=True, timeout=1200
    )
    if made.returncode != 0:
        raise LaneError(f"{OFFICIAL_BASE} cannot be pulled, nor made:\n{made.stderr[-3000:]}")
    lane.timings["base"] = f"{tag} made in {time.monotonic() - started:.0f} s (no registry)"
    return tag


def pip_settings() -> tuple[str | None, str | None]:
    """This machine's pip index (an http(s) one) and CA certificate, as pip itself sees them."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    ).stdout
    values: dict[str, str] = {}
    for line in listed.splitlines():  # e.g. global.cert='/etc/ssl/certs/ca.crt'
        key, _, value = line.partition("=")
        values[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    index = os.environ.get("PIP_INDEX_URL") or values.get("index-url")
    cert = os.environ.get("PIP_CERT") or values.get("cert")
    if index and not index.startswith(("http://", "https://")):
        index = None  # a folder on this disk is not in the build's reach
    if cert and not Path(cert).is_file():
        cert = None
    return index, cert


def build(lane: Lane) -> None:
    index, cert = pip_settings()
    args = ["build", "--network", "host", "--build-arg", f"BASE_IMAGE={lane.base}", "-t", IMAGE]
    if index:
        args += ["--build-arg", f"PIP_INDEX_URL={index}"]
    if cert:
        args += ["--secret", f"id=pip_cert,src={cert}"]
    before = lane.run("image", "inspect", IMAGE, "--format", "{{.Id}}", check=False).stdout
    started = time.monotonic()
    lane.run(*args, str(REPO), timeout=1200)
    lane.timings["build"] = f"{time.monotonic() - started:.1f} s"
    # The image it replaced would stay behind untagged, a whole copy of the root filesystem
    # with the vfs driver, build after build.
    if (
        before.strip()
        and before != lane.run("image", "inspect", IMAGE, "--format", "{{.Id}}").stdout
    ):
        lane.run("rmi", before.strip(), check=False)
