"""The event bus: ids, replay for Last-Event-ID, bounded subscribers."""

from __future__ import annotations

from mobilesd_core.events import EventBus


async def test_replay_after_last_event_id() -> None:
    bus = EventBus(ring_size=10, queue_size=8)
    for i in range(5):
        bus.publish("job", {"n": i})
    sub, complete = bus.subscribe(last_event_id=2)
    assert complete
    assert [(await sub.get(1)).data["n"] for _ in range(3)] == [2, 3, 4]
    bus.publish("job", {"n": 5})
    assert (await sub.get(1)).id == 6


async def test_too_old_last_event_id_asks_for_reset() -> None:
    bus = EventBus(ring_size=3, queue_size=8)
    for i in range(10):
        bus.publish("job", {"n": i})
    _, complete = bus.subscribe(last_event_id=2)
    assert not complete
    _, complete = bus.subscribe(last_event_id=7)
    assert complete


async def test_slow_subscriber_is_dropped_not_buffered() -> None:
    bus = EventBus(queue_size=4)
    slow, _ = bus.subscribe()
    fast, _ = bus.subscribe()
    for i in range(4):
        bus.publish("job", {"n": i})
        assert (await fast.get(1)).data == {"n": i}
    bus.publish("job", {"n": 4})  # the slow one's queue is full now
    assert slow.overflowed and bus.subscriber_count == 1
    events = [await slow.get(1) for _ in range(4)]
    assert events[-1] is None  # its stream ends; the client reconnects with Last-Event-ID
