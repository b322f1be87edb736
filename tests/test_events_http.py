"""GET /api/v1/events over a real socket: framing, replay, reset, heartbeat, slow clients, shutdown.

The core runs on a loopback socket with short stream settings; clients are httpx + httpx-sse,
or a raw socket that never reads. Waiting is polling with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

from mobilesd_core.api.app import create_app
from mobilesd_core.api.routes_events import (
    EVENT_STREAM_SETTINGS,
    OPEN_STREAMS,
    EventStreamSettings,
)
from mobilesd_core.events import EventBus

from .conftest import TOKEN, Harness, fast_settings, stop_harness, wait_for
from .helpers.events import Reader, connected

URL = "/api/v1/events"
FAST = {"heartbeat": 5.0, "write_timeout": 1.0, "liveness_check": 0.05}

MakeHarness = Callable[..., Awaitable[Harness]]


class CoreServer(TestServer):
    """TestServer as the CLI runs the app: aiohttp's TestServer cancels a handler when its
    client disconnects, `web.AppRunner` (cli, demo) does not, so a stream must notice by itself."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs["handler_cancellation"] = False
        return web.AppRunner(self.app, **kwargs)


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    """A core like conftest's `harness`, with its event stream settings chosen by the test."""
    made: list[Harness] = []

    async def make(**stream: Any) -> Harness:
        settings = fast_settings(tmp_path)
        app = create_app(settings)
        app[EVENT_STREAM_SETTINGS] = EventStreamSettings(**{**FAST, **stream})
        server = CoreServer(app, host="127.0.0.1")
        await server.start_server()
        api = httpx.AsyncClient(
            base_url=str(server.make_url("")).rstrip("/"),
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        harness = Harness(settings=settings, server=server, api=api)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await stop_harness(harness)


def publish(bus: EventBus, count: int, start: int = 0) -> list[int]:
    return [bus.publish("queue", {"n": start + i}).id for i in range(count)]


BLOB = "x" * 256 * 1024


def flood(bus: EventBus, until: int) -> bool:
    """Publish one big event; True once the bus is down to `until` subscribers. Each event is
    larger than the socket buffers on the way, so a client that does not read blocks writes."""
    bus.publish("queue", {"blob": BLOB})
    return bus.subscriber_count == until


async def open_raw_stream(harness: Harness) -> socket.socket:
    """A client socket with a tiny receive buffer that has asked for the stream, reading none."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (harness.server.host, harness.server.port))
    request = (
        f"GET {URL} HTTP/1.1\r\nHost: core\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    return sock


async def test_without_token_is_401_json_not_a_stream(make_harness: MakeHarness) -> None:
    harness = await make_harness()
    async with httpx.AsyncClient(base_url=harness.api.base_url, timeout=5) as anonymous:
        response = await anonymous.get(URL)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]["code"] == "unauthorized"
        async with aconnect_sse(anonymous, "GET", URL) as source:
            assert source.response.status_code == 401
            with pytest.raises(SSEError):
                await anext(source.aiter_sse())
    assert harness.core.bus.subscriber_count == 0


async def test_headers_retry_hint_and_framing(make_harness: MakeHarness) -> None:
    harness = await make_harness(retry_ms=3000)
    bus = harness.core.bus
    async with aconnect_sse(harness.api, "GET", URL) as source:
        headers = source.response.headers
        assert source.response.status_code == 200
        assert headers["content-type"].split(";")[0] == "text/event-stream"
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        assert headers["connection"].lower() == "keep-alive"
        reader = Reader(source)
        await connected(bus, 0)
        event = bus.publish("queue", {"paused": True, "note": "ünïcode"})
        sse = await reader.next()
        assert reader.retry == 3000
        assert (sse.id, sse.event, sse.json()) == (str(event.id), "queue", event.data)


async def test_job_lifecycle_events_in_order(make_harness: MakeHarness) -> None:
    harness = await make_harness()
    async with aconnect_sse(harness.api, "GET", URL) as source:
        reader = Reader(source)
        await connected(harness.core.bus, 0)
        await harness.add_sim("a")
        job_id = await harness.submit()
        seen: list[ServerSentEvent] = []
        statuses: list[str] = []
        images: list[dict[str, Any]] = []
        while not (images and statuses and statuses[-1] == "completed"):
            sse = await reader.next(timeout=10)
            seen.append(sse)
            data = sse.json()
            if sse.event == "job" and data["mobilesd_job_id"] == job_id:
                if not statuses or statuses[-1] != data["status"]:
                    statuses.append(data["status"])
            elif sse.event == "image":
                assert statuses[-1] == "completed", "image announced before the job completed"
                images.append(data["added"])
    assert statuses == ["pending", "processing", "completed"]
    ids = [int(sse.id) for sse in seen]
    assert ids == sorted(set(ids)), "ids must strictly increase"
    assert {"server", "job", "image"} <= {sse.event for sse in seen}
    job = await harness.job(job_id)
    assert [image["filename"] for image in images] == job["result_details"]["images"]
    assert images[0]["mobilesd_job_id"] == job_id


@pytest.mark.parametrize("via", ["header", "query"])
async def test_last_event_id_replays_exactly_the_missed_events(
    make_harness: MakeHarness, via: str
) -> None:
    harness = await make_harness()
    bus = harness.core.bus
    async with aconnect_sse(harness.api, "GET", URL) as source:
        reader = Reader(source)
        await connected(bus, 0)
        publish(bus, 2)
        first = await reader.take(2)
    last = first[-1].id
    await wait_for(lambda: bus.subscriber_count == 0, timeout=5, what="the old stream to end")
    missed = publish(bus, 3, start=2)

    if via == "header":
        request: dict[str, Any] = {"headers": {"Last-Event-ID": last}}
    else:
        request = {"params": {"last_event_id": last}}
    async with aconnect_sse(harness.api, "GET", URL, **request) as source:
        reader = Reader(source)
        replayed = await reader.take(3)
        assert [int(sse.id) for sse in replayed] == missed
        assert [sse.json()["n"] for sse in replayed] == [2, 3, 4]
        live = publish(bus, 1, start=5)
        after = await reader.next()  # straight on to live events: nothing twice, nothing lost
        assert (int(after.id), after.json()["n"]) == (live[0], 5)


@pytest.mark.parametrize(
    ("last_id", "reason"),
    [
        ("1", "events_expired"),
        (str(2**62), "unknown_event_id"),
        ("yesterday", "unknown_event_id"),
    ],
)
async def test_unservable_last_event_id_gets_reset_then_live(
    make_harness: MakeHarness, last_id: str, reason: str
) -> None:
    harness = await make_harness()
    bus = harness.core.bus
    publish(bus, 2100)  # more than the replay ring keeps (2048)
    headers = {"Last-Event-ID": last_id}
    async with aconnect_sse(harness.api, "GET", URL, headers=headers) as source:
        reader = Reader(source)
        reset = await reader.next()
        assert reset.event == "reset"
        assert reset.json()["reason"] == reason
        assert int(reset.id) == bus.last_id  # reload, then resume from here
        live = publish(bus, 1)
        after = await reader.next()
        assert (after.event, int(after.id)) == ("queue", live[0])


async def test_filter_by_event_name(make_harness: MakeHarness) -> None:
    harness = await make_harness()
    bus = harness.core.bus
    response = await harness.api.get(URL, params={"events": "job,nonsense"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_events"
    async with aconnect_sse(harness.api, "GET", URL, params={"events": "job"}) as source:
        reader = Reader(source)
        await connected(bus, 0)
        publish(bus, 3)
        wanted = bus.publish("job", {"mobilesd_job_id": "x", "status": "pending"})
        sse = await reader.next()
        assert (sse.event, int(sse.id)) == ("job", wanted.id)


async def test_heartbeat_comment_within_the_interval(make_harness: MakeHarness) -> None:
    harness = await make_harness(heartbeat=0.2)
    bus = harness.core.bus

    async def chatter() -> None:
        # Events this client filtered out keep flowing: it sees nothing, so it still needs pings.
        while True:
            publish(bus, 1)
            await asyncio.sleep(0.02)

    async with harness.api.stream("GET", URL, params={"events": "job"}) as response:
        assert response.status_code == 200
        pings: list[float] = []
        buffer = received = ""
        text = response.aiter_text()
        started = time.monotonic()
        noise = asyncio.create_task(chatter())
        try:
            async with asyncio.timeout(3):
                while len(pings) < 3:
                    chunk = await anext(text)
                    buffer += chunk
                    received += chunk
                    while ": ping\n\n" in buffer:
                        _, _, buffer = buffer.partition(": ping\n\n")
                        pings.append(time.monotonic() - started)
        finally:
            noise.cancel()
    assert "event: queue" not in received
    gaps = [b - a for a, b in zip([0.0, *pings], pings, strict=False)]
    assert max(gaps) < 1.0, f"pings at {pings}"


async def test_client_disconnect_unsubscribes(make_harness: MakeHarness) -> None:
    harness = await make_harness()
    bus = harness.core.bus
    before = bus.subscriber_count
    async with aconnect_sse(harness.api, "GET", URL) as source:
        await connected(bus, before)
        assert source.response.status_code == 200
    # No event is published, so only the liveness check can notice the client left.
    # (well before the first heartbeat write, which would also find the socket gone).
    await wait_for(lambda: bus.subscriber_count == before, timeout=2, what="unsubscribe")
    await wait_for(lambda: not harness.server.app[OPEN_STREAMS], timeout=5, what="stream end")


async def test_stalled_reader_is_dropped(make_harness: MakeHarness) -> None:
    harness = await make_harness(queue_size=4, write_timeout=0.5)
    bus = harness.core.bus
    before = bus.subscriber_count
    sock = await open_raw_stream(harness)
    try:
        await wait_for(lambda: bus.subscriber_count == before + 1, timeout=5, what="subscribe")
        await wait_for(
            lambda: flood(bus, before), timeout=10, interval=0.01, what="the client to go"
        )
        await wait_for(
            lambda: not harness.server.app[OPEN_STREAMS], timeout=5, what="its handler to end"
        )
        # The core carries on serving.
        assert (await harness.api.get("/api/v1/servers")).status_code == 200
    finally:
        sock.close()


async def test_dropped_reader_that_resumes_sees_no_gap(make_harness: MakeHarness) -> None:
    """After a drop the stream ends where the client's Last-Event-ID stays right: what it got
    is every event up to some id, with none skipped, then the end of the stream."""
    harness = await make_harness(queue_size=4, write_timeout=5.0)
    bus = harness.core.bus
    loop = asyncio.get_running_loop()
    sock = await open_raw_stream(harness)
    try:
        await wait_for(lambda: bus.subscriber_count == 1, timeout=5, what="subscribe")
        await wait_for(lambda: flood(bus, 0), timeout=10, interval=0.01, what="the drop")
        received = bytearray()
        async with asyncio.timeout(10):
            while not received.endswith(b"\r\n0\r\n\r\n"):  # the last chunk
                data = await loop.sock_recv(sock, 1 << 16)
                assert data, "connection closed before the stream ended"
                received += data
        ids = [int(m) for m in re.findall(rb"(?m)^id: (\d+)$", received)]
        assert ids, "nothing was delivered"
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"gap in {ids}"
        assert ids[-1] < bus.last_id
        await wait_for(lambda: not harness.server.app[OPEN_STREAMS], timeout=5, what="the end")
    finally:
        sock.close()


async def test_shutdown_ends_open_streams_promptly(make_harness: MakeHarness) -> None:
    harness = await make_harness(heartbeat=30.0, liveness_check=30.0)
    bus = harness.core.bus
    async with aconnect_sse(harness.api, "GET", URL) as source:
        reader = Reader(source)
        await connected(bus, 0)
        publish(bus, 1)
        await reader.next()
        draining = asyncio.create_task(reader.rest())
        started = time.monotonic()
        await asyncio.wait_for(harness.server.close(), timeout=5)
        await asyncio.wait_for(draining, timeout=5)
        assert time.monotonic() - started < 5
    assert bus.subscriber_count == 0
