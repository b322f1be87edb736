"""The core's listening socket, made to behave when the process runs out of file descriptors.

When `accept()` fails with EMFILE, asyncio logs the error, stops watching the socket and tries
again a second later, which is right; but it carries on with the rest of its accept loop (up to
`backlog` calls), logging and scheduling a retry for each one. Every retry then does the same, so
the log and the retries multiply: 9,500 log records a second, 456 MB of container log in 90 s,
were measured. `GuardedListener.accept` fails once per loop pass and answers "nothing waiting"
to the rest of the pass, so there is one error and one retry a second, as asyncio intends (and
`logflood` keeps even that out of the log after the first few).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket

log = logging.getLogger(__name__)

OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
FD_LIMIT_WANTED = 65536


class GuardedListener(socket.socket):
    """A listening socket whose accept fails at most once per event-loop pass."""

    _resting = False

    def accept(self) -> tuple[socket.socket, object]:
        if self._resting:
            raise BlockingIOError(errno.EAGAIN, "resting after running out of descriptors")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in OUT_OF_DESCRIPTORS:
                self._resting = True
                with contextlib.suppress(RuntimeError):  # no loop: nobody would call again
                    asyncio.get_running_loop().call_soon(self._wake)
            raise

    def _wake(self) -> None:
        self._resting = False


def guarded(sock: socket.socket) -> GuardedListener:
    """The same listening socket (its descriptor) as a GuardedListener."""
    return GuardedListener(sock.family, sock.type, sock.proto, fileno=sock.detach())


def raise_fd_limit(wanted: int = FD_LIMIT_WANTED) -> int:
    """Raise this process's soft limit on open files towards its hard limit (Docker's soft
    limit is often 1024 under a far higher hard one): a few hundred slow clients should not be
    enough to run out. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open-file limit from %d: %s", soft, exc)
            return soft
        return target
    return soft
