"""Composite ops lowered to primitive nodes by the lower_composites pass, in the modules and the
definitions alike (quick_gelu: ``x * sigmoid(1.702 * x)``)."""

from pathlib import Path

from conftest import elementwise_network

from rescompile.compiler import compile_spec
from rescompile.compiler.ops import Composite, Mul, Sigmoid
from rescompile.testing import one_block_network


def test_a_composite_becomes_its_steps_in_every_module_and_definition(tmp_path: Path) -> None:
    graph = compile_spec(elementwise_network(tmp_path, "quick_gelu"))
    block = next(module for module in graph.modules if module.role == "block")
    steps = [(node.name, node.op, node.inputs) for node in block.nodes]
    assert steps[1:4] == [
        ("act_0", Mul(1.702), ("conv",)),
        ("act_1", Sigmoid(), ("act_0",)),
        ("act", Mul(None), ("conv", "act_1")),
    ]
    assert all(node.shape == block.nodes[0].shape for node in block.nodes[1:4])
    definition = next(definition for definition in graph.definitions if definition.role == "block")
    assert [(node.name, node.op, node.inputs) for node in definition.nodes][1:4] == steps[1:4]
    every_op = [node.op for _, node in graph.nodes()] + [n.op for d in graph.definitions for n in d.nodes]
    assert not any(isinstance(op, Composite) for op in every_op)


def test_a_step_name_a_node_already_has_is_made_free(tmp_path: Path) -> None:
    nodes = [
        "conv: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}",
        "act_0: {op: relu}",
        "act: {op: quick_gelu}",
        "add: {op: add, inputs: [act, shortcut]}",
    ]
    graph = compile_spec(one_block_network(tmp_path, "named", nodes))
    block = next(module for module in graph.modules if module.role == "block")
    assert [node.name for node in block.nodes] == ["conv", "act_0", "act_0_", "act_1", "act", "add"]
    assert block.nodes[4].inputs == ("act_0", "act_1")  # the composite's input, the user's act_0
