"""What is worth telling people: the events that become notices and webhook deliveries.

Fed with every job change (from the store's listener) and every `server` event. Each rule is a
small function of what it sees; nothing here waits on the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..jobs.types import JobView
from ..schema import TERMINAL_STATUSES
from .batches import Batch, BatchTracker
from .sender import AppriseSender, Notice
from .webhooks import WebhookOutbox

PROMPT_CHARS = 80


def _prompt(job: JobView) -> str:
    prompt = str((job.get("generation_params") or {}).get("prompt") or "").strip()
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= PROMPT_CHARS else prompt[: PROMPT_CHARS - 1] + "…"


class NotificationRules:
    def __init__(
        self,
        sender: AppriseSender,
        outbox: WebhookOutbox,
        batches: BatchTracker,
        *,
        base_url: str,
        live_count: Callable[[], int],
    ) -> None:
        self.sender = sender
        self.outbox = outbox
        self.batches = batches
        self.base_url = base_url.rstrip("/")
        self._live_count = live_count
        self._busy = False  # something ran since the last "queue is empty"
        self._online: dict[str, bool] = {}

    # -- links ------------------------------------------------------------------------------

    def images_link(self, batch: Batch) -> str:
        """The phone page's gallery showing this batch's images (jobs of a batch have
        consecutive ids: the first and last id select them)."""
        if batch.first_id == batch.last_id:
            return f"{self.base_url}/#gallery?jobs={batch.first_id}"
        return f"{self.base_url}/#gallery?jobs={batch.first_id}..{batch.last_id}"

    # -- jobs -------------------------------------------------------------------------------

    def on_job(self, job: JobView) -> None:
        status = job["status"]
        if status not in TERMINAL_STATUSES:
            self._busy = True
            self.batches.observe(job)
            return
        finished = self.batches.observe(job)
        url = job.get("webhook_url")
        if url:
            body = json.dumps(job, separators=(",", ":"), ensure_ascii=False)
            self.outbox.enqueue(url, f"job.{status}", job["mobilesd_job_id"], body)
        if not self.sender.configured:
            return
        if status == "failed":
            self.sender.enqueue(self._job_failed(job))
        if finished is not None and not (finished.total == 1 and finished.counts["failed"]):
            # (a batch of one failed job was just told as "job failed")
            self.sender.enqueue(self._batch_finished(finished, job))
        if self._busy and self._live_count() == 0:
            self._busy = False
            self.sender.enqueue(
                Notice("queue_empty", "MobileSD: queue is empty", "Nothing is pending or running.")
            )

    def _job_failed(self, job: JobView) -> Notice:
        details = job.get("result_details")
        failure = details if details is not None and "error" in details else None
        server = job.get("assigned_server_alias") or (failure.get("server") if failure else None)
        where = f" on {server}" if server else ""
        error = (failure["error"] if failure else "") or "failed"
        lines = [
            f"Job {job['mobilesd_job_id']}{where}: {error}",
            f"Prompt: {_prompt(job)}",
            f"Queue: {self.base_url}/#queue",
        ]
        return Notice("job_failed", "MobileSD: job failed", "\n".join(lines), "failure")

    def _batch_finished(self, batch: Batch, last: JobView) -> Notice:
        counts = batch.counts
        summary = (
            f"{counts['completed']} completed, {counts['failed']} failed, "
            f"{counts['cancelled']} cancelled"
        )
        what = "batch" if batch.total > 1 else "job"
        lines = [f"{summary}.", f"Prompt: {_prompt(last)}"]
        if counts["completed"]:
            lines.append(f"Images: {self.images_link(batch)}")
        level = "warning" if counts["failed"] else "success"
        return Notice(
            "batch_finished", f"MobileSD: {what} finished ({summary})", "\n".join(lines), level
        )

    # -- servers ----------------------------------------------------------------------------

    def on_server(self, status: dict[str, Any]) -> None:
        alias = status.get("alias")
        if not isinstance(alias, str):
            return
        if status.get("removed"):
            self._online.pop(alias, None)
            return
        if not status.get("checked"):
            return  # not probed yet (just added or changed): no state to compare with
        online = bool(status.get("online"))
        before = self._online.get(alias)
        self._online[alias] = online
        if before is None or before == online or not self.sender.configured:
            return  # the first state seen is not a change
        if online:
            notice = Notice(
                "server_online",
                f"MobileSD: server {alias} is back online",
                "It takes jobs again.",
                "success",
            )
        else:
            reason = status.get("error") or "it does not answer"
            notice = Notice(
                "server_offline", f"MobileSD: server {alias} is offline", f"{reason}", "warning"
            )
        self.sender.enqueue(notice)
