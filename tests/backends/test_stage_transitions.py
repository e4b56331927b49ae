"""Stage transitions (ConvNeXt's downsample between stages) and ConvNeXt's ops (layer_norm, gelu,
layer_scale, pointwise_linear): the IR's rules, and all three backends agreeing on small networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from support import assert_backends_agree, count_macs, randomise_normalisation

from rescompile.api import create_graph
from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec, cost
from rescompile.compiler.ops import DropPath, LayerNorm, LayerScale, PointwiseLinear
from rescompile.compiler.weights import weight_shapes
from rescompile.spec.errors import RescompileError
from rescompile.testing import assert_close

# A transition whose nodes are named (a class, not a Sequential) and that normalises with GELU.
NAMED_TRANSITION = """name: norm_conv
description: LayerNorm, GELU, then a strided conv to the stage's width.
parameters: {kernel: 2}
nodes:
  norm: {op: layer_norm}
  act: {op: gelu}
  conv: {op: conv, out_channels: width, kernel: kernel, stride: stride, bias: true}
"""
NETWORK = """name: tiny_convnext
input: {channels: 3, size: 37}
naming: {stages: "stages.{index}.blocks", transitions: "stages.{index}.downsample"}
stem: convnext_patch
stem_parameters: {width: 8}
block: convnext
block_parameters: {kernel_size: 3}
shortcut: identity
transition: convnext_downsample
stages:
  - {depth: 1, width: 16, transition: norm_conv}
  - {depth: 2, width: 24, stride: 2}
  - {depth: 1, width: 24}
  - {depth: 1, width: 32, stride: 2, transition: norm_conv, block_parameters: {kernel_size: 5}}
