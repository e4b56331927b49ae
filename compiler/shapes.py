"""The shape-inference pass. The shape rules themselves are the op table's
(:meth:`rescompile.compiler.ops.OpBase.output_shape`)."""

from __future__ import annotations

import dataclasses

from rescompile.compiler.ir import MODULE_INPUT, Graph, Module, Node
from rescompile.compiler.ops import Shape, ShapeError
from rescompile.spec.errors import RescompileError


def infer_module(module: Module, in_shape: Shape) -> Module:
    """Recompute every node's input and output shapes from ``in_shape``."""
    shapes: dict[str, Shape] = {MODULE_INPUT: in_shape}
    nodes: list[Node] = []
    for node in module.nodes:
        missing = [name for name in node.inputs if name not in shapes]
        if missing:
            raise RescompileError(
                f"{module.canonical(node.name)} reads {missing[0]!r}, which is not defined before it",
                node.source or module.source,
            )
        in_shapes = tuple(shapes[name] for name in node.inputs)
        try:
            shape = node.op.output_shape(in_shapes)
        except ShapeError as error:
            where = module.path or module.role
            raise RescompileError(f"{where}: {node.name}: {error}", module.source or node.source) from None
        shapes[node.name] = shape
        nodes.append(dataclasses.replace(node, in_shapes=in_shapes, shape=shape))
    return dataclasses.replace(module, nodes=tuple(nodes), in_shape=in_shape, out_shape=nodes[-1].shape)


def infer_shapes(graph: Graph) -> Graph:
    """Shape-inference pass: thread the graph input through every module."""
    shape = graph.input_shape
    modules: list[Module] = []
    for module in graph.modules:
        inferred = infer_module(module, shape)
        assert inferred.out_shape is not None
        shape = inferred.out_shape
        modules.append(inferred)
    return dataclasses.replace(graph, modules=tuple(modules))
