"""House-style checks on the runner package (STYLE §2 rule 30 and §4): no import
cycles between its modules, imports under ``TYPE_CHECKING`` included, and no module
longer than 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[2] / "ironfunctions" / "runner"
PACKAGE = "ironfunctions.runner."


def runner_imports() -> dict[str, set[str]]:
    """Module name -> the runner modules it imports (anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for path in RUNNER.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith(PACKAGE) and (RUNNER / (name[len(PACKAGE):] + ".py")).exists():
                    found.add(name[len(PACKAGE):])
        graph[path.stem] = found
    return graph


def test_runner_modules_import_each_other_without_cycles() -> None:
    graph = runner_imports()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, "import cycle: " + " -> ".join(path + [module])
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, path + [module])
        done.add(module)

    for module in graph:
        visit(module, [])
    assert "hot_pool" in graph["hot"]  # the scan does see imports


def test_runner_modules_stay_within_400_lines() -> None:
    long = {p.name: n for p in RUNNER.glob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
