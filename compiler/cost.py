"""The cost pass: parameters, multiply-accumulates and activation sizes per node, block and stage.

Conventions (those of torchvision's model docs, fvcore and ptflops): MACs count the
multiply-accumulates of convolutions and linear layers only (each op states its own, in the op
table); parameters are trainable tensors, not buffers such as BatchNorm's running statistics;
activations are the output elements of every node for one input, but for a node that returns its
input at inference (``drop_path``, which computes a new value in training only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rescompile.compiler.ir import Graph, Node


@dataclass(frozen=True)
class NodeCost:
    name: str
    stage: str
    block: str
    kind: str
    parameters: int
    macs: int
    activations: int


@dataclass(frozen=True)
class Totals:
    name: str
    parameters: int
    macs: int
    activations: int
    output_shape: tuple[int, ...]


@dataclass(frozen=True)
class CostReport:
    nodes: tuple[NodeCost, ...]
    output_shapes: dict[str, tuple[int, ...]]
    """Output shape of each block and stage (the last block's)."""

    @property
    def parameters(self) -> int:
        return sum(node.parameters for node in self.nodes)

    @property
    def macs(self) -> int:
        return sum(node.macs for node in self.nodes)

    @property
    def activations(self) -> int:
        return sum(node.activations for node in self.nodes)

    def group_by(self, key: str) -> list[Totals]:
        """Totals per ``"stage"`` or per ``"block"``, in network order."""
        order: list[str] = []
        groups: dict[str, list[NodeCost]] = {}
        for node in self.nodes:
            group = getattr(node, key)
            if group not in groups:
                order.append(group)
                groups[group] = []
            groups[group].append(node)
        return [
            Totals(
                name,
                sum(node.parameters for node in groups[name]),
                sum(node.macs for node in groups[name]),
                sum(node.activations for node in groups[name]),
                self.output_shapes[name],
            )
            for name in order
        ]


def node_parameters(node: Node) -> int:
    """Trainable parameters: the op's tensors that are not buffers."""
    return sum(math.prod(tensor.shape) for tensor in node.op.tensors().values() if not tensor.buffer)


def node_macs(node: Node) -> int:
    assert node.shape is not None
    return node.op.macs(node.in_shapes, node.shape)


def cost(graph: Graph) -> CostReport:
    nodes: list[NodeCost] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for module, node in graph.nodes():
        assert node.shape is not None
        block = module.path or module.role
        nodes.append(
            NodeCost(
                name=module.canonical(node.name),
                stage=module.stage,
                block=block,
                kind=node.op.kind,
                parameters=node_parameters(node),
                macs=node_macs(node),
                activations=0 if node.op.inference_identity else math.prod(node.shape),
            )
        )
        assert module.out_shape is not None
        shapes[block] = module.out_shape
        shapes[module.stage] = module.out_shape
    return CostReport(tuple(nodes), shapes)
