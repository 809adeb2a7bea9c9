"""
The shape of the tree (docs/architecture.md): no import cycles, arrows
between the master's folders that point one way, no class over 300 lines
and no constructor over 6 parameters.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pcci

PACKAGE = Path(pcci.__file__).parent


def _modules() -> dict[str, ast.Module]:
    trees = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        trees[name] = ast.parse(path.read_text(encoding="utf-8"))
    return trees


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The pcci modules a module imports at its top, those for type checking included."""
    found = set()
    for node in tree.body:
        for child in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("pcci"):
                for alias in child.names:
                    candidate = f"{child.module}.{alias.name}"
                    found.add(candidate if candidate in modules else child.module)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("pcci"))
    return found & modules


def _graph() -> dict[str, set[str]]:
    trees = _modules()
    return {name: _imports(tree, set(trees)) for name, tree in trees.items()}


def test_no_import_cycles() -> None:
    graph = _graph()
    done: set[str] = set()
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append(path[path.index(name):] + [name])
            return
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []


def test_the_domain_imports_no_http_and_no_database_engine() -> None:
    for name, targets in _graph().items():
        if name.startswith("pcci.master.cluster"):
            bad = {t for t in targets if t.startswith(("pcci.master.http", "pcci.master.store.sqlite",
                                                      "pcci.master.store.postgres", "pcci.master.peers"))}
            assert bad == set(), name


def test_the_worker_and_the_cli_import_nothing_of_the_master() -> None:
    for name, targets in _graph().items():
        if name.startswith(("pcci.worker", "pcci.cli")):
            assert not any(t.startswith("pcci.master") for t in targets), name


def _shapes() -> tuple[set[str], set[str]]:
    long, wide = set(), set()
    for tree in _modules().values():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            if node.end_lineno is not None and node.end_lineno - node.lineno + 1 > 300:
                long.add(node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    count = len(args.args) - 1 + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)
                    if count > 6:
                        wide.add(node.name)
    return long, wide


def test_no_class_over_300_lines_and_no_constructor_over_6_parameters() -> None:
    long, wide = _shapes()
    assert long == set()
    assert wide == set()
