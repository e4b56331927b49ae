"""The package's import graph, lazy imports inside functions included, has no cycle: each module
can be read (and imported) without the modules that use it."""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
# The folders pyproject.toml maps to subpackages of rescompile.
PACKAGES = {
    "rescompile": "rescompile",
    "spec": "rescompile.spec",
    "compiler": "rescompile.compiler",
    "backends": "rescompile.backends",
}


def modules() -> dict[str, Path]:
    """Every module of the package by its import name."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imported(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in it: ``import a.b``,
    ``from a.b import c`` (module ``a.b.c`` where that is a module, else ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known
            names.update(submodules or {node.module})
    return names & known


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path whose last module is its first, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            found = visit(target, [*path, module])
            if found is not None:
                return found
        done.add(module)
        return None

    return next((found for module in sorted(graph) if (found := visit(module, [])) is not None), None)


def test_the_import_graph_has_no_cycle() -> None:
    known = modules()
    graph = {name: imported(path, set(known)) - {name} for name, path in known.items()}
    assert graph["rescompile.cli"], "the scan finds imports"
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_a_planted_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycle(graph) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
