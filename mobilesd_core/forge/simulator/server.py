"""Running a simulator on a real socket: for tests (`SimServer`) and `mobilesd forge-sim`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from types import TracebackType
from typing import Any

from aiohttp import web

from .app import INFLIGHT, create_simulator_app
from .config import DEFAULT_CHECKPOINTS, DEFAULT_LORAS, SimulatorConfig
from .state import SimulatedForge

log = logging.getLogger("mobilesd.forge.simulator")

# Only a safety net: stop() cuts in-flight requests itself before the runner's graceful wait.
_SHUTDOWN_TIMEOUT = 0.1


class SimServer:
    """A SimulatedForge on loopback. `stop()` is a server gone offline, `restart()` a reboot."""

    def __init__(
        self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.sim = SimulatedForge(config)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the port is known once the server has started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(
            create_simulator_app(self.sim),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        if not self.port:
            self.port = _bound_port(runner)
        self._runner = runner
        log.info("%s: listening on %s", self.sim.config.name, self.url)

    async def stop(self) -> None:
        """Stop listening and cut every connection; queued and running generations die too."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        inflight = runner.app[INFLIGHT]
        await _cut(inflight)
        await self.sim.abort_all()
        await _cut(inflight)
        await runner.cleanup()
        log.info("%s: stopped", self.sim.config.name)

    async def restart(self) -> None:
        """Forge restarted mid-whatever: connections cut, state back to boot, same port."""
        await self.stop()
        await self.sim.reboot()
        await self.start()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _cut(inflight: set[tuple[asyncio.Task[object] | None, asyncio.Transport | None]]) -> None:
    """Close the connections first, so no answer slips out, then end their handlers."""
    entries = list(inflight)
    for _, transport in entries:
        if transport is not None:
            transport.abort()
    tasks = [task for task, _ in entries if task is not None and task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the simulator is not bound to a TCP port")


async def run_simulator(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve until cancelled (`mobilesd forge-sim`, `mobilesd demo`)."""
    server = SimServer(config, host, port)
    await server.start()
    print(f"Forge simulator listening on {server.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _auth(value: str) -> tuple[str, str]:
    user, separator, password = value.partition(":")
    if not separator or not user:
        raise argparse.ArgumentTypeError("expected user:password")
    return user, password


def add_simulator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=7861, help="port (default 7861, Forge's --nowebui port)"
    )
    parser.add_argument(
        "--checkpoints",
        type=_csv,
        default=None,
        help=f"comma-separated checkpoint paths (default {','.join(DEFAULT_CHECKPOINTS)})",
    )
    parser.add_argument(
        "--loras",
        type=_csv,
        default=None,
        help=f"comma-separated LoRA names (default {','.join(DEFAULT_LORAS)})",
    )
    parser.add_argument("--step-ms", type=float, default=40.0, help="time per sampling step")
    parser.add_argument("--switch-ms", type=float, default=800.0, help="time per checkpoint load")
    parser.add_argument(
        "--auth", type=_auth, default=None, metavar="USER:PASS", help="require HTTP Basic auth"
    )
    parser.add_argument(
        "--windows-paths",
        action="store_true",
        help="titles with backslashes, like Forge on Windows",
    )
    parser.add_argument("--name", default="sim", help="name in the version string and the logs")
    parser.add_argument(
        "--webui", action="store_true", help="also serve /internal/*, like Forge with its web UI"
    )
    parser.add_argument(
        "--models-dir",
        default=None,
        help="a real folder listed as models/Stable-diffusion (read at start and on refresh)",
    )
    parser.add_argument(
        "--lora-dir",
        default=None,
        help="a real folder listed as models/Lora (read at start and on refresh-loras)",
    )
    parser.add_argument(
        "--vae-dir", default=None, help="a real folder listed as VAE/text-encoder modules"
    )
    parser.add_argument(
        "--adetailer", action="store_true", help="ADetailer installed (script and /adetailer/v1)"
    )
    parser.add_argument(
        "--no-controlnet",
        action="store_true",
        help="without the built-in ControlNet (script and /controlnet/*)",
    )
    parser.add_argument(
        "--sd-vae", action="store_true", help="also serve A1111's /sdapi/v1/sd-vae (older servers)"
    )
    parser.add_argument(
        "--styles-file",
        action="append",
        default=[],
        help="a styles CSV (name,prompt,negative_prompt); repeatable, as in Forge",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    kwargs: dict[str, Any] = {}  # argparse values are untyped; given ones override defaults
    if getattr(args, "checkpoints", None) is not None:  # "" lists only --models-dir
        kwargs["checkpoints"] = args.checkpoints
    if getattr(args, "loras", None) is not None:
        kwargs["loras"] = args.loras
    return SimulatorConfig(
        step_ms=args.step_ms,
        switch_ms=args.switch_ms,
        auth=args.auth,
        os_sep="\\" if args.windows_paths else "/",
        name=getattr(args, "name", "sim"),
        webui=getattr(args, "webui", False),
        models_dir=getattr(args, "models_dir", None),
        lora_dir=getattr(args, "lora_dir", None),
        vae_dir=getattr(args, "vae_dir", None),
        styles_files=list(getattr(args, "styles_file", None) or []),
        adetailer=getattr(args, "adetailer", False),
        controlnet=not getattr(args, "no_controlnet", False),
        sd_vae_route=getattr(args, "sd_vae", False),
        **kwargs,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now, for callers that need a URL before starting several servers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
