"""The one event-stream consumer: follow /api/v1/events and turn events into messages.

It resends `Last-Event-ID` on reconnect, reloads everything on `reset` (or when it had no id to
resume from), backs off with jitter while the core is away, and stops for good on 401 (a wrong
token does not get better by retrying). A stream silent for three heartbeats counts as dead
(`EVENT_READ_TIMEOUT` in api_client), so a frozen SSH/NAT path turns into a reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from textual.message import Message

from .api_client import ApiError, CoreApi, Unauthorized, Unreachable
from .messages import (
    ConnectionChanged,
    DownloadChanged,
    ImageChanged,
    JobChanged,
    JobRemoved,
    QueueChanged,
    Reloaded,
    ServerChanged,
    Snapshot,
)

log = logging.getLogger(__name__)

PAGE = 1000  # the API's largest page
# Newest first; older pages load when the grid's end comes into view.
GALLERY_PAGE = 200


async def load_snapshot(api: CoreApi, gallery_page: int = GALLERY_PAGE) -> Snapshot:
    """Jobs (every page), servers, queue state and the newest page of gallery entries."""
    first = await api.jobs(limit=PAGE, offset=0)
    jobs = list(first.jobs)
    while len(jobs) < first.total:
        page = await api.jobs(limit=PAGE, offset=len(jobs))
        if not page.jobs:
            break
        jobs.extend(page.jobs)
    servers = await api.servers()
    state = await api.queue_state()
    images = await api.images(limit=gallery_page)
    return Snapshot(
        jobs=jobs,
        jobs_total=first.total,
        servers=servers,
        images=images.images,
        images_total=images.total,
        paused=bool(state.get("paused")),
    )


def message_for(name: str, data: object) -> Message | None:
    if not isinstance(data, dict):
        return None
    if name == "job" and "mobilesd_job_id" in data:
        return JobChanged(data)
    if name == "job_removed" and "mobilesd_job_id" in data:
        return JobRemoved(str(data["mobilesd_job_id"]))
    if name == "server" and "alias" in data:
        return ServerChanged(data)
    if name == "image":
        return ImageChanged(data)
    if name == "queue":
        return QueueChanged(data)
    if name == "download" and "download_id" in data:
        return DownloadChanged(data)
    return None


class EventConsumer:
    def __init__(
        self,
        api: CoreApi,
        post: Callable[[Message], object],
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        jitter: Callable[[], float] = random.random,
        gallery_page: int = GALLERY_PAGE,
    ) -> None:
        self.api = api
        self.gallery_page = gallery_page
        self.post = post
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.last_event_id: int | None = None
        self.failures = 0

    def delay(self) -> float:
        """Exponential backoff with 'equal jitter': never zero, never in lock-step."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** min(self.failures, 10))
        return ceiling / 2 + ceiling / 2 * self.jitter()

    async def reload(self) -> None:
        self.post(Reloaded(await load_snapshot(self.api, self.gallery_page)))

    async def run(self) -> None:
        """Follow the stream until cancelled or refused (401)."""
        while True:
            self.post(ConnectionChanged("connecting", self.api.url))
            try:
                await self._follow()
                detail = "the event stream ended"
            except Unauthorized as exc:
                self.post(ConnectionChanged("unauthorized", exc.message))
                return
            except Unreachable as exc:
                detail = exc.message
            except ApiError as exc:
                detail = f"the core answered {exc.status}: {exc.message}"
            except (ValueError, KeyError, TypeError) as exc:
                # An answer of a shape we do not know (older core?): keep trying, say so.
                detail = f"unexpected answer from the core ({type(exc).__name__}: {exc})"
                log.warning("event consumer: %s", detail)
            self.failures += 1
            wait = self.delay()
            self.post(ConnectionChanged("offline", f"{detail}; retrying in {wait:.0f} s"))
            await asyncio.sleep(wait)

    async def _follow(self) -> None:
        stream = self.api.events(self.last_event_id)
        try:
            async for event in stream:
                if event.name == "open":
                    self.failures = 0
                    if self.last_event_id is None:
                        # Nothing to resume from: load the world, then apply what follows.
                        await self.reload()
                    self.post(ConnectionChanged("online", self.api.url))
                    continue
                if event.id is not None:
                    self.last_event_id = event.id
                if event.name == "reset":
                    await self.reload()
                    continue
                message = message_for(event.name, event.data)
                if message is not None:
                    self.post(message)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
