"""The package's import graph: no circles, and every import runs down the layer order of CONTRIBUTING.md.

The imports are read with ``ast`` from the source (module level and inside functions alike), so the check
needs none of the heavy dependencies and sees the lazy imports too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "earlytom_eval"
NAME = PACKAGE.name

#: Low to high; a module may import its own layer and the layers below it.
LAYERS = ("base", "compression", "models", "efficiency", "lmms", "report", "reproduce", "top")
BASE = {"paths", "dtypes", "timing", "video", "environment", "stages"}
TOP = {"", "cli"}  # "" is the package itself (earlytom_eval/__init__.py)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """The layer of ``earlytom_eval.<...>``: its sub-package, or base / top for the top-level modules."""
    rest = module.split(".")[1:]
    first = rest[0] if rest else ""
    if len(rest) <= 1 and first in BASE:
        return "base"
    if len(rest) <= 1 and first in TOP:
        return "top"
    if first in LAYERS and (len(rest) > 1 or (PACKAGE / first).is_dir()):
        return first
    raise AssertionError(f"{module} belongs to no layer: put it in a layer folder or add it to test_layers.py")


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """``(imported package module, line)`` for every import in ``source``, relative ones resolved."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source_module = ".".join(base + ([node.module] if node.module else []))
            else:
                source_module = node.module or ""
            # `from pkg import submodule` imports the submodule; `from module import name` the module.
            targets = [
                f"{source_module}.{a.name}" if f"{source_module}.{a.name}" in known else source_module
                for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target == NAME or target.startswith(NAME + "."):
                while target not in known:  # `import earlytom_eval.x.y` where y is a name, not a module
                    target = target.rpartition(".")[0]
                found.append((target, node.lineno))
    return found


Graph = dict[str, list[tuple[str, int]]]


def import_graph() -> Graph:
    found = modules()
    known = set(found)
    return {m: imports_of(m, p.read_text(), p.name == "__init__.py", known) for m, p in found.items()}


def upward_imports(graph: Graph) -> list[str]:
    """Every import from a lower layer to a higher one."""
    wrong = []
    for module, targets in graph.items():
        mine = LAYERS.index(layer_of(module))
        for target, line in targets:
            theirs = LAYERS.index(layer_of(target))
            if theirs > mine:
                wrong.append(f"{module}:{line} ({LAYERS[mine]}) imports {target} ({LAYERS[theirs]})")
    return wrong


def circles(graph: Graph) -> list[str]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    edges = {module: {target for target, _ in targets if target != module} for module, targets in graph.items()}
    found = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(" <-> ".join(sorted(component)))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    for module in modules():
        assert layer_of(module) in LAYERS


def test_imports_run_down_the_layers():
    wrong = upward_imports(import_graph())
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(found)


def test_the_checks_catch_an_upward_import_and_a_circle():
    """The checks themselves, on made-up modules: a lazy upward import inside a function, and a circle."""
    known = {f"{NAME}.paths", f"{NAME}.video", f"{NAME}.report", f"{NAME}.report.tables", f"{NAME}.report.plots"}
    source = "def f():\n    from .report.tables import aggregate\n"
    graph = {f"{NAME}.paths": imports_of(f"{NAME}.paths", source, False, known)}
    assert graph[f"{NAME}.paths"] == [(f"{NAME}.report.tables", 2)]
    assert upward_imports(graph) == [f"{NAME}.paths:2 (base) imports {NAME}.report.tables (report)"]
    graph = {
        f"{NAME}.report.tables": imports_of(f"{NAME}.report.tables", "from . import plots\n", False, known),
        f"{NAME}.report.plots": imports_of(f"{NAME}.report.plots", "from .tables import Tables\n", False, known),
    }
    assert circles(graph) == [f"{NAME}.report.plots <-> {NAME}.report.tables"]
    assert not upward_imports(graph)
