"""The verifier catches corrupted graphs (it must be able to fail), and passes every built-in."""

import dataclasses

import pytest

from rescompile.compiler import VerificationError, compile_spec, verify
from rescompile.compiler.ir import OP_KINDS, Graph, Module, Relu
from rescompile.spec import builtin_networks


@pytest.fixture(scope="module")
def graph() -> Graph:
    return compile_spec("resnet18", size=32)


def replace_module(graph: Graph, index: int, module: Module) -> Graph:
    modules = list(graph.modules)
    modules[index] = module
    return dataclasses.replace(graph, modules=tuple(modules))


@pytest.mark.parametrize("name", builtin_networks())
def test_every_builtin_verifies(name: str) -> None:
    verify(compile_spec(name, size=32))


def test_verify_rejects_a_stale_shape(graph: Graph) -> None:
    block = graph.modules[1]
    nodes = list(block.nodes)
    nodes[0] = dataclasses.replace(nodes[0], shape=(1, 2, 3))
    with pytest.raises(VerificationError, match="stored shape"):
        verify(replace_module(graph, 1, dataclasses.replace(block, nodes=tuple(nodes))))


def test_verify_rejects_reading_an_undefined_value(graph: Graph) -> None:
    block = graph.modules[1]
    nodes = list(block.nodes)
    nodes[0] = dataclasses.replace(nodes[0], inputs=("bn9",))
    with pytest.raises(VerificationError, match="before it is defined"):
        verify(replace_module(graph, 1, dataclasses.replace(block, nodes=tuple(nodes))))


def test_verify_rejects_a_residual_block_without_its_add(graph: Graph) -> None:
    block = graph.modules[1]
    nodes = [
        node
        if node.op.kind != "add"
        else dataclasses.replace(node, op=Relu(), inputs=node.inputs[:1], in_shapes=node.in_shapes[:1])
        for node in block.nodes
    ]
    with pytest.raises(VerificationError, match="residual adds"):
        verify(replace_module(graph, 1, dataclasses.replace(block, nodes=tuple(nodes))))


def test_verify_rejects_duplicate_canonical_names(graph: Graph) -> None:
    second = dataclasses.replace(graph.modules[2], path=graph.modules[1].path)
    with pytest.raises(VerificationError, match="duplicate canonical name"):
        verify(replace_module(graph, 2, second))


def test_op_kinds_are_unique() -> None:
    assert len(set(OP_KINDS)) == len(OP_KINDS)
