"""Which servers can run a job: those that list its checkpoint and its LoRAs.

A job goes only where its models are, instead of failing on the first server that lacks one.
Resolutions are cached per (checkpoint name, server) until that server's list is refetched, so
a scheduling pass over a deep queue costs dictionary lookups, not name matching.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .forge import requirements
from .forge.errors import ForgePermanentError
from .forge.models import (
    CheckpointInfo,
    closest_titles,
    model_key,
    resolve_checkpoint,
)
from .jobs.types import Job
from .model_sync.index import LibraryIndex
from .scheduler import Candidate
from .schema import FieldProblem
from .servers import ServerRegistry, ServerRuntime

_NOT_LISTED = object()


@dataclass
class Routed:
    candidate: Candidate
    problem: Unroutable | None


@dataclass
class Unroutable:
    """No server lists the job's checkpoint: what to tell the user."""

    candidate: Candidate
    message: str


class Router:
    def __init__(self, registry: ServerRegistry, library: LibraryIndex | None = None) -> None:
        self._registry = registry
        self._cache: dict[tuple[str, str], tuple[int, object]] = {}
        # The master library: a server with a sync folder can run a job whose model is there
        # (model sync copies it first). None: no sync, servers run only what they list.
        self.library = library
        # A pending job's candidate, valid while the job record (replaced on every change) and
        # the servers' lists stay the same objects: a pass over a deep queue reuses them.
        self._candidates: dict[str, tuple[Job, tuple[object, ...], Routed]] = {}

    async def refresh_library(self) -> None:
        if self.library is not None:
            await self.library.refresh()

    def _synced_title(self, name: str, runtime: ServerRuntime) -> str | None:
        """The model key a library checkpoint will have on a server that can be synced to."""
        if self.library is None or not runtime.config.checkpoint_dir:
            return None
        file = self.library.checkpoint(name)
        return None if file is None else file.key

    def _lora_syncable(self, name: str, runtime: ServerRuntime) -> bool:
        return (
            self.library is not None
            and bool(runtime.config.lora_dir)
            and self.library.lora(name) is not None
        )

    def _lists_stamp(self) -> tuple[object, ...]:
        # Anything a route depends on: the servers' lists and settings, and the library scan.
        servers = tuple(
            (alias, id(r.checkpoints), id(r.catalog), r.checkpoints is None, id(r.config))
            for alias, r in self._registry.runtimes.items()
        )
        return (servers, id(self.library.files) if self.library is not None else None)

    def candidates(self, jobs: list[Job]) -> list[Routed]:
        """Candidates for a pass (with the reason a job cannot go anywhere, if so), reusing
        those whose job and server lists did not change since the last pass."""
        stamp = self._lists_stamp()
        out = []
        fresh: dict[str, tuple[Job, tuple[object, ...], Routed]] = {}
        for job in jobs:
            job_id = job["mobilesd_job_id"]
            cached = self._candidates.get(job_id)
            if cached is not None and cached[0] is job and cached[1] == stamp:
                routed = cached[2]
            else:
                cand = self.candidate(job)
                routed = Routed(cand, self.unroutable(cand))
            fresh[job_id] = (job, stamp, routed)
            out.append(routed)
        self._candidates = fresh
        return out

    def _resolve(self, name: str, runtime: ServerRuntime) -> object:
        """The model key `name` resolves to there; None: list unknown; _NOT_LISTED."""
        models = runtime.checkpoints
        if models is None:
            return None
        stamp = id(models)
        cached = self._cache.get((name, runtime.alias))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            found: object = model_key(resolve_checkpoint(name, models).title)
        except ForgePermanentError:  # not found, or ambiguous there
            found = _NOT_LISTED
        self._cache[(name, runtime.alias)] = (stamp, found)
        return found

    def candidate(self, job: Job) -> Candidate:
        params = job["generation_params"]
        name = params.get("checkpoint_name")
        loras = [lora["name"] for lora in params.get("loras") or []]
        upscaler = (params.get("upscale") or {}).get("upscaler")
        titles: dict[str, str | None] = {}
        with_loras: dict[str, str | None] = {}
        resolved: str | None = None
        wanted = requirements.needs(params)
        for alias, runtime in self._registry.runtimes.items():
            if wanted and requirements.missing(wanted, runtime.catalog, runtime.checkpoints):
                continue  # it lacks a module, style, extension or refiner the job names
            if name:
                found = self._resolve(name, runtime)
                if found is _NOT_LISTED:
                    # Not there, but in the library and the server has a sync folder: it can
                    # run the job once the file is copied (see model_sync).
                    synced = self._synced_title(name, runtime)
                    if synced is None:
                        continue
                    titles[alias] = synced
                else:
                    if found is not None and resolved is None:
                        resolved = str(found)
                    # An unknown list: the job may run there; the name stands in for the title.
                    titles[alias] = model_key(name) if found is None else str(found)
            else:
                titles[alias] = None
            known = runtime.catalog.loras if runtime.catalog else set()
            missing = [lora for lora in loras if lora not in known] if known else []
            # Unknown lists don't exclude; nor do LoRAs model sync can copy there.
            if all(self._lora_syncable(lora, runtime) for lora in missing) and _lists_upscaler(
                runtime, upscaler
            ):
                with_loras[alias] = titles[alias]
        # Where no server has every LoRA (or the upscaler), the job runs anyway and fails naming
        # the closest ones.
        return Candidate(
            job=job,
            group=(resolved or model_key(name)) if name else None,
            titles=with_loras or titles,
            created=_epoch(job.get("creation_timestamp")),
        )

    def unroutable(self, cand: Candidate) -> Unroutable | None:
        """A job naming a checkpoint that no server (or not its target) lists, or a module,
        style, extension or refiner that none has, when every server concerned has a known
        list."""
        params = cand.job["generation_params"]
        name = params.get("checkpoint_name")
        wanted = requirements.needs(params)
        target = cand.job.get("target_server_alias")
        if not (name or wanted) or not self._registry.runtimes:
            return None
        if (target is None and cand.titles) or (target is not None and target in cand.titles):
            return None  # the common case, decided without looking at every server
        concerned = [
            r for r in self._registry.runtimes.values() if target is None or r.alias == target
        ]
        if not concerned or any(r.alias in cand.titles for r in concerned):
            return None
        where = f"server '{target}'" if target else "any server"
        if wanted:
            lacking = [requirements.missing(wanted, r.catalog, r.checkpoints) for r in concerned]
            if all(lacking):
                return Unroutable(cand, _lacking_message(wanted, concerned, lacking, where))
        if not name or any(r.checkpoints is None for r in concerned):
            return None
        holders = {
            r.alias: found
            for r in concerned
            if (self._resolve(name, r) is not _NOT_LISTED or self._synced_title(name, r))
            and (found := requirements.missing(wanted, r.catalog, r.checkpoints))
        }
        if holders:  # the checkpoint is there, but not with the rest
            return Unroutable(
                cand,
                f"checkpoint '{name}' is only on servers that lack what else the job needs: "
                + "; ".join(
                    f"'{alias}' lacks " + ", ".join(f"{m.need.kind} '{m.need.name}'" for m in found)
                    for alias, found in holders.items()
                ),
            )
        models: list[CheckpointInfo] = [m for r in concerned for m in r.checkpoints or []]
        closest = closest_titles(name, models)
        hint = f"; closest: {', '.join(closest)}" if closest else ""
        return Unroutable(cand, f"checkpoint '{name}' is not on {where}{hint}")

    def refused(
        self,
        params: Mapping[str, Any],
        target: str | None,
        prefix: str = "generation_params",
    ) -> list[FieldProblem]:
        """At submit: each module, style, extension, extension model or refiner of the job
        that no server concerned has, by field, with the closest names. Only servers whose
        lists are known count; with none known nothing is refused (the job waits, and routing
        decides once the lists are in)."""
        concerned = [
            r for r in self._registry.runtimes.values() if target is None or r.alias == target
        ]
        wanted = requirements.needs(params)
        if not wanted or not concerned:
            return []
        problems = []
        where = f"server '{target}'" if target else "any server"
        for need in wanted:
            misses = []
            for r in concerned:
                if need.kind == "refiner checkpoint" and r.checkpoints is None:
                    return []  # unknown there: it may have it
                if need.kind != "refiner checkpoint" and r.catalog is None:
                    return []
                misses += requirements.missing([need], r.catalog, r.checkpoints)
            if len(misses) == len(concerned):
                offered = tuple(dict.fromkeys(o for m in misses for o in m.options))
                message = requirements.Missing(need, offered).message(where)
                problems.append(FieldProblem(path=f"{prefix}.{need.path}", message=message))
        return problems

    def waiting_reason(self, job: Job) -> str | None:
        """Why a job no available server may take waits, when its models are the reason."""
        name = job["generation_params"].get("checkpoint_name")
        if not name or job.get("target_server_alias"):
            return None
        # The last pass's candidate when the job and the lists are unchanged (lists of jobs
        # build a view per pending job).
        cached = self._candidates.get(job["mobilesd_job_id"])
        if cached is not None and cached[0] is job and cached[1] == self._lists_stamp():
            cand = cached[2].candidate
        else:
            cand = self.candidate(job)
        runtimes = self._registry.runtimes
        holders = [runtimes[a] for a in cand.titles if a in runtimes]
        if not holders or any(r.available for r in holders):
            return None
        names = ", ".join(f"'{r.alias}' ({_state(r)})" for r in holders)
        return f"checkpoint '{name}' is only on {names}"


