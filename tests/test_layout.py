"""The package's structure: no import cycle between its modules, and no module too long to read.

Imports are read from the source (every ``import``/``from ... import``, at module level or inside
functions: a run-time import still ties two modules together), except those under ``if TYPE_CHECKING:``.
An import of a package counts as an import of its ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ragicl"
MAX_LINES = 500  # split a module before it passes this (the project's rule)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    out.add(sub)
                elif target in modules:
                    out.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out.discard(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycle():
    cycles = _cycles(_graph())  # the top-level __init__ is a node too: importing it back closes a loop
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _python_files() -> list[Path]:
    """The package's modules, and the tests and scripts beside it (the rule holds for them too)."""
    tops = ("ragicl", "tests", "scripts", "benchmarks", "experiments")
    return sorted(p for top in tops for p in (PKG.parent / top).rglob("*.py")
                  if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(PKG.parent)))
def test_module_is_readable_length(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PKG.parent)} has {n} lines; split it (limit {MAX_LINES})"


def test_pipeline_stages_are_subpackages():
    for stage in ("index", "prompt", "lm", "estimators", "training", "evaluation", "analysis"):
        assert (PKG / stage / "__init__.py").exists(), stage
    flat = sorted(p.name for p in PKG.glob("*.py"))
    assert len(flat) <= 14, f"too many flat modules at the top of the package: {flat}"


# Layers, lowest first: a package may import its own layer and the layers below it, never one above (the
# order is stated once more, with the reasons, in docs/DESIGN.md's module map). ``base`` is every top-level
# module of the package (types, errors, atomic writes, devices, model names, data, statistics).
LAYERS = ("base", "index", "prompt", "lm", "estimators", "training", "analysis", "evaluation", "integrations",
          "distributed", "cli")


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"  # ragicl/__init__.py: the public face, may import anything
    top = parts[1]
    return top if top in LAYERS else "base"


def test_imports_run_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for module, imports in sorted(_graph().items()):
        here = _layer(module)
        if here == "package":
            continue
        for target in sorted(imports):
            there = _layer(target)
            if there == "package" or rank[there] > rank[here]:
                upward.append(f"{module} ({here}) imports {target} ({there})")
    assert not upward, "imports that climb the layers " + str(LAYERS) + ":\n" + "\n".join(upward)


def test_every_subpackage_has_a_layer():
    subpackages = sorted(p.parent.name for p in PKG.glob("*/__init__.py"))
    assert set(subpackages) <= set(LAYERS), f"give these a place in LAYERS: {set(subpackages) - set(LAYERS)}"


def test_the_layer_check_catches_an_upward_import():
    assert _layer("ragicl.index.core") == "index" and _layer("ragicl.stats") == "base"
    assert LAYERS.index("index") < LAYERS.index("evaluation")
