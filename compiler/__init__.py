"""The IR and its passes. Imports no deep-learning framework."""

from rescompile.compiler.cost import CostReport, cost
from rescompile.compiler.ir import OP_KINDS, OP_TYPES, Graph, Module, Node
from rescompile.compiler.pipeline import compile_spec, lower, lower_spec
from rescompile.compiler.verify import VerificationError, verify

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
