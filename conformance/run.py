"""`./dev conformance`: MobileSD against a real Forge, and the same checks against the simulator.

    FORGE_DIR=/path/to/stable-diffusion-webui-forge ./dev conformance [--only real|sim]

FORGE_PYTHON (default `$FORGE_DIR/venv/bin/python`) is the Python of Forge's own venv (CPU torch
and Forge's requirements). The test models are made once into MOBILESD_FORGE_MODELS (default
`~/.cache/mobilesd/forge-models`) by `make_test_models.py`. Writes `docs/forge-conformance.md`
(unless `--only` or `--out -`); every process's log stays in the work folder it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mobilesd_core.forge.infotext import parse_infotext

from .checks import (
    CHECKS,
    STYLE,
    STYLE_2,
    Conformance,
    Result,
    TargetRun,
    file_hash,
    forge_infotext_reader,
)
from .procs import ModelPaths

ROOT = Path(__file__).resolve().parent.parent
DIFFERENCES = Path(__file__).with_name("differences.md")
DEFAULT_MODELS = Path.home() / ".cache" / "mobilesd" / "forge-models"


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def _forge_python(forge_dir: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    return forge_dir / "venv" / "bin" / "python"


def prepare_models(models_root: Path, forge_dir: Path | None, forge_python: Path | None) -> None:
    wanted = [
        models_root / "Stable-diffusion" / "mobilesd-test-a.safetensors",
        models_root / "Stable-diffusion" / "mobilesd-test-b.safetensors",
        models_root / "Lora" / "mobilesd-test-lora.safetensors",
        models_root / "VAE" / "mobilesd-test-vae.safetensors",
    ]
    if all(p.exists() for p in wanted):
        return
    if forge_python is None or forge_dir is None:
        raise SystemExit(
            f"the test models are not in {models_root}; making them needs FORGE_DIR (and its venv)"
        )
    _log(f"making the test models in {models_root} (about a minute) ...")
    subprocess.run(
        [
            str(forge_python),
            str(Path(__file__).with_name("make_test_models.py")),
            "--forge-dir",
            str(forge_dir),
            "--out",
            str(models_root),
        ],
        check=True,
    )


def write_styles(folder: Path) -> list[Path]:
    """Two styles files, as Forge's default (styles.csv, styles_integrated.csv): Forge then
    puts a divider entry before each file's styles."""
    files = [folder / "styles.csv", folder / "styles_integrated.csv"]
    for path, name in zip(files, (STYLE, STYLE_2), strict=True):
        path.write_text(
            f'name,prompt,negative_prompt\n{name},"{{prompt}}, conformance style","lowres"\n',
            encoding="utf-8",
        )
    return files


