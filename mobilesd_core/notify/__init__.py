"""Notifications (Apprise), webhooks (signed JSON POSTs) and the rules that trigger them.

`Notifier` is what the core holds: it starts and stops the parts and answers the status route.
    redact.py    secrets out of logs and answers
    sender.py    Apprise notices, in a worker thread
    webhooks.py  the webhook outbox: durable, retried, signed
    batches.py   which batches are finished, with their counts
    rules.py     which events become notices and deliveries
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from typing import Any

from ..config import Settings, load_or_create_webhook_secret
from ..jobs.types import Job, JobView
from ..phone_link import link_host
from .batches import BatchTracker
from .redact import RedactingFilter, Redactor, install_filter, remove_filter
from .rules import NotificationRules
from .sender import AppriseSender
from .webhooks import SIGNATURE_HEADER, WebhookOutbox, sign

__all__ = ["SIGNATURE_HEADER", "Notifier", "public_base_url", "sign"]


def public_base_url(settings: Settings) -> str:
    """Where the phone page is, for links in notices (never with the token)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return f"http://{link_host(settings.host)}:{settings.port}"


class Notifier:
    def __init__(
        self,
        settings: Settings,
        *,
        live_jobs: Callable[[], list[Job]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._live_jobs = live_jobs
        self._clock = clock
        self._filter: RedactingFilter | None = None
        self._secret = ""
        self.secret_from_env = False
        self.rules: NotificationRules | None = None
        self.outbox: WebhookOutbox | None = None
        self.sender: AppriseSender | None = None

    async def prepare(self) -> None:
        """Check the configuration before anything else starts: a bad NOTIFY_URLS entry is a
        ConfigError naming its position. Reads (or makes) the webhook secret."""
        settings = self.settings
        self._secret, self.secret_from_env = await asyncio.to_thread(
            load_or_create_webhook_secret, settings
        )
        redactor = Redactor(settings.notify_urls, [self._secret])
        if settings.notify_urls:
            # Apprise (only when configured) brings in requests and urllib3; their loggers exist
            # once imported, and the filter must be on them before the first URL is parsed
            # (Apprise logs each URL it loads).
            await asyncio.to_thread(importlib.import_module, "apprise")
        self._filter = install_filter(redactor)
        self.sender = await asyncio.to_thread(AppriseSender, settings.notify_urls, redactor)

    async def start(self) -> None:
        settings = self.settings
        assert self.sender is not None, "prepare() first"
        secret = self._secret
        self.outbox = WebhookOutbox(
            settings.data_path,
            secret,
            max_attempts=settings.webhook_max_attempts,
            backoff=settings.webhook_backoff,
            backoff_max=settings.webhook_backoff_max,
            timeout=settings.webhook_timeout,
            clock=self._clock,
        )
        batches = BatchTracker(settings.data_path)
        await batches.start(self._live_jobs())
        self.rules = NotificationRules(
            self.sender,
            self.outbox,
            batches,
            base_url=public_base_url(settings),
            live_count=lambda: len(self._live_jobs()),
        )
        await self.outbox.start()
        self.sender.start()

    async def stop(self) -> None:
        if self.sender is not None:
            await self.sender.stop()
        if self.outbox is not None:
            await self.outbox.stop()
        if self.rules is not None:
            await self.rules.batches.stop()
            self.rules = None
        if self._filter is not None:
            remove_filter(self._filter)
            self._filter = None

    def on_job(self, job: JobView) -> None:
        if self.rules is not None:
            self.rules.on_job(job)

    def on_event(self, name: str, data: Any) -> None:
        if self.rules is not None and name == "server" and isinstance(data, dict):
            self.rules.on_server(data)

    def status(self) -> dict[str, Any]:
        sender = self.sender.status() if self.sender else {"configured": False, "targets": []}
        webhooks = self.outbox.status() if self.outbox else {}
        return {
            "notify": sender,
            "webhooks": {
                **webhooks,
                "secret_source": "WEBHOOK_SECRET" if self.secret_from_env else "generated",
            },
            "public_url": public_base_url(self.settings),
        }
