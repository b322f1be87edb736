"""Which pending job each free server slot takes next.

A checkpoint switch costs a real Forge server 5-30 s, often more than the job itself, so the
default policy keeps every GPU generating rather than loading:

1. a job that has waited too long (time, or number of jobs that overtook it) runs next,
   on a server that has its checkpoint if one is free, else on any server that may take it;
2. a free server takes the oldest job whose checkpoint it has loaded (or that names none);
3. a server with nothing of its own switches to the checkpoint nobody else has loaded whose
   oldest job is oldest; if every waiting checkpoint is loaded somewhere, it joins the one with
   the largest backlog per server only when that backlog outweighs the switch (measured ratio
   of switch time to job time), else it stays free for what comes next.

Jobs of one checkpoint keep their queue order. `fifo` is the plain queue order. The scheduler
is pure: the dispatcher hands it the candidates (which servers may run each job, and the exact
title each would load) and the servers' state, and applies what it returns.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from . import lookahead
from .jobs.types import Job

Policy = Literal["checkpoint", "fifo"]
POLICIES: tuple[Policy, ...] = ("checkpoint", "fifo")


@dataclass
class Candidate:
    """A pending job as the scheduler sees it."""

    job: Job
    group: str | None  # canonical checkpoint name; None: the job keeps whatever is loaded
    titles: dict[str, str | None]  # alias -> title that server would load; absent: cannot run
    created: float = 0.0  # epoch seconds

    @property
    def job_id(self) -> str:
        return self.job["mobilesd_job_id"]


@dataclass
class ServerSlot:
    alias: str
    free: int
    loaded: str | None  # the title it has (or will have once its running jobs are done)
    available: bool = True
    # When its next slot frees, in job lengths from now (None: unknown, or a slot is free).
    busy_for: float | None = None


@dataclass
class SwitchCost:
    """Running estimate of (checkpoint switch time) / (job time), from jobs as they finish."""

    job_seconds: float | None = None
    switch_seconds: float | None = None
    default_ratio: float = 1.0
    weight: float = 0.2

    def observe(self, seconds: float, *, switched: bool) -> None:
        if not switched:
            self.job_seconds = _ewma(self.job_seconds, seconds, self.weight)
        elif self.job_seconds is not None:
            extra = max(0.0, seconds - self.job_seconds)
            self.switch_seconds = _ewma(self.switch_seconds, extra, self.weight)

    def remaining(self, elapsed: float, *, switched: bool) -> float | None:
        """How many job lengths a run that started `elapsed` seconds ago still needs."""
        if not self.job_seconds:
            return None
        expected = self.job_seconds * (1.0 + (self.ratio if switched else 0.0))
        return max(0.0, expected - elapsed) / self.job_seconds

    @property
    def ratio(self) -> float:
        if not self.job_seconds or self.switch_seconds is None:
            return self.default_ratio
        return self.switch_seconds / self.job_seconds


def _ewma(old: float | None, new: float, weight: float) -> float:
    return new if old is None else old + weight * (new - old)


@dataclass
class Scheduler:
    policy: Policy = "checkpoint"
    max_wait_seconds: float = 1800.0
    max_overtakes: int = 200
    # Only this many jobs at the head of the queue are looked at per pass: keeps a pass cheap
    # with a deep queue; jobs further back move into view as the head drains.
    window: int = 256
    # Moves are played forward (see lookahead.py) while the head holds at most this many jobs:
    # the end of a queue is where one greedy step goes wrong, and a forecast of a long head
    # would cost more than it saves.
    lookahead_jobs: int = 128
    cost: SwitchCost = field(default_factory=SwitchCost)
    overtaken: dict[str, int] = field(default_factory=dict)

    def window_size(self, servers: int) -> int:
        return max(self.window, 16 * servers)

    def prune(self, pending: list[Job]) -> None:
        """Drop counters of jobs that left the queue (ran elsewhere, cancelled, removed)."""
        if len(self.overtaken) > len(pending):
            ids = {j["mobilesd_job_id"] for j in pending}
            for job_id in [j for j in self.overtaken if j not in ids]:
                del self.overtaken[job_id]

    def plan(
        self, candidates: list[Candidate], servers: list[ServerSlot], now: float
    ) -> list[tuple[Candidate, ServerSlot]]:
        """Assignments for the free slots, in the order they should be claimed."""
        head = candidates[: self.window_size(len(servers))]
        free = [s for s in sorted(servers, key=lambda s: s.alias) if s.available and s.free > 0]
        out: list[tuple[Candidate, ServerSlot]] = []
        while free and head:
            choice = (
                self._fifo(head, free, now)
                if self.policy == "fifo"
                else self._starving(head, free, now)
                or self._matching(head, free, now)
                or self._switch(head, free, servers, now)
            )
            if choice is None:
                break
            cand, slot = choice
            self._assign(cand, slot, head, now)
            out.append(choice)
            if slot.free <= 0:
                free.remove(slot)
        return out

    # -- the rules --------------------------------------------------------------------------

    def _fifo(
        self, head: list[Candidate], free: list[ServerSlot], now: float
    ) -> tuple[Candidate, ServerSlot] | None:
        for slot in sorted(free, key=lambda s: -s.free):
            for cand in head:
                if eligible(cand, slot, now):
                    return cand, slot
        return None

    def _starving(
        self, head: list[Candidate], free: list[ServerSlot], now: float
    ) -> tuple[Candidate, ServerSlot] | None:
        for cand in head:
            if not self._is_starving(cand, now):
                continue
            slots = [s for s in free if eligible(cand, s, now)]
            if slots:
                return cand, min(slots, key=lambda s: not matches(cand, s))
        return None

    def _is_starving(self, cand: Candidate, now: float) -> bool:
        waited = now - cand.created if cand.created else 0.0
        return (
            waited > self.max_wait_seconds
            or self.overtaken.get(cand.job_id, 0) >= self.max_overtakes
        )

    def _matching(
        self, head: list[Candidate], free: list[ServerSlot], now: float
    ) -> tuple[Candidate, ServerSlot] | None:
        best: tuple[int, Candidate, ServerSlot] | None = None
        for slot in free:
            for index, cand in enumerate(head):
                if eligible(cand, slot, now) and matches(cand, slot):
                    if best is None or index < best[0]:
                        best = (index, cand, slot)
                    break
        return None if best is None else (best[1], best[2])

    def _switch(
        self,
        head: list[Candidate],
        free: list[ServerSlot],
        servers: list[ServerSlot],
        now: float,
    ) -> tuple[Candidate, ServerSlot] | None:
        choice = self._greedy_switch(head, free, servers, now)
        if len(head) <= self.lookahead_jobs:
            return self._look_ahead(head, free, servers, now, choice)
        return choice

    def _greedy_switch(
        self,
        head: list[Candidate],
        free: list[ServerSlot],
        servers: list[ServerSlot],
        now: float,
    ) -> tuple[Candidate, ServerSlot] | None:
        joins: list[tuple[float, int, Candidate, ServerSlot]] = []
        for slot in free:
            groups: dict[str | None, list[Candidate]] = {}
            for cand in head:
                if eligible(cand, slot, now):
                    groups.setdefault(cand.group, []).append(cand)
            for members in groups.values():  # oldest head first
                covering = _covering(members[0], slot, servers)
                if covering == 0:
                    return members[0], slot
                backlog = len(members)
                if backlog > covering * self.cost.ratio:
                    order = -head.index(members[0])
                    joins.append((backlog / (covering + 1), order, members[0], slot))
        if not joins:
            return None
        _, _, cand, slot = max(joins, key=lambda j: (j[0], j[1]))
        return cand, slot

    def _look_ahead(
        self,
        head: list[Candidate],
        free: list[ServerSlot],
        servers: list[ServerSlot],
        now: float,
        greedy: tuple[Candidate, ServerSlot] | None,
    ) -> tuple[Candidate, ServerSlot] | None:
        """The move among join/switch/wait after which the forecast queue ends soonest."""
        if any(
            c.group is None or c.job.get("target_server_alias") or not due(c, now) for c in head
        ):
            return greedy
        firsts: dict[str, Candidate] = {}
        for cand in head:
            firsts.setdefault(cand.group or "", cand)
        may_run = {g: frozenset(c.titles) for g, c in firsts.items()}
        backlog = Counter(c.group or "" for c in head)
        slot = free[0] if greedy is None else greedy[1]
        busy = [s.busy_for for s in servers if s.available and s.free <= 0]
        # A server that waits looks again when the next busy one frees up.
        next_change = min((lookahead.BUSY_REMAINS if b is None else b for b in busy), default=None)

        def group_of(server: ServerSlot) -> str | None:
            for g, c in firsts.items():
                if server.loaded is not None and c.titles.get(server.alias) == server.loaded:
                    return g
            return None

        def state(chosen: str | None, wait: bool) -> list[lookahead.Server]:
            out = []
            for s in servers:
                if not s.available:
                    continue
                loaded, at = group_of(s), 0.0
                if s.free <= 0:
                    at = lookahead.BUSY_REMAINS if s.busy_for is None else s.busy_for
                if s is slot and chosen is not None:
                    at = 1.0 + (0.0 if loaded == chosen else self.cost.ratio)
                    loaded = chosen
                elif s.free > 0 and wait and next_change is not None:
                    at = next_change
                out.append(lookahead.Server(s.alias, loaded, at))
            return out

        ratio = self.cost.ratio
        options: list[tuple[float, int, tuple[Candidate, ServerSlot] | None]] = []
        if next_change is not None:  # waiting only helps if something will change
            left = lookahead.forecast(state(None, True), backlog, may_run, ratio)
            options.append((left, 1, None))
        for g, cand in firsts.items():
            if not eligible(cand, slot, now):
                continue
            rest = Counter(backlog)
            rest[g] -= 1
            left = lookahead.forecast(state(g, False), rest, may_run, ratio)
            is_greedy = greedy is not None and greedy[0] is cand and greedy[1] is slot
            options.append((left, 0 if is_greedy else 2, (cand, slot)))
        if not options:
            return greedy
        return min(options, key=lambda o: (o[0], o[1]))[2]

    def _assign(self, cand: Candidate, slot: ServerSlot, head: list[Candidate], now: float) -> None:
        index = head.index(cand)
        for earlier in head[:index]:
            if eligible(earlier, slot, now):
                self.overtaken[earlier.job_id] = self.overtaken.get(earlier.job_id, 0) + 1
        head.pop(index)
        self.overtaken.pop(cand.job_id, None)
        slot.free -= 1
        if cand.group is not None:
            slot.loaded = cand.titles.get(slot.alias)


def eligible(cand: Candidate, slot: ServerSlot, now: float) -> bool:
    job = cand.job
    target = job.get("target_server_alias")
    if target is not None and target != slot.alias:
        return False
    if slot.alias not in cand.titles:
        return False
    return due(cand, now)


def due(cand: Candidate, now: float) -> bool:
    """Not waiting out a retry delay."""
    return (cand.job.get("retry_at") or 0) <= now


def matches(cand: Candidate, slot: ServerSlot) -> bool:
    return cand.group is None or (
        slot.loaded is not None and cand.titles.get(slot.alias) == slot.loaded
    )


def _covering(cand: Candidate, slot: ServerSlot, servers: list[ServerSlot]) -> int:
    """How many other available servers have this job's checkpoint loaded and may run it."""
    return sum(
        1
        for other in servers
        if other.alias != slot.alias
        and other.available
        and other.alias in cand.titles
        and cand.job.get("target_server_alias") in (None, other.alias)
        and other.loaded is not None
        and cand.titles[other.alias] == other.loaded
    )
