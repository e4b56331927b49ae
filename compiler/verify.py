"""The verifier, run after every pass: structural invariants a backend may rely on."""

from __future__ import annotations

import math
from typing import NoReturn

from rescompile.compiler.ir import MODULE_INPUT, OP_TYPES, Add, Definition, Graph, Module, SymbolicNode
from rescompile.compiler.ops import OPS, SHORTCUT_VALUE, Shape, weight_name
from rescompile.spec.models import HELD_BLOCKS


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
    * the graph ends flat (features, no spatial dimensions);
    * the stages hold the blocks in order, each stage's transition right before its blocks;
    * the definitions are sound (:func:`verify_definition`), and every module is an instance of
      one: a block's definition has its residual add exactly where the block has a shortcut, and
      the module's nodes are its definition's, by name and kind in order (a block's shortcut's
      right before its residual add; a half of a transition holding its blocks, that half's).
    """
    defined = {(definition.role, definition.name): verify_definition(definition) for definition in graph.definitions}
    instances: list[tuple[Module, Definition, Definition | None]] = []
    for module in graph.modules:
        instance_of = defined.get((module.role, module.type_name))
        if instance_of is None:
            _fail(f"{module.path or module.role}: no {module.role} definition '{module.type_name}'")
        if module.role == "block" and instance_of.residual != (module.shortcut is not None):
            _fail(
                f"{module.path}: shortcut {module.shortcut!r}, but definition '{instance_of.name}' residual is "
                f"{instance_of.residual}"
            )
        shortcut = None
        if module.shortcut not in (None, "identity"):
            shortcut = defined.get(("shortcut", str(module.shortcut)))
            if shortcut is None:
                _fail(f"{module.path}: no shortcut definition '{module.shortcut}'")
        instances.append((module, instance_of, shortcut))
    # NOTE: each check builds its message only when it fails; building ~30,000 messages that are
    # never shown was most of the verifier's time on resnet152.
    canonical_names: set[str] = set()
    shape = graph.input_shape
    for module in graph.modules:
        where = module.path or module.role
        if module.in_shape != shape:
            _fail(f"{where}: input {module.in_shape} != previous output {shape}")
        shapes: dict[str, Shape] = {MODULE_INPUT: module.in_shape, **dict(module.carried)}
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
    for module, definition, shortcut in instances:
        _verify_instance(module, definition, shortcut)
    _verify_stages(graph)
    return graph


def _verify_stages(graph: Graph) -> None:
    """The stages hold every block once, in network order, each block of its stage's path, and each
    stage's transitions are transition modules of that stage, right before its first block and
    right after its last."""
    blocks = [module.path for module in graph.blocks]
    if [path for stage in graph.stages for path in stage.blocks] != blocks:
        _fail(f"the stages' blocks are not the graph's blocks in order: {[stage.path for stage in graph.stages]}")
    positions = {(module.path, module.after_blocks): index for index, module in enumerate(graph.modules)}
    for stage in graph.stages:
        if any(module.stage != stage.path for module in graph.blocks_of(stage)):
            _fail(f"stage {stage.path}: holds a block of another stage")
        transition = graph.transition_of(stage)
        if transition is not None and (
            transition.role != "transition"
            or transition.stage != stage.path
            or positions[(transition.path, False)] + 1 != positions[(stage.blocks[0], False)]
        ):
            _fail(f"stage {stage.path}: its transition {transition.path} is not the module before its blocks")
        after = graph.transition_after_of(stage)
        if after is not None and (
            after.role != "transition"
            or after.stage != stage.path
            or positions[(after.path, True)] != positions[(stage.blocks[-1], False)] + 1
        ):
            _fail(f"stage {stage.path}: its transition after the blocks {after.path} is not the module after them")
    transitions = sum((stage.transition is not None) + (stage.transition_after is not None) for stage in graph.stages)
    if len(graph.transitions) != transitions:
        _fail("a transition module belongs to no stage")


def _verify_instance(module: Module, definition: Definition, shortcut: Definition | None) -> None:
    """``module``'s nodes are its definition's, by name and kind in order, with its shortcut
    definition's (under the shortcut's module) right before its residual add."""
    nodes = definition.nodes
    if module.holds_blocks:
        split = definition.first_after_blocks
        nodes = nodes[split:] if module.after_blocks else nodes[:split]
    expected: list[tuple[str, str]] = []
    for node in nodes:
        if shortcut is not None and SHORTCUT_VALUE in node.inputs:
            expected += [(f"{module.shortcut_module}.{inner.name}", inner.kind) for inner in shortcut.nodes]
        expected.append((node.name, node.kind))
    found = [(node.name, node.op.kind) for node in module.nodes]
    if found != expected:
        _fail(
            f"{module.path or module.role}: nodes {found} are not those of definition '{definition.name}': {expected}"
        )


def verify_definition(definition: Definition) -> Definition:
    """Check one definition and return it: every op is a kind of the op table; node names are
    unique; every node reads ``input`` or an earlier node, and only a block's residual add reads
    ``shortcut`` (a block has at most one, of two values); the shortcut module reads ``input`` or
    a node of the block. A failure names the definition and the node, at the node's spec line."""
    where = f"{definition.role} '{definition.name}'"
    defined = {MODULE_INPUT}
    merges: list[SymbolicNode] = []
    for node in definition.nodes:
        at = f"{node.source}: " if node.source is not None else ""
        if OPS.get(node.op.kind) is None:
            _fail(f"{at}{where}: {node.name}: unknown op {node.op!r}")
        if node.name in defined or node.name == SHORTCUT_VALUE:
            _fail(f"{at}{where}: {node.name}: duplicate node name")
        for value in node.inputs:
            if value == SHORTCUT_VALUE and not (definition.role == "block" and isinstance(node.op, Add)):
                _fail(f"{at}{where}: {node.name}: reads 'shortcut', which only a block's residual add may")
            if value not in defined and value != SHORTCUT_VALUE:
                _fail(f"{at}{where}: {node.name}: reads {value!r} before it is defined")
        if SHORTCUT_VALUE in node.inputs:
            if len(node.inputs) != 2:
                _fail(f"{at}{where}: {node.name}: a residual add reads two values, not {list(node.inputs)}")
            merges.append(node)
        defined.add(node.name)
        if definition.blocks is not None and node.name == definition.blocks[0]:
            defined.add(HELD_BLOCKS)  # the stage's blocks' output, after the node they read
    if len(merges) > 1:
        _fail(f"{where}: {len(merges)} residual adds ({', '.join(node.name for node in merges)}), expected one")
    if definition.shortcut_input not in defined:
        _fail(f"{where}: its shortcut reads {definition.shortcut_input!r}, which is not a value of it")
    return definition


def _positive(shape: Shape) -> bool:
    return len(shape) > 0 and math.prod(shape) > 0 and min(shape) > 0


def _fail(message: str) -> NoReturn:
    raise VerificationError(message)
