"""The shape of the package, as tests: no import cycles (function-level imports included), lower layers
never import higher ones, and no function over 60 lines or 8 parameters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sdlkit"

LAYERS = {
    "core": 0,  # model, objective, kernels, the method registry
    "methods": 1,  # σ files registering into core
    "data": 2,
    "store": 3,
    "harvest": 4,
    "interop": 4,
    "train": 5,
    "eval": 5,
    "browse": 6,
    "paper": 7,
    "cli": 8,
}
"""Each subpackage's layer: a module may import its own layer or lower ones, never a higher one. The top-level
modules (io, config, errors, seeding, overrides, devices, report) are plumbing that any layer may use; config.py
imports the data sources (it validates run configs), so it sits above store for import purposes."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The sdlkit modules `name` imports anywhere in its file (function bodies included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("sdlkit"):
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def subpackage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else None


def test_tarjan_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_in_a_circle():
    assert cycles(GRAPH) == []


def test_no_subpackages_import_in_a_circle():
    packages: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        here = subpackage(name) or name
        packages.setdefault(here, set()).update((subpackage(t) or t) for t in targets if (subpackage(t) or t) != here)
    assert cycles(packages) == []


def test_lower_layers_never_import_higher_ones():
    upward = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if subpackage(name) in LAYERS
        and subpackage(target) in LAYERS
        and LAYERS[subpackage(target)] > LAYERS[subpackage(name)]
    ]
    assert upward == []
    assert set(LAYERS) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield path.relative_to(PACKAGE), node


@pytest.mark.parametrize("limit", ["lines", "parameters"])
def test_functions_stay_small(limit):
    too_big = []
    for path, node in functions():
        args = node.args
        named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        params = len(named) + (args.vararg is not None) + (args.kwarg is not None)
        params -= bool(named and named[0].arg in ("self", "cls"))
        size = node.end_lineno - node.lineno + 1
        if (limit == "lines" and size > 60) or (limit == "parameters" and params > 8):
            too_big.append(f"{path}:{node.lineno} {node.name} ({size} lines, {params} parameters)")
    assert too_big == []
