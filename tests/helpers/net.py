"""Network faults on loopback: a port nobody listens on, a listener whose accept queue is
full, a short connect timeout."""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from mobilesd_core.forge import client as forge_client


@contextlib.contextmanager
def full_accept_queue(port: int = 0) -> Iterator[int]:
    """A loopback port (`port`, or a free one) whose listener takes no more connections:
    connect() hangs."""
    blackhole = socket.socket()
    blackhole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blackhole.bind(("127.0.0.1", port))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in (*fillers, blackhole):
            sock.close()


@pytest.fixture
async def short_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Forge clients with a 0.5 s connect timeout (the product's is 5 s): fast connect cases."""
    from mobilesd_core import servers

    monkeypatch.setattr(
        servers, "ForgeClient", functools.partial(forge_client.ForgeClient, connect_timeout=0.5)
    )
    yield


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
