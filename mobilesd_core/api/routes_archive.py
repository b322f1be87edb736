"""GET /api/v1/gallery/archive: a zip of jobs' images and their JSON sidecars, streamed.

The zip is never held in memory or on disk. A thread runs `zipfile` against a write-only sink
(zipfile then writes local headers with data descriptors, as it cannot seek back); the sink hands
each ~256 KiB to the event loop and waits until the response took it, so a slow phone slows the
thread instead of filling memory. Entries are stored, not deflated: PNGs do not compress.

Those threads are the archive route's own (ARCHIVE_WORKERS of them), not the default executor
that saving images, thumbnails and scans share: a client that stops reading holds its thread,
and six such phones must not stop finished jobs from saving. A chunk the client has not taken
within `archive_stall_timeout` seconds ends the download: the connection is reset, the thread
freed. Files are opened without following links, and sidecars leave without webhook URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import struct
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from aiohttp import web

from ..gallery import Gallery, GalleryError, open_regular, public_sidecar
from ..schema import FieldProblem, InvalidInput
from .errors import ApiError
from .keys import CORE

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

CHUNK = 256 * 1024
MAX_JOB_IDS = 1000
# MobileSD's sidecars are a few KB; a bigger JSON beside an image is a user's, and is copied as
# it is rather than read whole to leave its webhook URLs out.
MAX_SIDECAR = 4 * 1024 * 1024
# Zips streamed at once; more wait for a free worker. A stalled client holds one for at most
# `archive_stall_timeout`, so waiting downloads start within that.
ARCHIVE_WORKERS = 4
# Extra seconds a zip thread waits for the loop beyond the stall timeout before it gives up
# (the loop is shutting down and will not run its write any more).
LOOP_GRACE = 5.0
_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
# Zip timestamps cannot say anything before 1980 or after 2107.
_ZIP_EARLIEST = (1980, 1, 1, 0, 0, 0)
_ZIP_LATEST = (2107, 12, 31, 23, 59, 58)

ARCHIVE_POOL = web.AppKey("archive_pool", ThreadPoolExecutor)
# Requests are not hashable: keyed by id().
OPEN_ARCHIVES = web.AppKey("open_archives", dict)


def setup(app: web.Application) -> None:
    """The archive workers, and the hooks that end open downloads at shutdown."""
    pool = ThreadPoolExecutor(max_workers=ARCHIVE_WORKERS, thread_name_prefix="archive")
    app[ARCHIVE_POOL] = pool
    app[OPEN_ARCHIVES] = {}

    async def drop_open(app: web.Application) -> None:
        for request in list(app[OPEN_ARCHIVES].values()):
            _drop(request)

    async def close_pool(app: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    app.on_shutdown.append(drop_open)
    app.on_cleanup.append(close_pool)


class _Gone(Exception):
    """The client went away; the zip thread stops."""


class _Stalled(Exception):
    """The client took nothing for the stall timeout."""


class _Sink:
    """A write-only, unseekable file for zipfile: buffers up to CHUNK, then `send`s it."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send = send
        self._buffer = bytearray()
        self.sent = 0

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            self._send(chunk)
            self.sent += len(chunk)

    def close(self) -> None:
        """Part of the file protocol zipfile's types ask for; zipfile never closes a file it
        was handed (it flushes at the end), so this only flushes too."""
        self.flush()


def _zip_info(arcname: str, st: os.stat_result) -> zipfile.ZipInfo:
    moment = time.localtime(st.st_mtime)[:6]
    info = zipfile.ZipInfo(arcname, date_time=min(max(moment, _ZIP_EARLIEST), _ZIP_LATEST))
    info.external_attr = (st.st_mode & 0xFFFF) << 16
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = st.st_size  # zipfile picks ZIP64 headers from it
    return info


def _add_file(zf: zipfile.ZipFile, source: IO[bytes], arcname: str, sidecar: bool) -> None:
    st = os.fstat(source.fileno())
    if sidecar and st.st_size <= MAX_SIDECAR:
        zf.writestr(_zip_info(arcname, st), public_sidecar(source.read()))
        return
    with zf.open(_zip_info(arcname, st), "w") as target:
        shutil.copyfileobj(source, target, CHUNK)


