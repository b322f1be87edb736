"""The package layout keeps its promises: the core runs without the TUI installed or loaded, and
the entry-point modules do not depend on each other in a circle."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "mobilesd_core"
TUI_PACKAGES = ("mobilesd_tui", "textual")


def _imported_modules(tree: ast.AST, package: str, *, top_level_only: bool) -> set[str]:
    """Absolute names of the modules `tree` (a module of `package`) imports."""
    nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package the file is in
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
    return names


def _core_module(name: str) -> ast.Module:
    return ast.parse((CORE / f"{name}.py").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "module", ["mobilesd_core.cli", "mobilesd_core.core", "mobilesd_core.demo"]
)
def test_importing_the_core_loads_no_tui(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {TUI_PACKAGES!r})\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=CORE.parent,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} loads {done.stdout.strip()}"


def test_no_core_module_imports_the_tui_at_module_level() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        package = ".".join(parts[:-1])  # a module's package; an __init__'s is its own
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name in _imported_modules(tree, package, top_level_only=True):
            if name.split(".")[0] in TUI_PACKAGES:
                offenders.append(f"{path.relative_to(CORE.parent)}: {name}")
    assert offenders == []


def test_demo_does_not_import_cli() -> None:
    """The CLI starts the demo (a one-way edge, inside cmd_demo); the demo needs nothing of the
    CLI: what both use (signals, taking the port) is in runner.py."""
    demo = _imported_modules(_core_module("demo"), "mobilesd_core", top_level_only=False)
    assert not {n for n in demo if n == "mobilesd_core.cli" or n.startswith("mobilesd_core.cli.")}
    cli = _imported_modules(_core_module("cli"), "mobilesd_core", top_level_only=True)
    assert not {n for n in cli if n == "mobilesd_core.demo" or n.startswith("mobilesd_core.demo.")}


def _calls(tree: ast.AST) -> set[str]:
    """The names of the functions and methods `tree` calls (`f(...)`, `x.f(...)`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                names.add(node.func.id)
            elif isinstance(node.func, ast.Attribute):
                names.add(node.func.attr)
    return names


def test_job_records_are_built_only_by_the_queue_service() -> None:
    """Every entry point (API, TUI through the API, inbox) queues through QueueService, so a job
    is built one way: the inbox hands its specs to submit_specs, as the jobs route does."""
    builders = []
    for path in sorted(CORE.rglob("*.py")):
        if path.name in ("service.py", "schema.py") and path.parent == CORE:
            continue
        if "new_job" in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            builders.append(str(path.relative_to(CORE.parent)))
    assert builders == []
    for entry in ("inbox/ingest.py", "api/routes_jobs.py"):
        assert "submit_specs" in _calls(ast.parse((CORE / entry).read_text(encoding="utf-8")))


def test_the_checkout_inbox_is_the_default_and_git_keeps_only_its_readme() -> None:
    """A source checkout's inbox/ is INBOX_PATH's default (run from the repository root); what
    is dropped there, moved to processed/ or failed/, or reported never lands in a commit."""
    from mobilesd_core.config import Settings
    from mobilesd_core.inbox.names import Kind, classify

    repo = CORE.parent
    assert Settings.inbox_path == Path("inbox")
    assert (repo / "inbox" / "README.md").is_file()
    assert classify("README.md") is Kind.TEMPORARY  # left alone without a log line
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    dropped = [
        "inbox/job.yaml",
        "inbox/portraits/job.yml",
        "inbox/processed/job.yaml",
        "inbox/failed/typo.yaml",
        "inbox/failed/typo.yaml.error.txt",
        "inbox/notes.txt",
    ]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *dropped, "inbox/README.md"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ignored.stdout.split() == dropped
