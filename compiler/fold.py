"""BatchNorm folding, an IR rewrite for inference: each BatchNorm that directly follows a conv, and is
the only reader of that conv's output, is folded into the conv (He et al.'s networks end every conv
so), unless the conv standardises its weight. The conv gets a bias and computes what the BatchNorm
computed; readers of the BatchNorm read the conv instead.

In eval mode ``bn(conv(x)) = conv'(x)`` with, per output channel,
``scale = weight / sqrt(running_var + epsilon)``, ``W' = W * scale`` and
``b' = bias + (b - running_mean) * scale``. :func:`fold_weights` computes those canonical weights;
a backend that streams weights (ONNX) computes them itself from the :class:`Fold` records
(:func:`folds`), and a source backend writes each folded conv's record (``node.folded``) into its
classes, which fold canonical weights as they load them.

It is a pass, ``Graph -> Graph``, listed in :data:`rescompile.compiler.pipeline.PASSES` as an
inference lowering. Both views of the graph are rewritten by one rule: the flat modules (concrete,
canonical names) and the definitions (symbolic, local names) that source backends emit classes
from. Whether a BatchNorm folds depends only on the part's structure, which every instance
shares, so the two agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from rescompile.compiler.ir import Definition, FoldedNorm, Graph, Module, Node, SymbolicNode
from rescompile.compiler.ops import BatchNormFields, ConvFields, Real
from rescompile.compiler.weights import Array, Weights


@dataclass(frozen=True)
class Fold:
    """One BatchNorm folded into the conv before it, by canonical names."""

    conv: str
    batch_norm: str
    epsilon: float
    conv_bias: bool
    """Whether the conv had a bias of its own before folding."""


def fold_batch_norm(graph: Graph) -> Graph:
    """Fold every BatchNorm that can be folded, in the modules and in the definitions alike (one
    rule for both: whether a BatchNorm folds depends only on its part's structure); each conv
    that absorbed one records it (``folded``). A pass: the pipeline verifies the result."""
    modules = tuple(dataclasses.replace(module, nodes=_fold(module.nodes, frozenset())) for module in graph.modules)
    definitions = tuple(
        dataclasses.replace(
            definition,
            nodes=_fold(definition.nodes, _shortcut_reads(definition)),
            shortcut_input=_renamed_shortcut_input(definition),
        )
        for definition in graph.definitions
    )
    return dataclasses.replace(graph, modules=modules, definitions=definitions)


AnyNode = TypeVar("AnyNode", Node, SymbolicNode)


def _fold(nodes: tuple[AnyNode, ...], also_read: frozenset[str]) -> tuple[AnyNode, ...]:
    """``nodes`` with each foldable BatchNorm (:func:`_foldable`) folded into its conv, whose
    readers read the conv instead; ``also_read``: values read from outside the nodes."""
    pairs = _foldable(nodes, also_read)
    if not pairs:
        return nodes
    renamed = {bn.name: conv for conv, bn in pairs.items()}
    result: list[AnyNode] = []
    for node in nodes:
        if node.name in renamed:
            continue
        inputs = tuple(renamed.get(value, value) for value in node.inputs)
        if node.name in pairs:
            bn = pairs[node.name]
            assert isinstance(node.op, ConvFields) and isinstance(bn.op, BatchNormFields)
            folded = FoldedNorm(bn.name, bn.op.epsilon, node.op.bias)
            node = dataclasses.replace(node, op=dataclasses.replace(node.op, bias=True), inputs=inputs, folded=folded)
        elif inputs != node.inputs:
            node = dataclasses.replace(node, inputs=inputs)
        result.append(node)
    return tuple(result)


def _foldable(nodes: tuple[AnyNode, ...], also_read: frozenset[str]) -> dict[str, AnyNode]:
    """conv node name -> the BatchNorm that directly follows it and is the conv output's only reader."""
    readers: dict[str, int] = {}
    for node in nodes:
        for value in node.inputs:
            readers[value] = readers.get(value, 0) + 1
    ops = {node.name: node.op for node in nodes}
    pairs: dict[str, AnyNode] = {}
    for node in nodes:
        conv = node.inputs[0] if node.inputs else ""
        conv_op = ops.get(conv)
        # NOTE: a weight-standardised conv is left alone: it standardises whatever weight it holds,
        # so a BatchNorm scale folded into that weight would be normalised away.
        if not (isinstance(node.op, BatchNormFields) and isinstance(conv_op, ConvFields)):
            continue
        if not conv_op.standardize_weight and readers[conv] == 1 and conv not in also_read:
            pairs[conv] = node
    return pairs


def _shortcut_reads(definition: Definition) -> frozenset[str]:
    """The value a block's shortcut module reads, which its nodes do not show (the flat view holds
    the shortcut's nodes, which count as that value's readers there)."""
    return frozenset({definition.shortcut_input}) if definition.role == "block" else frozenset()


def _renamed_shortcut_input(definition: Definition) -> str:
    """The block's shortcut input after folding: a folded BatchNorm's value is its conv's."""
    renamed = {bn.name: conv for conv, bn in _foldable(definition.nodes, _shortcut_reads(definition)).items()}
    return renamed.get(definition.shortcut_input, definition.shortcut_input)


def folds(graph: Graph) -> tuple[Fold, ...]:
    """Every fold of a folded graph, by canonical names, in network order."""
    return tuple(fold for module in graph.modules for fold in module_folds(module))


def module_folds(module: Module) -> tuple[Fold, ...]:
    """The folds inside one module of a folded graph."""
    return tuple(
        Fold(
            module.canonical(node.name),
            module.canonical(node.folded.batch_norm),
            _number(node.folded.epsilon),
            node.folded.conv_bias,
        )
        for node in module.nodes
        if node.folded is not None
    )


def _number(epsilon: Real) -> float:
    """A module's epsilon: its ops hold numbers (only a definition's hold expressions)."""
    assert isinstance(epsilon, float)
    return epsilon


def folded_scale(fold: Fold, weights: Mapping[str, npt.NDArray[np.generic]]) -> npt.NDArray[np.float64]:
    """``weight / sqrt(running_var + epsilon)``, per output channel, in float64."""
    gamma = np.asarray(weights[f"{fold.batch_norm}.weight"], np.float64)
    variance = np.asarray(weights[f"{fold.batch_norm}.running_var"], np.float64)
    scale: npt.NDArray[np.float64] = gamma / np.sqrt(variance + fold.epsilon)
    return scale


def folded_bias(fold: Fold, weights: Mapping[str, npt.NDArray[np.generic]], scale: npt.NDArray[np.float64]) -> Array:
    """``bias + (b - running_mean) * scale``, computed in float64, returned as float32."""
    mean = np.asarray(weights[f"{fold.batch_norm}.running_mean"], np.float64)
    beta = np.asarray(weights[f"{fold.batch_norm}.bias"], np.float64)
    own = np.asarray(weights[f"{fold.conv}.bias"], np.float64) if fold.conv_bias else np.zeros_like(mean)
    return (beta + (own - mean) * scale).astype(np.float32)


def fold_weights(folded: Graph, weights: Mapping[str, npt.NDArray[np.generic]]) -> Weights:
    """Canonical weights of the ``folded`` graph from those of the graph it was folded from.

    NOTE: the scale is computed in float64 and applied to the weight in float32, as torch's
    ``fuse_conv_bn_weights`` does (within 2 ulp of a float64 product)."""
    result: Weights = {name: np.asarray(array, np.float32) for name, array in weights.items()}
    for fold in folds(folded):
        scale = folded_scale(fold, weights)
        weight = np.asarray(weights[f"{fold.conv}.weight"], np.float32)
        result[f"{fold.conv}.weight"] = weight * scale.astype(np.float32).reshape(-1, *[1] * (weight.ndim - 1))
        result[f"{fold.conv}.bias"] = folded_bias(fold, weights, scale)
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            del result[f"{fold.batch_norm}.{suffix}"]
    return result
