"""The tests' own layout: a test module imports shared helpers from conftest.py or tests/helpers/,
never from another test module (importing one runs its module-level code and registers its
fixtures a second time, and a helper moved or renamed there breaks unrelated tests)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_test_modules(node: ast.AST) -> list[str]:
    """The test_* modules an import statement of the test suite names (`from .test_x import y`,
    `from . import test_x`, `import tests.test_x`)."""
    if isinstance(node, ast.Import):
        dotted = [alias.name.split(".") for alias in node.names]
        relative = False
    elif isinstance(node, ast.ImportFrom):
        module = node.module.split(".") if node.module else []
        dotted = [[*module, alias.name] for alias in node.names]
        relative = node.level > 0
    else:
        return []
    return [
        ".".join(parts)
        for parts in dotted
        if (relative or parts[0] == "tests") and any(p.startswith("test_") for p in parts)
    ]


def cross_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(TESTS.parent)
    return [
        f"{where}:{node.lineno} imports {name}"
        for node in ast.walk(tree)
        for name in imported_test_modules(node)
    ]


def test_no_module_imports_from_a_test_module() -> None:
    files = sorted(TESTS.rglob("*.py"))
    assert TESTS / "test_suite_layout.py" in files and TESTS / "helpers" / "__init__.py" in files
    problems = [problem for path in files for problem in cross_imports(path)]
    assert problems == [], "move what is shared to tests/helpers/ or conftest.py:\n" + "\n".join(
        problems
    )


def test_the_check_sees_each_way_of_importing_a_test_module() -> None:
    def names(source: str) -> list[str]:
        return [n for node in ast.walk(ast.parse(source)) for n in imported_test_modules(node)]

    assert names("from .test_auth import login") == ["test_auth.login"]
    assert names("from . import test_auth") == ["test_auth"]
    assert names("from ..test_auth import login") == ["test_auth.login"]
    assert names("import tests.test_auth") == ["tests.test_auth"]
    assert names("from tests.test_auth import login") == ["tests.test_auth.login"]
    assert names("def f():\n    from .test_inbox import settled\n") == ["test_inbox.settled"]
    assert names("from .helpers.auth import login\nfrom .conftest import TOKEN") == []
    assert names("import test_utils_elsewhere") == []  # not the test suite's
