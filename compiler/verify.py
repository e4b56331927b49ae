"""The verifier, run after every pass: structural invariants a backend may rely on."""

from __future__ import annotations

from rescompile.compiler.ir import MODULE_INPUT, OP_TYPES, Add, Graph
from rescompile.compiler.shapes import infer_module


class VerificationError(AssertionError):
    """The IR broke an invariant: a compiler bug, never a user error."""


def verify(graph: Graph) -> Graph:
    """Check ``graph`` and return it unchanged, so the pipeline can chain it after any pass.

    Checks: every op is a known kind; node names are unique per module and canonical names unique
    per graph; every input is defined before it is read; every stored shape equals the shape the
    rules derive; each module's input is the previous module's output; the graph ends flat; a block
    has exactly one residual add if and only if it has a shortcut.
    """
    canonical_names: set[str] = set()
    shape = graph.input_shape
    for module in graph.modules:
        _check(
            module.in_shape == shape,
            f"{module.path or module.role}: input {module.in_shape} != previous output {shape}",
        )
        defined = {MODULE_INPUT}
        for node in module.nodes:
            _check(isinstance(node.op, OP_TYPES), f"{node.name}: unknown op {node.op!r}")
            _check(node.name not in defined, f"{module.canonical(node.name)}: duplicate node name")
            for value in node.inputs:
                _check(value in defined, f"{module.canonical(node.name)}: reads {value!r} before it is defined")
            defined.add(node.name)
            name = module.canonical(node.name)
            _check(name not in canonical_names, f"{name}: duplicate canonical name")
            canonical_names.add(name)
            _check(node.shape is not None and len(node.in_shapes) == len(node.inputs), f"{name}: shapes not inferred")
        recomputed = infer_module(module, shape)
        for stored, derived in zip(module.nodes, recomputed.nodes, strict=True):
            _check(
                (stored.in_shapes, stored.shape) == (derived.in_shapes, derived.shape),
                f"{module.canonical(stored.name)}: stored shape {stored.shape} != derived {derived.shape}",
            )
        _check(module.out_shape == recomputed.out_shape, f"{module.path}: out_shape is stale")
        merges = [node for node in module.nodes if isinstance(node.op, Add) and node.op.residual]
        if module.role == "block":
            expected = 0 if module.shortcut is None else 1
            _check(len(merges) == expected, f"{module.path}: {len(merges)} residual adds, expected {expected}")
        assert recomputed.out_shape is not None
        shape = recomputed.out_shape
    _check(len(shape) == 1, f"the graph must end with flat features, it ends with shape {shape}")
    return graph


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise VerificationError(message)
