"""Every salbench module imports, and imports between salbench modules form no cycle.

A cycle makes import order matter (half-initialised modules, names missing at import time) and
is what pushes imports into function bodies. Two graphs are checked: the module-level one (each
file's top-level ``import`` / ``from`` statements; ``if TYPE_CHECKING:`` blocks excluded, they
never run) and the one that also counts imports inside functions, so that a cycle cannot hide
behind a deferred import either.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import salbench

def _modules() -> dict[str, Path]:
    """Every module of the distribution: ``bench/`` is ``salbench`` itself, and ``methods/``,
    ``metrics/``, ``datasets/`` are subpackages living outside it (``package-dir``), so each
    package's own path is walked."""
    found = {"salbench": Path(salbench.__file__)}
    for pkg in ("salbench", "salbench.methods", "salbench.metrics", "salbench.datasets"):
        module = importlib.import_module(pkg)
        found[pkg] = Path(module.__file__)
        for info in pkgutil.walk_packages(module.__path__, pkg + "."):
            spec = importlib.util.find_spec(info.name)
            assert spec is not None and spec.origin, info.name
            found[info.name] = Path(spec.origin)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported (not in functions or classes)."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The salbench modules an import statement loads (``from pkg import sub`` counts ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    hits = set()
    for name in names:
        while name and name not in known:  # "salbench.x.y" where y is a function: the module is salbench.x
            name = name.rpartition(".")[0]
        if name:
            hits.add(name)
    return hits


def import_graph(*, deferred: bool = False) -> dict[str, set[str]]:
    """salbench module -> the salbench modules it imports (``deferred``: function bodies too)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))] if deferred else _top_level_imports(tree)
        edges: set[str] = set()
        for node in nodes:
            edges |= _targets(node, name, is_package, known)
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _cycle_path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One concrete loop through a component, for the failure message: a -> b -> ... -> a."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return " -> ".join(paths[v] + [start])
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    return " <-> ".join(component)


def test_every_module_imports():
    for name in _modules():
        importlib.import_module(name)


@pytest.mark.parametrize("deferred", [False, True], ids=["module-level", "with-function-level"])
def test_no_import_cycles(deferred):
    graph = import_graph(deferred=deferred)
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_cycle_path(graph, c) for c in found)


def test_cycle_finder_reports_a_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert _cycle_path(graph, ["a", "b", "c"]) == "a -> b -> c -> a"
