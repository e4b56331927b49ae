"""The hierarchical IR: definitions with symbolic attributes, instances with concrete ones, and no
pydantic spec object anywhere in a graph."""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel

from rescompile.compiler import compile_spec
from rescompile.compiler.ir import Definition
from rescompile.spec.expressions import Expression


def _values(value: object) -> list[object]:
    """Every value reachable from ``value`` through dataclass fields, tuples and dicts."""
    found = [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            found += _values(getattr(value, field.name))
    elif isinstance(value, tuple | list):
        for item in value:
            found += _values(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _values(key) + _values(item)
    return found


def test_a_graph_carries_no_pydantic_spec() -> None:
    graph = compile_spec("resnet50", size=32)
    values = _values(graph)
    assert len(values) > 1000  # the walk does reach the modules and their nodes
    assert not [value for value in values if isinstance(value, BaseModel)]


def test_definitions_state_attributes_over_their_parameters() -> None:
    graph = compile_spec("resnet50", size=32)
    block = graph.definition("block", "bottleneck")
    assert dict(block.parameters) == {
        "expansion": 4,
        "groups": 1,
        "base_width": 64,
        "stride_at": "conv2",
        "drop_path_rate": 0.0,
    }
    nodes = {node.name: vars(node.op) for node in block.nodes}
    texts = {
        name: {key: value.text for key, value in fields.items() if isinstance(value, Expression)}
        for name, fields in nodes.items()
    }
    # Channels flow symbolically: each conv reads what the node before it produced.
    assert texts["conv1"]["in_channels"] == "in_channels"
    assert texts["conv2"]["in_channels"] == "inner_width"
    assert texts["conv3"]["in_channels"] == "inner_width"
    assert texts["conv3"]["out_channels"] == "width * expansion"
    assert texts["bn3"]["channels"] == "width * expansion"
    assert nodes["bn3"]["zero_init"] is True
    assert [node.inputs for node in block.nodes if node.kind == "add"] == [("drop_path", "shortcut")]
    assert texts["drop_path"]["rate"] == "block_drop_rate"
    projection = graph.definition("shortcut", "projection")
    assert projection.module == "downsample"
    assert [node.name for node in projection.nodes] == ["0", "1"]
    roles = sorted((definition.role, definition.name) for definition in graph.definitions)
    assert roles == [("block", "bottleneck"), ("head", "classifier"), ("shortcut", "projection"), ("stem", "imagenet")]


def test_a_plain_network_defines_its_block_without_the_residual_add() -> None:
    graph = compile_spec("plain20", size=32)
    block: Definition = graph.definition("block", "basic")
    assert "add" not in [node.kind for node in block.nodes]
    relu2 = next(node for node in block.nodes if node.name == "relu2")
    assert relu2.inputs == ("drop_path",)  # it read the add, which read drop_path and the shortcut


def test_stages_are_ir_objects_with_their_blocks_and_transitions() -> None:
    graph = compile_spec("convnext_tiny", size=64)
    assert [(stage.path, len(stage.blocks), stage.transition) for stage in graph.stages] == [
        ("stages.0.blocks", 3, None),
        ("stages.1.blocks", 3, "stages.1.downsample"),
        ("stages.2.blocks", 9, "stages.2.downsample"),
        ("stages.3.blocks", 3, "stages.3.downsample"),
    ]
    second = graph.stages[1]
    assert [module.path for module in graph.blocks_of(second)] == [
        "stages.1.blocks.0",
        "stages.1.blocks.1",
        "stages.1.blocks.2",
    ]
    transition = graph.transition_of(second)
    assert transition is not None and transition.role == "transition" and transition.stage == second.path
    # timm's RegNet names blocks from 1 (s1.b1): a stage's blocks are its own, not its paths' prefix.
    regnet = compile_spec("regnetx_016", size=64)
    assert [(stage.path, stage.blocks[0]) for stage in regnet.stages][:2] == [("s1", "s1.b1"), ("s2", "s2.b1")]