def _lacking_message(
    wanted: list[requirements.Need],
    concerned: list[ServerRuntime],
    lacking: list[list[requirements.Missing]],
    where: str,
) -> str:
    """What no server has (with the closest names over all of them); where each need is on
    some server but none has them all, what each one lacks."""
    everywhere = []
    for need in wanted:
        misses = [m for found in lacking for m in found if m.need == need]
        if len(misses) == len(concerned):
            offered = tuple(dict.fromkeys(o for m in misses for o in m.options))
            everywhere.append(requirements.Missing(need, offered).message(where))
    if everywhere:
        return "; ".join(everywhere)
    return "no server has everything the job needs: " + "; ".join(
        f"'{r.alias}' lacks " + ", ".join(f"{m.need.kind} '{m.need.name}'" for m in found)
        for r, found in zip(concerned, lacking, strict=True)
    )


def _lists_upscaler(runtime: ServerRuntime, upscaler: str | None) -> bool:
    """Whether an upscale job may go there: its list has the upscaler, or is unknown."""
    known = runtime.catalog.upscalers if runtime.catalog else []
    return upscaler is None or not known or upscaler in known


def _state(runtime: ServerRuntime) -> str:
    return "disabled" if not runtime.config.enabled else "offline"


def _epoch(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    try:
        parsed = time.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return 0.0
    return float(calendar.timegm(parsed))