def environment(forge_dir: Path | None, forge_python: Path | None) -> dict[str, str]:
    env = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), {platform.system()}",
        "mobilesd": _git(ROOT, "rev-parse", "--short", "HEAD")
        + (" (with uncommitted changes)" if _git(ROOT, "status", "--porcelain") else ""),
    }
    if forge_dir is not None and forge_python is not None:
        env["forge"] = (
            f"{_git(forge_dir, 'rev-parse', 'HEAD')} "
            f"({_git(forge_dir, 'log', '-1', '--format=%s')}; "
            f"`git describe`: {_git(forge_dir, 'describe', '--tags', '--always')})"
        )
        for repo in ("huggingface_guess", "stable-diffusion-webui-assets"):
            folder = forge_dir / "repositories" / repo
            env[repo] = _git(folder, "rev-parse", "HEAD") or "missing"
        probe = subprocess.run(
            [
                str(forge_python),
                "-c",
                "import sys, torch, gradio, fastapi; print(torch.__version__, "
                "torch.cuda.is_available(), gradio.__version__, fastapi.__version__, "
                "sys.version.split()[0])",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        parts = probe.stdout.split()
        if len(parts) == 5:
            torch, cuda, env["gradio"], env["fastapi"], env["forge python"] = parts
            env["torch"] = f"{torch} (CUDA available: {cuda}; Forge runs with --always-cpu)"
    return env


# -- differences between the two columns' raw answers --------------------------------------------


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if value is None:
        return "null"
    return type(value).__name__


def shape_diff(real: Any, sim: Any, path: str = "") -> list[str]:
    """Where the shapes of two JSON values differ; lists compare their first items."""
    out: list[str] = []
    if isinstance(real, dict) and isinstance(sim, dict):
        only_real = sorted(set(real) - set(sim))
        only_sim = sorted(set(sim) - set(real))
        if only_real:
            shown = ", ".join(only_real[:12]) + (" ..." if len(only_real) > 12 else "")
            out.append(f"`{path or '.'}`: only Forge has {len(only_real)} keys: {shown}")
        if only_sim:
            out.append(f"`{path or '.'}`: only the simulator has {', '.join(only_sim)}")
        for key in sorted(set(real) & set(sim)):
            out += shape_diff(real[key], sim[key], f"{path}.{key}")
    elif isinstance(real, list) and isinstance(sim, list):
        if real and sim:
            out += shape_diff(real[0], sim[0], f"{path}[0]")
        elif bool(real) != bool(sim):
            out.append(f"`{path}`: Forge {len(real)} items, simulator {len(sim)}")
    else:
        a, b = _kind(real), _kind(sim)
        if a != b and {a, b} != {"int", "float"}:
            out.append(f"`{path or '.'}`: Forge {a}, simulator {b}")
        elif a != b:
            out.append(f"`{path or '.'}`: Forge {a}, simulator {b} (same JSON number)")
    return out


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else type(value).__name__


def infotext_diff(real: str, sim: str) -> str:
    """Keys in order, and how values are written, of two infotexts for the same job."""
    a, b = parse_infotext(real), parse_infotext(sim)
    keys_a = [k for k in a if k not in ("prompt", "negative_prompt")]
    keys_b = [k for k in b if k not in ("prompt", "negative_prompt")]
    out = []
    if keys_a != keys_b:
        out.append(f"keys: Forge `{', '.join(keys_a)}`; simulator `{', '.join(keys_b)}`")
    for key in keys_a:
        if key in b and key not in ("Version", "Seed") and str(a[key]) != str(b[key]):
            out.append(f"`{key}`: Forge `{a[key]}`, simulator `{b[key]}`")
    return "; ".join(out) or "same keys, in the same order, written alike"


def protocol_rows(real: dict[str, Any], sim: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for name in sorted(set(real) | set(sim)):
        r, s = real.get(name), sim.get(name)
        if r is None or s is None:
            rows.append((name, "captured" if r else "-", "captured" if s else "-", "one side only"))
            continue
        if "text" in r and "text" in s:
            rows.append((name, "200", "200", infotext_diff(r["text"], s["text"])))
            continue
        status_r, status_s = r.get("status"), s.get("status")
        diffs = []
        if status_r != status_s:
            diffs.append(f"status {status_r} vs {status_s}")
        diffs += shape_diff(r.get("body"), s.get("body"))
        for key in set(r) - {"status", "body"}:
            if key in ("seconds",):
                continue
            diffs += shape_diff(r.get(key), s.get(key), key)
        rows.append((name, str(status_r), str(status_s), "; ".join(diffs) or "same shape"))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(
    env: dict[str, str],
    runs: dict[str, TargetRun],
    command: str,
    total_seconds: float,
) -> str:
    real, sim = runs.get("real"), runs.get("sim")
    lines = [
        "# MobileSD against the real Forge: conformance run",
        "",
        "Generated by `./dev conformance` (`conformance/run.py`); do not edit by hand — the list "
        "of differences at the end is `conformance/differences.md`.",
        "",
        "| | |",
        "|---|---|",
    ]
    for key, value in env.items():
        lines.append(f"| {key} | {_cell(value)} |")
    lines.append(f"| command | `{command}` |")
    duration = f"{total_seconds / 60:.1f} min in all"
    per = ", ".join(f"{k} {v.seconds / 60:.1f} min" for k, v in runs.items())
    lines.append(f"| duration | {duration} ({per}) |")
    lines += [
        "",
        "## Checks",
        "",
        "Each check drives `mobilesd serve` through its public API (HTTP, the event stream, the "
        "gallery); Forge's side is read from Forge itself. The same script runs against the real "
        "Forge and against `mobilesd forge-sim` started with the same model folders.",
        "",
        "| check | real Forge | simulator |",
        "|---|---|---|",
    ]
    for check_id, title in CHECKS:
        cells = []
        for run in (real, sim):
            result = run.results.get(check_id) if run else None
            cells.append(f"{result.status} ({result.seconds:.0f} s)" if result else "not run")
        lines.append(f"| **{check_id}**: {_cell(title)} | {cells[0]} | {cells[1]} |")
    for label, run in (("Real Forge", real), ("Simulator", sim)):
        if run is None:
            continue
        lines += ["", f"### {label}: what each check saw", ""]
        for check_id, _ in CHECKS:
            result = run.results.get(check_id)
            if result:
                lines.append(f"- **{check_id}** ({result.status}): {_cell(result.detail)}")
    if real and sim:
        lines += [
            "",
            "## Timing semantics, as observed",
            "",
            "From `/sdapi/v1/progress`, polled every 0.2 s by the run itself while MobileSD "
            "worked (job B: the switch from checkpoint A to B).",
            "",
            "| what | real Forge | simulator |",
            "|---|---|---|",
        ]
        for key in list(dict.fromkeys([*real.semantics, *sim.semantics])):
            lines.append(
                f"| {key} | {_cell(real.semantics.get(key, '-'))} | "
                f"{_cell(sim.semantics.get(key, '-'))} |"
            )
        interrupt = {k: r.raw.get("txt2img after interrupt") for k, r in runs.items()}
        lines.append(
            "| txt2img interrupted at step 1 of 12 (sent directly) | "
            f"{_cell(json.dumps(interrupt.get('real')))} | "
            f"{_cell(json.dumps(interrupt.get('sim')))} |"
        )
        lines += [
            "",
            "## Protocol: the answers of both, compared",
            "",
            "Straight to each server (not through MobileSD): status codes and JSON shapes (keys "
            "and types; lists by their first item).",
            "",
            "| request | real Forge | simulator | differences |",
            "|---|---|---|---|",
        ]
        for name, r, s, diff in protocol_rows(real.raw, sim.raw):
            lines.append(f"| {_cell(name)} | {r} | {s} | {_cell(diff)} |")
    if DIFFERENCES.exists():
        lines += ["", DIFFERENCES.read_text(encoding="utf-8").strip()]
    return "\n".join(lines) + "\n"


def _target_run(data: dict[str, Any]) -> TargetRun:
    run = TargetRun(**{k: v for k, v in data.items() if k != "results"})
    run.results = {k: Result(**v) for k, v in data["results"].items()}
    return run


async def run_targets(kinds: list[str], **kwargs: Any) -> dict[str, TargetRun]:
    runs: dict[str, TargetRun] = {}
    reader = kwargs.pop("reader")
    for kind in kinds:
        runs[kind] = await Conformance(kind, log=_log, **kwargs).run(reader)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forge-dir", default=os.environ.get("FORGE_DIR"))
    parser.add_argument("--forge-python", default=os.environ.get("FORGE_PYTHON"))
    parser.add_argument(
        "--models", default=os.environ.get("MOBILESD_FORGE_MODELS", str(DEFAULT_MODELS))
    )
    parser.add_argument("--only", choices=["real", "sim"], default=None)
    parser.add_argument("--out", default=None, help="report file ('-': the work folder only)")
    parser.add_argument(
        "--render",
        metavar="WORK",
        default=None,
        help="write the report again from an earlier run's work folder (its results.json)",
    )
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads((Path(args.render) / "results.json").read_text())
        runs = {k: _target_run(v) for k, v in saved["runs"].items()}
        text = render(saved["env"], runs, saved["command"], saved["total"])
        out = Path(args.out or ROOT / "docs" / "forge-conformance.md")
        out.write_text(text, encoding="utf-8")
        _log(f"wrote {out}")
        return 0
    forge_dir = Path(args.forge_dir).resolve() if args.forge_dir else None
    kinds = [args.only] if args.only else ["real", "sim"]
    if "real" in kinds and forge_dir is None:
        print(
            "FORGE_DIR is not set: point it at a checkout of lllyasviel/stable-diffusion-webui-"
            "forge with a venv (see README, Developing), or run --only sim.",
            file=sys.stderr,
        )
        return 2
    forge_python = _forge_python(forge_dir, args.forge_python) if forge_dir else None
    if forge_python is not None and not forge_python.exists():
        print(f"Forge's Python {forge_python} does not exist (set FORGE_PYTHON)", file=sys.stderr)
        return 2
    models_root = Path(args.models).expanduser().resolve()
    prepare_models(models_root, forge_dir, forge_python)
    work = Path(tempfile.mkdtemp(prefix="mobilesd-conformance-"))
    _log(f"work folder (logs, data): {work}")
    styles = write_styles(work)
    models = ModelPaths(
        checkpoints=models_root / "Stable-diffusion",
        loras=models_root / "Lora",
        vaes=models_root / "VAE",
        styles=styles,
    )
    hashes = {
        p.stem: file_hash(p) for p in sorted(models.checkpoints.glob("mobilesd-test-*.safetensors"))
    }
    started = time.monotonic()
    runs = asyncio.run(
        run_targets(
            kinds,
            work=work,
            models=models,
            forge_dir=forge_dir,
            forge_python=forge_python,
            hashes=hashes,
            reader=forge_infotext_reader(forge_python, forge_dir),
        )
    )
    total = time.monotonic() - started
    for kind, run in runs.items():
        (work / f"{kind}-raw.json").write_text(json.dumps(run.raw, indent=1, default=str))
    failed = [
        f"{kind}:{cid}"
        for kind, run in runs.items()
        for cid, r in run.results.items()
        if r.status != "pass"
    ]
    env = environment(forge_dir, forge_python)
    command = "FORGE_DIR=<checkout> ./dev conformance" + (
        f" --only {args.only}" if args.only else ""
    )
    saved = {"env": env, "command": command, "total": total}
    saved["runs"] = {k: dataclasses.asdict(v) for k, v in runs.items()}
    (work / "results.json").write_text(json.dumps(saved, indent=1, default=str))
    text = render(env, runs, command, total)
    out = args.out or (None if args.only else str(ROOT / "docs" / "forge-conformance.md"))
    if out and out != "-":
        Path(out).write_text(text, encoding="utf-8")
        _log(f"wrote {out}")
    else:
        (work / "forge-conformance.md").write_text(text, encoding="utf-8")
        _log(f"report: {work / 'forge-conformance.md'}")
    _log(
        f"done in {total / 60:.1f} min; {'failed: ' + ', '.join(failed) if failed else 'all pass'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
