"""How a job reads on screen: table cells, ages, progress bars and the detail panel's text."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.text import Text

STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
STATUS_STYLE = {
    "pending": ("○ pending", "yellow"),
    "processing": ("▶ running", "bold cyan"),
    "completed": ("✓ done", "green"),
    "failed": ("✗ failed", "bold red"),
    "cancelled": ("– cancelled", "dim"),
}


class KeyedText(Text):
    """A cell that knows its job id, so `DataTable.sort(key=...)` can order rows by our rank."""

    job_id: str = ""


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(created: str | None, now: datetime) -> str:
    moment = parse_time(created)
    if moment is None:
        return "?"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def short_model(name: str | None) -> str:
    """'sdxl/juggernautXL_v9.safetensors [abc]' -> 'juggernautXL_v9'."""
    if not name:
        return "-"
    name = name.split(" [")[0].replace("\\", "/").rsplit("/", 1)[-1]
    for ext in (".safetensors", ".ckpt", ".pt", ".gguf"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def bar(fraction: float, width: int = 5) -> str:
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


def progress_cell(job: dict[str, Any]) -> Text:
    status = job["status"]
    if status == "processing":
        progress = job.get("progress") or {}
        fraction = float(progress.get("fraction") or 0.0)
        return Text(f"{bar(fraction)} {int(fraction * 100):>3}%", style="cyan")
    if status == "pending":
        reason = job.get("waiting_reason")
        if reason:
            return Text("waiting", style="yellow")
        return Text(f"#{(job.get('position') or 0) + 1}", style="yellow")
    if status == "completed":
        images = (job.get("result_details") or {}).get("images") or []
        return Text(f"{len(images)} image{'s' if len(images) != 1 else ''}", style="green")
    if status == "failed":
        return Text("error", style="red")
    return Text("-", style="dim")


def status_cell(job: dict[str, Any]) -> KeyedText:
    label, style = STATUS_STYLE.get(job["status"], (job["status"], ""))
    cell = KeyedText(label, style=style)
    cell.job_id = job["mobilesd_job_id"]
    return cell


def server_of(job: dict[str, Any]) -> str:
    return job.get("assigned_server_alias") or job.get("target_server_alias") or "any"


def batch_label(job: dict[str, Any]) -> str:
    """The batch's last four id characters: jobs queued together share them at a glance."""
    batch = job.get("batch_id")
    return str(batch)[-4:] if batch else ""


def row_cells(job: dict[str, Any], now: datetime, prompt_width: int) -> tuple[Any, ...]:
    params = job.get("generation_params") or {}
    return (
        status_cell(job),
        age(job.get("creation_timestamp"), now),
        Text(batch_label(job)),
        # User text as Text, never as a str: a DataTable parses str cells as markup, and a
        # prompt like "[@click=app.quit]x[/]" must show as typed, not become a link.
        Text(server_of(job)),
        progress_cell(job),
        Text(one_line(short_model(params.get("checkpoint_name")), 14)),
        Text(one_line(str(params.get("prompt", "")), prompt_width)),
    )


def rank(job: dict[str, Any]) -> tuple[Any, ...]:
    """Display order: running first, then pending in run order, then finished newest first."""
    status = job["status"]
    if status == "processing":
        return (0, job.get("started_timestamp") or "", "")
    if status == "pending":
        return (1, job.get("position") or 0, job["mobilesd_job_id"])
    finished = job.get("completion_timestamp") or job.get("creation_timestamp") or ""
    # Newest first: invert the ISO string's characters so a plain ascending sort works.
    return (2, "".join(chr(0x10FFFF - ord(c)) for c in finished), job["mobilesd_job_id"])


def detail_text(job: dict[str, Any], now: datetime) -> Text:
    """All parameters, where it ran, and what went wrong, for the detail panel."""
    params = job.get("generation_params") or {}
    out = Text()
    label, style = STATUS_STYLE.get(job["status"], (job["status"], ""))
    out.append(f"{job['mobilesd_job_id']}  ", style="bold")
    out.append(label, style=style)
    out.append(f"  from {job.get('source', '?')}, {age(job.get('creation_timestamp'), now)} ago")
    out.append(f"  server: {server_of(job)}  attempts: {job.get('attempts', 0)}\n")
    details = job.get("result_details") or {}
    if job["status"] in ("failed", "cancelled") and details.get("error"):
        out.append("error: ", style="bold red")
        out.append(f"{details['error']}\n", style="red")
    if job.get("waiting_reason"):
        out.append(f"waiting: {job['waiting_reason']}\n", style="yellow")
    if job.get("batch_id"):
        out.append(f"batch: {job['batch_id']}\n", style="dim")
    if job.get("prompt_template"):
        out.append(f"from template: {job['prompt_template']}\n", style="dim")
    if job["status"] == "completed":
        images = details.get("images") or []
        info = details.get("info") or {}
        out.append(f"images: {', '.join(images) or '-'}", style="green")
        if info.get("seed") is not None:
            out.append(f"  seed: {info['seed']}", style="green")
        out.append("\n")
    out.append("prompt: ", style="bold")
    out.append(f"{params.get('prompt', '')}\n")
    if params.get("negative_prompt"):
        out.append("negative: ", style="bold")
        out.append(f"{params['negative_prompt']}\n")
    skip = {"prompt", "negative_prompt"}
    rest = []
    for key, value in params.items():
        if key in skip or value in (None, [], {}, ""):
            continue
        if key == "loras":
            value = ", ".join(f"{lora['name']}:{lora['weight']}" for lora in value)
        elif isinstance(value, dict | list):
            value = json.dumps(value, separators=(",", ":"))
        rest.append(f"{key}={value}")
    out.append("  ".join(rest), style="dim")
    return out