def _write_zip(
    sink: _Sink, files: list[tuple[Path, str, bool]], stop: threading.Event
) -> tuple[int, int]:
    """Thread side: every file into the zip, in order. Returns (files written, skipped)."""
    written = skipped = 0
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path, arcname, sidecar in files:
            if stop.is_set():
                raise _Gone
            try:
                # Through a descriptor that refuses links: what was checked is what goes.
                source = open_regular(path)
            except FileNotFoundError:
                skipped += 1  # deleted since the list was made: the rest still come
                continue
            except OSError as exc:
                # Swapped for a link or a folder since the list was made: left out.
                log.warning("archive: leaving out %s: %s", path.name, exc)
                skipped += 1
                continue
            with source:
                _add_file(zf, source, arcname, sidecar)
            written += 1
    sink.flush()
    return written, skipped


def _archive_files(gallery: Gallery, names: list[str], folder: str) -> list[tuple[Path, str, bool]]:
    """(path, name in the zip, is a sidecar) of each image and its sidecar; names are
    gallery-checked (no separators, no dot files), and paths never lead outside the gallery."""
    files = []
    for name in names:
        try:
            image = gallery.image_path(name)
        except GalleryError:
            continue
        files.append((image, f"{folder}/{name}", False))
        sidecar = gallery.sidecar_path(name)
        if sidecar is not None:
            files.append((sidecar, f"{folder}/{name[:-4]}.json", True))
    return files


def _job_ids_param(raw: str) -> list[str]:
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    bad = [i for i in ids if not _ID_RE.fullmatch(i)]
    if not ids or bad:
        raise InvalidInput(
            [FieldProblem(path="job_ids", message="must be job ids separated by commas")]
        )
    if len(ids) > MAX_JOB_IDS:
        raise InvalidInput([FieldProblem(path="job_ids", message=f"at most {MAX_JOB_IDS} ids")])
    return list(dict.fromkeys(ids))


def _drop(request: web.Request) -> None:
    """Reset the connection: the unsent bytes go at once, from this side and from the kernel's
    buffers (a plain close would keep them queued for a client that reads nothing)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@routes.get("/api/v1/gallery/archive")
async def archive(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE]
    batch_id = request.query.get("batch_id") or None
    raw_ids = request.query.get("job_ids") or None
    if (batch_id is None) == (raw_ids is None):
        raise InvalidInput(
            [FieldProblem(path="batch_id", message="give exactly one of batch_id or job_ids")]
        )
    if batch_id is not None:
        if not _ID_RE.fullmatch(batch_id):
            raise InvalidInput([FieldProblem(path="batch_id", message="not a batch id")])
        job_ids = [j["mobilesd_job_id"] for j in await core.service.batch(batch_id)]
        folder = f"mobilesd-{batch_id}"
    else:
        job_ids = _job_ids_param(raw_ids or "")
        folder = "mobilesd-images"
    names = core.gallery.names_for_jobs(job_ids)
    files = await asyncio.to_thread(_archive_files, core.gallery, names, folder)
    if not files:
        raise ApiError(404, "no_images", "these jobs have no images in the gallery")

    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{folder}.zip"',
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a reverse proxy must pass chunks on, not buffer them
        }
    )
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    deadline = core.settings.archive_stall_timeout
    stalled = False

    async def write(chunk: bytes) -> None:
        nonlocal stalled
        try:
            async with asyncio.timeout(deadline):
                await response.write(chunk)
        except TimeoutError:
            stalled = True
            raise _Stalled from None

    def send(chunk: bytes) -> None:
        if stop.is_set():
            raise _Gone
        # Blocks this thread until the loop wrote the chunk: back-pressure, bounded memory.
        future = asyncio.run_coroutine_threadsafe(write(chunk), loop)
        try:
            future.result(timeout=deadline + LOOP_GRACE)
        except TimeoutError:  # the loop never ran the write (it is stopping)
            future.cancel()
            stop.set()
            raise _Gone from None
        except BaseException:
            # No more writes: zipfile, unwinding, would send its directory and wait again.
            stop.set()
            raise

    open_archives: dict[int, web.Request] = request.app[OPEN_ARCHIVES]
    open_archives[id(request)] = request
    try:
        written, skipped = await loop.run_in_executor(
            request.app[ARCHIVE_POOL], _write_zip, _Sink(send), files, stop
        )
    except (_Stalled, _Gone, ConnectionError):
        if stalled:
            log.info("archive %s: the client took nothing for %gs; dropped", folder, deadline)
            _drop(request)
        else:
            log.info("archive %s: the client went away", folder)
        return response
    finally:
        stop.set()  # a cancelled handler (client gone) stops the thread at its next chunk
        open_archives.pop(id(request), None)
    await response.write_eof()
    log.info("archive %s: %d files sent (%d gone meanwhile)", folder, written, skipped)
    return response
