"""The IR and its passes. Imports no deep-learning framework.

The passes (``pipeline``) are imported when first used (PEP 562): ``compiler.ops``, the op table,
is read by ``spec.models`` (each op's YAML keys), so importing the package must not import
``expand``, which reads ``spec.models`` in turn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rescompile.compiler.cost import CostReport, cost
from rescompile.compiler.ir import OP_KINDS, OP_TYPES, Graph, Module, Node
from rescompile.compiler.verify import VerificationError, verify

if TYPE_CHECKING:
    from rescompile.compiler.pipeline import compile_spec, lower, lower_spec

_LAZY = frozenset({"compile_spec", "lower", "lower_spec"})
"""The names of ``compiler.pipeline``."""

__all__ = [
    "OP_KINDS",
    "OP_TYPES",
    "CostReport",
    "Graph",
    "Module",
    "Node",
    "VerificationError",
    "compile_spec",
    "cost",
    "lower",
    "lower_spec",
    "verify",
]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("rescompile.compiler.pipeline"), name)
