"""The processes of a conformance run: a Forge (the real one, or `mobilesd forge-sim` in its
place) and `mobilesd serve`, each in its own process group with its output in a log file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

FORGE_START_TIMEOUT = 300.0
CORE_START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """One child process and its process group (Forge's launcher starts a child of its own)."""

    def __init__(
        self, name: str, argv: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.cwd = cwd
        self.env = env
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        """SIGKILL to the whole group: the process dies as in a crash or `kill -9`."""
        await self._signal(signal.SIGKILL, wait=10.0)

    async def stop(self) -> None:
        if not await self._signal(signal.SIGTERM, wait=15.0):
            await self.kill()

    async def _signal(self, sig: signal.Signals, *, wait: float) -> bool:
        process = self.process
        if process is None:
            return True
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        try:
            async with asyncio.timeout(wait):
                await process.wait()
        except TimeoutError:
            return False
        # The launcher's child may outlive it for a moment; the group goes with the same signal.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        return True

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


async def wait_http(
    url: str,
    *,
    proc: Proc,
    timeout: float,
    auth: tuple[str, str] | None = None,
) -> float:
    """Poll `url` until it answers 200; seconds it took. Fails early if the process died."""
    started = time.monotonic()
    async with httpx.AsyncClient(auth=auth, timeout=5.0) as client:
        while True:
            if not proc.alive:
                tail = proc.log_text()[-3000:]
                raise RuntimeError(f"{proc.name} exited before answering; its log ends:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f} s")
            await asyncio.sleep(0.5)


@dataclass
class ModelPaths:
    checkpoints: Path
    loras: Path
    vaes: Path
    styles: list[Path]


@dataclass
class ForgeSpec:
    """How one Forge is started: with its web UI or `--nowebui`, with or without `--api-auth`."""

    webui: bool
    auth: tuple[str, str] | None = None

    @property
    def label(self) -> str:
        parts = ["web UI + --api" if self.webui else "--nowebui --api"]
        if self.auth:
            parts.append("--api-auth")
        return ", ".join(parts)


class ForgeServer:
    """A real Forge from a checkout, or the simulator standing in for it, on one port."""

    def __init__(
        self,
        kind: str,
        spec: ForgeSpec,
        *,
        work: Path,
        models: ModelPaths,
        forge_dir: Path | None,
        forge_python: Path | None,
        sim_step_ms: float,
        sim_switch_ms: float,
    ) -> None:
        self.kind = kind
        self.spec = spec
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models = models
        self.forge_dir = forge_dir
        self.forge_python = forge_python
        self.data = work / f"forge-data-{kind}"
        self.sim_step_ms = sim_step_ms
        self.sim_switch_ms = sim_switch_ms
        name = f"{kind} Forge ({spec.label})"
        self.proc = Proc(
            name, self._argv(), cwd=self._cwd(), env=self._env(), log=work / f"forge-{kind}.log"
        )
        self.start_seconds: list[float] = []

    def _cwd(self) -> Path:
        return self.forge_dir if self.kind == "real" and self.forge_dir else Path.cwd()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if self.kind == "real":
            env["PYTHONUNBUFFERED"] = "1"
            env["GRADIO_ANALYTICS_ENABLED"] = "False"
            env["HF_HUB_OFFLINE"] = "1"
            env["TRANSFORMERS_OFFLINE"] = "1"
        return env

    def _argv(self) -> list[str]:
        spec, m = self.spec, self.models
        if self.kind == "real":
            assert self.forge_python and self.forge_dir
            argv = [
                str(self.forge_python),
                "launch.py",
                "--skip-prepare-environment",
                "--skip-install",
                "--skip-torch-cuda-test",
                "--skip-version-check",
                "--always-cpu",
                "--api",
                # INFO shows "Received interrupt request": interrupts are counted from the log.
                "--loglevel",
                "INFO",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data),
                "--ckpt-dir",
                str(m.checkpoints),
                "--lora-dir",
                str(m.loras),
                "--vae-dir",
                str(m.vaes),
                *[a for f in m.styles for a in ("--styles-file", str(f))],
            ]
            if not spec.webui:
                argv.append("--nowebui")
        else:
            mobilesd = Path(sys.executable).with_name("mobilesd")
            argv = [
                str(mobilesd),
                "forge-sim",
                "--port",
                str(self.port),
                "--checkpoints",
                "",
                "--loras",
                "",
                "--models-dir",
                str(m.checkpoints),
                "--lora-dir",
                str(m.loras),
                "--vae-dir",
                str(m.vaes),
                *[a for f in m.styles for a in ("--styles-file", str(f))],
                "--step-ms",
                str(self.sim_step_ms),
                "--switch-ms",
                str(self.sim_switch_ms),
                "--name",
                "conformance",
            ]
            if spec.webui:
                argv.append("--webui")
        if spec.auth:
            argv += ["--api-auth" if self.kind == "real" else "--auth", ":".join(spec.auth)]
        return argv

    async def start(self) -> float:
        self.data.mkdir(parents=True, exist_ok=True)
        await self.proc.start()
        # Ready once /sdapi/v1/loras answers: Forge's LoRA extension adds that route last, after
        # /sdapi/v1/options already answers (see README, "What happens when things go wrong").
        took = await wait_http(
            f"{self.url}/sdapi/v1/loras",
            proc=self.proc,
            timeout=FORGE_START_TIMEOUT,
            auth=self.spec.auth,
        )
        self.start_seconds.append(took)
        return took

    async def kill(self) -> None:
        await self.proc.kill()

    async def stop(self) -> None:
        await self.proc.stop()

    def interrupt_requests(self) -> int:
        """How many interrupts Forge has received, from its own log line ("Received interrupt
        request", `State.interrupt`) or the simulator's counter (see `ForgeDirect`)."""
        return self.proc.log_text().count("Received interrupt request")


class Core:
    """`mobilesd serve` on a fresh data folder, driven only through its HTTP API."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = os.urandom(24).hex()
        self.data = work / "core-data"
        self.gallery = work / "core-gallery"
        self.inbox = work / "core-inbox"
        mobilesd = Path(sys.executable).with_name("mobilesd")
        argv = [
            str(mobilesd),
            "serve",
            "--port",
            str(self.port),
            "--data",
            str(self.data),
            "--gallery",
            str(self.gallery),
            "--inbox",
            str(self.inbox),
            "--no-qr",
        ]
        env = dict(os.environ)
        env.update(
            MOBILESD_TOKEN=self.token,
            MOBILESD_HEALTH_SECONDS="1",
            # A CPU Forge loads a checkpoint for 15-30 s without a progress change.
            MOBILESD_STALL_SECONDS="300",
        )
        self.proc = Proc("mobilesd serve", argv, cwd=work, env=env, log=work / "core.log")

    async def start(self) -> None:
        await self.proc.start()
        await wait_http(f"{self.url}/healthz", proc=self.proc, timeout=CORE_START_TIMEOUT)

    async def stop(self) -> None:
        await self.proc.stop()