head: convnext_head
head_parameters: {classes: 5}
"""


@pytest.fixture
def network(tmp_path: Path) -> Path:
    (tmp_path / "transitions").mkdir()
    (tmp_path / "transitions" / "norm_conv.yaml").write_text(NAMED_TRANSITION)
    path = tmp_path / "net.yaml"
    path.write_text(NETWORK)
    return path


def test_a_stage_gets_the_network_transition_where_its_stride_or_width_changes(network: Path) -> None:
    graph = compile_spec(network)
    transitions = [(module.path, module.type_name, module.stage) for module in graph.transitions]
    assert transitions == [
        ("stages.0.downsample", "norm_conv", "stages.0.blocks"),  # named by the stage: width 8 -> 16
        ("stages.1.downsample", "convnext_downsample", "stages.1.blocks"),  # stride 2
        # stage 2 keeps its 24 channels at stride 1: none
        ("stages.3.downsample", "norm_conv", "stages.3.blocks"),
    ]
    # The transition takes the stride: every block of a stage with one keeps the resolution.
    strides = {block.path: block.parameter("stride") for block in graph.blocks}
    assert strides == {
        "stages.0.blocks.0": 1,
        "stages.1.blocks.0": 1,
        "stages.1.blocks.1": 1,
        "stages.2.blocks.0": 1,
        "stages.3.blocks.0": 1,
    }
    # 37 -> 9 (the stem) -> 8 (a 2×2 window at stride 1) -> 4 -> 2
    assert [module.out_shape for module in graph.transitions] == [(16, 8, 8), (24, 4, 4), (32, 2, 2)]


def test_a_stage_may_refuse_the_network_transition(network: Path) -> None:
    network.write_text(NETWORK.replace("{depth: 2, width: 24, stride: 2}", "{depth: 2, width: 16, transition: none}"))
    assert [module.path for module in compile_spec(network).transitions] == [
        "stages.0.downsample",
        "stages.2.downsample",  # 16 -> 24 channels at stride 1: the network's transition
        "stages.3.downsample",
    ]


def test_transitions_hold_timm_keys_and_a_layer_scale_is_named_by_its_node(network: Path) -> None:
    names = list(weight_shapes(compile_spec(network)))
    assert "stages.1.downsample.0.weight" in names and "stages.1.downsample.1.bias" in names
    assert "stages.0.downsample.conv.weight" in names
    assert weight_shapes(compile_spec(network))["stages.1.blocks.0.gamma"] == (24,)


def test_every_backend_agrees_on_transitions_and_convnext_ops_at_an_odd_size(network: Path) -> None:
    assert_backends_agree(compile_spec(network))


def test_a_transition_part_must_exist(network: Path) -> None:
    network.write_text(NETWORK.replace("transition: convnext_downsample", "transition: convnext_dowsample"))
    with pytest.raises(RescompileError, match=r"net\.yaml:9:13: .*convnext_downsample"):
        compile_spec(network)


def test_a_transition_cannot_live_inside_its_stage(network: Path) -> None:
    network.write_text(
        NETWORK.replace('transitions: "stages.{index}.downsample"', 'transitions: "stages.{index}.blocks.x"')
    )
    with pytest.raises(RescompileError, match=r"net\.yaml:3:9: .*would hold one another"):
        compile_spec(network)


def test_block_names_are_one_path_segment_with_one_placeholder(tmp_path: Path) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(NETWORK.replace('transitions: "stages.{index}.downsample"', 'blocks: "b.{number}"'))
    with pytest.raises(RescompileError, match=r"net\.yaml:3:.*one path segment"):
        compile_spec(path)


def test_shape_rules_and_macs_of_the_convnext_ops_by_hand() -> None:
    linear = PointwiseLinear(in_channels=8, out_channels=32, bias=True)
    assert linear.output_shape(((8, 5, 7),)) == (32, 5, 7)
    assert linear.macs(((8, 5, 7),), (32, 5, 7)) == 5 * 7 * 8 * 32  # each pixel: one 8 -> 32 matrix product
    assert {name: tensor.shape for name, tensor in linear.tensors().items()} == {"weight": (32, 8), "bias": (32,)}
    norm = LayerNorm(channels=8, epsilon=1e-6)
    assert norm.output_shape(((8, 5, 7),)) == (8, 5, 7) and norm.macs(((8, 5, 7),), (8, 5, 7)) == 0
    scale = LayerScale(channels=8, init=1e-6)
    assert list(scale.tensors()) == [""]  # no suffix: the node's own name, timm's gamma
    assert scale.tensors()[""].value == 1e-6


@pytest.mark.parametrize("name", ["convnext_tiny", "regnety_016"])
def test_macs_equal_forward_hook_counts_on_timms_modules(name: str) -> None:
    """The cost pass against module hooks (convs; linear layers as output elements × in features,
    which counts ConvNeXt's channels-last MLP per pixel), on timm's own model."""
    reference = timm.create_model(name, pretrained=False).eval()
    assert count_macs(reference, torch.zeros(1, 3, 64, 64)) == cost(compile_spec(name, size=64)).macs


def test_generated_convnext_reads_like_timms_stage() -> None:
    source = torch_backend.emit_source(compile_spec("convnext_tiny", size=64))
    assert 'self.stages["1"].downsample = convnext_downsample(96, 192, 2)' in source
    assert 'x = self.stages["1"].downsample(x)\n        x = self.stages["1"].blocks(x)' in source
    assert "out = out * self.gamma.view(1, -1, 1, 1)" in source


@pytest.mark.parametrize("name", ["convnext_tiny", "regnety_016"])
def test_drop_path_rates_follow_timms_schedule(name: str) -> None:
    """timm's linspace(0, rate, blocks) over all blocks (its DropPath is absent at rate 0)."""
    reference = timm.create_model(name, pretrained=False, drop_path_rate=0.2)
    expected = [0.0] + [module.drop_prob for module in reference.modules() if type(module).__name__ == "DropPath"]
    graph = create_graph(name, drop_path_rate=0.2)
    rates = [node.op.rate for block in graph.blocks for node in block.nodes if isinstance(node.op, DropPath)]
    assert rates == pytest.approx(expected, abs=1e-7)  # timm's are float32


# timm's convnext_nano: other depths and widths, and conv_mlp (1×1 convs with bias in the MLP).
CONV_MLP_BLOCK = """name: convnext_conv_mlp
description: ConvNeXt's block with its MLP as 1×1 convolutions (timm's conv_mlp).
out_channels: width
nodes:
  conv_dw: {op: conv, out_channels: width, kernel: 7, padding: 3, groups: width, bias: true}
  norm: {op: layer_norm, epsilon: 1.0e-6}
  mlp.fc1: {op: conv, out_channels: 4 * width, kernel: 1, bias: true}
  mlp.act: {op: gelu}
  mlp.fc2: {op: conv, out_channels: width, kernel: 1, bias: true}
  gamma: {op: layer_scale}
  add: {op: add, inputs: [gamma, shortcut]}
"""
NANO = """extends: convnext_tiny
name: convnext_nano
stem_parameters: {width: 80}
block: convnext_conv_mlp
stages:
  - {depth: 2, width: 80}
  - {depth: 2, width: 160, stride: 2}
  - {depth: 8, width: 320, stride: 2}
  - {depth: 2, width: 640, stride: 2}
"""


def test_another_convnext_written_from_the_readme_is_timms(tmp_path: Path) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "convnext_conv_mlp.yaml").write_text(CONV_MLP_BLOCK)
    (tmp_path / "convnext_nano.yaml").write_text(NANO)
    torch.manual_seed(0)
    reference = timm.create_model("convnext_nano", pretrained=False).eval()
    randomise_normalisation(reference, seed=1)
    graph = compile_spec(tmp_path / "convnext_nano.yaml", size=65)
    model = torch_backend.build_module(graph).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    assert list(model.state_dict()) == list(reference.state_dict())
    inputs = torch.randn(2, 3, 65, 65, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(model(inputs).numpy(), reference(inputs).numpy(), tolerance="same_framework", what="logits")
