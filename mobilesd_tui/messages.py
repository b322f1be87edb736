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


@dataclass
class ConnectionChanged(Message):
    """The event stream's state: connecting, online, offline or unauthorized."""

    state: str
    detail: str = ""


@dataclass
class Reloaded(Message):
    snapshot: Snapshot


@dataclass
class JobChanged(Message):
    """A job's new state. A burst of progress for one job collapses to its newest."""

    job: dict[str, Any]
    job_id: str = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.job_id = self.job["mobilesd_job_id"]

    def can_replace(self, message: Message) -> bool:
        # Only progress may be dropped: a status change must be seen (it may notify).
        return (
            isinstance(message, JobChanged)
            and message.job_id == self.job_id
            and message.job.get("status") == self.job.get("status")
        )


@dataclass
class JobRemoved(Message):
    job_id: str


@dataclass
class ServerChanged(Message):
    """A server's status (`removed: True` when it is gone)."""

    data: dict[str, Any]


@dataclass
class ImageChanged(Message):
    """`added` or `removed` gallery entry."""

    data: dict[str, Any]


@dataclass
class QueueChanged(Message):
    data: dict[str, Any]


@dataclass
class DownloadChanged(Message):
    """A Civitai download's progress or end (the core's `download` event)."""

    data: dict[str, Any]

    def can_replace(self, message: Message) -> bool:
        # Progress of one download arrives several times a second: only the latest counts.
        return isinstance(message, DownloadChanged) and message.data.get(
            "download_id"
        ) == self.data.get("download_id")
