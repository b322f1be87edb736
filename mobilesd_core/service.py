"""The operations every entry point calls: API routes, inbox, CLI, demo.

Entry points build GenerationParams and call these; they never touch the store, the dispatcher
or Forge themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .dispatcher import Dispatcher
from .events import EventBus
from .gallery import Gallery
from .progress import ProgressBoard
from .schema import (
    TERMINAL_STATUSES,
    FieldProblem,
    GenerationParams,
    InvalidInput,
    ServerConfig,
    ServerUpdate,
    new_job,
    problems_from_error,
    utc_now_iso,
)
from .servers import ServerRegistry
from .storage import atomic_write_bytes
from .store import Conflict, JobNotFound, JobStore, StoreWriteError

log = logging.getLogger(__name__)

QUEUE_STATE_FILE = "queue_state.json"


def load_paused(data_path: Path) -> bool:
    try:
        return bool(json.loads((data_path / QUEUE_STATE_FILE).read_text()).get("paused"))
    except (OSError, ValueError, AttributeError):
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
    ) -> None:
        self.store = store
        self.registry = registry
        self.dispatcher = dispatcher
        self.gallery = gallery
        self.bus = bus
        self.board = board

    # -- views ------------------------------------------------------------------------------

    def view(self, job: dict[str, Any]) -> dict[str, Any]:
        """A job as clients see it: live progress, and why a pending job waits."""
        job = self.board.overlay(job)
        if job["status"] == "pending":
            reason = self._waiting_reason(job)
            if reason != job.get("waiting_reason"):
                job = {**job, "waiting_reason": reason}
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
    ) -> list[dict[str, Any]]:
        """Queue jobs, all or none, in one durable write."""
        jobs = [
            {
                **new_job(
                    p, source=source, target_server_alias=target_server_alias, source_ref=source_ref
                ),
                **(extra_fields or {}),
            }
            for p in params_list
        ]
        return await self.submit_prepared(jobs)

    async def submit_prepared(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Queue job records built with `new_job` (the inbox fixes their ids in advance)."""
        problems = [
            problem
            for alias in dict.fromkeys(j["target_server_alias"] for j in jobs)
            if (problem := self.unknown_target(alias))
        ]
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
    ) -> tuple[list[dict[str, Any]], int]:
        jobs, total = await self.store.list_jobs(statuses=statuses, q=q, limit=limit, offset=offset)
        return [self.view(j) for j in jobs], total

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
            extra_fields={"retry_of": job_id},
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
        runtime = await self.registry.update(alias, config)
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

    async def remove_server(self, alias: str) -> None:
        await self.registry.remove(alias)
        self.dispatcher.wake()

    async def check_server(self, alias: str) -> dict[str, Any]:
        return await self.registry.check(self.registry.get(alias))


__all__ = ["Conflict", "JobNotFound", "QueueService"]
