"""Messages from the I/O workers to the UI. Workers never touch widgets; handlers do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message


@dataclass
class Snapshot:
    """Everything the screens show, loaded in one go (start, reconnect, `reset`)."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    jobs_total: int = 0
    servers: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)  # the newest page
    images_total: int = 0
    paused: bool = False


class ConnectionChanged(Message):
    """The event stream's state: connecting, online, offline or unauthorized."""

    def __init__(self, state: str, detail: str = "") -> None:
        super().__init__()
        self.state = state
        self.detail = detail


class Reloaded(Message):
    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class JobChanged(Message):
    """A job's new state. A burst of progress for one job collapses to its newest."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__()
        self.job = job
        self.job_id: str = job["mobilesd_job_id"]

    def can_replace(self, message: Message) -> bool:
        # Only progress may be dropped: a status change must be seen (it may notify).
        return (
            isinstance(message, JobChanged)
            and message.job_id == self.job_id
            and message.job.get("status") == self.job.get("status")
        )


class JobRemoved(Message):
    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id


class ServerChanged(Message):
    """A server's status (`removed: True` when it is gone)."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__()
        self.data = data


class ImageChanged(Message):
    """`added` or `removed` gallery entry."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__()
        self.data = data


class QueueChanged(Message):
    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__()
        self.data = data


class DownloadChanged(Message):
    """A Civitai download's progress or end (the core's `download` event)."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__()
        self.data = data

    def can_replace(self, message: Message) -> bool:
        # Progress of one download arrives several times a second: only the latest counts.
        return isinstance(message, DownloadChanged) and message.data.get(
            "download_id"
        ) == self.data.get("download_id")
