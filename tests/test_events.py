"""The event bus: ids, replay for Last-Event-ID, bounded subscribers."""

from __future__ import annotations

from mobilesd_core.events import EventBus


async def test_replay_after_last_event_id() -> None:
    bus = EventBus(ring_size=10, queue_size=8)
    ids = [bus.publish("job", {"n": i}).id for i in range(5)]
    assert ids == list(range(ids[0], ids[0] + 5))  # consecutive
    sub, complete = bus.subscribe(last_event_id=ids[1])
    assert complete
    assert [(await sub.get(1)).data["n"] for _ in range(3)] == [2, 3, 4]
    bus.publish("job", {"n": 5})
    assert (await sub.get(1)).id == ids[-1] + 1


async def test_ids_keep_rising_across_restarts() -> None:
    first = EventBus()
    old = first.publish("job", {}).id
    second = EventBus()  # a restarted core
    assert second.publish("job", {}).id > old
    _, complete = second.subscribe(last_event_id=old)
    assert not complete  # an id from the earlier run means: reload


async def test_too_old_last_event_id_asks_for_reset() -> None:
    bus = EventBus(ring_size=3, queue_size=8)
    ids = [bus.publish("job", {"n": i}).id for i in range(10)]
    _, complete = bus.subscribe(last_event_id=ids[1])
    assert not complete
    _, complete = bus.subscribe(last_event_id=ids[6])
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
    # Its stream ends at once, with no partial tail that could skip an event; the client
    # reconnects with its Last-Event-ID and the ring replays everything from there.
    assert await slow.get(1) is None
    again, complete = bus.subscribe(last_event_id=bus.last_id - 5, queue_size=8)
    assert complete
    assert [(await again.get(1)).data["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
