"""The one backoff rule: the wait doubles with every try, up to a ceiling."""

from __future__ import annotations

# Past this many doublings any base has passed any ceiling; the exponent stops here so a count
# that keeps growing (a file stuck for weeks) cannot overflow a float.
_MAX_DOUBLINGS = 64


def backoff_delay(tries: int, base: float, ceiling: float) -> float:
    """Seconds to wait after the `tries`-th failure in a row (1 for the first): `base`, doubled
    for each failure before it, at most `ceiling`."""
    return min(base * 2.0 ** min(max(tries - 1, 0), _MAX_DOUBLINGS), ceiling)
