"""`mobilesd demo --once`: the README's first command, headless, as CI runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mobilesd_core.forge.simulator.server import free_port

REPO = Path(__file__).resolve().parents[1]


def test_demo_once_runs_the_examples_through_the_inbox_and_exits_zero(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    command = [sys.executable, "-m", "mobilesd_core.cli", "demo", "--once", "--dir", str(demo)]
    result = subprocess.run(
        [*command, "--port", str(free_port()), "--step-ms", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: 20 example jobs completed, 0 did not" in result.stdout
    # The examples went in as files and were processed by the watcher.
    processed = sorted(p.name for p in (demo / "inbox" / "processed").iterdir())
    assert processed == [
        "batch.yaml",
        "flux.yaml",
        "img2img.yaml",
        "inpaint.yaml",
        "single.yaml",
        "sweep.yaml",
        "upscale.yaml",
    ]
    assert len(list((demo / "outputs").glob("*.png"))) == 21  # single.yaml makes 2 images
    assert "WARNING" not in result.stderr, result.stderr
