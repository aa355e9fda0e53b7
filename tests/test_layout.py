"""The layout the design card asks for, read from the source with `ast` (every import, also inside functions).

- The core (`sunday_release/`) imports no Prefect and none of the packages built on it (adapters, flows,
  tasks, deployments): pure logic that any worker, test or tool can load without a server.
- The product (core, adapters, flows, tasks, deployments) imports no test tooling: not `devtools`
  (the Trivy DB writer of the tests, demo and benchmarks), not `tests`, not pytest or hypothesis.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ["sunday_release", "adapters", "flows", "tasks", "deployments"]
NOT_IN_CORE = {"prefect", "prefect_aws", "adapters", "flows", "tasks", "deployments"}
TEST_TOOLING = {"devtools", "tests", "pytest", "hypothesis", "_pytest"}


def imported_roots(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def offenders(package: str, forbidden: set[str]) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {root}"
            for path in sorted((ROOT / package).rglob("*.py"))
            for line, root in imported_roots(path) if root in forbidden]


def test_the_core_imports_no_prefect_and_nothing_built_on_it() -> None:
    assert offenders("sunday_release", NOT_IN_CORE) == []


@pytest.mark.parametrize("package", PRODUCT)
def test_the_product_imports_no_test_tooling(package: str) -> None:
    assert offenders(package, TEST_TOOLING) == []


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from prefect.blocks.system import Secret\n    import devtools.trivydb\n")
    assert imported_roots(source) == [(2, "prefect"), (3, "devtools")]


def test_devtools_is_not_installed_with_the_product() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    include = next(line for line in text.splitlines() if line.startswith("include = ["))
    assert "adapters*" in include and "devtools" not in include
