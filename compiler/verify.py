"""The verifier, run after every pass: structural invariants a backend may rely on."""

from __future__ import annotations

import math
from typing import NoReturn

from rescompile.compiler.ir import MODULE_INPUT, OP_TYPES, Add, Graph
from rescompile.compiler.ops import Shape, weight_name


class VerificationError(AssertionError):
    """The IR broke an invariant: a compiler bug, never a user error."""


def verify(graph: Graph) -> Graph:
    """Check ``graph`` and return it unchanged, so the pipeline can chain it after any pass.

    It checks what the passes must keep true, without re-running the shape rules they apply (a
    verifier sharing the rules would agree with their bugs):

    * every op is a kind of the op table;
    * node names are unique per module and canonical names (node and weight) unique per graph;
    * every input is defined before it is read;
    * data flow is consistent: each node's recorded input shapes are the recorded shapes of the
      values it reads, each module's input is the previous module's output, and each module's
      output is its last node's;
    * every shape and every weight tensor has positive dimensions;
    * a block has exactly one residual add if and only if it has a shortcut;
    * the graph ends flat (features, no spatial dimensions).
    """
    # NOTE: each check builds its message only when it fails; building ~30,000 messages that are
    # never shown was most of the verifier's time on resnet152.
    canonical_names: set[str] = set()
    shape = graph.input_shape
    for module in graph.modules:
        where = module.path or module.role
        if module.in_shape != shape:
            _fail(f"{where}: input {module.in_shape} != previous output {shape}")
        shapes: dict[str, Shape] = {MODULE_INPUT: module.in_shape}
        for node in module.nodes:
            name = module.canonical(node.name)
            if not isinstance(node.op, OP_TYPES):
                _fail(f"{name}: unknown op {node.op!r}")
            if node.name in shapes:
                _fail(f"{name}: duplicate node name")
            for value in node.inputs:
                if value not in shapes:
                    _fail(f"{name}: reads {value!r} before it is defined")
            read = tuple(shapes[value] for value in node.inputs)
            if node.in_shapes != read:
                _fail(f"{name}: stored input shapes {node.in_shapes} != stored shapes {read}")
            if node.shape is None or not _positive(node.shape):
                _fail(f"{name}: stored shape {node.shape} not positive")
            assert node.shape is not None
            shapes[node.name] = node.shape
            if name in canonical_names:
                _fail(f"{name}: duplicate canonical name")
            canonical_names.add(name)
            for suffix, tensor in node.op.tensors().items():
                weight = weight_name(name, suffix)
                if not _positive(tensor.shape):
                    _fail(f"{weight}: tensor shape {tensor.shape} not positive")
                if weight != name and weight in canonical_names:  # a tensor without suffix is the node's name
                    _fail(f"{weight}: duplicate canonical name")
                canonical_names.add(weight)
        if module.out_shape != module.nodes[-1].shape:
            _fail(f"{where}: out_shape is stale")
        merges = [node for node in module.nodes if isinstance(node.op, Add) and node.op.residual]
        expected = 0 if module.shortcut is None else 1
        if module.role == "block" and len(merges) != expected:
            _fail(f"{where}: {len(merges)} residual adds, expected {expected}")
        assert module.out_shape is not None
        shape = module.out_shape
    if len(shape) != 1:
        _fail(f"the graph must end with flat features, it ends with shape {shape}")
    return graph


def _positive(shape: Shape) -> bool:
    return len(shape) > 0 and math.prod(shape) > 0 and min(shape) > 0


def _fail(message: str) -> NoReturn:
    raise VerificationError(message)
