"""Ending asyncio tasks without swallowing the caller's own cancellation.

`task.cancel()` then `with suppress(CancelledError): await task` cannot tell the task's expected
CancelledError from one aimed at the caller: a stop that was itself cancelled (a shutdown
deadline, Ctrl-C) carried on as if nothing had happened. `asyncio.wait` never raises the
awaited tasks' outcome, so whatever it raises is the caller's.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_ended(*tasks: asyncio.Future[Any] | None) -> None:
    """Wait until every task has ended; raise the first error one ended with (a task's own
    cancellation is not an error). The caller's cancellation propagates at once, leaving the
    tasks as they are."""
    live = [task for task in tasks if task is not None]
    if not live:
        return
    await asyncio.wait(live)
    # Each outcome is read, so none is logged as "never retrieved".
    errors = [task.exception() for task in live if not task.cancelled()]
    first = next((error for error in errors if error is not None), None)
    if first is not None:
        raise first


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel the tasks and wait until all have ended (see `wait_ended`). `None`s are skipped,
    so an optional task needs no check at the call."""
    for task in tasks:
        if task is not None:
            task.cancel()
    await wait_ended(*tasks)
