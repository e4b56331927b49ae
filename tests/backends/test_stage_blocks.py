"""A different block type and different block parameters per stage, in every backend: one class
per block definition, each stage built with its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import layer

from rescompile.backends import torch_backend
from rescompile.cli import main
from rescompile.compiler import compile_spec, cost
from rescompile.compiler.ops import Conv
from rescompile.spec.errors import RescompileError
from rescompile.spec.loader import builtin_directory

KNOWN_BLOCKS = ", ".join(sorted(path.stem for path in (builtin_directory() / "blocks").glob("*.yaml")))
"""The built-in blocks, as an unknown block's error lists them."""

MIXED = """\
name: mixed
input: {channels: 3, size: 32}
stem: cifar
block: basic
block_parameters: {}
shortcut: B
stages:
  - {depth: 2, width: 16}
  - {depth: 1, width: 16, stride: 2, block: bottleneck, block_parameters: {groups: 2, base_width: 128}}
  - {depth: 2, width: 32, stride: 2, block: bottleneck}
head: classifier
head_parameters: {classes: 10}
"""


@pytest.fixture
def network(tmp_path: Path) -> Path:
    (tmp_path / "net.yaml").write_text(MIXED)
    return tmp_path / "net.yaml"


def test_each_stage_gets_its_block_type_and_parameters(network: Path) -> None:
    graph = compile_spec(network)
    assert [block.type_name for block in graph.blocks] == ["basic", "basic", "bottleneck", "bottleneck", "bottleneck"]
    assert [(role, name) for role, name in ((d.role, d.name) for d in graph.definitions) if role == "block"] == [
        ("block", "basic"),
        ("block", "bottleneck"),
    ]
    convs = {module.path: node.op for module, node in graph.nodes() if node.name == "conv2"}
    assert isinstance(convs["layer2.0"], Conv) and isinstance(convs["layer3.0"], Conv)
    # inner width = width * base_width // 64 * groups = 16 * 128 // 64 * 2
    assert (convs["layer2.0"].out_channels, convs["layer2.0"].groups) == (64, 2)
    assert (convs["layer3.0"].out_channels, convs["layer3.0"].groups) == (32, 1)


def test_the_torch_source_has_one_class_per_block_type_and_counts_right(network: Path) -> None:
    graph = compile_spec(network)
    source = torch_backend.emit_source(graph)
    layer1 = "self.layer1 = self._make_stage(BasicBlock, 16, 16, width=16, depth=2, stride=1, first_block_index=0)"
    assert layer1 in source
    layer2 = "BottleneckBlock, 16, 64, width=16, depth=1, stride=2, first_block_index=2, base_width=128, groups=2"
    assert layer2 in source
    model = torch_backend.build_module(graph)
    assert [type(block).__name__ for stage in (1, 2, 3) for block in layer(model, f"layer{stage}")] == [
        "BasicBlock",
        "BasicBlock",
        "BottleneckBlock",
        "BottleneckBlock",
        "BottleneckBlock",
    ]
    assert sum(parameter.numel() for parameter in model.parameters()) == cost(graph).parameters
    zeroed = torch_backend.build_module(graph, zero_init_residual=True)
    assert torch.count_nonzero(layer(zeroed, "layer1.0.bn2.weight")) == 0
    assert torch.count_nonzero(layer(zeroed, "layer3.1.bn3.weight")) == 0


def test_all_backends_agree_on_mixed_block_types(network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(network), "--backends", "torch,flax,onnx"]) == 0
    assert "all backends agree" in capsys.readouterr().out


def test_network_block_parameters_do_not_reach_a_stage_of_another_block_type(tmp_path: Path) -> None:
    # groups is a bottleneck parameter; basic has none, and the basic stages must not receive it.
    text = MIXED.replace("block: basic\nblock_parameters: {}", "block: bottleneck\nblock_parameters: {groups: 2}")
    text = text.replace("{depth: 2, width: 16}", "{depth: 2, width: 16, block: basic}")
    (tmp_path / "net.yaml").write_text(text)
    graph = compile_spec(tmp_path / "net.yaml")
    assert dict(graph.blocks[-1].parameters)["groups"] == 2
    assert "groups" not in dict(graph.blocks[0].parameters)


def test_an_unknown_stage_block_is_a_located_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "net.yaml").write_text(
        MIXED.replace("block: bottleneck, block_parameters", "block: bottlenek, block_parameters")
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    assert str(raised.value) == (
        "net.yaml:9:45: unknown block 'bottlenek' (did you mean 'bottleneck'?); known blocks: " + KNOWN_BLOCKS
    )


ALTERNATING = """\
name: alt
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  bn1: {op: batch_norm}
  extra: {op: relu, when: block_index % 2 == 1}
  add: {op: add, inputs: ["extra if block_index % 2 == 1 else bn1", shortcut]}
  relu: {op: relu}
"""
ALTERNATING_NETWORK = """\
name: n
input: {channels: 3, size: 8}
stem: cifar
block: alt
shortcut: B
stages:
  - {depth: 3, width: 4}
  - {depth: 3, width: 8, stride: 2}
head: classifier
head_parameters: {classes: 3}
"""


def test_blocks_unrolled_differently_inside_one_stage_agree_in_every_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stage whose later blocks are of two unrollings (a when on block_index): ONNX built it, torch
    refused with an unlocated line; each block's class is now in the stage's layout."""
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "alt.yaml").write_text(ALTERNATING)
    (tmp_path / "net.yaml").write_text(ALTERNATING_NETWORK)
    graph = compile_spec(tmp_path / "net.yaml")
    assert [block.type_name for block in graph.blocks] == ["alt", "alt_2"] * 3  # block_index counts network-wide
    assert "layout=[(AltBlock, 4, {}), (Alt2Block, 4, {}), (AltBlock, 4, {})]" in torch_backend.emit_source(graph)
    assert main(["check", str(tmp_path / "net.yaml")]) == 0
    assert "all backends agree" in capsys.readouterr().out
