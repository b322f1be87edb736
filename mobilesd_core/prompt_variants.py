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

from .schema import SEED_MAX, FieldProblem, GenerationParams

# How many jobs one template may turn into: a typo such as `{a|b|c|...}` x4 must not queue 10,000.
MAX_VARIANTS = 500
# The longest prompt a job takes: a template that could make a longer one is refused before any
# prompt is made (a few hundred characters of variables could otherwise ask for gigabytes).
MAX_PROMPT_CHARS: int = next(
    m.max_length
    for m in GenerationParams.model_fields["prompt"].metadata
    if getattr(m, "max_length", None)
)
# Wildcard files naming wildcard files: deeper than this is refused (a file naming itself).
MAX_WILDCARD_DEPTH = 20
# A wildcard value without these characters is plain text: measured without parsing it.
_SYNTAX_RE = re.compile(r"[{}$%#/\\]|__")
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
            from dynamicprompts.parser.parse import parse

            # Parsed once: measured here, then sampled (not parsed again) below.
            command = parse(template)
            problem = _Bound(manager).check(command)
        except Exception as exc:  # pyparsing's ParseException and friends: a bad template
            message = str(exc).split("\n")[0]
            return [], {}, [FieldProblem(path=path, message=f"not a valid template: {message}")]
        if problem is not None:
            return [], {}, [FieldProblem(path=path, message=problem)]
        try:
            if spec.mode == "combinatorial":
                prompts = self._combinatorial(manager, command)
                record = spec.record()
            else:
                seed = spec.seed
                if seed is None:
                    # Derived from the job seed so the same job replays; a random job seed (-1)
                    # gets a fresh one, kept on the job so it can still be replayed.
                    seed = job_seed if job_seed >= 0 else random.randrange(SEED_MAX + 1)
                prompts = self._random(manager, command, spec.count, seed)
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
    def _combinatorial(manager: Any, template: Any) -> list[str]:
        from dynamicprompts.generators import CombinatorialPromptGenerator

        # One more than the limit: enough to tell "too many" without making all of them.
        return CombinatorialPromptGenerator(manager).generate(
            template, max_prompts=MAX_VARIANTS + 1
        )

    @staticmethod
    def _random(manager: Any, template: Any, count: int, seed: int) -> list[str]:
        from dynamicprompts.generators import RandomPromptGenerator

        return RandomPromptGenerator(manager, seed=seed).generate(template, count)


