"""BatchNorm folding, an IR rewrite for inference: each BatchNorm that directly follows a conv, and is
the only reader of that conv's output, is folded into the conv (He et al.'s networks end every conv
so), unless the conv standardises its weight. The conv gets a bias and computes what the BatchNorm
computed; readers of the BatchNorm read the conv instead.

In eval mode ``bn(conv(x)) = conv'(x)`` with, per output channel,
``scale = weight / sqrt(running_var + epsilon)``, ``W' = W * scale`` and
``b' = bias + (b - running_mean) * scale``. :func:`fold_weights` computes those canonical weights;
a backend that streams weights (ONNX) computes them itself from the :class:`Fold` records, and a
source backend writes the :class:`DefinitionFold` records into its classes, which fold canonical
weights as they load them.

Both views of the graph are rewritten alike: the flat modules (concrete, canonical names) and the
definitions (symbolic, local names) that source backends emit classes from. Whether a BatchNorm
folds depends only on the part's structure, which every instance shares, so the two agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rescompile.compiler.ir import MODULE_INPUT, Definition, DefinitionRole, Graph, Module, Node, SymbolicNode
from rescompile.compiler.ops import BatchNorm, BatchNormFields, Conv, ConvFields
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
class DefinitionFold:
    """One BatchNorm folded into the conv before it, inside a definition (local node names)."""

    conv: str
    batch_norm: str
    epsilon: float
    """The BatchNorm's epsilon (a number in a spec, never an expression)."""


@dataclass(frozen=True)
class FoldedGraph:
    graph: Graph
    """The rewritten graph: folded convs have ``bias=True``, the folded BatchNorms are gone, in the
    modules and in the definitions."""
    folds: tuple[Fold, ...]
    definition_folds: dict[tuple[DefinitionRole, str], tuple[DefinitionFold, ...]] = dataclasses.field(
        default_factory=dict
    )
    """(role, definition name) -> the folds inside that definition, in node order."""

    def module_folds(self, module: Module) -> tuple[Fold, ...]:
        """The folds inside one module of the original graph (its convs by canonical name)."""
        convs = {module.canonical(node.name) for node in module.nodes}
        return tuple(fold for fold in self.folds if fold.conv in convs)


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
    definitions: list[Definition] = []
    definition_folds: dict[tuple[DefinitionRole, str], tuple[DefinitionFold, ...]] = {}
    for definition in graph.definitions:
        folded_definition, inside = _fold_definition(definition)
        definitions.append(folded_definition)
        definition_folds[(definition.role, definition.name)] = inside
    folded = dataclasses.replace(graph, modules=tuple(modules), definitions=tuple(definitions))
    return FoldedGraph(verify(folded), tuple(folds), definition_folds)


def _fold_definition(definition: Definition) -> tuple[Definition, tuple[DefinitionFold, ...]]:
    """The definition with its foldable BatchNorms folded (the rule of :func:`_foldable`)."""
    readers: dict[str, list[SymbolicNode]] = {}
    for node in definition.nodes:
        for value in node.inputs:
            readers.setdefault(value, []).append(node)
    nodes_by_name = {node.name: node for node in definition.nodes}
    pairs: dict[str, SymbolicNode] = {}
    for node in definition.nodes:
        conv = nodes_by_name.get(node.inputs[0]) if node.inputs else None
        if not isinstance(node.op, BatchNormFields) or conv is None or not isinstance(conv.op, ConvFields):
            continue
        # A value the block's shortcut module reads has that reader too (never a conv output in
        # the built-ins, but the flat view counts the shortcut's nodes, so this must as well).
        shortcut_reads = definition.shortcut_input == conv.name and definition.role == "block"
        if not conv.op.standardize_weight and len(readers[conv.name]) == 1 and not shortcut_reads:
            pairs[conv.name] = node
    if not pairs:
        return definition, ()
    renamed = {bn.name: conv for conv, bn in pairs.items()}
    nodes: list[SymbolicNode] = []
    inside: list[DefinitionFold] = []
    for node in definition.nodes:
        if node.name in renamed:
            continue
        inputs = tuple(renamed.get(value, value) for value in node.inputs)
        if node.name in pairs:
            bn = pairs[node.name]
            assert isinstance(node.op, ConvFields) and isinstance(bn.op, BatchNormFields)
            inside.append(DefinitionFold(node.name, bn.name, bn.op.epsilon))
            node = dataclasses.replace(node, op=dataclasses.replace(node.op, bias=True), inputs=inputs)
        elif inputs != node.inputs:
            node = dataclasses.replace(node, inputs=inputs)
        nodes.append(node)
    shortcut_input = definition.shortcut_input
    if shortcut_input != MODULE_INPUT:
        shortcut_input = renamed.get(shortcut_input, shortcut_input)
    return dataclasses.replace(definition, nodes=tuple(nodes), shortcut_input=shortcut_input), tuple(inside)


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
