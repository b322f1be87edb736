"""`mobilesd tui` in a real terminal: tmux runs it at 80x24, keys go in with send-keys and the
screen comes back with capture-pane. The core runs in this test's loop on a real socket."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import TOKEN, Harness
from .helpers.tmux import TMUX, Tmux, tmux
from .helpers.tui import harness

__all__ = ["harness", "tmux"]  # fixtures, from tests/helpers/

# `./dev test` installs tmux (as .ci/run does): missing, this fails rather than proving nothing.
pytestmark = pytest.mark.usefixtures("tmux_installed")


@pytest.fixture
def tmux_installed() -> None:
    assert TMUX is not None, "tmux is not installed (apt-get install tmux)"


async def test_tui_in_tmux_shows_the_submitted_job(
    harness: Harness, tmux: Tmux, tmp_path: Path
) -> None:
    url = str(harness.server.make_url("")).rstrip("/")
    env = {
        "MOBILESD_URL": url,
        "MOBILESD_TOKEN": TOKEN,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "TERM": "tmux-256color",
        "COLORTERM": "truecolor",
        "ESCDELAY": "10",
    }
    command = " ".join(
        [
            "env",
            *(f"{key}={value}" for key, value in env.items()),
            sys.executable,
            "-m",
            "mobilesd_core.cli",
            "tui",
            "--tab",
            "queue",
        ]
    )
    await tmux.run("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", command)
    await tmux.run("set-option", "-t", "tui", "escape-time", "10")
    await tmux.wait_for("F2 Queue", "online")
    # Write a job in the Generator and queue it with the keyboard.
    await tmux.run("send-keys", "-t", "tui", "F1")
    await tmux.wait_for("Prompt", "Add to queue")
    await tmux.run("send-keys", "-t", "tui", "-l", "a fox typed in tmux")
    await tmux.wait_for("a fox typed in tmux")
    await tmux.run("send-keys", "-t", "tui", "C-s")
    await tmux.wait_for("queued")
    await tmux.run("send-keys", "-t", "tui", "F2")
    # The row shows the job's end: its status and its image count (one row, one screen).
    screen = await tmux.wait_for("a fox typed in tmux", "done", "1 image")
    assert "✓ done" in screen
    jobs = (await harness.api.get("/api/v1/queue/jobs")).json()["jobs"]
    assert [j["generation_params"]["prompt"] for j in jobs] == ["a fox typed in tmux"]
    assert jobs[0]["source"] == "tui"
    await tmux.run("send-keys", "-t", "tui", "C-q")
