"""A real `mobilesd serve` subprocess to kill and restart, what its archive holds, and
this process's memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TOKEN = "crash-test-token-0123456789"


REPO_ROOT = Path(__file__).resolve().parents[2]


class CoreProcess:
    """`python -m mobilesd_core.cli serve` on a fixed port, killed and restarted at will."""

    def __init__(self, root: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.data = root / "data"
        self.gallery = root / "outputs"
        self.log_path = root / "core.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PORT", "HOST", "LORA_PATH", "CHECKPOINT_PATH", "INBOX_POLL_SECONDS")
        }
        self.env.update(
            CONFIG_DATA_PATH=str(self.data),
            STABLE_DIFFUSION_SAVE_PATH=str(self.gallery),
            INBOX_PATH=str(root / "inbox"),
            MOBILESD_TOKEN=TOKEN,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        )
        self.cwd = root

    async def start(self) -> None:
        assert self.proc is None or self.proc.returncode is not None
        log_file = await asyncio.to_thread(open, self.log_path, "ab")
        with log_file:
            log_file.write(f"\n===== start at {time.time():.3f} =====\n".encode())
            log_file.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mobilesd_core.cli",
                "serve",
                "--port",
                str(self.port),
                env=self.env,
                cwd=self.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
            )

    async def kill(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)

    async def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM: the core's own clean shutdown. Returns the exit code."""
        proc = self.proc
        assert proc is not None and proc.returncode is None, "the core is not running"
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(f"the core did not stop within {timeout}s of SIGTERM") from None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no core log)"
        return "\n".join(text.splitlines()[-lines:])

    async def wait_healthy(self, client: httpx.AsyncClient, timeout: float = 15.0) -> None:
        """Poll /healthz until it answers; fail at once if the process died (store did not load).

        aiohttp runs the core's start (store open, gallery scan, requeue) before it listens, so an
        answer here means the store loaded.
        """
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"the core exited with code {self.proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            with contextlib.suppress(httpx.TransportError):
                response = await client.get(f"{self.url}/healthz", timeout=2)
                if response.status_code == 200 and response.json().get("status") == "ok":
                    return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the core was not healthy within {timeout}s:\n" + self.log_tail()
                )
            await asyncio.sleep(0.02)


def read_archive(data: Path) -> tuple[list[dict[str, Any]], int, int]:
    """All archived job records, the number of unparsable (torn) lines, and of tombstones."""
    records: list[dict[str, Any]] = []
    torn = tombstones = 0
    removed: set[str] = set()
    for path in sorted((data / "archive").glob("jobs-*.jsonl")):
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A line torn by a kill: the store starts the next record on a fresh line, so a
                # torn line may be the last one or sit between complete ones. Its job was not
                # archived (the live file still held it) and ran again.
                torn += 1
                continue
            if number == len(lines) - 1:
                torn += 1  # complete JSON but no newline: the reader ignores it too
                continue
            if "_removed" in record:
                tombstones += 1
                removed.update(record["_removed"])
                continue
            records.append(record)
    return [r for r in records if r.get("mobilesd_job_id") not in removed], torn, tombstones


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
