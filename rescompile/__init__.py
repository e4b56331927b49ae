"""rescompile: residual-network architecture specs (YAML) compiled to PyTorch, Flax and ONNX.

The pipeline: ``spec`` (YAML -> pydantic) -> ``compiler`` (typed IR, passes, cost) -> ``backends``.
"""

from rescompile.api import create_graph, create_model, list_models
from rescompile.compiler import Graph, compile_spec, cost
from rescompile.spec import RescompileError, load_network
from rescompile.version import __version__

__all__ = [
    "Graph",
    "RescompileError",
    "__version__",
    "compile_spec",
    "cost",
    "create_graph",
    "create_model",
    "list_models",
    "load_network",
]
