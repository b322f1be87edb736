"""GET /api/v1/events: the Server-Sent Events stream.

Clients load state through the REST API, then follow this stream. Each event is `id:`, `event:`
and JSON `data:` (`Event.encode()`); an idle stream gets a `: ping` comment at least every
`heartbeat` seconds. A client that reconnects with `Last-Event-ID` (or `?last_event_id=` when
it cannot set headers) gets what it missed from the bus's replay ring, or a `reset` event when
the ring no longer has it (or the id is not one this core issued): reload, then carry on.

A slow client never slows the core: the bus drops a subscriber whose bounded queue overflows,
and the stream then ends at once (the client reconnects with `Last-Event-ID`). A client that
stops reading is cut off after `write_timeout`. Open streams end in `on_shutdown`, so stopping
the server does not wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

from aiohttp import web

from ..events import EVENT_NAMES, Event, Subscription
from .errors import ApiError
from .keys import CORE

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

# aiohttp-sse's headers: no caching, no proxy buffering (nginx), a long-lived connection.
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}
PING = b": ping\n\n"


@dataclass(frozen=True)
class EventStreamSettings:
    """Tuning of the event stream; the defaults suit phones on flaky links, tests shorten them."""

    heartbeat: float = 15.0
    """Seconds of silence after which a `: ping` comment is sent."""
    write_timeout: float = 10.0
    """A client whose socket accepts nothing for this long is cut off."""
    retry_ms: int = 3000
    """The `retry:` hint: how long an EventSource waits before reconnecting."""
    queue_size: int | None = None
    """Events buffered per client before it counts as too slow; None: the bus's default."""
    liveness_check: float = 1.0
    """How often an idle stream checks whether its client has gone."""
    tcp_user_timeout: float | None = 60.0
    """Linux TCP_USER_TIMEOUT: a peer that acknowledges nothing this long is dropped by the
    kernel (a phone that vanished without closing). None leaves the socket alone."""


EVENT_STREAM_SETTINGS = web.AppKey("event_stream_settings", EventStreamSettings)
OPEN_STREAMS = web.AppKey("open_event_streams", set)


def setup(app: web.Application, settings: EventStreamSettings | None = None) -> None:
    """Give `app` the stream settings, the set of open streams, and the shutdown hook."""
    app[EVENT_STREAM_SETTINGS] = settings or EventStreamSettings()
    app[OPEN_STREAMS] = set()
    app.on_shutdown.append(close_streams)


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end every open stream so `runner.cleanup()` does not wait for them."""
    streams: set[_Stream] = app[OPEN_STREAMS]
    for stream in list(streams):
        stream.stop()


class _Stream:
    """One client's stream: its subscription, and the writes that feed it."""

    def __init__(
        self, request: web.Request, sub: Subscription, settings: EventStreamSettings
    ) -> None:
        self.request = request
        self.sub = sub
        self.settings = settings
        self.stopping = False
        self.writing = False
        self.response = web.StreamResponse(headers=SSE_HEADERS)

    def stop(self) -> None:
        """End the stream now (server shutdown), even while a write is stuck."""
        self.stopping = True
        self.sub.close()  # wakes the reader with None
        if self.writing:
            self._abort()

    def _abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def write(self, data: bytes) -> bool:
        """Send `data`; False when the stream must end (client gone or not reading)."""
        self.writing = True
        try:
            async with asyncio.timeout(self.settings.write_timeout):
                await self.response.write(data)
        except TimeoutError:
            log.info(
                "event stream to %s: nothing read for %gs, closing",
                self.request.remote,
                self.settings.write_timeout,
            )
            self._abort()
            return False
        except ConnectionError:
            return False
        finally:
            self.writing = False
        return not self.stopping

    async def run(self, reset: Event | None, wanted: frozenset[str] | None) -> None:
        settings = self.settings
        await self.response.prepare(self.request)
        _limit_unacknowledged(self.request, settings.tcp_user_timeout)
        # The hint also pushes the headers out: aiohttp holds them until the first write.
        if not await self.write(f"retry: {settings.retry_ms}\n\n".encode()):
            return
        if reset is not None and not await self.write(reset.encode()):
            return
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + settings.heartbeat
        while not self.stopping:
            wait = next_ping - loop.time()
            if wait <= 0:
                if not await self.write(PING):
                    return
                next_ping = loop.time() + settings.heartbeat
                continue
            try:
                event = await self.sub.get(timeout=min(wait, settings.liveness_check))
            except TimeoutError:
                if self.client_gone():
                    return
                continue
            if event is None or self.sub.overflowed:
                # Closed, or dropped as too slow. After an overflow the queue has a gap (the
                # bus evicts its oldest entry to make room for the end marker), so send
                # nothing more: the client's Last-Event-ID stays right for the replay.
                if self.sub.overflowed:
                    log.info("event stream to %s fell behind, closing", self.request.remote)
                return
            if wanted is not None and event.name not in wanted:
                continue
            try:
                data = event.encode()
            except (TypeError, ValueError):
                log.exception("event %d (%s) is not JSON; not sent", event.id, event.name)
                continue
            if not await self.write(data):
                return
            next_ping = loop.time() + settings.heartbeat


def _limit_unacknowledged(request: web.Request, seconds: float | None) -> None:
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if seconds is None or option is None or request.transport is None:
        return
    sock = request.transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # best effort: the write timeout still applies
        sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))


def _wanted(request: web.Request) -> frozenset[str] | None:
    raw = request.query.get("events")
    if raw is None or not raw.strip():
        return None
    names = frozenset(name.strip() for name in raw.split(",") if name.strip())
    unknown = sorted(names - set(EVENT_NAMES))
    if unknown:
        raise ApiError(
            400,
            "bad_events",
            f"unknown event name(s) {', '.join(unknown)}; known: {', '.join(EVENT_NAMES)}",
        )
    return names | {"reset"}


def _last_event_id(request: web.Request) -> tuple[int | None, bool]:
    """(id, valid): the header wins over the query parameter; no id at all is valid."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("last_event_id")
    if raw is None or not raw.strip():
        return None, True
    try:
        value = int(raw.strip())
    except ValueError:
        return None, False
    return (value, True) if value >= 0 else (None, False)


@routes.get("/api/v1/events")
async def events(request: web.Request) -> web.StreamResponse:
    settings = request.app[EVENT_STREAM_SETTINGS]
    bus = request.app[CORE].bus
    wanted = _wanted(request)
    last_id, valid = _last_event_id(request)
    reason: str | None = None
    if not valid:
        reason = "unknown_event_id"
    elif last_id is not None and last_id > bus.last_id:
        reason = "unknown_event_id"  # issued by an earlier run of the core
    # Subscribe before the headers go out: nothing published from here on is missed.
    sub, complete = bus.subscribe(
        last_event_id=last_id if reason is None else None, queue_size=settings.queue_size
    )
    if not complete:
        reason = "events_expired"
    # The reset carries the current id: after reloading, the client resumes from here.
    reset = None if reason is None else Event(bus.last_id, "reset", {"reason": reason})
    stream = _Stream(request, sub, settings)
    streams: set[_Stream] = request.app[OPEN_STREAMS]
    streams.add(stream)
    try:
        with contextlib.suppress(ConnectionError):  # the client left as the headers went out
            await stream.run(reset, wanted)
    finally:
        streams.discard(stream)
        sub.close()
    return stream.response
