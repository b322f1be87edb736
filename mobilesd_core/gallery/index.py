"""The gallery's index: one record per image, answering listings, searches and per-job lookups
without touching the disk, so a gallery of 100,000 images lists as fast as one of ten.

`GalleryIndex` is the interface the folder code uses (replace everything after a scan; put or
drop one image; read pages and entries). It lives in memory and is rebuilt at start; nothing here
does I/O except `record_from_png`, which reads an image's header (called from a thread).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..forge.infotext import parse_infotext
from .png import IMAGE_ERRORS, read_header
from .values import as_int, iso, model_name_from_title, parse_time


@dataclass(slots=True)
class Record:
    """One indexed image: its public entry plus what filters need."""

    entry: dict[str, Any]
    search: str
    job_id: str | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.entry["created"], self.entry["filename"])


def make_record(
    filename: str,
    *,
    created: str,
    width: int,
    height: int,
    job_id: str | None,
    prompt: str,
    negative_prompt: str,
    seed: int | None,
    checkpoint: str | None,
    also_searched: Iterable[Any] = (),
) -> Record:
    url = f"/gallery_files/{quote(filename)}"
    entry = {
        "filename": filename,
        "url": url,
        "thumb_url": f"{url}?thumb=1",
        "width": width,
        "height": height,
        "created": created,
        "mobilesd_job_id": job_id,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "checkpoint": checkpoint,
    }
    parts = [prompt, negative_prompt, checkpoint or "", filename]
    parts.extend(str(value) for value in also_searched if value)
    return Record(entry=entry, search="\n".join(parts).casefold(), job_id=job_id)


def record_from_sidecar(filename: str, data: Mapping[str, Any]) -> Record:
    params = data.get("generation_params")
    params = params if isinstance(params, Mapping) else {}
    info = data.get("info")
    info = info if isinstance(info, Mapping) else {}
    created = parse_time(data.get("created"))
    model_title = data.get("model_title")
    checkpoint = info.get("sd_model_name") or model_name_from_title(model_title)
    checkpoint = checkpoint or params.get("checkpoint_name")
    job_id = data.get("mobilesd_job_id")
    return make_record(
        filename,
        created=iso(created) if created else iso(datetime.fromtimestamp(0, UTC)),
        width=as_int(data.get("width")) or 0,
        height=as_int(data.get("height")) or 0,
        job_id=str(job_id) if job_id else None,
        prompt=str(params.get("prompt") or ""),
        negative_prompt=str(params.get("negative_prompt") or ""),
        seed=as_int(data.get("seed")),
        checkpoint=str(checkpoint) if checkpoint else None,
        also_searched=(model_title, params.get("checkpoint_name")),
    )


def record_from_png(path: Path, filename: str) -> Record | None:
    """An image without a MobileSD sidecar: whatever its own `parameters` chunk says (blocking)."""
    try:
        st = path.stat()
        width, height, text = read_header(path)
    except IMAGE_ERRORS:
        return None
    fields = parse_infotext(text) if text and text.strip() else {}
    return make_record(
        filename,
        created=iso(datetime.fromtimestamp(st.st_mtime, UTC)),
        width=width,
        height=height,
        job_id=None,
        prompt=str(fields.get("prompt") or ""),
        negative_prompt=str(fields.get("negative_prompt") or ""),
        seed=as_int(fields.get("Seed")),
        checkpoint=fields.get("Model") or None,
        also_searched=(fields.get("Model hash"),),
    )


class GalleryIndex:
    """The records of one gallery, by name, by time and by job. Only read and changed on the
    event loop.

    A scan of the folder runs in a thread while saves and deletes go on: between `begin_scan()`
    and `finish_scan()` the names those touch are remembered, so the scan's older view of them
    does not win.
    """

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        # (created, filename) ascending; newest first is this list read backwards.
        self._order: list[tuple[str, str]] = []
        self._by_job: dict[str, set[str]] = {}
        self._scanning = False
        self._touched: set[str] = set()

    def __len__(self) -> int:
        return len(self._records)

    # --- changing -----------------------------------------------------------------------------

    def install(self, records: dict[str, Record]) -> None:
        """Replace every record with `records` (name -> record)."""
        self._records = records
        self._order = sorted(record.key for record in records.values())
        self._by_job = {}
        for name, record in records.items():
            if record.job_id:
                self._by_job.setdefault(record.job_id, set()).add(name)

    def begin_scan(self) -> None:
        self._scanning = True
        self._touched = set()

    def finish_scan(self, records: dict[str, Record] | None) -> None:
        """Install what a scan found (None: the scan failed, keep what is there), with the
        images saved or deleted while it ran as they are now."""
        try:
            if records is not None:
                for name in self._touched:
                    if name in self._records:
                        records[name] = self._records[name]
                    else:
                        records.pop(name, None)
                self.install(records)
        finally:
            self._scanning = False
            self._touched = set()

    def put(self, record: Record) -> None:
        name = record.entry["filename"]
        self.drop(name)
        self._records[name] = record
        bisect.insort(self._order, record.key)
        if record.job_id:
            self._by_job.setdefault(record.job_id, set()).add(name)

    def drop(self, name: str) -> Record | None:
        """Remove an image's record; return it, or None when it was not indexed."""
        if self._scanning:
            self._touched.add(name)
        record = self._records.pop(name, None)
        if record is None:
            return None
        at = bisect.bisect_left(self._order, record.key)
        if at < len(self._order) and self._order[at] == record.key:
            del self._order[at]
        if record.job_id and record.job_id in self._by_job:
            self._by_job[record.job_id].discard(name)
            if not self._by_job[record.job_id]:
                del self._by_job[record.job_id]
        return record

    # --- reading ------------------------------------------------------------------------------

    def get(self, name: str) -> Record | None:
        return self._records.get(name)

    def names_of_job(self, job_id: str) -> list[str]:
        """The names of a job's images, sorted."""
        return sorted(self._by_job.get(job_id, ()))

    def names_for_jobs(self, job_ids: Iterable[str]) -> list[str]:
        """The images of these jobs, job by job in the given order, by name in a job."""
        return [name for job_id in job_ids for name in sorted(self._by_job.get(job_id, ()))]

    def page(
        self,
        *,
        limit: int,
        offset: int,
        q: str | None = None,
        job_id: str | None = None,
        job_range: tuple[str, str] | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of entries (copies), newest first, and how many match in total.

        `q` is split into words; an image matches when each word occurs (case-insensitively) in
        its prompt, negative prompt, checkpoint or file name. `job_range` (first, last) keeps the
        images of jobs whose ids sort between the two, both included: a batch's jobs have
        consecutive ids, so this is how a notice links to a batch's images.
        """
        limit = max(0, limit)
        offset = max(0, offset)
        words = q.casefold().split() if q else []
        if job_range is not None:
            first, last = job_range
            job_ids = [j for j in self._by_job if first <= j <= last]
            if job_id is not None:
                job_ids = [j for j in job_ids if j == job_id]
            job_id = None
            range_names = [name for j in job_ids for name in self._by_job[j]]
        if job_id is None and not words and job_range is None:
            total = len(self._order)
            stop = max(0, total - offset)
            start = max(0, stop - limit)
            keys = self._order[start:stop][::-1]
            return [dict(self._records[name].entry) for _, name in keys], total

        if job_range is not None:
            candidates: Iterable[tuple[str, str]] = sorted(
                (self._records[name].key for name in range_names), reverse=True
            )
        elif job_id is not None:
            names = self._by_job.get(job_id, set())
            candidates = sorted((self._records[name].key for name in names), reverse=True)
        else:
            candidates = reversed(self._order)
        page: list[dict[str, Any]] = []
        total = 0
        for _, name in candidates:
            record = self._records[name]
            if words and not all(word in record.search for word in words):
                continue
            if offset <= total < offset + limit:
                page.append(dict(record.entry))
            total += 1
        return page, total
