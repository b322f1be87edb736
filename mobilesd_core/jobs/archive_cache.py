"""A cache of what the archive's monthly files hold, so a start reads only what was appended since.

Parsing every finished job at each start costs seconds with a year of history. `archive/index.bin`
keeps, per month file, the result of reading it up to a byte offset: the index entry of each job
whose last line there is a record, the ids whose last line there is a removal, the damaged lines
(so they are named again at every start, as when the file is read whole), and what the file looked
like at that offset (its inode and the bytes just before it). A start takes that, checks the file
still starts the same way, and reads only the lines after it.

It is only a cache: the month files stay the one truth. A cache that is missing, damaged, of
another version or that no longer fits its file is ignored (that file is read whole) and written
again. It is written atomically, after the files it describes are fsynced.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..durable import OS, TMP_PREFIX, FileSystem, atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_NAME = "index.bin"
TAIL = 64  # bytes before the covered offset that must match for the cache to hold
REWRITE_AFTER = 1000  # lines read past the cache at a start before it is written again


@dataclass(slots=True)
class ArchiveEntry:
    month: str
    offset: int
    length: int
    status: str
    search: str  # lower-cased prompt, checkpoint, server, file: what `q` looks in
    batch: str | None  # batch_id: batch routes find finished jobs without reading files
    finished: float  # completion time, unix seconds: retention ages are measured from it


@dataclass
class MonthScan:
    """What one month file holds up to `size`: read from it, or from the cache.

    The month's own view is, per id, its last line in this file: a record or a removal. The
    records are the cache's (when `from_cache`) changed by `ops`, the lines read at this start
    in order (a record's entry, or None for a removal): decoded again only when the cache is
    written, so a start keeps no second copy of the index."""

    size: int = 0
    ino: int = 0
    tail: bytes = b""
    lines: int = 0
    dead: int = 0
    removed: set[str] = field(default_factory=set)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)
    from_cache: bool = False
    ops: list[tuple[str, ArchiveEntry | None]] = field(default_factory=list)

    def put(self, job_id: str, entry: ArchiveEntry) -> None:
        self.removed.discard(job_id)
        self.ops.append((job_id, entry))

    def remove(self, job_id: str) -> None:
        self.removed.add(job_id)
        self.ops.append((job_id, None))

    def records(self, base: Iterable[tuple[str, ArchiveEntry]]) -> dict[str, ArchiveEntry]:
        """The month's records in the order of their last lines, from the cache's `base`."""
        puts = dict(base)
        for job_id, entry in self.ops:
            puts.pop(job_id, None)  # re-inserted: the dict keeps last-line order
            if entry is not None:
                puts[job_id] = entry
        return puts

    def fits(self, path: Path) -> bool:
        """The file still starts with what this scan read (appends after it are fine)."""
        try:
            with open(path, "rb") as fh:
                stat = os.fstat(fh.fileno())
                if stat.st_ino != self.ino or stat.st_size < self.size:
                    return False
                fh.seek(self.size - len(self.tail))
                return fh.read(len(self.tail)) == self.tail
        except OSError:
            return False


def read_lines(path: Path, start: int, first_number: int) -> Iterator[tuple[int, int, bytes]]:
    """(line number, offset, line) of each whole line from `start`; a last line without its
    newline (a write a crash cut short) is left out, as `AppendLog` readers do."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with fh:
        fh.seek(start)
        offset = start
        for number, line in enumerate(fh, start=first_number):
            if not line.endswith(b"\n"):
                return
            yield number, offset, line
            offset += len(line)


def file_mark(path: Path, size: int) -> tuple[int, bytes]:
    """The inode of `path` and its bytes just before `size`."""
    with open(path, "rb") as fh:
        ino = os.fstat(fh.fileno()).st_ino
        start = max(0, size - TAIL)
        fh.seek(start)
        return ino, fh.read(size - start)


MAGIC = b"MobileSD archive index 1\n"
SEP = "\x00"  # between ids, search texts, batch ids: a character none of them holds
PIECE = 64 * 1024  # bytes decoded at a time


class CachedIndex:
    """The cache file, mapped: month metadata at once, each month's entries when asked."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self._data = data
        self.months: dict[str, MonthScan] = {}
        self._layout: dict[str, tuple[int, dict[str, Any]]] = {}  # month: (first byte, header)
        if data[: len(MAGIC)] != MAGIC:
            raise ValueError("not an archive index of this version")
        head_end = data.find(b"\n", len(MAGIC))
        if head_end < 0:
            raise ValueError("no header")
        header = json.loads(data[len(MAGIC) : head_end])
        at = head_end + 1
        for month, doc in header["months"].items():
            scan = MonthScan(
                size=int(doc["size"]),
                ino=int(doc["ino"]),
                tail=bytes.fromhex(doc["tail"]),
                lines=int(doc["lines"]),
                dead=int(doc["dead"]),
                removed={str(j) for j in doc["removed"]},
                bad=[(int(n), str(why)) for n, why in doc["bad"]],
                from_cache=True,
            )
            if not isinstance(month, str) or len(scan.tail) > scan.size:
                raise ValueError(f"month {month!r}: bad size")
            sizes = [int(n) for n in doc["sections"]]
            if len(sizes) != 2 + len(COLUMN_CODES) or min(sizes) < 0:
                raise ValueError(f"month {month}: bad sections")
            self.months[month] = scan
            self._layout[month] = (at, doc)
            at += sum(sizes)
        if at != len(data):
            raise ValueError("cut short" if at > len(data) else "trailing bytes")

    def entries(self, month: str) -> Iterator[tuple[str, ArchiveEntry]]:
        """The month's records as the cache holds them, in file order. Raises ValueError when
        the sections do not decode (the caller reads the file whole instead)."""
        at, doc = self._layout[month]
        count = int(doc["count"])
        statuses = [sys.intern(str(s)) for s in doc["statuses"]]
        batches: list[str | None] = [None, *(sys.intern(str(b)) for b in doc["batches"])]
        columns = [array(code) for code in COLUMN_CODES]
        sizes = doc["sections"]
        with memoryview(self._data) as view:
            if zlib.crc32(view[at : at + sum(sizes)]) != doc["crc32"]:
                raise ValueError(f"month {month}: checksum does not match (damaged)")
        ids = self._strings(at, sizes[0]) if count else []
        at += sizes[0]
        search = self._strings(at, sizes[1]) if count else []
        at += sizes[1]
        with memoryview(self._data) as view:
            for column, length in zip(columns, sizes[2:], strict=True):
                column.frombytes(view[at : at + length])
                at += length
        offsets, lengths, finished, status_codes, batch_codes = columns
        if {len(ids), len(search), *(len(c) for c in columns)} != {count}:
            raise ValueError(f"month {month}: columns of different lengths")
        if max(status_codes, default=0) >= len(statuses) or max(batch_codes, default=0) >= len(
            batches
        ):
            raise ValueError(f"month {month}: unknown status or batch")
        # A generator: each pair is gone before the next is made, so the index's entries are
        # laid out together in memory rather than between 100,000 freed pairs.
        return (
            (job_id, ArchiveEntry(month, off, n, statuses[st], text, batches[b], fin))
            for job_id, off, n, st, text, b, fin in zip(
                ids, offsets, lengths, status_codes, search, batch_codes, finished, strict=True
            )
        )

    def raw(self, month: str) -> tuple[dict[str, Any], bytes]:
        """The month's header and its sections' bytes, as the file holds them."""
        at, doc = self._layout[month]
        return doc, bytes(self._data[at : at + sum(doc["sections"])])

    def _strings(self, start: int, length: int) -> list[str]:
        """SEP-separated strings, decoded a piece at a time: one decoded copy of a large
        section, freed at once, would leave the allocator handing out memory from the heap
        it cannot give back (glibc raises its mmap threshold to the size of a freed block)."""
        data, end, out = self._data, start + length, []
        with memoryview(data) as view:
            while True:
                cut = data.find(SEP.encode(), min(start + PIECE, end), end)
                out.extend(str(view[start : end if cut < 0 else cut], "utf-8").split(SEP))
                if cut < 0:
                    break
                start = cut + 1
        return out

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            self._data.close()


def read_cache(root: Path) -> CachedIndex | None:
    """The cache, mapped (close it after use); None when there is no usable cache."""
    path = root / CACHE_NAME
    try:
        with open(path, "rb") as fh:
            data: mmap.mmap | bytes = (
                mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                if os.fstat(fh.fileno()).st_size
                else b""
            )
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s: not used (%s); the archive is read whole", path, exc)
        return None
    try:
        return CachedIndex(data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(data, mmap.mmap):
            data.close()
        log.warning("%s: not used (damaged or of another version: %s); read whole", path, exc)
        return None


COLUMN_CODES = ("q", "q", "d", "H", "I")  # offset, length, finished, status, batch


def encode_cache(scans: dict[str, MonthScan], cached: CachedIndex | None) -> bytes | None:
    """The cache file's bytes; None when a job id or text holds the separator (hand-edited
    files): such an archive is simply read whole at every start."""
    months: dict[str, Any] = {}
    body: list[bytes] = []
    for month, scan in scans.items():
        if scan.from_cache and not scan.ops and cached is not None:
            # Nothing read past the cache in this month: its sections are copied as they are.
            doc, part = cached.raw(month)
            months[month] = {**doc, **_scan_header(scan)}
            body.append(part)
            continue
        base = cached.entries(month) if scan.from_cache and cached is not None else []
        entries = scan.records(base)
        del base
        statuses = sorted({e.status for e in entries.values()})
        batches = sorted({e.batch for e in entries.values() if e.batch is not None})
        status_code = {s: i for i, s in enumerate(statuses)}
        batch_code = {b: i for i, b in enumerate(batches, start=1)}
        texts = [*entries, *(e.search for e in entries.values()), *batches]
        if any(SEP in t for t in texts):
            return None
        parts = [
            SEP.join(entries).encode(),
            SEP.join(e.search for e in entries.values()).encode(),
            array("q", (e.offset for e in entries.values())).tobytes(),
            array("q", (e.length for e in entries.values())).tobytes(),
            array("d", (e.finished for e in entries.values())).tobytes(),
            array("H", (status_code[e.status] for e in entries.values())).tobytes(),
            array(
                "I", (0 if e.batch is None else batch_code[e.batch] for e in entries.values())
            ).tobytes(),
        ]
        months[month] = {
            **_scan_header(scan),
            "count": len(entries),
            "statuses": statuses,
            "batches": batches,
            "sections": [len(p) for p in parts],
            "crc32": zlib.crc32(b"".join(parts)),
        }
        body.extend(parts)
    header = json.dumps({"months": months}, separators=(",", ":"), ensure_ascii=True).encode()
    return b"".join([MAGIC, header, b"\n", *body])


def _scan_header(scan: MonthScan) -> dict[str, Any]:
    return {
        "size": scan.size,
        "ino": scan.ino,
        "tail": scan.tail.hex(),
        "lines": scan.lines,
        "dead": scan.dead,
        "removed": sorted(scan.removed),
        "bad": [list(b) for b in scan.bad],
    }


def needs_write(scans: dict[str, MonthScan], cached_months: set[str]) -> bool:
    """Whether the cache on disk is worth replacing: a month it lacks or that did not fit, a
    month it names that is gone, or many lines read past it."""
    return (
        set(scans) != cached_months
        or any(not s.from_cache for s in scans.values())
        or sum(len(s.ops) for s in scans.values()) >= REWRITE_AFTER
    )


def write_cache(root: Path, scans: dict[str, MonthScan], fs: FileSystem = OS) -> None:
    """Replace the cache with what `scans` say (the months read from the cache taken from the
    cache file on disk, which nothing else writes while the store holds its folder)."""
    cached = read_cache(root) if any(s.from_cache for s in scans.values()) else None
    try:
        data = encode_cache(scans, cached)
    except ValueError as exc:
        log.warning("%s: not written: %s", root / CACHE_NAME, exc)
        return
    finally:
        if cached is not None:
            cached.close()
    if data is None:
        log.info("%s: not written (a job id or text holds a NUL character)", root / CACHE_NAME)
        return
    try:
        atomic_write_bytes(root / CACHE_NAME, data, mode=0o600, fs=fs)
    except OSError as exc:  # only a cache: the next start reads the files whole
        log.warning("%s: not written: %s", root / CACHE_NAME, exc)


def sweep_temps(root: Path, fs: FileSystem = OS) -> None:
    for tmp in root.glob(f"{TMP_PREFIX}*-{CACHE_NAME}"):
        try:
            fs.unlink(tmp)
        except OSError as exc:
            log.warning("%s: not removed: %s", tmp, exc)
