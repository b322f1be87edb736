"""The event bus: every change a client may want to see, with monotonic ids.

Subscribers get bounded queues: a subscriber that falls too far behind is dropped (its stream
ends and the client reconnects with `Last-Event-ID`), so a slow phone never slows the core or
grows its memory. A replay ring serves reconnecting clients what they missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from .jobs.types import JobEvent, JobRemovedEvent, QueueState

log = logging.getLogger(__name__)

EVENT_NAMES = ("job", "job_removed", "server", "image", "download", "sync", "reset", "queue")


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    name: str
    data: Any
    at: float = field(default_factory=time.time)

    def encode(self) -> bytes:
        """The event in text/event-stream framing."""
        body = json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)
        return f"id: {self.id}\nevent: {self.name}\ndata: {body}\n\n".encode()


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.overflowed = False

    async def get(self, timeout: float | None = None) -> Event | None:
        """Next event; None when the subscription was dropped or closed."""
        if timeout is None:
            return await self.queue.get()
        async with asyncio.timeout(timeout):  # (not wait_for: see Dispatcher._hand_over)
            return await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self, *, ring_size: int = 2048, queue_size: int = 1024) -> None:
        # Ids go on rising across restarts (microseconds at start, +1 per event), so an id from an
        # earlier run is older than the ring and gets a `reset`, never an unrelated "replay".
        self._next_id = time.time_ns() // 1000
        self._ring: deque[Event] = deque(maxlen=ring_size)
        self._subs: set[Subscription] = set()
        self._queue_size = queue_size
        self._listeners: list[Callable[[str, Any], None]] = []

    def add_listener(self, listener: Callable[[str, Any], None]) -> None:
        """Call `listener(name, data)` for every event, synchronously: for parts of the core
        (notifications) that must see every event, which a bounded subscription may drop."""
        self._listeners.append(listener)

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    # A `job` event is the public view (jobs/view.py), never a bare record: the type says so.
    @overload
    def publish(self, name: Literal["job"], data: JobEvent) -> Event: ...
    @overload
    def publish(self, name: Literal["job_removed"], data: JobRemovedEvent) -> Event: ...
    @overload
    def publish(self, name: Literal["queue"], data: QueueState) -> Event: ...
    @overload
    def publish(
        self, name: Literal["server", "image", "download", "sync", "reset"], data: Any
    ) -> Event: ...

    def publish(self, name: str, data: Any) -> Event:
        event = Event(self._next_id, name, data)
        self._next_id += 1
        self._ring.append(event)
        for listener in self._listeners:
            try:
                listener(name, data)
            except Exception:  # a broken listener must not stop the event from going out
                log.exception("event listener failed on %s", name)
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                # Too slow to keep up: end its stream rather than buffer without bound.
                sub.overflowed = True
                self.unsubscribe(sub)
        return event

    def subscribe(
        self, *, last_event_id: int | None = None, queue_size: int | None = None
    ) -> tuple[Subscription, bool]:
        """A new subscription, pre-filled with missed events when the ring still has them.

        Returns (subscription, complete): `complete` is False when events after
        `last_event_id` were already dropped from the ring (the client must reload).
        `queue_size` overrides the bus's default bound for this subscriber.
        """
        maxsize = queue_size or self._queue_size
        sub = Subscription(self, maxsize)
        complete = True
        if last_event_id is not None and last_event_id < self.last_id:
            missed = [e for e in self._ring if e.id > last_event_id]
            oldest = missed[0].id if missed else self._next_id
            if last_event_id + 1 < oldest or len(missed) >= maxsize:
                complete = False  # the client must reload instead
            else:
                for event in missed:
                    sub.queue.put_nowait(event)
        self._subs.add(sub)
        return sub, complete

    def unsubscribe(self, sub: Subscription) -> None:
        """End a subscription. A dropped (overflowed) one gets no more events, not even those
        queued: skipping one of them would move its Last-Event-ID past a gap. It reconnects and
        the ring replays from its last id."""
        if sub in self._subs:
            self._subs.discard(sub)
            if sub.overflowed:
                while not sub.queue.empty():
                    sub.queue.get_nowait()
            try:
                sub.queue.put_nowait(None)
            except asyncio.QueueFull:  # a closed (not dropped) subscription reads its queue first
                sub.queue.get_nowait()
                sub.queue.put_nowait(None)

    def close_all(self) -> None:
        for sub in list(self._subs):
            self.unsubscribe(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
