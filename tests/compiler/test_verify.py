"""The verifier catches corrupted graphs (it must be able to fail), and passes every built-in."""

import dataclasses

import pytest

from rescompile.compiler import VerificationError, compile_spec, verify
from rescompile.compiler.ir import OP_KINDS, OP_TYPES, Graph, Module, Relu
from rescompile.compiler.ops import Sigmoid
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


def test_an_op_class_stating_a_kind_already_in_the_table_is_refused() -> None:
    with pytest.raises(TypeError, match="op kind 'relu' is stated twice: Relu and SecondRelu"):

        class SecondRelu(Relu):  # a subclass inherits Relu's kind
            pass

    assert OP_TYPES[OP_KINDS.index("relu")] is Relu


def replace_definition(graph: Graph, role: str, name: str, **changes: object) -> Graph:
    definitions = [
        dataclasses.replace(definition, **changes)  # type: ignore[arg-type]
        if (definition.role, definition.name) == (role, name)
        else definition
        for definition in graph.definitions
    ]
    return dataclasses.replace(graph, definitions=tuple(definitions))


def test_verify_rejects_a_definition_node_reading_a_later_value_at_its_spec_line(graph: Graph) -> None:
    block = graph.definition("block", "basic")
    nodes = list(block.nodes)
    nodes[0] = dataclasses.replace(nodes[0], inputs=(nodes[1].name,))
    with pytest.raises(VerificationError, match=r"basic\.yaml:\d+:\d+: block 'basic': conv1: reads 'bn1' before"):
        verify(replace_definition(graph, "block", "basic", nodes=tuple(nodes)))


def test_verify_rejects_duplicate_node_names_in_a_definition(graph: Graph) -> None:
    block = graph.definition("block", "basic")
    nodes = [*block.nodes[:2], dataclasses.replace(block.nodes[2], name=block.nodes[0].name), *block.nodes[3:]]
    with pytest.raises(VerificationError, match="block 'basic': conv1: duplicate node name"):
        verify(replace_definition(graph, "block", "basic", nodes=tuple(nodes)))


def test_verify_rejects_shortcut_read_outside_a_residual_add(graph: Graph) -> None:
    block = graph.definition("block", "basic")
    nodes = list(block.nodes)
    nodes[1] = dataclasses.replace(nodes[1], inputs=("shortcut",))
    with pytest.raises(VerificationError, match="bn1: reads 'shortcut', which only a block's residual add may"):
        verify(replace_definition(graph, "block", "basic", nodes=tuple(nodes)))


def test_verify_rejects_a_block_with_two_residual_adds(graph: Graph) -> None:
    block = graph.definition("block", "basic")
    add = next(node for node in block.nodes if node.kind == "add")
    nodes = [*block.nodes, dataclasses.replace(add, name="add2")]
    with pytest.raises(VerificationError, match=r"block 'basic': 2 residual adds \(add, add2\), expected one"):
        verify(replace_definition(graph, "block", "basic", nodes=tuple(nodes)))


def test_verify_rejects_a_residual_block_whose_definition_lost_its_add(graph: Graph) -> None:
    block = graph.definition("block", "basic")
    # As a plain network defines it: the add gone, its reader reading the branch.
    nodes = tuple(
        dataclasses.replace(node, inputs=("drop_path",)) if node.inputs == ("add",) else node
        for node in block.nodes
        if node.kind != "add"
    )
    with pytest.raises(VerificationError, match=r"layer1\.0: shortcut 'identity', but definition 'basic'"):
        verify(replace_definition(graph, "block", "basic", nodes=nodes))


def test_verify_rejects_a_block_whose_nodes_are_not_its_definitions(graph: Graph) -> None:
    """A block's op changed in the flat view alone (a sigmoid for relu1, shapes kept) is no
    instance of its definition any more."""
    block = graph.modules[1]
    nodes = tuple(dataclasses.replace(node, op=Sigmoid()) if node.name == "relu1" else node for node in block.nodes)
    with pytest.raises(VerificationError, match=r"layer1\.0: nodes .* are not those of definition 'basic'"):
        verify(replace_module(graph, 1, dataclasses.replace(block, nodes=nodes)))


def test_verify_reads_a_projecting_blocks_shortcut_nodes_from_its_shortcut_definition(graph: Graph) -> None:
    """layer2.0's downsample nodes sit right before its residual add, as its shortcut definition's
    nodes under ``downsample.``; dropping one of them from the flat view alone is refused."""
    block = next(module for module in graph.modules if module.path == "layer2.0")
    assert [node.name for node in block.nodes if node.name.startswith("downsample.")] == [
        "downsample.0",
        "downsample.1",
    ]
    nodes = tuple(node for node in block.nodes if node.name != "downsample.1")
    rewired = tuple(
        dataclasses.replace(
            node, inputs=tuple("downsample.0" if value == "downsample.1" else value for value in node.inputs)
        )
        for node in nodes
    )
    index = graph.modules.index(block)
    with pytest.raises(VerificationError, match=r"layer2\.0: nodes .* are not those of definition"):
        verify(replace_module(graph, index, dataclasses.replace(block, nodes=rewired)))


def test_verify_rejects_a_module_without_its_definition(graph: Graph) -> None:
    with pytest.raises(VerificationError, match=r"layer1\.0: no block definition 'missing'"):
        verify(replace_module(graph, 1, dataclasses.replace(graph.modules[1], type_name="missing")))


def test_verify_rejects_stages_that_lose_a_block(graph: Graph) -> None:
    first = graph.stages[0]
    stages = (dataclasses.replace(first, blocks=first.blocks[:1]), *graph.stages[1:])
    with pytest.raises(VerificationError, match="the stages' blocks are not the graph's blocks in order"):
        verify(dataclasses.replace(graph, stages=stages))
