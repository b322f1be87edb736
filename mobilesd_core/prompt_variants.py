"""Prompt variants and wildcards (`{red|green}`, `__animal__`) through the dynamicprompts library.

A prompt is a template only when its job asks for it with `expand`, so prompts that happen to
hold braces keep working literally. Expansion happens in the core before jobs are stored: every
job keeps its resolved prompt (what Forge gets) plus the template and the expansion it came from,
and random mode is seeded, so the same input gives the same prompts again.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import SEED_MAX, FieldProblem

# How many jobs one template may turn into: a typo such as `{a|b|c|...}` x4 must not queue 10,000.
MAX_VARIANTS = 500
# `__name__` tokens; names may hold '/', '-', '*' (dynamicprompts globs) but not spaces or '_' runs.
_WILDCARD_RE = re.compile(r"__([A-Za-z0-9*?/.\-][A-Za-z0-9*?/.\-_ ]*?)__")
_MODES = ("combinatorial", "random")


@dataclass(frozen=True)
class ExpandSpec:
    """How to expand a template: every combination, or `count` seeded random picks."""

    mode: str
    count: int = 1
    seed: int | None = None

    def request(self) -> dict[str, Any]:
        """The `expand` value that asks for this again (what `mobilesd submit` sends)."""
        if self.mode == "combinatorial":
            return {"mode": "combinatorial"}
        out: dict[str, Any] = {"mode": "random", "count": self.count}
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    def record(self, seed: int | None = None) -> dict[str, Any]:
        """The form stored on each job (random mode: with the seed actually used)."""
        if self.mode == "combinatorial":
            return {"mode": "combinatorial"}
        return {"mode": "random", "count": self.count, "seed": seed}


def parse_expand(raw: Any, path: str = "expand") -> tuple[ExpandSpec | None, list[FieldProblem]]:
    """`"combinatorial"`, `"random"`, `{"mode": ..., "count": N, "seed": S}` or null/absent."""
    if raw is None:
        return None, []
    if isinstance(raw, str):
        raw = {"mode": raw}
    if not isinstance(raw, dict):
        return None, [
            FieldProblem(
                path=path,
                message='must be "combinatorial", "random" or {mode, count, seed}',
            )
        ]
    problems = [
        FieldProblem(path=f"{path}.{key}", message="unknown field (expected mode, count, seed)")
        for key in raw
        if key not in ("mode", "count", "seed")
    ]
    mode = raw.get("mode")
    if mode not in _MODES:
        problems.append(
            FieldProblem(path=f"{path}.mode", message=f"must be one of {', '.join(_MODES)}")
        )
    count = raw.get("count", 1)
    if mode == "combinatorial" and "count" in raw:
        problems.append(
            FieldProblem(
                path=f"{path}.count",
                message="only random mode takes a count (combinatorial makes every combination)",
            )
        )
    elif isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_VARIANTS:
        problems.append(
            FieldProblem(
                path=f"{path}.count",
                message=f"must be a whole number 1..{MAX_VARIANTS} (jobs this template makes)",
            )
        )
    seed = raw.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX
    ):
        problems.append(FieldProblem(path=f"{path}.seed", message=f"must be 0..{SEED_MAX}"))
    if problems:
        return None, problems
    return ExpandSpec(mode=str(mode), count=int(count), seed=seed), []


class PromptExpander:
    """Expands templates against the wildcard files (`name.txt`, one value a line) of a folder.

    Blocking (file reads, parsing): call it from a thread. A fresh WildcardManager per call
    picks up files the user added or edited since the last job without a restart.
    """

    def __init__(self, wildcards_path: Path | None = None) -> None:
        self.wildcards_path = wildcards_path

    def _manager(self) -> Any:
        from dynamicprompts.wildcards import WildcardManager  # slow import; only when used

        path = self.wildcards_path
        return WildcardManager(path if path is not None and path.is_dir() else None)

    def expand(
        self, template: str, spec: ExpandSpec, *, job_seed: int, path: str
    ) -> tuple[list[str], dict[str, Any], list[FieldProblem]]:
        """The prompts, the record to store on each job, and any problems (with `path`)."""
        manager = self._manager()
        missing = self._missing_wildcards(manager, template)
        if missing:
            where = str(self.wildcards_path) if self.wildcards_path else "WILDCARDS_PATH (unset)"
            known = sorted(manager.get_collection_names()) if self.wildcards_path else []
            listed = ", ".join(known[:20]) or "none"
            return (
                [],
                {},
                [
                    FieldProblem(
                        path=path,
                        message=f"unknown wildcard {', '.join(missing)}: no such file in "
                        f"{where} (known: {listed})",
                    )
                ],
            )
        try:
            if spec.mode == "combinatorial":
                prompts = self._combinatorial(manager, template)
                record = spec.record()
            else:
                seed = spec.seed
                if seed is None:
                    # Derived from the job seed so the same job replays; a random job seed (-1)
                    # gets a fresh one, kept on the job so it can still be replayed.
                    seed = job_seed if job_seed >= 0 else random.randrange(SEED_MAX + 1)
                prompts = self._random(manager, template, spec.count, seed)
                record = spec.record(seed)
        except Exception as exc:  # pyparsing's ParseException and friends: a bad template
            message = str(exc).split("\n")[0]
            return [], {}, [FieldProblem(path=path, message=f"not a valid template: {message}")]
        if len(prompts) > MAX_VARIANTS:
            return (
                [],
                {},
                [
                    FieldProblem(
                        path=path,
                        message=f"the template makes more than {MAX_VARIANTS} prompts; at most "
                        f"{MAX_VARIANTS} per template (use fewer choices, or random mode "
                        "with a count)",
                    )
                ],
            )
        empty = [p for p in prompts if not p.strip()]
        if empty:
            return [], {}, [FieldProblem(path=path, message="the template makes an empty prompt")]
        return prompts, record, []

    @staticmethod
    def _missing_wildcards(manager: Any, template: str) -> list[str]:
        missing = []
        for name in dict.fromkeys(_WILDCARD_RE.findall(template)):
            try:
                found = ".." not in name and len(list(manager.get_values(name))) > 0
            except Exception:
                found = False
            if not found:
                missing.append(f"__{name}__")
        return missing

    @staticmethod
    def _combinatorial(manager: Any, template: str) -> list[str]:
        from dynamicprompts.generators import CombinatorialPromptGenerator

        # One more than the limit: enough to tell "too many" without making all of them.
        return CombinatorialPromptGenerator(manager).generate(
            template, max_prompts=MAX_VARIANTS + 1
        )

    @staticmethod
    def _random(manager: Any, template: str, count: int, seed: int) -> list[str]:
        from dynamicprompts.generators import RandomPromptGenerator

        return RandomPromptGenerator(manager, seed=seed).generate(template, count)
