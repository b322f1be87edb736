"""GET /api/v1/gallery/archive: a zip of jobs' images and their JSON sidecars, streamed.

The zip is never held in memory or on disk. A thread runs `zipfile` against a write-only sink
(zipfile then writes local headers with data descriptors, as it cannot seek back); the sink hands
each ~256 KiB to the event loop and waits until the response took it, so a slow phone slows the
thread instead of filling memory. Entries are stored, not deflated: PNGs do not compress.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..gallery import Gallery, GalleryError
from ..schema import FieldProblem, InvalidInput
from .errors import ApiError
from .keys import CORE

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

CHUNK = 256 * 1024
MAX_JOB_IDS = 1000
_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")


class _Gone(Exception):
    """The client went away; the zip thread stops."""


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


def _write_zip(
    sink: _Sink, files: list[tuple[Path, str]], stop: threading.Event
) -> tuple[int, int]:
    """Thread side: every file into the zip, in order. Returns (files written, skipped)."""
    written = skipped = 0
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[arg-type]
        for path, arcname in files:
            if stop.is_set():
                raise _Gone
            try:
                zf.write(path, arcname)
                written += 1
            except FileNotFoundError:
                skipped += 1  # deleted since the list was made: the rest still come
    sink.flush()
    return written, skipped


def _archive_files(gallery: Gallery, names: list[str], folder: str) -> list[tuple[Path, str]]:
    """(path, name in the zip) of each image and its sidecar; names are gallery-checked (no
    separators, no dot files), and paths never lead outside the gallery."""
    files = []
    for name in names:
        try:
            image = gallery.image_path(name)
        except GalleryError:
            continue
        files.append((image, f"{folder}/{name}"))
        sidecar = gallery.sidecar_path(name)
        if sidecar is not None:
            files.append((sidecar, f"{folder}/{name[:-4]}.json"))
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

    def send(chunk: bytes) -> None:
        if stop.is_set():
            raise _Gone
        # Blocks this thread until the loop wrote the chunk: back-pressure, bounded memory.
        asyncio.run_coroutine_threadsafe(response.write(chunk), loop).result()

    try:
        written, skipped = await asyncio.to_thread(_write_zip, _Sink(send), files, stop)
    except (_Gone, ConnectionError):
        log.info("archive %s: the client went away", folder)
        return response
    finally:
        stop.set()  # a cancelled handler (client gone) stops the thread at its next chunk
    await response.write_eof()
    log.info("archive %s: %d files sent (%d gone meanwhile)", folder, written, skipped)
    return response
