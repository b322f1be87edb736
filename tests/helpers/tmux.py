"""A private tmux server, for the TUI in a real terminal."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator

import pytest

TMUX = shutil.which("tmux")


class Tmux:
    """One private tmux server (its own socket), so nothing else of the user's is touched."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    async def run(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            TMUX or "tmux",
            "-L",
            self.socket,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {err.decode()}")
        return out.decode()

    async def screen(self) -> str:
        return await self.run("capture-pane", "-p", "-t", "tui")

    async def wait_for(self, *texts: str, timeout: float = 30.0) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            screen = await self.screen()
            if all(text in screen for text in texts):
                return screen
            if loop.time() > deadline:
                raise AssertionError(f"never saw {texts} on the screen:\n{screen}")
            await asyncio.sleep(0.1)


@pytest.fixture
async def tmux() -> AsyncIterator[Tmux]:
    t = Tmux(f"mobilesd-test-{os.getpid()}")
    try:
        yield t
    finally:
        # Our own server only (its private socket).
        proc = await asyncio.create_subprocess_exec(
            TMUX or "tmux", "-L", t.socket, "kill-server", stderr=asyncio.subprocess.DEVNULL
        )
        await proc.wait()
