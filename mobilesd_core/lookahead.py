"""How long the rest of the queue takes, by checkpoint group, for the scheduler to compare moves.

A free server with nothing of its own to run can switch to a checkpoint, join one that others
have loaded, or wait. One greedy rule decides badly near the end of a queue: it waits while
another server grinds through a backlog it could have shared, or switches for two jobs that
would have been done sooner where they were. So each move is played forward instead: the rest
of the queue runs on a clock counted in jobs (a job takes 1, a switch `ratio`, the scheduler's
measured estimate), every server following the plain rules, and the move that finishes the
queue soonest wins. Counts per group are all it needs, so a forecast costs a few microseconds a
job, whatever the queue's length.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

# A busy server is assumed to be halfway through its job: nobody knows better, and being
# wrong by half a job either way changes few decisions.
BUSY_REMAINS = 0.5


@dataclass
class Server:
    alias: str
    loaded: str | None  # the group it has loaded (or will have once its running job is done)
    free_at: float  # in job lengths from now


def forecast(
    servers: list[Server],
    backlog: Mapping[str, int],
    may_run: Mapping[str, frozenset[str]],
    ratio: float,
) -> float:
    """When the last job of `backlog` (group -> jobs) ends if every server follows the rules.

    `may_run` maps each group to the servers that can run it. A server that finds nothing
    worth doing waits for the next server to free up, then looks again.
    """
    left = dict(backlog)
    loaded = {s.alias: s.loaded for s in servers}
    holders = Counter(s.loaded for s in servers if s.loaded is not None)
    end = max((s.free_at for s in servers), default=0.0)
    clock = [(s.free_at, s.alias) for s in servers]
    heapq.heapify(clock)
    waiting: list[str] = []
    while clock and any(left.values()):
        now, alias = heapq.heappop(clock)
        group = _next_group(alias, loaded[alias], holders, left, may_run, ratio)
        if group is None:
            waiting.append(alias)
            continue
        took = 1.0
        previous = loaded[alias]
        if previous != group:
            took += ratio
            if previous is not None:
                holders[previous] -= 1
            holders[group] += 1
            loaded[alias] = group
        left[group] -= 1
        end = max(end, now + took)
        heapq.heappush(clock, (now + took, alias))
        # A server that waited looks again now that the picture changed.
        for idle in waiting:
            heapq.heappush(clock, (now, idle))
        waiting.clear()
    return end if not any(left.values()) else float("inf")


def _next_group(
    alias: str,
    own: str | None,
    holders: Mapping[str, int],
    left: Mapping[str, int],
    may_run: Mapping[str, frozenset[str]],
    ratio: float,
) -> str | None:
    if own is not None and left.get(own, 0) > 0 and alias in may_run[own]:
        return own
    best: tuple[float, str] | None = None
    for group, count in left.items():
        if count <= 0 or alias not in may_run[group]:
            continue
        covering = holders.get(group, 0) - (own == group)
        if covering == 0:
            score = float(count) + 1e6  # nobody else will run it: most work first
        elif count > covering * ratio:
            score = count / (covering + 1)
        else:
            continue
        if best is None or score > best[0]:
            best = (score, group)
    return None if best is None else best[1]
