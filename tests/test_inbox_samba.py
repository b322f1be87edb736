"""The inbox as users have it: a Samba share, files uploaded by an SMB client, polling mode.

A real `smbd` (Debian's samba, installed by `.ci/run`) is started on a free loopback port with a
share pointing at the core's inbox; `smbclient` uploads job files into it the way a Windows or
macOS client would (AppleDouble `._` companions, upload to a temporary name then rename, a large
file sent in many SMB writes). Each file must become its jobs exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mobilesd_core.forge.simulator.server import free_port

from .conftest import Harness, stop_harness, wait_for
from .helpers.inbox import inbox_settings, jobs_of, settled, start_paused

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smbd needs root to start here")

SMB_CONF = """\
[global]
  workgroup = WORKGROUP
  server role = standalone server
  smb ports = {port}
  interfaces = lo
  bind interfaces only = yes
  disable netbios = yes
  pid directory = {state}/run
  lock directory = {state}/lock
  state directory = {state}/state
  cache directory = {state}/cache
  private dir = {state}/private
  ncalrpc dir = {state}/run/ncalrpc
  log file = {state}/log.%m
  map to guest = Bad User
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2

[inbox]
  path = {share}
  read only = no
  guest ok = yes
  force user = root
"""


@dataclass
class Share:
    port: int
    process: asyncio.subprocess.Process

    async def client(self, *commands: str) -> str:
        """Run smbclient commands against the share as a guest; fail loudly on any error."""
        proc = await asyncio.create_subprocess_exec(
            "smbclient",
            "//127.0.0.1/inbox",
            "-p",
            str(self.port),
            "-N",
            "-c",
            "; ".join(commands),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        assert proc.returncode == 0 and "NT_STATUS" not in text, text
        return text


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
async def share(tmp_path: Path) -> AsyncIterator[tuple[Harness, Share]]:
    smbd = shutil.which("smbd") or "/usr/sbin/smbd"
    assert os.access(smbd, os.X_OK), "samba is not installed (apt-get install samba smbclient)"
    assert shutil.which("smbclient"), "smbclient is not installed (apt-get install smbclient)"
    settings = inbox_settings(tmp_path, "polling", inbox_poll_seconds=0.2)
    state = tmp_path / "samba"
    for sub in ("run", "lock", "state", "cache", "private"):
        (state / sub).mkdir(parents=True)
    port = free_port()
    conf = state / "smb.conf"
    conf.write_text(SMB_CONF.format(port=port, state=state, share=settings.inbox_path))
    process = await asyncio.create_subprocess_exec(
        smbd,
        "--foreground",
        "--no-process-group",  # it would fail to make its own session: it has one (below)
        "--configfile",
        str(conf),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        # smbd signals its whole process group when it stops: give it its own.
        start_new_session=True,
    )
    h = await start_paused(settings)
    try:
        await wait_for(lambda: _port_open(port), timeout=20, what="smbd to listen")
        yield h, Share(port, process)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        await process.wait()
        await stop_harness(h)


async def test_files_uploaded_over_smb_become_jobs_exactly_once(
    share: tuple[Harness, Share], tmp_path: Path
) -> None:
    h, smb = share
    root = h.settings.inbox_path
    local = tmp_path / "upload"
    local.mkdir()
    names = [f"smb-{i:02d}.yaml" for i in range(20)]
    for i, name in enumerate(names):
        (local / name).write_text(f'prompt: "uploaded over SMB {i}"\nseed: {i}\n')
    # A big file (~0.9 MB, many SMB writes) whose last job only completes at the very end.
    filler = "a long prompt, " * 60
    big = "defaults: {steps: 12}\njobs:\n" + "".join(
        f"  - prompt: '{filler}#{i}'\n" for i in range(950)
    )
    (local / "big.yaml").write_text(big)
    (local / "appledouble").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)

    await smb.client(
        f"lcd {local}",
        *(f"put {name} {name}" for name in names),
        "put appledouble ._smb-00.yaml",
        # Clients that upload to a temporary name and rename at the end (rclone, browsers).
        "put big.yaml big.yaml.partial",
        "rename big.yaml.partial big.yaml",
        # ... and clients that write the real name from the first byte.
        "put big.yaml direct.yaml",
    )
    await wait_for(
        lambda: settled(h, *names, "big.yaml", "direct.yaml"), timeout=60, what="the uploads"
    )
    for i, name in enumerate(names):
        jobs = jobs_of(h, name)
        assert [j["generation_params"]["prompt"] for j in jobs] == [f"uploaded over SMB {i}"]
    for name in ("big.yaml", "direct.yaml"):
        big_jobs = jobs_of(h, name)
        assert len(big_jobs) == 950
        assert [j["generation_params"]["prompt"][-4:] for j in big_jobs[-2:]] == ["#948", "#949"]
        assert {j["generation_params"]["steps"] for j in big_jobs} == {12}
    assert (root / "._smb-00.yaml").exists()  # the AppleDouble companion is left alone

    # The share shows the outcome to its users: processed/ holds every file, nothing failed.
    listing = await smb.client("ls processed/*")
    for name in [*names, "big.yaml", "direct.yaml"]:
        assert name in listing
    assert not (root / "failed").exists()

    # A polling cycle or a rescan later, still exactly one job per file.
    await h.core.inbox.rescan_now()
    assert len(h.core.store.live_jobs()) == len(names) + 2 * 950
