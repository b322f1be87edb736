"""What every long-running command (serve, demo) shares: taking the port first, and running until
SIGINT/SIGTERM with a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

from .config import ConfigError
from .listener import guarded


async def run_until_signalled(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Run until SIGINT/SIGTERM, then stop cleanly (Docker sends SIGTERM)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    await start()
    try:
        await stopping.wait()
    finally:
        print("\nstopping…", file=sys.stderr)
        await stop()


def bind_listener(host: str, port: int) -> socket.socket:
    """Take the port before the core touches its data: a second instance fails here, cleanly."""
    try:
        return guarded(socket.create_server((host, port)))
    except OSError as exc:
        raise ConfigError(
            f"PORT: cannot listen on {host}:{port} ({exc.strerror}); "
            "is MobileSD already running? Choose another with PORT or --port"
        ) from None
