"""Server-side sessions for the page's cookie: revocable, expiring, kept across restarts.

Signing in (`/login`) makes a random 256-bit session id; the browser keeps it in the cookie, the
core keeps only an HMAC of it, keyed with the access token, in `CONFIG_DATA_PATH/sessions.json`
(mode 0600, replaced atomically). So the file hands out no session, a stolen file cannot be used
to test guesses of the token (the ids are not in it), and changing the token signs every browser
out (no stored HMAC matches any more). Logout deletes one session, "sign out everywhere" all.

A session lasts `SESSION_LIFETIME` from its last renewal; a session in use is renewed at most
once a day (one write), so a phone used now and then stays signed in, and one left alone for
the lifetime is signed out.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..durable import atomic_write_bytes
from ..errors import StorageUnavailable

log = logging.getLogger(__name__)

SESSIONS_FILE = "sessions.json"
SESSION_LIFETIME = 90 * 24 * 3600.0
RENEW_AFTER = 24 * 3600.0
MAX_SESSIONS = 200  # the oldest go first; a person has a few browsers, not hundreds
_FORMAT = 1


class SessionWriteError(StorageUnavailable):
    """The sessions file could not be written; nothing was changed."""


@dataclass
class Session:
    key: str  # HMAC-SHA256 of the session id, keyed with the access token (hex)
    created: float  # Unix time
    renewed: float
    expires: float


class SessionStore:
    def __init__(
        self,
        path: Path,
        token: str,
        *,
        lifetime: float = SESSION_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.lifetime = lifetime
        self.clock = clock
        self._secret = token.encode("utf-8", "surrogateescape")
        self._sessions: dict[str, Session] = self._load()
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def _key(self, session_id: str) -> str:
        raw = session_id.encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, raw, hashlib.sha256).hexdigest()

    def _load(self) -> dict[str, Session]:
        try:
            data = json.loads(self.path.read_bytes())
            entries = [Session(**entry) for entry in data["sessions"]]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Losing sessions costs a sign-in; refusing to start would cost more.
            log.warning("sessions: cannot read %s (%s); browsers sign in again", self.path, exc)
            return {}
        now = self.clock()
        return {s.key: s for s in entries if s.expires > now}

    def lookup(self, session_id: str) -> Session | None:
        """The live session with this id, or None."""
        session = self._sessions.get(self._key(session_id))
        if session is None or session.expires <= self.clock():
            return None
        return session

    def active(self) -> list[Session]:
        now = self.clock()
        return sorted(
            (s for s in self._sessions.values() if s.expires > now), key=lambda s: s.created
        )

    async def create(self) -> str:
        """A new session; returns its id (for the cookie, never stored)."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(self._key(session_id), now, now, now + self.lifetime)
        async with self._lock:
            self._sessions[session.key] = session
            self._prune(now)
            await self._save(undo=lambda: self._sessions.pop(session.key, None))
        return session_id

    def renewal_due(self, session: Session) -> bool:
        return self.clock() - session.renewed >= RENEW_AFTER

    async def renew(self, session: Session) -> bool:
        """Extend `session` to a full lifetime from now; False when that could not be saved
        (the session then keeps its old expiry)."""
        async with self._lock:
            old = (session.renewed, session.expires)
            now = self.clock()
            session.renewed, session.expires = now, now + self.lifetime

            def undo() -> None:
                session.renewed, session.expires = old

            try:
                await self._save(undo=undo)
            except SessionWriteError as exc:
                log.warning("sessions: could not renew a session: %s", exc.strerror)
                return False
        return True

    async def revoke(self, session_id: str) -> bool:
        key = self._key(session_id)
        async with self._lock:
            session = self._sessions.pop(key, None)
            if session is None:
                return False
            await self._save(undo=lambda: self._sessions.__setitem__(key, session))
        return True

    async def revoke_all(self) -> int:
        async with self._lock:
            gone = dict(self._sessions)
            self._sessions.clear()
            await self._save(undo=lambda: self._sessions.update(gone))
        return sum(1 for s in gone.values() if s.expires > self.clock())

    def _prune(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]
        if len(self._sessions) > MAX_SESSIONS:
            oldest = sorted(self._sessions.values(), key=lambda s: s.renewed)
            for session in oldest[: len(self._sessions) - MAX_SESSIONS]:
                del self._sessions[session.key]

    async def _save(self, *, undo: Callable[[], object]) -> None:
        """Write the sessions (call with the lock held); on failure `undo` the change in
        memory too, so memory never promises what the disk does not hold."""
        data = {"format": _FORMAT, "sessions": [asdict(s) for s in self._sessions.values()]}
        raw = json.dumps(data, indent=1).encode()
        try:
            await asyncio.to_thread(atomic_write_bytes, self.path, raw, mode=0o600)
        except OSError as exc:
            undo()
            raise SessionWriteError(
                exc.errno, f"cannot write {self.path}: {exc.strerror}"
            ) from None
