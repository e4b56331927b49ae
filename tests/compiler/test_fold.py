"""BatchNorm folding as an IR pass: which BatchNorms fold, the folded weights by hand, and the folded
graph computing what the original computes (run by ONNX Runtime, the one backend that lowers any
concrete graph)."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import numpy as np
import pytest

from rescompile.backends.onnx_backend import emit_model, run_onnxruntime
from rescompile.compiler import compile_spec
from rescompile.compiler.fold import fold_batch_norm, fold_weights, folds
from rescompile.compiler.ir import FoldedNorm, Node, SymbolicNode
from rescompile.compiler.ops import BatchNorm, Conv
from rescompile.compiler.pipeline import PASSES, lower_for_inference
from rescompile.compiler.weights import random_weights, weight_shapes
from rescompile.spec.expressions import parse_expression
from rescompile.testing import assert_close


def test_every_batch_norm_after_a_conv_folds_and_its_readers_read_the_conv() -> None:
    graph = compile_spec("resnet18", size=32)
    folded = lower_for_inference(graph)
    batch_norms = [(module, node) for module, node in graph.nodes() if isinstance(node.op, BatchNorm)]
    assert len(folds(folded)) == len(batch_norms) == 20  # 17 in branches and stem, 3 in downsample shortcuts
    assert not any(isinstance(node.op, BatchNorm) for _, node in folded.nodes())
    assert all(node.op.bias for _, node in folded.nodes() if isinstance(node.op, Conv))
    block = folded.modules[1]
    relu1 = next(node for node in block.nodes if node.name == "relu1")
    assert relu1.inputs == ("conv1",)
    downsample = folded.modules[5]  # layer2.0
    add = next(node for node in downsample.nodes if node.op.kind == "add")
    assert set(add.inputs) == {"drop_path", "downsample.0"}
    drop_path = next(node for node in downsample.nodes if node.op.kind == "drop_path")
    assert drop_path.inputs == ("conv2",)


def test_a_batch_norm_whose_conv_output_has_another_reader_stays() -> None:
    graph = compile_spec("resnet20", size=8)
    # Let relu1 read conv1 as well as bn1 reading it: with two readers, bn1 cannot absorb conv1. In
    # every block and block definition, so that each block stays an instance of its definition.
    rewired = dataclasses.replace(
        graph,
        modules=tuple(
            dataclasses.replace(module, nodes=_relu1_reads_conv1(module.nodes)) if module.role == "block" else module
            for module in graph.modules
        ),
        definitions=tuple(
            dataclasses.replace(definition, nodes=_relu1_reads_conv1(definition.nodes))
            if definition.role == "block"
            else definition
            for definition in graph.definitions
        ),
    )
    folded_norms = {fold.batch_norm for fold in folds(lower_for_inference(rewired))}
    assert "layer1.0.bn1" not in folded_norms
    assert "layer1.0.bn2" in folded_norms


AnyNode = TypeVar("AnyNode", Node, SymbolicNode)


def _relu1_reads_conv1(nodes: tuple[AnyNode, ...]) -> tuple[AnyNode, ...]:
    return tuple(dataclasses.replace(node, inputs=("conv1",)) if node.name == "relu1" else node for node in nodes)


def test_folded_weights_by_hand_for_one_channel() -> None:
    graph = compile_spec("resnet20", size=8)
    weights = random_weights(graph, seed=3)
    folded = lower_for_inference(graph)
    result = fold_weights(folded, weights)
    assert {name: array.shape for name, array in result.items()} == weight_shapes(folded)
    gamma = float(weights["bn1.weight"][2])
    beta = float(weights["bn1.bias"][2])
    mean = float(weights["bn1.running_mean"][2])
    variance = float(weights["bn1.running_var"][2])
    scale = gamma / np.sqrt(variance + 1e-5)
    np.testing.assert_allclose(result["conv1.weight"][2], weights["conv1.weight"][2] * scale, rtol=1e-6)
    np.testing.assert_allclose(result["conv1.bias"][2], beta - mean * scale, rtol=1e-6)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20", "resnext50_32x4d"])
def test_the_folded_graph_computes_the_original_function(name: str) -> None:
    graph = compile_spec(name, size=32)
    weights = random_weights(graph, seed=1)
    folded = lower_for_inference(graph)
    x = np.random.default_rng(0).standard_normal((2, *graph.input_shape)).astype(np.float32)
    expected = run_onnxruntime(emit_model(graph, weights), x)
    actual = run_onnxruntime(emit_model(folded, fold_weights(folded, weights)), x)
    assert_close(actual, expected, tolerance="network")


def test_folding_is_an_inference_pass_of_the_one_pass_list() -> None:
    assert [step.name for step in PASSES if step.inference] == ["fold_batch_norm"]
    assert next(step for step in PASSES if step.name == "fold_batch_norm").run is fold_batch_norm
    graph = compile_spec("resnet18", size=32)  # compiling runs no inference lowering
    assert any(isinstance(node.op, BatchNorm) for _, node in graph.nodes())
    folded = lower_for_inference(graph)
    conv1 = next(node for node in folded.modules[0].nodes if node.name == "conv1")
    assert conv1.folded == FoldedNorm("bn1", 1e-5, conv_bias=False)
    stem = folded.definition("stem", graph.modules[0].type_name)
    # A definition's epsilon is the expression its spec states (a literal here; a parameter may give it).
    in_definition = FoldedNorm("bn1", parse_expression(1e-5), conv_bias=False)
    assert [(node.name, node.folded) for node in stem.nodes if node.folded] == [("conv1", in_definition)]
