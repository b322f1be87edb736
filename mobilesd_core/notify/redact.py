"""Keeping secrets out of logs and API answers.

Apprise URLs carry their credentials in every part: `tgram://<bot token>/<chat>`,
`discord://<webhook id>/<webhook token>`, `json://user:password@host/path?:header=value`. Apprise
masks passwords in the URLs it logs, but not path tokens or query values, and urllib3 logs request
paths. So every fragment of every configured URL is treated as secret and replaced wherever it
shows up: in log records of those libraries and in the error texts kept for the status route.
Only a URL's scheme (`json`, `ntfy`, `tgram`) is ever shown.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"
MIN_FRAGMENT = 4  # shorter pieces (ports, "v1") are not secrets and would mangle every message
# Libraries that log what Apprise sends: Apprise itself, and requests' urllib3 (request paths,
# retries). A logger's filters do not apply to its children, so each one gets the filter.
NOISY_PREFIXES = ("apprise", "urllib3", "requests")
# Apprise imports requests lazily (with the plugin), so urllib3's module loggers may not exist
# yet when the filter goes on: these are made in advance (urllib3 gets the same objects by name).
KNOWN_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
)

_SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_of(url: str) -> str:
    """`ntfy` for `ntfy://...`; what a URL may be shown as."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else "?"


def url_fragments(url: str) -> set[str]:
    """Every piece of a URL after its scheme that could be a credential."""
    rest = _SCHEME.sub("", url, count=1)
    pieces = {rest}
    for piece in re.split(r"[/:@?&=#,;+\s]+", rest):
        pieces.add(piece)
        pieces.add(unquote(piece))
    return {p for p in pieces if len(p) >= MIN_FRAGMENT}


class Redactor:
    """Replaces known secret fragments with `***` (longest first, so a token containing a
    shorter secret is masked whole)."""

    def __init__(self, urls: Iterable[str] = (), secrets: Iterable[str] = ()) -> None:
        fragments: set[str] = set()
        for url in urls:
            fragments |= url_fragments(url)
        fragments |= {s for s in secrets if s and len(s) >= MIN_FRAGMENT}
        ordered = sorted(fragments, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)


class RedactingFilter(logging.Filter):
    """Rewrites a library's log records through a Redactor before any handler sees them."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the record as it is, args dropped
            message = str(record.msg)
        record.msg = self.redactor(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks quote URLs too (urllib3's MaxRetryError): keep only the redacted text.
            record.msg = f"{record.msg}: {self.redactor(str(record.exc_info[1]))}"
            record.exc_info = None
            record.exc_text = None
        return True


def _noisy_loggers() -> list[logging.Logger]:
    """The loggers of those libraries that exist now (call after importing Apprise: its import
    brings in requests and urllib3, which create their loggers at import)."""
    names = {*NOISY_PREFIXES, *KNOWN_LOGGERS} | {
        name for name in logging.root.manager.loggerDict if name.split(".", 1)[0] in NOISY_PREFIXES
    }
    return [logging.getLogger(name) for name in sorted(names)]


def install_filter(redactor: Redactor) -> RedactingFilter:
    log_filter = RedactingFilter(redactor)
    for logger in _noisy_loggers():
        logger.addFilter(log_filter)
    return log_filter


def remove_filter(log_filter: RedactingFilter) -> None:
    for logger in _noisy_loggers():
        logger.removeFilter(log_filter)
