"""The Generator's last settings, kept between runs in $XDG_CONFIG_HOME/mobilesd/tui.json.

Only form values live here; the token never does (it stays in the core's data folder or the
environment). A broken or foreign file is ignored rather than stopping the TUI.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

# Keys a form may store; anything else in the file is dropped (and never a secret).
FORM_KEYS = frozenset(
    {
        "prompt",
        "negative_prompt",
        "checkpoint_name",
        "loras",
        "width",
        "height",
        "steps",
        "cfg_scale",
        "sampler_name",
        "scheduler",
        "seed",
        "n_iter",
        "target",
    }
)


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mobilesd" / "tui.json"


class Prefs:
    def __init__(self, path: Path | None) -> None:
        """`path=None` keeps nothing (tests, snapshots)."""
        self.path = path

    def load(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        form = data.get("generator") if isinstance(data, dict) else None
        if not isinstance(form, dict):
            return {}
        return {k: v for k, v in form.items() if k in FORM_KEYS}

    def save(self, form: dict[str, Any]) -> None:
        if self.path is None:
            return
        data = {"generator": {k: v for k, v in form.items() if k in FORM_KEYS}}
        with contextlib.suppress(OSError):  # a read-only home must not break submitting
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
            os.replace(tmp, self.path)
