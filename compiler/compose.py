"""Composite ops lowered to primitives, an IR rewrite every compile runs: each node whose op is a
:class:`~rescompile.compiler.ops.Composite` becomes the nodes of its steps, so that the backends,
cost and weights see primitive ops only.

The last step keeps the node's name (what other nodes read); each earlier one is named after it
(``act_0``, ``act_1``, with ``_`` added until the name is free among the part's nodes). A step's op
has no integer field, so one rule rewrites the flat modules and the definitions alike, and the names
agree between a definition and its instances.

It is a pass, ``Graph -> Graph``, listed in :data:`rescompile.compiler.pipeline.PASSES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TypeVar

from rescompile.compiler.ir import Graph, Node, SymbolicNode
from rescompile.compiler.ops import COMPOSITE_INPUT, Composite, Step

AnyNode = TypeVar("AnyNode", Node, SymbolicNode)


def lower_composites(graph: Graph) -> Graph:
    """``graph`` with every composite op written as its primitive ops."""
    modules = tuple(
        dataclasses.replace(module, nodes=_lowered(module.nodes, _instance_node)) for module in graph.modules
    )
    definitions = tuple(
        dataclasses.replace(definition, nodes=_lowered(definition.nodes, _symbolic_node))
        for definition in graph.definitions
    )
    return dataclasses.replace(graph, modules=modules, definitions=definitions)


def _lowered(
    nodes: Sequence[AnyNode], make: Callable[[AnyNode, str, Step, tuple[str, ...]], AnyNode]
) -> tuple[AnyNode, ...]:
    if not any(isinstance(node.op, Composite) for node in nodes):
        return tuple(nodes)
    taken = {node.name for node in nodes}
    result: list[AnyNode] = []
    for node in nodes:
        if not isinstance(node.op, Composite):
            result.append(node)
            continue
        steps = node.op.steps()
        outputs: list[str] = []
        for index, step in enumerate(steps):
            name = node.name if index == len(steps) - 1 else _fresh(f"{node.name}_{index}", taken)
            previous = (outputs[-1] if outputs else node.inputs[0],)
            reads = (
                previous
                if step.inputs is None
                else tuple(node.inputs[0] if read == COMPOSITE_INPUT else outputs[read] for read in step.inputs)
            )
            result.append(make(node, name, step, reads))
            outputs.append(name)
    return tuple(result)


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _instance_node(node: Node, name: str, step: Step, inputs: tuple[str, ...]) -> Node:
    # Every step reads values of the composite's input's shape (it is elementwise) and keeps it.
    assert node.shape is not None
    in_shapes = tuple(node.shape for _ in inputs)
    return Node(name, step.op, inputs, in_shapes, step.op.output_shape(in_shapes), node.source)


def _symbolic_node(node: SymbolicNode, name: str, step: Step, inputs: tuple[str, ...]) -> SymbolicNode:
    return SymbolicNode(name, step.op, inputs, node.source)
