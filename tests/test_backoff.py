"""The one backoff rule gives the numbers each retry loop had before it was shared."""

from __future__ import annotations

from mobilesd_core.backoff import backoff_delay
from mobilesd_core.config import Settings


def test_the_wait_doubles_from_the_base_up_to_the_ceiling() -> None:
    # A job's retries with the defaults (MOBILESD_RETRY_BACKOFF 2 s, at most 60 s).
    settings = Settings()
    waits = [
        backoff_delay(n, settings.retry_backoff, settings.retry_backoff_max) for n in range(1, 8)
    ]
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    # A job outcome the disk refuses: written again after 0.25 s, doubling to every 5 s.
    assert [backoff_delay(n, 0.25, 5.0) for n in range(1, 8)] == [0.25, 0.5, 1, 2, 4, 5, 5]
    # The inbox watcher after a crash: 1 s, doubling to a minute.
    assert [backoff_delay(n, 1.0, 60.0) for n in (1, 2, 6, 7, 8)] == [1, 2, 32, 60, 60]


def test_no_failure_yet_waits_the_base() -> None:
    # A Civitai download that made progress before failing starts over at the base.
    assert backoff_delay(0, 1.5, 30.0) == 1.5
    assert backoff_delay(1, 1.5, 30.0) == 1.5


def test_a_count_that_keeps_growing_stays_at_the_ceiling() -> None:
    # The inbox counts the windows a stuck file was held; 2.0 ** 1024 overflowed a float
    # (after ~17 hours of a read-only share), the shared rule stops doubling long before.
    assert backoff_delay(5000, 2.0, 60.0) == 60.0
    assert backoff_delay(10**9, 0.05, 0.2) == 0.2
