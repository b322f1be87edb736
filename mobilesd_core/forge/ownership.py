"""Whose generation is Forge's `/sdapi/v1/progress` describing?

Forge has one generation lock and one `shared.state`: `/sdapi/v1/progress` shows whatever holds
the lock, which need not be the job MobileSD sent. A person may be using the same Forge (its web
UI, or its API from another program): MobileSD's request then waits behind theirs, and their
progress must not be shown as the job's, nor must a stall or a cancel interrupt them.

`ProgressOwner` classifies each progress sample for one request:

- With Forge's web UI running, `/internal/progress` answers for a task id, and MobileSD sends its
  own (`force_task_id`): `active` is exactly "this request holds the lock", `queued` "it waits".
- Without it (`--nowebui`), from what `/sdapi/v1/progress` gives. Someone else's: a generation
  that began before the request was sent (its start follows from Forge's own `progress` and
  `eta_relative`: eta = elapsed / p - elapsed), a web UI task (`state.job` is `task(...)`), a
  different `job_count`, or a sampler running a step count the request does not have. Ours: the
  first one whose sampler runs one of its step counts; from then on only samples with its
  `job_timestamp` are. Before its first step a generation cannot be told apart: a checkpoint
  load is shown (no numbers), sampling is not.

It also says which step counts can be believed: Forge's `state.begin()` resets `sampling_step`
but not `sampling_steps`, so until the sampler starts, the previous generation's step count is
still there (and while the checkpoint loads, `job_count` is -1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

Owner = Literal["ours", "queued", "other", "idle"]

# Forge measures the elapsed time with its wall clock, MobileSD the time since sending with its
# monotonic clock, later (when the answer arrives): for this request's own generation the first
# is always the smaller; the slack covers float rounding.
_CLOCK_SLACK = 0.001
# Polls on which a running generation may not know this request's task id before the server is
# taken to ignore `force_task_id` (the request reaches Forge's handler within milliseconds).
UNKNOWN_TASK_POLLS = 4
# Two samples of one generation put its start this close (their answers' latencies differ); a
# generation that followed ours began at least one of its steps later.
SAME_START_SECONDS = 0.25


def started_seconds_ago(raw: dict[str, Any]) -> float | None:
    """How long ago Forge's current generation began, from its `progress` and `eta_relative`
    (`progressapi`: eta_relative = elapsed / p - elapsed, p >= 0.01); None when it cannot be
    told (idle, or `progress` clamped at 1)."""
    try:
        p = float(raw.get("progress") or 0.0)
        eta = float(raw.get("eta_relative") or 0.0)
    except (TypeError, ValueError):
        return None
    if not 0.0 < p < 1.0:
        return None
    return eta * p / (1.0 - p)


@dataclass
class ProgressOwner:
    task_id: str
    """The `force_task_id` MobileSD sent."""
    job_count: int
    """What Forge's `state.job_count` becomes for this request: n_iter, doubled with hires."""
    steps: int
    """The request's sampling steps."""
    hires_steps: int = 0
    """Steps of the hires pass (Forge runs `hr_second_pass_steps or steps`); 0: no hires."""
    sent_at: float = field(default_factory=time.monotonic)
    timestamp: str | None = None
    """`state.job_timestamp` of this request's generation, once recognised."""
    steps_trusted: bool = False
    use_internal: bool = True
    """False once `/internal/progress` proved not to know the task id (a server too old for
    `force_task_id` ignores it): the samples are judged as without a web UI."""
    _unknown: int = 0
    _progress: float = 0.0  # the last progress of ours
    _began: float | None = None  # when ours began (monotonic), from Forge's elapsed time
    _over: bool = False  # ours has ended: whatever Forge shows now is someone else's

    def classify(self, raw: dict[str, Any], internal: dict[str, Any] | None) -> Owner:
        """`raw`: a `/sdapi/v1/progress` answer; `internal`: the `/internal/progress` answer
        for this task id taken right after it, or None when the server has no web UI."""
        state = raw.get("state") or {}
        count = _int(state.get("job_count"))
        stamp = state.get("job_timestamp")
        began_before = self._began_before_sending(raw)
        if internal is not None and self.use_internal:
            if internal.get("queued"):
                return "queued"
            if internal.get("active") and count != 0:
                if self.timestamp is None:
                    self.timestamp = stamp
                return "ours" if stamp == self.timestamp else "other"
            if internal.get("active") or internal.get("completed") or count == 0:
                return "idle"
            if began_before:
                return "other"  # not ours; Forge has not registered ours yet
            # Forge runs something that began after this request was sent, yet has never heard
            # of its task id: it ignores force_task_id. Give it a few polls, then judge without.
            self._unknown += 1
            if self._unknown < UNKNOWN_TASK_POLLS:
                return "idle"
            self.use_internal = False
        if self.timestamp is not None:
            return self._still_ours(raw, count, stamp)
        if count == 0:
            return "idle"
        if began_before or str(state.get("job") or "").startswith("task("):
            return "other"
        if count > 0 and count != self.job_count:
            return "other"
        if count < 0:
            return "ours"  # a checkpoint load that began after sending: most likely ours
        if _int(state.get("sampling_step")) == 0:
            return "idle"  # sampling_steps may be the last generation's: nothing to tell yet
        if _int(state.get("sampling_steps")) not in self.step_counts:
            return "other"
        self.timestamp = stamp
        self._progress = _float(raw.get("progress"))
        ago = started_seconds_ago(raw)
        self._began = None if ago is None else time.monotonic() - ago
        return "ours"

    def _still_ours(self, raw: dict[str, Any], count: int, stamp: Any) -> Owner:
        """After ours was recognised (without a web UI): the same generation, or one that
        followed it? `job_timestamp` has one-second steps, so also: Forge's progress only grows
        within a generation, and a generation's start stays where it was."""
        if self._over or count == 0 or stamp != self.timestamp:
            self._over = self._over or count == 0
            return "idle" if count == 0 else "other"
        progress = _float(raw.get("progress"))
        if progress < self._progress:
            self._over = True
            return "other"
        ago = started_seconds_ago(raw)
        began = None if ago is None else time.monotonic() - ago
        if (
            began is not None
            and self._began is not None
            and began - self._began > SAME_START_SECONDS
        ):
            return "other"
        self._progress = progress
        return "ours"

    @property
    def step_counts(self) -> set[int]:
        return {self.steps, self.hires_steps or self.steps}

    def _began_before_sending(self, raw: dict[str, Any]) -> bool:
        ago = started_seconds_ago(raw)
        return ago is not None and ago > time.monotonic() - self.sent_at + _CLOCK_SLACK

    def shown_steps(self, state: dict[str, Any]) -> int | None:
        """`sampling_steps` if it is this generation's, else None (loading, or the sampler has
        not started and the number left over from the previous generation differs)."""
        count = _int(state.get("job_count"))
        steps = _int(state.get("sampling_steps"))
        if count < 0 or steps <= 0:
            return None
        if not self.steps_trusted and (_int(state.get("sampling_step")) > 0 or steps == self.steps):
            self.steps_trusted = True
        return steps if self.steps_trusted else None


def _float(value: Any) -> float:
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
