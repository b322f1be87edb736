"""The operations every entry point calls: API routes, inbox, CLI, demo.

Entry points build GenerationParams and call these; they never touch the store, the dispatcher
or Forge themselves.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import ValidationError

from .dispatcher import Dispatcher
from .durable import atomic_write_bytes
from .events import EventBus
from .expansion import JobSpec
from .gallery import Gallery
from .jobs import transitions
from .jobs.images import JobImages
from .jobs.store import BatchNotFound, Conflict, JobNotFound, JobStore, StoreWriteError
from .jobs.types import (
    BatchCancelled,
    BatchDeleted,
    BatchMoved,
    BatchRetried,
    Job,
    JobExtras,
    JobSource,
    JobView,
    QueueState,
)
from .jobs.view import JobViews
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
        images: JobImages | None = None,
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
        self.images = images  # init images, masks, upscale sources: stored at creation
        # A job as clients see it: live progress, why a pending job waits, retention. The
        # dispatcher's progress events use the same view as every route and other event.
        self.view = JobViews(board, waiting_reason=self._waiting_reason, retention=retention)
        dispatcher.view = self.view

    # -- views ------------------------------------------------------------------------------

    def _waiting_reason(self, job: Job) -> str | None:
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
        source: JobSource,
        target_server_alias: str | None = None,
        source_ref: str | None = None,
        extra_fields: JobExtras | None = None,
        batch_id: str | None = None,
    ) -> list[JobView]:
        """Queue jobs, all or none, in one durable write, as one batch."""
        batch_id = batch_id or new_batch_id()
        jobs: list[Job] = [
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
        source: JobSource,
        target_server_alias: str | None = None,
        source_ref: str | None = None,
        extra_fields: JobExtras | None = None,
        job_ids: builtins.list[str] | None = None,
        inbox: tuple[Path, str] | None = None,
    ) -> builtins.list[JobView]:
        """Queue what one request or job file defines (expanded), all or none, as one batch.

        A job's own `server` wins over `target_server_alias`; unknown servers are named by the
        field they came from. `job_ids`: the ids the jobs get, one per spec (the inbox notes
        them durably before the jobs exist, so a crash cannot create a file's jobs twice).
        `inbox`: (inbox root, the job file's folder) where images named by path are read.
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
        jobs: list[Job] = [
            {
                **new_job(
                    spec.params,
                    source=source,
                    target_server_alias=spec.server or target_server_alias,
                    source_ref=source_ref,
                    batch_id=batch_id,
                ),
                **cast(JobExtras, spec.job_fields()),  # expansion's dict: checked there
                **(extra_fields or {}),
            }
            for spec in specs
        ]
        if job_ids is not None:
            for job, job_id in zip(jobs, job_ids, strict=True):
                job["mobilesd_job_id"] = job_id
        paths = [spec.path for spec in specs] if inbox is not None else None
        return await self.submit_prepared(jobs, inbox=inbox, paths=paths)

    async def submit_prepared(
        self,
        jobs: list[Job],
        *,
        inbox: tuple[Path, str] | None = None,
        paths: builtins.list[str] | None = None,
    ) -> list[JobView]:
        """Queue job records built with `new_job`; images as `resolve_images` stores them."""
        problems = [
            problem
            for alias in dict.fromkeys(j["target_server_alias"] for j in jobs)
            if (problem := self.unknown_target(alias))
        ]
        # Names no server has (modules, styles, extensions ...): refused now, closest named.
        problems += [
            p
            for j in jobs
            for p in self.dispatcher.router.refused(
                j["generation_params"], j["target_server_alias"]
            )
        ]
        problems = list({(p.path, p.message): p for p in problems}.values())
        if problems:
            raise InvalidInput(problems)
        await self.resolve_images(jobs, inbox=inbox, paths=paths)
        created = await self.store.add(jobs)
        for job in created:
            log.info("job %s queued from %s", job["mobilesd_job_id"], job["source"])
        self.dispatcher.wake()
        return [self.view(j) for j in created]

    async def resolve_images(
        self,
        jobs: builtins.list[Job],
        *,
        inbox: tuple[Path, str] | None = None,
        paths: builtins.list[str] | None = None,
    ) -> None:
        """Store the images the jobs read (jobs/images.py); InvalidInput naming each field.
        `paths`: where each job is in a job file (its problems are named so)."""
        if self.images is None:
            return
        problems: builtins.list[FieldProblem] = []
        for i, job in enumerate(jobs):
            if paths is not None:
                prefix = paths[i]
            elif len(jobs) == 1:
                prefix = "generation_params"
            else:
                prefix = f"jobs[{i}].generation_params"
            problems += await self.images.resolve(
                job["generation_params"], prefix=prefix, inbox=inbox
            )
        if problems:
            raise InvalidInput(problems)

    async def exists(self, job_id: str) -> bool:
        """Whether the job is live or archived (deleted ones are gone)."""
        try:
            await self.store.get(job_id)
        except JobNotFound:
            return False
        return True

    async def get(self, job_id: str) -> JobView:
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
    ) -> tuple[list[JobView], int]:
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
    ) -> JobView:
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
                if self.images is not None:
                    problems += await self.images.resolve(changes["generation_params"])
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
            problems += self.dispatcher.router.refused(
                {**job["generation_params"], **changes.get("generation_params", {})},
                changes.get("target_server_alias", job["target_server_alias"]),
            )
        if problems:
            raise InvalidInput(problems)
        edited = await self.store.update(job_id, changes, expect={"pending"})
        log.info("job %s edited (%s)", job_id, ", ".join(sorted(changes)) or "nothing")
        self.dispatcher.wake()
        return self.view(edited)

    async def pin(self, job_id: str, pinned: bool) -> JobView:
        """Pin a job (kept when old jobs are pruned) or unpin it."""
        job = await self.store.get(job_id)
        if self.retention is None:
            raise Conflict("retention is not set up")
        await self.retention.pins.set(job_id, pinned)
        log.info("job %s %s", job_id, "pinned" if pinned else "unpinned")
        view = self.view(job)
        self.bus.publish("job", view)  # lists show the pin at once
        return view

    async def cancel(self, job_id: str) -> JobView:
        job = await self.store.get(job_id)
        if job["status"] in TERMINAL_STATUSES:
            raise Conflict(f"job is already {job['status']}", job["status"])
        was_running = job["status"] == "processing"
        cancelled = await self.store.apply(job_id, transitions.cancel(job))
        log.info("job %s cancelled", job_id)
        if was_running:
            await self.dispatcher.interrupt(job_id)
        self.dispatcher.wake()
        return self.view(cancelled)

    async def retry(self, job_id: str, *, source: JobSource = "api") -> JobView:
        """Queue a finished job again as a new job in its batch (`retry_of` names the old)."""
        job = await self.store.get(job_id)
        if job["status"] not in TERMINAL_STATUSES:
            raise Conflict(f"job is {job['status']}; only finished jobs can be retried")
        (created,) = await self.submit_prepared([self._retry_of(job, source)])
        return created

    def _retry_of(self, job: Job, source: JobSource) -> Job:
        """The new pending job that retries `job`: same params, batch, origin and webhook."""
        try:
            params = GenerationParams.model_validate(job["generation_params"])
        except ValidationError as exc:
            raise InvalidInput(problems_from_error(exc, prefix="generation_params")) from None
        target = job.get("target_server_alias")
        if target is not None and target not in self.registry.runtimes:
            target = None  # the server is gone: any server may take the retry
        fresh = new_job(
            params,
            source=source,
            target_server_alias=target,
            source_ref=job.get("source_ref"),
            batch_id=job.get("batch_id"),  # a retry stays in its batch
        )
        fresh["retry_of"] = job["mobilesd_job_id"]
        if job.get("prompt_template") is not None:  # the template its prompt came from
            fresh["prompt_template"] = job.get("prompt_template")
            fresh["prompt_expand"] = job.get("prompt_expand")
        if job.get("webhook_url"):  # a webhook asked for with the original hears of its retry
            fresh["webhook_url"] = job["webhook_url"]
        return fresh

    async def move(
        self, job_id: str, *, to: str | None = None, before: str | None = None
    ) -> JobView:
        order = [j["mobilesd_job_id"] for j in self.store.pending_in_order()]
        if job_id not in order:
            job = await self.store.get(job_id)
            raise Conflict(f"job is {job['status']}; only pending jobs can be moved")
        await self._move_block(order, [job_id], to=to, before=before, same="must be another job")
        return self.view(await self.store.get(job_id))

    async def _move_block(
        self,
        order: builtins.list[str],
        block: builtins.list[str],
        *,
        to: str | None,
        before: str | None,
        same: str,
    ) -> None:
        """Move `block` (pending ids, in queue order, from `order`, the run order) as one
        block: `to` top/bottom/up/down, or `before` another pending job (`same`: what is wrong
        when that job is in the block)."""
        inside = set(block)
        rest = [j for j in order if j not in inside]
        at = next(i for i, j in enumerate(order) if j in inside)  # rest jobs before the block
        if before is not None:
            if before in inside:
                raise InvalidInput([FieldProblem(path="before", message=same)])
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

    # -- batches ----------------------------------------------------------------------------

    async def batch(self, batch_id: str) -> builtins.list[JobView]:
        return [self.view(j) for j in await self.store.batch_jobs(batch_id)]

    async def cancel_batch(self, batch_id: str) -> BatchCancelled:
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

    async def retry_batch(self, batch_id: str, *, source: JobSource = "api") -> BatchRetried:
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
        fresh = [self._retry_of(job, source) for job in todo]
        created = await self.submit_prepared(fresh) if fresh else []
        ids = [j["mobilesd_job_id"] for j in created]
        return {"batch_id": batch_id, "retried": len(ids), "mobilesd_job_ids": ids}

    async def move_batch(
        self, batch_id: str, *, to: str | None = None, before: str | None = None
    ) -> BatchMoved:
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
        await self._move_block(order, block, to=to, before=before, same="is in this batch")
        return {"batch_id": batch_id, "moved": len(block), "mobilesd_job_ids": block}

    async def delete_batch(self, batch_id: str) -> BatchDeleted:
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

    async def set_paused(self, paused: bool) -> QueueState:
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

    def queue_state(self) -> QueueState:
        return {"paused": self.dispatcher.paused, "counts": self.store.count()}

    # -- servers ----------------------------------------------------------------------------

    def servers(self) -> builtins.list[dict[str, Any]]:
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


__all__ = ["BatchNotFound", "Conflict", "JobNotFound", "QueueService"]
