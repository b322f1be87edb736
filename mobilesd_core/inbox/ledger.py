"""What the inbox has turned into jobs: the record that makes a file's jobs exactly-once.

Before a file's jobs are created, the ledger durably notes the file (path, size, mtime_ns,
SHA-256) with the ids the jobs will get. A crash before the file is moved to `processed/` leaves
that note behind: on restart the same file is recognised, its jobs are looked up by id, and they
are created only if they never were. Once the file has moved, the note says so; the same content
dropped again later is then a user asking twice, and is queued again.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..durable import AppendLog

log = logging.getLogger(__name__)

LEDGER_FILE = "inbox-ledger.jsonl"
HISTORY = 1000  # processed files remembered, for the "dropped again" log line


@dataclass(frozen=True)
class FileKey:
    """A file as it was read: path relative to the inbox, size, mtime_ns, content hash."""

    name: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class Intent:
    key: FileKey
    job_ids: list[str]


@dataclass
class Processed:
    name: str
    moved_to: str
    at: str
    job_ids: list[str] = field(default_factory=list)


class IngestLedger:
    """An append-only log of intents and moves; blocking, so callers run it in a thread."""

    def __init__(self, data_path: Path) -> None:
        self.log = AppendLog(data_path / LEDGER_FILE)
        self.intents: dict[str, Intent] = {}  # by file name: created (or about to be), not moved
        self.by_content: dict[str, Processed] = {}  # sha256 -> the last file that had it

    def load(self) -> None:
        def bad(number: int, why: str) -> None:
            log.error("inbox: %s line %d skipped: %s", self.log.path, number, why)

        for number, _, _, record in self.log.iter_numbered(
            lambda number, _: bad(number, "not a whole record (cut short, or damaged)")
        ):
            try:
                self._apply(record)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                bad(number, f"not a ledger record ({type(exc).__name__}: {exc})")
        self._compact()

    def _apply(self, record: dict[str, Any]) -> None:
        op = record.get("op")
        if op == "intent":
            key = FileKey(**record["key"])
            self.intents[key.name] = Intent(key, list(record["job_ids"]))
        elif op == "moved":
            intent = self.intents.pop(record["name"], None)
            if intent is not None and intent.key.sha256 == record["sha256"]:
                self._remember(intent, record["moved_to"], record["at"])
        elif op == "history":
            done = Processed(record["name"], record["moved_to"], record["at"], record["job_ids"])
            self.by_content[record["sha256"]] = done

    def _remember(self, intent: Intent, moved_to: str, at: str) -> None:
        self.by_content.pop(intent.key.sha256, None)  # re-insert: newest last
        self.by_content[intent.key.sha256] = Processed(
            intent.key.name, moved_to, at, intent.job_ids
        )
        while len(self.by_content) > HISTORY:
            del self.by_content[next(iter(self.by_content))]

    def _compact(self) -> None:
        records: list[dict[str, object]] = [
            {"op": "history", "sha256": sha, **asdict(done)}
            for sha, done in self.by_content.items()
        ]
        records += [
            {"op": "intent", "key": asdict(i.key), "job_ids": i.job_ids}
            for i in self.intents.values()
        ]
        self.log.rewrite(records)

    def open_intent(self, key: FileKey) -> Intent | None:
        """The intent left for exactly this file (same name, size, mtime and content)."""
        intent = self.intents.get(key.name)
        return intent if intent is not None and intent.key == key else None

    def record_intent(self, key: FileKey, job_ids: list[str]) -> None:
        self.log.append([{"op": "intent", "key": asdict(key), "job_ids": job_ids}])
        self.intents[key.name] = Intent(key, job_ids)

    def record_moved(self, key: FileKey, moved_to: str, at: str) -> None:
        self.log.append(
            [
                {
                    "op": "moved",
                    "name": key.name,
                    "sha256": key.sha256,
                    "moved_to": moved_to,
                    "at": at,
                }
            ]
        )
        intent = self.intents.pop(key.name, None) or Intent(key, [])
        self._remember(intent, moved_to, at)

    def settle_gone(self, still_there: set[str]) -> list[Intent]:
        """Close intents whose file is no longer in the inbox as it was (moved before the crash
        could note it, or taken away by the user); returns them."""
        gone = [i for name, i in self.intents.items() if name not in still_there]
        for intent in gone:
            del self.intents[intent.key.name]
        if gone:
            self._compact()
        return gone

    def seen_before(self, sha256: str) -> Processed | None:
        return self.by_content.get(sha256)
