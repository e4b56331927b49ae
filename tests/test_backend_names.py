"""Backends are reached through the registry only: no module of the package outside ``backends/``
branches on a backend's name or imports a backend's own modules. What differs between backends is
a capability their registry entries declare (:class:`rescompile.backends.interface.Backend`)."""

import ast
from pathlib import Path

import pytest

from rescompile.backends.registry import BACKENDS

ROOT = Path(__file__).parent.parent
# The package's folders other than backends/ (pyproject.toml maps them to rescompile.*).
FOLDERS = ("rescompile", "spec", "compiler")
NAMES = frozenset(BACKENDS)
MODULES = frozenset(module for backend in BACKENDS.values() for module in (backend.module, backend.runtime))


def _names_a_backend(node: ast.expr) -> bool:
    """A backend's name as a literal, or a tuple, list or set of literals holding one."""
    if isinstance(node, ast.Constant):
        return node.value in NAMES
    return isinstance(node, ast.Tuple | ast.List | ast.Set) and any(_names_a_backend(item) for item in node.elts)


def _backend_module(name: str) -> bool:
    return any(name == module or name.startswith(f"{module}.") for module in MODULES)


def branches_on_backend_names(source: str) -> list[str]:
    """Each place in ``source`` that tests a backend's name or imports a backend's module, as
    ``LINE: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare) and any(map(_names_a_backend, [node.left, *node.comparators])):
            found.append(f"{line}: compares with a backend's name")
        elif isinstance(node, ast.MatchValue) and _names_a_backend(node.value):
            found.append(f"{line}: matches a backend's name")
        elif isinstance(node, ast.Dict) and any(key is not None and _names_a_backend(key) for key in node.keys):
            found.append(f"{line}: a table keyed by backends' names")
        elif isinstance(node, ast.Subscript) and _names_a_backend(node.slice):
            found.append(f"{line}: looks a backend up by its name")
        elif isinstance(node, ast.keyword) and node.arg == "choices" and _names_a_backend(node.value):
            found.append(f"{line}: lists backends' names as choices")
        elif isinstance(node, ast.Import) and any(_backend_module(alias.name) for alias in node.names):
            found.append(f"{line}: imports a backend's module")
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            if any(map(_backend_module, modules)):
                found.append(f"{line}: imports a backend's module")
    return found


@pytest.mark.parametrize(
    "path", [path for folder in FOLDERS for path in sorted((ROOT / folder).glob("*.py"))], ids=lambda path: path.name
)
def test_no_module_outside_backends_branches_on_a_backend_name(path: Path) -> None:
    assert branches_on_backend_names(path.read_text()) == [], path.relative_to(ROOT)


@pytest.mark.parametrize(
    "source",
    [
        'if backend == "flax":\n    pass',
        'if "onnx" != options.backend:\n    pass',
        'ok = backend in ("torch", "flax")',
        'match backend:\n    case "torch":\n        pass',
        'setup = {"torch": a, "flax": b}[backend]',
        'weights = BACKENDS["onnx"].to_weights(model, graph)',
        'parser.add_argument("--backend", choices=("torch", "flax"))',
        "from rescompile.backends import torch_backend",
        "from rescompile.backends.flax_backend import flax_layout",
        "import rescompile.backends.onnx_runtime",
    ],
)
def test_a_branch_on_a_backend_name_is_found(source: str) -> None:
    assert len(branches_on_backend_names(source)) == 1


def test_naming_frameworks_and_defaults_is_not_a_branch() -> None:
    source = """
import torch
import jax
from flax import nnx
from rescompile.backends.registry import BACKENDS
from rescompile.backends.interface import Backend
torch_module = import_framework("torch", "the torch backend", "torch")
parser.add_argument("--backend", choices=BACKENDS, default="torch")
if options.kind == "network":
    pass
"""
    assert branches_on_backend_names(source) == []
