"""A file system that knows what a power cut would keep, after any of its calls.

`PowerCutFS` makes every call for real, so the code under test runs normally on a real folder.
Alongside, it keeps a model of that folder: per file the bytes written and the bytes as of its
last fsync, per folder its names as they are and as of its last fsync. A power cut keeps only
what was fsynced: a file's data as of its last fsync, and a name (created, renamed over,
removed) only once its folder was fsynced. That is the most POSIX lets a file system lose;
ext4 and XFS lose less, so code that survives this survives them.

Each call that changes something is a cut point, numbered 1, 2, ... (0 is before the first).
`state_at(k)` is the folder a power cut right after call k would leave, `calls` the number of
calls so far, so a test notes `calls` when it is told something is durable and checks every
cut after that against it.
"""

from __future__ import annotations

import errno
import os
import threading
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

from mobilesd_core.durable import FileSystem


@dataclass(eq=False)
class _File:
    data: bytearray = field(default_factory=bytearray)
    synced: bytes = b""


@dataclass(eq=False)
class _Dir:
    entries: dict[str, _File | _Dir] = field(default_factory=dict)
    synced: dict[str, _File | _Dir] = field(default_factory=dict)


@dataclass(frozen=True)
class Durable:
    """A folder as a power cut leaves it: files (relative path -> bytes) and folders."""

    files: dict[str, bytes]
    dirs: frozenset[str]

    def write_to(self, dest: Path) -> None:
        dest.mkdir(parents=True)
        for rel in sorted(self.dirs):
            (dest / rel).mkdir(parents=True, exist_ok=True)
        for rel, data in self.files.items():
            (dest / rel).write_bytes(data)


@dataclass
class _Open:
    node: _File | _Dir
    append: bool
    pos: int = 0


class PowerCutFS(FileSystem):
    """Every call under `root` is made for real and modelled; see the module's docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._lock = threading.Lock()
        self._top = self._scan(self.root)  # what is there already counts as durable
        self._fds: dict[int, _Open] = {}
        self.calls = 0
        self.fsync_fails = False  # True: fsync fails, as if the process died before it
        self._keys: list[int] = [0]  # call numbers at which the durable state changed
        self._states: list[Durable] = [self._durable()]

    # -- the model -------------------------------------------------------------------------

    def _scan(self, path: Path) -> _Dir:
        folder = _Dir()
        for child in path.iterdir():
            node: _File | _Dir
            if child.is_dir():
                node = self._scan(child)
            else:
                data = child.read_bytes()
                node = _File(bytearray(data), data)
            folder.entries[child.name] = folder.synced[child.name] = node
        return folder

    def _parts(self, path: Path | str) -> list[str]:
        rel = Path(os.path.abspath(path)).relative_to(self.root)
        return list(rel.parts)

    def _parent(self, parts: list[str]) -> _Dir:
        folder = self._top
        for name in parts[:-1]:
            node = folder.entries[name]
            assert isinstance(node, _Dir), f"{name} is not a folder in the model"
            folder = node
        return folder

    def _node(self, path: Path | str) -> _File | _Dir | None:
        parts = self._parts(path)
        if not parts:
            return self._top
        return self._parent(parts).entries.get(parts[-1])

    def _durable(self) -> Durable:
        files: dict[str, bytes] = {}
        dirs: set[str] = set()

        def walk(folder: _Dir, prefix: str) -> None:
            for name, node in folder.synced.items():
                rel = f"{prefix}{name}"
                if isinstance(node, _Dir):
                    dirs.add(rel)
                    walk(node, f"{rel}/")
                else:
                    files[rel] = node.synced

        walk(self._top, "")
        return Durable(files, frozenset(dirs))

    def _called(self, *, durable_changed: bool = False) -> None:
        self.calls += 1
        if durable_changed:
            self._keys.append(self.calls)
            self._states.append(self._durable())

    def state_at(self, k: int) -> tuple[int, Durable]:
        """(which distinct state, the folder) a power cut right after call k leaves."""
        index = bisect_right(self._keys, k) - 1
        return index, self._states[index]

    # -- the calls ---------------------------------------------------------------------------

    def open(self, path: Path | str, flags: int, mode: int = 0o777) -> int:
        with self._lock:
            fd = os.open(path, flags, mode)
            node = self._node(path)
            created = node is None
            if node is None:
                assert flags & os.O_CREAT, f"{path} exists on disk but not in the model"
                parts = self._parts(path)
                node = self._parent(parts).entries[parts[-1]] = _File()
            elif isinstance(node, _File) and flags & os.O_TRUNC:
                node.data.clear()
                created = True
            self._fds[fd] = _Open(node, bool(flags & os.O_APPEND))
            if created:
                self._called()
            return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        with self._lock:
            written = os.write(fd, data)
            handle = self._fds[fd]
            assert isinstance(handle.node, _File)
            chunk = bytes(data[:written])
            if handle.append:
                handle.node.data += chunk
            else:
                handle.node.data[handle.pos : handle.pos + written] = chunk
                handle.pos += written
            self._called()
            return written

    def fsync(self, fd: int) -> None:
        with self._lock:
            if self.fsync_fails:
                raise OSError(errno.EIO, "fsync refused (the process is being killed)")
            os.fsync(fd)
            node = self._fds[fd].node
            if isinstance(node, _File):
                node.synced = bytes(node.data)
            else:
                node.synced = dict(node.entries)
            self._called(durable_changed=True)

    def close(self, fd: int) -> None:
        with self._lock:
            os.close(fd)
            del self._fds[fd]

    def replace(self, src: Path, dst: Path) -> None:
        with self._lock:
            os.replace(src, dst)
            source, target = self._parts(src), self._parts(dst)
            node = self._parent(source).entries.pop(source[-1])
            self._parent(target).entries[target[-1]] = node
            self._called()

    def unlink(self, path: Path) -> None:
        with self._lock:
            path.unlink(missing_ok=True)
            parts = self._parts(path)
            if self._parent(parts).entries.pop(parts[-1], None) is not None:
                self._called()

    def mkdir(self, path: Path) -> None:
        with self._lock:
            path.mkdir(parents=True, exist_ok=True)
            parts = self._parts(path)
            folder = self._top
            for name in parts:
                node = folder.entries.get(name)
                if node is None:
                    node = folder.entries[name] = _Dir()
                    self._called()
                assert isinstance(node, _Dir)
                folder = node


class NoSyncFS(FileSystem):
    """The real calls without fsync: for checking many rebuilt folders quickly (their own
    durability is not what is being tested)."""

    def fsync(self, fd: int) -> None:
        pass
