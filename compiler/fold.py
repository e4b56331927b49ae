"""BatchNorm folding, an IR rewrite for inference: each BatchNorm that directly follows a conv, and is
the only reader of that conv's output, is folded into the conv (He et al.'s networks end every conv
so), unless the conv standardises its weight. The conv gets a bias and computes what the BatchNorm
computed; readers of the BatchNorm read the conv instead.

In eval mode ``bn(conv(x)) = conv'(x)`` with, per output channel,
``scale = weight / sqrt(running_var + epsilon)``, ``W' = W * scale`` and
``b' = bias + (b - running_mean) * scale``. :func:`fold_weights` computes those canonical weights;
a backend that streams weights (ONNX) computes them itself from the :class:`Fold` records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rescompile.compiler.ir import Graph, Module, Node
from rescompile.compiler.ops import BatchNorm, Conv
from rescompile.compiler.verify import verify
from rescompile.compiler.weights import Array, Weights


@dataclass(frozen=True)
class Fold:
    """One BatchNorm folded into the conv before it, by canonical names."""

    conv: str
    batch_norm: str
    epsilon: float
    conv_bias: bool
    """Whether the conv had a bias of its own before folding."""


@dataclass(frozen=True)
class FoldedGraph:
    graph: Graph
    """The rewritten graph: folded convs have ``bias=True``, the folded BatchNorms are gone."""
    folds: tuple[Fold, ...]


def fold_batch_norm(graph: Graph) -> FoldedGraph:
    """Fold every BatchNorm that can be folded; the result is verified."""
    modules: list[Module] = []
    folds: list[Fold] = []
    for module in graph.modules:
        pairs = _foldable(module)
        folded_away = {bn.name: conv for conv, bn in pairs.items()}
        renamed: dict[str, str] = {}
        nodes: list[Node] = []
        for node in module.nodes:
            if node.name in folded_away:
                renamed[node.name] = folded_away[node.name]
                continue
            inputs = tuple(renamed.get(value, value) for value in node.inputs)
            if node.name in pairs:
                assert isinstance(node.op, Conv)
                bn = pairs[node.name]
                assert isinstance(bn.op, BatchNorm)
                folds.append(Fold(module.canonical(node.name), module.canonical(bn.name), bn.op.epsilon, node.op.bias))
                node = dataclasses.replace(node, op=dataclasses.replace(node.op, bias=True), inputs=inputs)
            elif inputs != node.inputs:
                node = dataclasses.replace(node, inputs=inputs)
            nodes.append(node)
        modules.append(dataclasses.replace(module, nodes=tuple(nodes)) if pairs else module)
    folded = dataclasses.replace(graph, modules=tuple(modules))
    return FoldedGraph(verify(folded), tuple(folds))


def _foldable(module: Module) -> dict[str, Node]:
    """conv node name -> the BatchNorm that directly follows it and is the conv output's only reader."""
    readers: dict[str, list[Node]] = {}
    for node in module.nodes:
        for value in node.inputs:
            readers.setdefault(value, []).append(node)
    ops = {node.name: node.op for node in module.nodes}
    pairs: dict[str, Node] = {}
    for node in module.nodes:
        conv_op = ops.get(node.inputs[0])
        # NOTE: a weight-standardised conv is left alone: it standardises whatever weight it holds,
        # so a BatchNorm scale folded into that weight would be normalised away.
        if isinstance(node.op, BatchNorm) and isinstance(conv_op, Conv) and not conv_op.standardize_weight:
            conv = node.inputs[0]
            if len(readers[conv]) == 1:
                pairs[conv] = node
    return pairs


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


def fold_weights(folded: FoldedGraph, weights: Mapping[str, npt.NDArray[np.generic]]) -> Weights:
    """Canonical weights of ``folded.graph`` from those of the graph it was folded from.

    NOTE: the scale is computed in float64 and applied to the weight in float32, as torch's
    ``fuse_conv_bn_weights`` does (within 2 ulp of a float64 product)."""
    result: Weights = {name: np.asarray(array, np.float32) for name, array in weights.items()}
    for fold in folded.folds:
        scale = folded_scale(fold, weights)
        weight = np.asarray(weights[f"{fold.conv}.weight"], np.float32)
        result[f"{fold.conv}.weight"] = weight * scale.astype(np.float32).reshape(-1, *[1] * (weight.ndim - 1))
        result[f"{fold.conv}.bias"] = folded_bias(fold, weights, scale)
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            del result[f"{fold.batch_norm}.{suffix}"]
    return result
