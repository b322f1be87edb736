"""The repository stands alone: its docs are its own, their links resolve, and the README's
dependency table names every dependency.

- No tracked file points at specification files kept outside the repository (the facts
  MobileSD relies on are written down in `docs/`).
- Every relative link in README.md and docs/*.md names a file that exists, and a `#heading`
  anchor names a heading of that file.
- Every package of pyproject.toml (dependencies and the `test` extra) has a row in the
  README's dependency table.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()

# Names of the specification files the project was first written against, and the folders
# beside the repository they lived in. Upper case as they were spelled: docs/architecture.md
# and the like are the repository's own.
OUTSIDE = re.compile(
    r"\b(?:CONTRACT|FORGE_API|CIVITAI|WATCH_FOLDER|PRODUCT|ARCHITECTURE|REAL_FORGE|STYLE)\.md\b"
    r"|\.\./(?:shared|seed)\b"
    r"|\bshared/spec\b"
)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [name for name in out.decode().split("\0") if name]


def markdown_docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """`text` without fenced code blocks and code spans: links there are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        name, n = base, 1
        while name in found:  # GitHub numbers repeated headings: x, x-1, x-2
            name = f"{base}-{n}"
            n += 1
        found.add(name)
    return found


def test_no_file_refers_to_specs_outside_the_repository() -> None:
    offenders = []
    for name in tracked_files():
        if name == THIS:
            continue
        path = REPO / name
        if not path.is_file():
            continue  # deleted in the work tree, not yet committed
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and other binary files
        for number, line in enumerate(text.splitlines(), 1):
            if match := OUTSIDE.search(line):
                offenders.append(f"{name}:{number}: {match.group(0)}")
    assert not offenders, (
        "these refer to files outside the repository; link the page of docs/ that holds the "
        "fact instead:\n" + "\n".join(offenders)
    )


@pytest.mark.parametrize("doc", markdown_docs(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in _LINK.findall(prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / unquote(file_part)).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO)}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: {dest.relative_to(REPO)} has no heading #{anchor}")
    assert not broken, f"{doc.relative_to(REPO)} has broken links:\n" + "\n".join(broken)


def _package(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def readme_dependency_rows() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("Dependencies, and why each is there:")
    names: set[str] = set()
    for line in text[start:].splitlines()[1:]:
        if not line.strip():
            if names:
                break  # the table ended
            continue
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cell = line.split("|")[1]
        if cell.strip() == "package":
            continue
        names |= {_package(part) for part in cell.split(",") if part.strip()}
    return names


def test_readme_lists_every_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {_package(r) for r in project["dependencies"]}
    wanted |= {_package(r) for r in project["optional-dependencies"]["test"]}
    missing = sorted(wanted - readme_dependency_rows())
    assert not missing, f"README's dependency table has no row for: {', '.join(missing)}"