class _Bound:
    """The length of the longest prompt a template can make, worked out on the parsed template
    without making any prompt, plus the constructs refused outright.

    Variables (`${a=...}`) are refused: each reference samples its value again, so a chain of
    variables that each use the one before twice doubles the prompt per link (a 500-character
    template asked for gigabytes), and combinatorial mode costs the square of that even when
    the prompt stays short. Everything else grows by addition, which this bound follows:
    a variant picks at most its `max` options (the longest ones, say), a wildcard gives its
    longest value (values are templates too, measured the same way).
    """

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.cap = MAX_PROMPT_CHARS + 1  # every length saturates here: "too long" is enough
        self._wildcards: dict[tuple[str, tuple[tuple[str, int], ...]], int] = {}
        self._open: set[str] = set()  # wildcards being measured (one naming itself)

    def check(self, command: Any) -> str | None:
        """None, or what is wrong with the parsed template."""
        from dynamicprompts.commands.variable_commands import VariableAssignmentCommand

        if any(isinstance(c, VariableAssignmentCommand) for c in _walk(command)):
            return (
                "variables (${name=...}) are not supported in prompt templates; use "
                "{a|b} variants and __wildcards__"
            )
        length = self.of(command, {}, 0)
        if length > MAX_PROMPT_CHARS:
            return (
                f"the template can make a prompt of more than {MAX_PROMPT_CHARS:,} characters; "
                f"at most {MAX_PROMPT_CHARS:,} (fewer picks per variant, shorter choices or "
                "wildcard values)"
            )
        return None

    def of(self, command: Any, env: dict[str, int], depth: int) -> int:
        from dynamicprompts.commands import (
            LiteralCommand,
            SequenceCommand,
            VariantCommand,
            WildcardCommand,
            WrapCommand,
        )
        from dynamicprompts.commands.variable_commands import (
            VariableAccessCommand,
            VariableAssignmentCommand,
        )

        if isinstance(command, LiteralCommand):
            return min(len(command.literal), self.cap)
        if isinstance(command, SequenceCommand):
            env = dict(env)
            total = len(command.separator) * max(len(command.tokens) - 1, 0)
            for token in command.tokens:
                if isinstance(token, VariableAssignmentCommand):  # in a wildcard file
                    env[token.name] = self.of(token.value, env, depth)
                else:
                    total += self.of(token, env, depth)
                if total >= self.cap:
                    return self.cap
            return min(total, self.cap)
        if isinstance(command, VariantCommand):
            options = command.values
            if len(options) == 1 and isinstance(options[0], WildcardCommand):
                count, longest = self._wildcard(options[0], env, depth)
                picks = min(command.max_bound, count)
                lengths = [longest] * picks
            else:
                picks = min(command.max_bound, len(options))
                lengths = sorted((self.of(o, env, depth) for o in options), reverse=True)
            chosen = lengths[:picks]
            total = sum(chosen) + len(command.separator) * max(len(chosen) - 1, 0)
            return min(total, self.cap)
        if isinstance(command, WildcardCommand):
            return self._wildcard(command, env, depth)[1]
        if isinstance(command, WrapCommand):
            return min(
                self.of(command.wrapper, env, depth) + self.of(command.inner, env, depth),
                self.cap,
            )
        if isinstance(command, VariableAccessCommand):
            if command.name in env:
                return env[command.name]
            return self.of(command.default, env, depth) if command.default else 0
        if isinstance(command, VariableAssignmentCommand):
            return 0
        return self.cap  # a construct this bound does not know: not risked

    def _wildcard(self, command: Any, env: dict[str, int], depth: int) -> tuple[int, int]:
        """(how many values, the longest one) of the wildcard `command` names."""
        if isinstance(command.wildcard, str):
            names = [command.wildcard]
        else:  # a name made from a template (`__colours/{warm|cold}__`): any of them
            names = sorted(self.manager.get_collection_names())
        env = {**env, **{k: self.of(v, env, depth) for k, v in command.variables.items()}}
        count, longest = 0, 0
        for name in names:
            n, length = self._values(name, env, depth)
            count, longest = max(count, n), max(longest, length)
        return count, longest

    def _values(self, name: str, env: dict[str, int], depth: int) -> tuple[int, int]:
        from dynamicprompts.parser.parse import parse

        key = (name, tuple(sorted(env.items())))
        values = list(self.manager.get_values(name).iterate_string_values_weighted())
        if key in self._wildcards:
            return len(values), self._wildcards[key]
        if name in self._open or depth >= MAX_WILDCARD_DEPTH:
            return len(values), self.cap
        self._open.add(name)
        try:
            longest = 0
            for value in values:
                plain = not _SYNTAX_RE.search(value)
                length = len(value) if plain else self.of(parse(value), env, depth + 1)
                longest = max(longest, length)
                if longest >= self.cap:
                    break
        finally:
            self._open.discard(name)
        self._wildcards[key] = min(longest, self.cap)
        return len(values), self._wildcards[key]


def _walk(command: Any) -> Any:
    """Every command in a parsed template (not inside the wildcard files it names)."""
    yield command
    for child in _children(command):
        yield from _walk(child)


def _children(command: Any) -> list[Any]:
    from dynamicprompts.commands import (
        SequenceCommand,
        VariantCommand,
        WildcardCommand,
        WrapCommand,
    )
    from dynamicprompts.commands.variable_commands import (
        VariableAccessCommand,
        VariableAssignmentCommand,
    )

    if isinstance(command, SequenceCommand):
        return list(command.tokens)
    if isinstance(command, VariantCommand):
        return list(command.values)
    if isinstance(command, WildcardCommand):
        inner = [command.wildcard] if not isinstance(command.wildcard, str) else []
        return inner + list(command.variables.values())
    if isinstance(command, WrapCommand):
        return [command.wrapper, command.inner]
    if isinstance(command, VariableAssignmentCommand):
        return [command.value]
    if isinstance(command, VariableAccessCommand):
        return [command.default] if command.default else []
    return []
