"""The package's layout: no import cycles, small modules, method names read only by the
registry."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ecprune

PACKAGE = Path(ecprune.__file__).parent
# The registries of weight methods and of unit-removal methods (ecprune.structured).
REGISTRY_MODULES = {"ecprune.methods.registry", "ecprune.structured.registry"}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def import_time_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports when it is imported: module-level ``import`` and
    ``from`` statements (not those inside functions or ``if TYPE_CHECKING:``). A package's
    ``__init__`` importing its own modules is no cycle (the package is already in
    ``sys.modules``), so parents are edges only when imported from."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                submodules = {f"{base}.{alias.name}" for alias in node.names} & known
                # `from pkg import module` needs that module; `from pkg import name`, pkg itself.
                found.update(submodules if len(submodules) == len(node.names) else {base})

    visit(ast.parse(path.read_text()).body)
    return {module for module in found if module in known and module != name}


def test_the_import_graph_has_no_cycle():
    paths = modules()
    graph = {name: import_time_imports(name, path, set(paths)) for name, path in paths.items()}
    state, cycle = {}, []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = "open"
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                cycle.extend([*trail[trail.index(child):], child] if child in trail
                             else [node, child])
                return True
            if child not in state and visit(child, [*trail, child]):
                return True
        state[node] = "done"
        return False

    assert not any(visit(name, [name]) for name in graph if name not in state), cycle


def test_the_cycle_finder_sees_a_cycle(tmp_path):
    """The check above can fail: two modules importing each other are a cycle it reports."""
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("from . import a\nx = 1\n")
    known = {"ecprune.a", "ecprune.b"}
    assert import_time_imports("ecprune.a", tmp_path / "a.py", known) == {"ecprune.b"}
    assert import_time_imports("ecprune.b", tmp_path / "b.py", known) == {"ecprune.a"}


def test_no_module_is_over_the_size_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_method_names_are_compared_only_in_the_registry():
    names = "|".join(re.escape(name) for name in (*ecprune.METHODS, *ecprune.NEURON_METHODS))
    literal = rf"""["']({names})["']"""
    comparison = re.compile(rf"(==|!=|\bin)\s*[(\[{{]?\s*{literal}|{literal}\s*(==|!=|\bin\b)")
    found = [f"{name}:{k}: {line.strip()}" for name, path in modules().items()
             if name not in REGISTRY_MODULES
             for k, line in enumerate(path.read_text().splitlines(), 1)
             if comparison.search(line)]
    assert found == []
    assert comparison.search('if method == "gradient":') and comparison.search(
        'if method in ("ecp-refit", "sparsegpt"):') and comparison.search('if name != "obs":')
