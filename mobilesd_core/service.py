"""The operations every entry point calls: API routes, inbox, CLI, demo.

Entry points build GenerationParams and call these; they never touch the store, the dispatcher
or Forge themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from .dispatcher import Dispatcher
from .durable import atomic_write_bytes
from .events import EventBus
from .expansion import JobSpec
from .gallery import Gallery
from .jobs.store import BatchNotFound, Conflict, JobNotFound, JobStore, StoreWriteError, finish_time
from .progress import ProgressBoard
from .prompt_variants import PromptExpander
from .schema import (
    TERMINAL_STATUSES,
    FieldProblem,
    GenerationParams,
    InvalidInput,
    ServerConfig,
    ServerUpdate,
    new_batch_id,
    new_job,
    parse_params,
    problems_from_error,
    utc_now_iso,
)
from .servers import ServerRegistry, password_stays_problem

if TYPE_CHECKING:
    from .model_sync import ModelSync
    from .retention import Retention

log = logging.getLogger(__name__)

QUEUE_STATE_FILE = "queue_state.json"


def load_paused(data_path: Path) -> bool:
    path = data_path / QUEUE_STATE_FILE
    try:
        return bool(json.loads(path.read_bytes()).get("paused"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError) as exc:
        log.error("%s unreadable (%s); the queue starts running (not paused)", path, exc)
        return False


class QueueService:
    def __init__(
        self,
        store: JobStore,
        registry: ServerRegistry,
        dispatcher: Dispatcher,
        gallery: Gallery,
        bus: EventBus,
        board: ProgressBoard,
        *,
        model_sync: ModelSync | None = None,
        wildcards_path: Path | None = None,
        retention: Retention | None = None,
    ) -> None:
        # Entry points expand job documents with it (in a thread: it reads wildcard files).
        self.expander = PromptExpander(wildcards_path)
        self.store = store
        self.retention = retention
        self.registry = registry
        self.dispatcher = dispatcher
        self.gallery = gallery
        self.bus = bus
        self.board = board
        self.model_sync = model_sync

    # -- views ------------------------------------------------------------------------------

    def view(self, job: dict[str, Any]) -> dict[str, Any]:
        """A job as clients see it: live progress, and why a pending job waits."""
        job = self.board.overlay(job)
        if job["status"] == "pending":
            reason = self._waiting_reason(job)
            if reason != job.get("waiting_reason"):
                job = {**job, "waiting_reason": reason}
        if self.retention is not None:
            archived = job["status"] in TERMINAL_STATUSES and self.retention.is_archived(
                finish_time(job)
            )
            pinned = job["mobilesd_job_id"] in self.retention.pins
            job = {**job, "pinned": pinned, "archived": archived}
        return job

    def _waiting_reason(self, job: dict[str, Any]) -> str | None:
        target = job.get("target_server_alias")
        if self.dispatcher.paused:
            return "queue paused"
        if target:
            runtime = self.registry.runtimes.get(target)
            if runtime is None:
                return f"target server '{target}' does not exist"
            if not runtime.config.enabled:
                return f"target server '{target}' is disabled"
            if runtime.checked and not runtime.online:
                return f"target server '{target}' is offline"
        elif self.registry.runtimes and not any(
            r.available for r in self.registry.runtimes.values()
        ):
            return "no server is online"
        elif (reason := self.dispatcher.router.waiting_reason(job)) is not None:
            return reason
        elif not self.registry.runtimes:
            return "no server configured"
        return None

    # -- jobs -------------------------------------------------------------------------------

    def unknown_target(
        self, alias: str | None, path: str = "target_server_alias"
    ) -> FieldProblem | None:
        """The problem with a target alias no server has, or None."""
        if alias is None or alias in self.registry.runtimes:
            return None
        known = ", ".join(sorted(self.registry.runtimes)) or "none configured"
        return FieldProblem(path=path, message=f"no server named '{alias}' (known: {known})")

    async def submit(
        self,
        params_list: list[GenerationParams],
        *,
        source: str,
        target_server_alias: str | None = None,
        source_ref: str | None = None,
        extra_fields: dict[str, Any] | None = None,
        batch_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Queue jobs, all or none, in one durable write, as one batch."""
        batch_id = batch_id or new_batch_id()
        jobs = [
            {
                **new_job(
                    p,
                    source=source,
                    target_server_alias=target_server_alias,
                    source_ref=source_ref,
                    batch_id=batch_id,
                ),
                **(extra_fields or {}),
            }
            for p in params_list
        ]
        return await self.submit_prepared(jobs)

    async def submit_specs(
        self,
        specs: list[JobSpec],
        *,
        source: str,
        target_server_alias: str | None = None,
        source_ref: str | None = None,
        extra_fields: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Queue what one request or job file defines (expanded), all or none, as one batch.

        A job's own `server` wins over `target_server_alias`; unknown servers are named by the
        field they came from.
        """
        problems = []
        for spec in specs:
            if spec.server is not None:
                where = f"{spec.path}.server" if spec.path else "server"
                if (problem := self.unknown_target(spec.server, where)) is not None:
                    problems.append(problem)
        if problems:
            raise InvalidInput(list({p.path: p for p in problems}.values()))
        batch_id = new_batch_id()
        jobs = [
            {
                **new_job(
                    spec.params,
                    source=source,
                    target_server_alias=spec.server or target_server_alias,
                    source_ref=source_ref,
                    batch_id=batch_id,
                ),
                **spec.job_fields(),
                **(extra_fields or {}),
            }
            for spec in specs
        ]
        return await self.submit_prepared(jobs)

    async def submit_prepared(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Queue job records built with `new_job` (the inbox fixes their ids in advance)."""
        problems = [
            problem
            for alias in dict.fromkeys(j["target_server_alias"] for j in jobs)
            if (problem := self.unknown_target(alias))
        ]
        # Names no server has (modules, styles, extensions ...): refused now, closest named.
        problems += [p for j in jobs for p in self.dispatcher.router.refused(j)]
        problems = list({(p.path, p.message): p for p in problems}.values())
        if problems:
            raise InvalidInput(problems)
        created = await self.store.add(jobs)
        for job in created:
            log.info("job %s queued from %s", job["mobilesd_job_id"], job["source"])
        self.dispatcher.wake()
        return [self.view(j) for j in created]

    async def exists(self, job_id: str) -> bool:
        """Whether the job is live or archived (deleted ones are gone)."""
        try:
            await self.store.get(job_id)
        except JobNotFound:
            return False
        return True

    async def get(self, job_id: str) -> dict[str, Any]:
        return self.view(await self.store.get(job_id))

    async def list(
        self,
        *,
        statuses: set[str] | None = None,
        q: str | None = None,
        limit: int = 100,
        offset: int = 0,
        batch_id: str | None = None,
        archived: Literal["exclude", "include", "only"] = "exclude",
    ) -> tuple[list[dict[str, Any]], int]:
        """`archived`: "exclude" leaves out jobs finished longer ago than
        RETENTION_ARCHIVE_DAYS, "include" lists them too, "only" lists nothing else."""
        cutoff = self.retention.archive_cutoff() if self.retention is not None else None
        if cutoff is None:  # archiving is off: every finished job is in the list
            if archived == "only":
                return [], 0
            archived = "include"
        jobs, total = await self.store.list_jobs(
            statuses=statuses,
            q=q,
            limit=limit,
            offset=offset,
            batch_id=batch_id,
            finished_after=cutoff if archived == "exclude" else None,
            finished_before=cutoff if archived == "only" else None,
        )
        return [self.view(j) for j in jobs], total

    async def edit(
        self,
        job_id: str,
        params_changes: dict[str, Any] | None,
        *,
        target: str | None = None,
        set_target: bool = False,
    ) -> dict[str, Any]:
        """Change a pending job: `params_changes` merged onto its params, then validated whole.

        Conflict once it left `pending`. The status check and the write happen in one step of
        the event loop (the store's `expect`), so the dispatcher claims either the old job or
        the edited one, never a half-edited one.
        """
        job = await self.store.get(job_id)
        if job["status"] != "pending":
            raise Conflict(
                f"job is {job['status']}; only pending jobs can be edited", job["status"]
            )
        changes: dict[str, Any] = {}
        problems: list[FieldProblem] = []
        if params_changes is not None:
            merged = {**job["generation_params"], **params_changes}
            try:
                changes["generation_params"] = parse_params(merged).model_dump(mode="json")
            except InvalidInput as exc:
                problems.extend(exc.problems)
            old_prompt = job["generation_params"].get("prompt")
            if "prompt" in params_changes and params_changes["prompt"] != old_prompt:
                # A prompt typed by hand no longer comes from the job's template.
                changes["prompt_template"] = None
                changes["prompt_expand"] = None
        if set_target:
            if (problem := self.unknown_target(target)) is not None:
                problems.append(problem)
            changes["target_server_alias"] = target
        if not problems:
            edited_job = {**job, **changes}
            problems += self.dispatcher.router.refused(edited_job)
        if problems:
            raise InvalidInput(problems)
        edited = await self.store.update(job_id, changes, expect={"pending"})
        log.info("job %s edited (%s)", job_id, ", ".join(sorted(changes)) or "nothing")
        self.dispatcher.wake()
        return self.view(edited)

    async def pin(self, job_id: str, pinned: bool) -> dict[str, Any]:
        """Pin a job (kept when old jobs are pruned) or unpin it."""
        job = await self.store.get(job_id)
        if self.retention is None:
            raise Conflict("retention is not set up")
        await self.retention.pins.set(job_id, pinned)
        log.info("job %s %s", job_id, "pinned" if pinned else "unpinned")
        view = self.view(job)
        self.bus.publish("job", view)  # lists show the pin at once
        return view

    async def cancel(self, job_id: str) -> dict[str, Any]:
        job = await self.store.get(job_id)
        if job["status"] in TERMINAL_STATUSES:
            raise Conflict(f"job is already {job['status']}", job["status"])
        was_running = job["status"] == "processing"
        cancelled = await self.store.update(
            job_id,
            {
                "status": "cancelled",
                "completion_timestamp": utc_now_iso(),
                "result_details": {"error": "cancelled by user"},
            },
            expect={"pending", "processing"},
        )
        log.info("job %s cancelled", job_id)
        if was_running:
            await self.dispatcher.interrupt(job_id)
        self.dispatcher.wake()
        return self.view(cancelled)

    async def retry(self, job_id: str, *, source: str = "api") -> dict[str, Any]:
        job = await self.store.get(job_id)
        if job["status"] not in TERMINAL_STATUSES:
            raise Conflict(f"job is {job['status']}; only finished jobs can be retried")
        try:
            params = GenerationParams.model_validate(job["generation_params"])
        except ValidationError as exc:
            raise InvalidInput(problems_from_error(exc, prefix="generation_params")) from None
        target = job.get("target_server_alias")
        if target is not None and target not in self.registry.runtimes:
            target = None  # the server is gone: any server may take the retry
        (created,) = await self.submit(
            [params],
            source=source,
            target_server_alias=target,
            source_ref=job.get("source_ref"),
            # A webhook asked for with the original is told about its retry too.
            extra_fields={
                "retry_of": job_id,
                **_prompt_origin(job),
                **({"webhook_url": job["webhook_url"]} if job.get("webhook_url") else {}),
            },
            batch_id=job.get("batch_id"),  # a retry stays in its batch
        )
        return created

    async def move(self, job_id: str, *, to: str | None = None, before: str | None = None) -> dict:
        order = [j["mobilesd_job_id"] for j in self.store.pending_in_order()]
        if job_id not in order:
            job = await self.store.get(job_id)
            raise Conflict(f"job is {job['status']}; only pending jobs can be moved")
        index = order.index(job_id)
        order.pop(index)
        if before is not None:
            if before == job_id:
                raise InvalidInput([FieldProblem(path="before", message="must be another job")])
            if before not in order:
                raise InvalidInput(
                    [FieldProblem(path="before", message=f"'{before}' is not a pending job")]
                )
            order.insert(order.index(before), job_id)
        elif to == "top":
            order.insert(0, job_id)
        elif to == "bottom":
            order.append(job_id)
        elif to == "up":
            order.insert(max(0, index - 1), job_id)
        elif to == "down":
            order.insert(min(len(order), index + 1), job_id)
        else:
            raise InvalidInput(
                [FieldProblem(path="to", message="must be one of top, bottom, up, down")]
            )
        await self.store.reorder(order)
        self.dispatcher.wake()
        return self.view(await self.store.get(job_id))

    # -- batches ----------------------------------------------------------------------------

    async def batch(self, batch_id: str) -> list[dict[str, Any]]:
        return [self.view(j) for j in await self.store.batch_jobs(batch_id)]

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel every pending or running job of the batch; finished ones stay as they are."""
        active = [
            j["mobilesd_job_id"]
            for j in await self.store.batch_jobs(batch_id)
            if j["status"] not in TERMINAL_STATUSES
        ]
        # Concurrently: the store's group commit then shares fsyncs among them.
        outcomes = await asyncio.gather(*(self.cancel(j) for j in active), return_exceptions=True)
        cancelled = []
        for outcome in outcomes:
            if isinstance(outcome, Conflict | JobNotFound):
                continue  # finished meanwhile
            if isinstance(outcome, BaseException):
                raise outcome
            cancelled.append(outcome["mobilesd_job_id"])
        log.info("batch %s: %d job(s) cancelled", batch_id, len(cancelled))
        return {"batch_id": batch_id, "cancelled": len(cancelled), "mobilesd_job_ids": cancelled}

    async def retry_batch(self, batch_id: str, *, source: str = "api") -> dict[str, Any]:
        """Queue again every failed or cancelled job of the batch not retried yet, in one write.

        The new jobs join the batch; a job that already has a retry in it is skipped, so asking
        twice does not queue twice.
        """
        jobs = await self.store.batch_jobs(batch_id)
        retried = {j.get("retry_of") for j in jobs}
        todo = [
            j
            for j in jobs
            if j["status"] in ("failed", "cancelled") and j["mobilesd_job_id"] not in retried
        ]
        fresh = []
        for job in todo:
            try:
                params = GenerationParams.model_validate(job["generation_params"])
            except ValidationError as exc:
                raise InvalidInput(problems_from_error(exc, prefix="generation_params")) from None
            target = job.get("target_server_alias")
            if target is not None and target not in self.registry.runtimes:
                target = None
            fresh.append(
                {
                    **new_job(
                        params,
                        source=source,
                        target_server_alias=target,
                        source_ref=job.get("source_ref"),
                        batch_id=batch_id,
                    ),
                    "retry_of": job["mobilesd_job_id"],
                    **_prompt_origin(job),
                }
            )
        created = await self.submit_prepared(fresh) if fresh else []
        ids = [j["mobilesd_job_id"] for j in created]
        return {"batch_id": batch_id, "retried": len(ids), "mobilesd_job_ids": ids}

    async def move_batch(
        self, batch_id: str, *, to: str | None = None, before: str | None = None
    ) -> dict[str, Any]:
        """Move the batch's pending jobs as one block (their own order kept)."""
        await self.store.batch_jobs(batch_id)  # BatchNotFound for an unknown id
        order = [j["mobilesd_job_id"] for j in self.store.pending_in_order()]
        pending = {
            j["mobilesd_job_id"]
            for j in self.store.pending_in_order()
            if j.get("batch_id") == batch_id
        }
        if not pending:
            raise Conflict("the batch has no pending jobs to move")
        block = [j for j in order if j in pending]
        rest = [j for j in order if j not in pending]
        at = next(i for i, j in enumerate(order) if j in pending)  # rest jobs before the block
        if before is not None:
            if before in pending:
                raise InvalidInput([FieldProblem(path="before", message="is in this batch")])
            if before not in rest:
                raise InvalidInput(
                    [FieldProblem(path="before", message=f"'{before}' is not a pending job")]
                )
            at = rest.index(before)
        elif to == "top":
            at = 0
        elif to == "bottom":
            at = len(rest)
        elif to == "up":
            at = max(0, at - 1)
        elif to == "down":
            at = min(len(rest), at + 1)
        else:
            raise InvalidInput(
                [FieldProblem(path="to", message="must be one of top, bottom, up, down")]
            )
        await self.store.reorder(rest[:at] + block + rest[at:])
        self.dispatcher.wake()
        return {"batch_id": batch_id, "moved": len(block), "mobilesd_job_ids": block}

    async def delete_batch(self, batch_id: str) -> dict[str, Any]:
        """Remove every job of a finished batch from the list (images stay); all or none."""
        jobs = await self.store.batch_jobs(batch_id)
        active = [j for j in jobs if j["status"] not in TERMINAL_STATUSES]
        if active:
            raise Conflict(
                f"{len(active)} job(s) of the batch are pending or processing; cancel them first",
                active[0]["status"],
            )
        removed = await self.store.remove_finished([j["mobilesd_job_id"] for j in jobs])
        return {"batch_id": batch_id, "removed": len(removed)}

    async def delete(self, job_id: str) -> None:
        job = await self.store.get(job_id)
        if job["status"] not in TERMINAL_STATUSES:
            raise Conflict(f"job is {job['status']}; cancel it first")
        await self.store.remove_finished([job_id])

    async def clear(self, statuses: set[str]) -> int:
        bad = statuses - TERMINAL_STATUSES
        if bad:
            raise InvalidInput(
                [
                    FieldProblem(
                        path="status",
                        message=f"only finished statuses can be cleared, not {sorted(bad)}",
                    )
                ]
            )
        removed = await self.store.remove_finished(self.store.finished_ids(statuses))
        return len(removed)

    async def set_paused(self, paused: bool) -> dict[str, Any]:
        path = self.store.data_path / QUEUE_STATE_FILE
        try:
            await asyncio.to_thread(
                atomic_write_bytes, path, json.dumps({"paused": paused}).encode()
            )
        except OSError as exc:
            raise StoreWriteError(self.store.data_path, exc) from exc
        self.dispatcher.set_paused(paused)
        self.bus.publish("queue", self.queue_state())
        return self.queue_state()

    def queue_state(self) -> dict[str, Any]:
        return {"paused": self.dispatcher.paused, "counts": self.store.count()}

    # -- servers ----------------------------------------------------------------------------

    def servers(self) -> list[dict[str, Any]]:
        out = []
        for runtime in sorted(self.registry.runtimes.values(), key=lambda r: r.alias):
            out.append({**runtime.config.public(), "status": runtime.status()})
        return out

    def server(self, alias: str) -> dict[str, Any]:
        runtime = self.registry.get(alias)
        return {**runtime.config.public(), "status": runtime.status()}

    async def add_server(self, data: dict[str, Any]) -> dict[str, Any]:
        try:
            config = ServerConfig.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput(problems_from_error(exc, model=ServerConfig)) from None
        await self._check_sync_dirs(config, set(data))
        runtime = await self.registry.add(config)
        return {**config.public(), "status": runtime.status()}

    async def update_server(self, alias: str, data: dict[str, Any]) -> dict[str, Any]:
        current = self.registry.get(alias).config
        try:
            update = ServerUpdate.model_validate(data)
            merged = current.model_copy(update=update.model_dump(exclude_unset=True))
            config = ServerConfig.model_validate(merged.model_dump())
        except ValidationError as exc:
            raise InvalidInput(problems_from_error(exc, model=ServerUpdate)) from None
        if (problem := password_stays_problem(current, update.api_url, set(data))) is not None:
            raise InvalidInput([problem])
        await self._check_sync_dirs(config, set(data))
        runtime = await self.registry.update(alias, config)
        if config.alias != alias and self.model_sync is not None:
            await self.model_sync.rename_server(alias, config.alias)  # its copies stay its own
        if config.alias != alias:
            # Pending jobs aimed at the old name follow the rename.
            for job in self.store.pending_in_order():
                if job.get("target_server_alias") == alias:
                    await self.store.update(
                        job["mobilesd_job_id"],
                        {"target_server_alias": config.alias},
                        expect={"pending"},
                    )
        self.dispatcher.wake()
        return {**config.public(), "status": runtime.status()}

    async def _check_sync_dirs(self, config: ServerConfig, fields: set[str]) -> None:
        """The sync folders being set must be writable folders (422 naming the field). Only
        fields in the request are checked: a share that is down must not block other edits."""
        if self.model_sync is None:
            return
        problems = await self.model_sync.check_dirs(config, fields)
        if problems:
            raise InvalidInput(problems)

    async def remove_server(self, alias: str) -> None:
        await self.registry.remove(alias)
        self.dispatcher.wake()

    async def check_server(self, alias: str) -> dict[str, Any]:
        return await self.registry.check(self.registry.get(alias))


def _prompt_origin(job: dict[str, Any]) -> dict[str, Any]:
    """The template a job's prompt came from, carried over to its retry."""
    if job.get("prompt_template") is None:
        return {}
    return {"prompt_template": job["prompt_template"], "prompt_expand": job.get("prompt_expand")}


__all__ = ["BatchNotFound", "Conflict", "JobNotFound", "QueueService"]
