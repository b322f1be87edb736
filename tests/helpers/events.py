"""Reading the core's event stream in tests: events under deadlines, and the moment a stream is
subscribed."""

from __future__ import annotations

import asyncio

from httpx_sse import EventSource, ServerSentEvent

from mobilesd_core.events import EventBus

from ..conftest import wait_for


class Reader:
    """Events from one stream, each awaited under a deadline; the bare `retry:` block is kept
    apart (httpx-sse yields it as an empty message)."""

    def __init__(self, source: EventSource) -> None:
        self._events = source.aiter_sse()
        self.retry: int | None = None

    async def next(self, timeout: float = 5.0) -> ServerSentEvent:
        async with asyncio.timeout(timeout):
            while True:
                sse = await anext(self._events)
                if sse.data == "" and sse.retry is not None:
                    self.retry = sse.retry
                    continue
                return sse

    async def take(self, count: int, timeout: float = 5.0) -> list[ServerSentEvent]:
        return [await self.next(timeout) for _ in range(count)]

    async def rest(self) -> int:
        """Read to the end of the stream; how many events came."""
        count = 0
        async for _ in self._events:
            count += 1
        return count


async def connected(bus: EventBus, before: int) -> None:
    """The stream is subscribed (the bus counts it)."""
    await wait_for(lambda: bus.subscriber_count > before, timeout=5, what="the subscription")
