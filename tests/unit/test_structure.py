"""The package's shape: no import cycles among its modules, no module past 400 lines.

Both are rules of the house style (STYLE.md §2 rule 30, §4): two modules that need each
other are one module, or share an interface placed below both. Imports under
``if TYPE_CHECKING:`` count, because they are the same dependency, only hidden.
"""

from __future__ import annotations

import ast
import os
import pathlib

import ironfunctions

PACKAGE_DIR = os.path.dirname(os.path.abspath(ironfunctions.__file__))
MAX_LINES = 400


def module_files() -> dict[str, str]:
    """Dotted module name -> file path, for every module of the package."""
    modules = {}
    root = os.path.dirname(PACKAGE_DIR)
    for folder, _dirs, files in os.walk(PACKAGE_DIR):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            dotted = os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")
            if dotted.endswith(".__init__"):
                dotted = dotted[: -len(".__init__")]
            modules[dotted] = path
    return modules


def imports_of(module: str, path: str, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports, wherever the import stands."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            # "from a.b import c" imports a.b.c when c is a module, else a.b.
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            # The deepest known module the name stands for.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a package importing its own submodules aside), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            # A package's __init__ importing its submodules is not a dependency back.
            if node.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_checker_finds_a_cycle_hidden_behind_type_checking(tmp_path: pathlib.Path) -> None:
    """The checker itself: a two-module cycle is found, a chain is not, and an import
    under ``if TYPE_CHECKING:`` is an import."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    probe = tmp_path / "w.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ironfunctions.x import Y\n")
    known = {"ironfunctions.x", "ironfunctions.w"}
    assert imports_of("ironfunctions.w", str(probe), known) == {"ironfunctions.x"}


def test_no_import_cycle_among_the_package_modules() -> None:
    """Counting imports under ``if TYPE_CHECKING:`` and inside functions."""
    assert find_cycle(import_graph()) is None


def test_no_module_is_longer_than_400_lines() -> None:
    long = {}
    for name, path in module_files().items():
        with open(path) as f:
            count = sum(1 for _ in f)
        if count > MAX_LINES:
            long[name] = count
    assert long == {}
