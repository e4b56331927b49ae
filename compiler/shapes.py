"""Shape rules, one per op kind, kept apart from lowering rules; and the shape-inference pass."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from rescompile.compiler.ir import (
    MODULE_INPUT,
    Add,
    AvgPool,
    BatchNorm,
    Conv,
    Flatten,
    GlobalAveragePool,
    Graph,
    Linear,
    MaxPool,
    Module,
    Node,
    Op,
    PadChannels,
    Padding,
    Pair,
    Relu,
    Shape,
    Subsample,
)
from rescompile.spec.errors import RescompileError


class ShapeError(ValueError):
    """A shape rule failed; the caller names the module and location."""


def _image(shapes: tuple[Shape, ...], what: str) -> tuple[int, int, int]:
    if len(shapes) != 1 or len(shapes[0]) != 3:
        raise ShapeError(f"{what} needs one (channels, height, width) input, got {list(shapes)}")
    channels, height, width = shapes[0]
    return channels, height, width


def _window_size(size: int, kernel: int, stride: int, padding: Pair, dilation: int, ceil_mode: bool) -> int:
    """Output length of a sliding window, with torch's ceil_mode rule (a last window must start
    inside the input or its left padding)."""
    span = size + padding[0] + padding[1] - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    out = -(-span // stride) + 1 if ceil_mode else span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding[0]:
        out -= 1
    return out


def _spatial(
    height: int, width: int, kernel: Pair, stride: Pair, padding: Padding, dilation: Pair, ceil_mode: bool, what: str
) -> tuple[int, int]:
    out_height = _window_size(height, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    out_width = _window_size(width, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    if out_height < 1 or out_width < 1:
        raise ShapeError(
            f"{what} (kernel {kernel[0]}×{kernel[1]}, stride {stride[0]}) would shrink the "
            f"{height}×{width} feature map below 1×1; use a larger input size or fewer strided stages"
        )
    return out_height, out_width


def _conv(op: Conv, shapes: tuple[Shape, ...]) -> Shape:
    channels, height, width = _image(shapes, "conv")
    if channels != op.in_channels:
        raise ShapeError(f"conv expects {op.in_channels} input channels, got {channels}")
    if op.in_channels % op.groups or op.out_channels % op.groups:
        raise ShapeError(
            f"conv groups={op.groups} must divide in_channels={op.in_channels} and out_channels={op.out_channels}"
        )
    out_height, out_width = _spatial(height, width, op.kernel, op.stride, op.padding, op.dilation, False, "conv")
    return (op.out_channels, out_height, out_width)


def _pool(op: MaxPool | AvgPool, shapes: tuple[Shape, ...]) -> Shape:
    channels, height, width = _image(shapes, op.kind)
    for (before, after), kernel in zip(op.padding, op.kernel, strict=True):
        if max(before, after) * 2 > kernel:
            raise ShapeError(f"{op.kind} padding must be at most half the kernel size ({kernel})")
    out_height, out_width = _spatial(height, width, op.kernel, op.stride, op.padding, (1, 1), op.ceil_mode, op.kind)
    return (channels, out_height, out_width)


def _batch_norm(op: BatchNorm, shapes: tuple[Shape, ...]) -> Shape:
    if len(shapes) != 1 or shapes[0][0] != op.channels:
        raise ShapeError(f"batch_norm has {op.channels} channels, its input is {list(shapes)}")
    return shapes[0]


def _elementwise(op: Relu, shapes: tuple[Shape, ...]) -> Shape:
    if len(shapes) != 1:
        raise ShapeError(f"{op.kind} takes one input")
    return shapes[0]


def _global_pool(op: GlobalAveragePool, shapes: tuple[Shape, ...]) -> Shape:
    channels, _, _ = _image(shapes, "global_average_pool")
    return (channels, 1, 1)


def _flatten(op: Flatten, shapes: tuple[Shape, ...]) -> Shape:
    if len(shapes) != 1:
        raise ShapeError("flatten takes one input")
    size = 1
    for dimension in shapes[0]:
        size *= dimension
    return (size,)


def _linear(op: Linear, shapes: tuple[Shape, ...]) -> Shape:
    if len(shapes) != 1 or shapes[0] != (op.in_features,):
        raise ShapeError(f"linear expects ({op.in_features},) features, got {list(shapes)}; flatten first")
    return (op.out_features,)


def _add(op: Add, shapes: tuple[Shape, ...]) -> Shape:
    if len(shapes) != 2 or shapes[0] != shapes[1]:
        raise ShapeError(
            f"add needs two inputs of the same shape, got {' and '.join(_show(shape) for shape in shapes)}"
        )
    return shapes[0]


def _subsample(op: Subsample, shapes: tuple[Shape, ...]) -> Shape:
    channels, height, width = _image(shapes, "subsample")
    return (channels, -(-height // op.stride), -(-width // op.stride))


def _pad_channels(op: PadChannels, shapes: tuple[Shape, ...]) -> Shape:
    channels, height, width = _image(shapes, "pad_channels")
    if op.before < 0 or op.after < 0:
        raise ShapeError(f"pad_channels cannot remove channels (before={op.before}, after={op.after})")
    return (channels + op.before + op.after, height, width)


SHAPE_RULES: dict[type[Any], Callable[[Any, tuple[Shape, ...]], Shape]] = {
    Conv: _conv,
    BatchNorm: _batch_norm,
    Relu: _elementwise,
    MaxPool: _pool,
    AvgPool: _pool,
    GlobalAveragePool: _global_pool,
    Flatten: _flatten,
    Linear: _linear,
    Add: _add,
    Subsample: _subsample,
    PadChannels: _pad_channels,
}


def _show(shape: Shape) -> str:
    return "×".join(str(dimension) for dimension in shape)


def output_shape(op: Op, in_shapes: tuple[Shape, ...]) -> Shape:
    return SHAPE_RULES[type(op)](op, in_shapes)


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
            shape = output_shape(node.op, in_shapes)
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
