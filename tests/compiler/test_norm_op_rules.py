"""group_norm, the weight-standardised conv, blur_pool and channel_conv in the op table: shape rules,
parameter layouts and MACs against hand-worked numbers, spec errors located, and BatchNorm folding
leaving a standardised conv alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rescompile.compiler import compile_spec, cost
from rescompile.compiler.fold import folds
from rescompile.compiler.ir import BlurPool, ChannelConv, Conv, GroupNorm
from rescompile.compiler.ops import PaddingMode, Role, ShapeError, binomial_filter
from rescompile.compiler.pipeline import lower_for_inference
from rescompile.compiler.weights import weight_shapes
from rescompile.spec.errors import RescompileError

BLOCK = """\
name: norm_block
parameters: {groups: 4}
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, padding: 1, standardize_weight: true, standardize_epsilon: 1e-8}
  gn1: {op: group_norm, groups: groups}
  relu1: {op: relu}
  aa: {op: blur_pool, taps: 3, stride: stride, padding: 1, padding_mode: reflect}
  conv2: {op: conv, out_channels: width, kernel: 1}
  bn2: {op: batch_norm, zero_init: true}
  pool: {op: global_average_pool}
  se.conv: {op: channel_conv, kernel: 3}
  gate: {op: sigmoid}
  scale: {op: mul, inputs: [bn2, gate]}
  add: {op: add, inputs: [scale, shortcut]}
  relu2: {op: relu}
"""

NETWORK = """\
name: norm_net
input: {channels: 3, size: 9}
stem: cifar
block: norm_block
shortcut: B
stages:
  - {depth: 1, width: 8, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""


def write_network(folder: Path, block: str = BLOCK) -> Path:
    (folder / "blocks").mkdir(exist_ok=True)
    (folder / "blocks" / "norm_block.yaml").write_text(block)
    (folder / "net.yaml").write_text(NETWORK)
    return folder / "net.yaml"


def test_group_norm_keeps_its_shape_and_has_an_affine_weight_and_bias_only() -> None:
    norm = GroupNorm(channels=8, groups=4, epsilon=1e-5, zero_init=True)
    assert norm.output_shape(((8, 5, 7),)) == (8, 5, 7)
    tensors = norm.tensors()
    assert {suffix: (tensor.shape, tensor.role, tensor.buffer) for suffix, tensor in tensors.items()} == {
        "weight": ((8,), Role.SCALE, False),
        "bias": ((8,), Role.BIAS, False),
    }
    assert tensors["weight"].zeroed_for_residual
    assert norm.macs(((8, 5, 7),), (8, 5, 7)) == 0
    with pytest.raises(ShapeError, match="groups=3 must divide the 8 channels"):
        GroupNorm(8, 3, 1e-5, False).output_shape(((8, 5, 7),))


def test_a_standardised_conv_stores_the_raw_weight_and_costs_what_a_conv_costs() -> None:
    plain = Conv(4, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, False)
    standardized = Conv(4, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, False, True, 1e-8)
    assert standardized.tensors() == plain.tensors()
    assert standardized.output_shape(((4, 6, 6),)) == plain.output_shape(((4, 6, 6),)) == (8, 6, 6)
    assert standardized.macs(((4, 6, 6),), (8, 6, 6)) == 8 * 6 * 6 * 4 * 3 * 3


@pytest.mark.parametrize(
    ("taps", "stride", "padding", "size", "expected"),
    [
        (3, 2, 1, 8, 4),  # timm's BlurPool2d(filt_size=3, stride=2): floor((8 + 2 - 3) / 2) + 1
        (3, 2, 1, 7, 4),  # odd size: floor((7 + 2 - 3) / 2) + 1
        (4, 2, 2, 8, 5),  # even taps, timm's padding ((2 - 1) + (4 - 1)) // 2 = 2: floor((8 + 4 - 4) / 2) + 1
        (5, 1, 2, 6, 6),  # stride 1 blurs only
        (2, 2, 0, 5, 2),
    ],
)
def test_blur_pool_output_size(taps: int, stride: int, padding: int, size: int, expected: int) -> None:
    pool = BlurPool(taps, stride, padding, PaddingMode.REFLECT)
    assert pool.output_shape(((6, size, size),)) == (6, expected, expected)
    assert pool.tensors() == {}  # the filter is a constant, not a weight
    # As fvcore counts timm's F.conv2d, a depthwise conv: every output value is taps² MACs.
    assert pool.macs(((6, size, size),), (6, expected, expected)) == 6 * expected * expected * taps * taps


def test_the_binomial_filter_is_pascals_row_summing_to_one() -> None:
    assert binomial_filter(2) == [0.5, 0.5]
    assert binomial_filter(3) == [0.25, 0.5, 0.25]
    assert binomial_filter(4) == [0.125, 0.375, 0.375, 0.125]
    assert binomial_filter(5) == [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16]
    assert all(sum(binomial_filter(taps)) == 1 for taps in range(2, 12))


def test_blur_pool_refuses_reflect_padding_as_large_as_its_input() -> None:
    with pytest.raises(ShapeError, match="reflect padding 2 must be smaller than the 2×2 input"):
        BlurPool(3, 2, 2, PaddingMode.REFLECT).output_shape(((4, 2, 2),))
    assert BlurPool(3, 1, 2, PaddingMode.ZEROS).output_shape(((4, 2, 2),)) == (4, 4, 4)


def test_a_one_tap_blur_pool_copies_and_costs_nothing() -> None:
    # The filter [1]: the identity at stride 1 (timm's nn.Identity in a block that does not
    # stride), a subsample at stride 2; no multiply-accumulates either way.
    assert binomial_filter(1) == [1.0]
    assert BlurPool(1, 1, 0, PaddingMode.REFLECT).output_shape(((4, 7, 7),)) == (4, 7, 7)
    assert BlurPool(1, 1, 0, PaddingMode.REFLECT).macs(((4, 7, 7),), (4, 7, 7)) == 0
    assert BlurPool(1, 2, 0, PaddingMode.ZEROS).output_shape(((4, 7, 7),)) == (4, 4, 4)


def test_channel_conv_mixes_the_channels_of_a_pooled_value() -> None:
    conv = ChannelConv(kernel=5)
    assert conv.padding == 2
    assert conv.output_shape(((256, 1, 1),)) == (256, 1, 1)
    weight = conv.tensors()["weight"]
    assert (weight.shape, weight.role, weight.fan_in) == ((1, 1, 5), Role.KERNEL, 5)  # timm's nn.Conv1d(1, 1, 5)
    assert conv.macs(((256, 1, 1),), (256, 1, 1)) == 256 * 5
    with pytest.raises(ShapeError, match="odd kernel"):
        ChannelConv(4).output_shape(((256, 1, 1),))
    with pytest.raises(ShapeError, match="pooled C×1×1 value, got 256×2×2; add a global_average_pool"):
        conv.output_shape(((256, 2, 2),))


def test_a_network_of_the_new_ops_has_their_weights_parameters_and_macs(tmp_path: Path) -> None:
    graph = compile_spec(write_network(tmp_path))
    shapes = weight_shapes(graph)
    assert shapes["layer1.0.conv1.weight"] == (8, 16, 3, 3)
    assert shapes["layer1.0.gn1.weight"] == shapes["layer1.0.gn1.bias"] == (8,)
    assert "layer1.0.gn1.running_mean" not in shapes
    assert shapes["layer1.0.se.conv.weight"] == (1, 1, 3)
    assert not [name for name in shapes if name.startswith("layer1.0.aa")]
    nodes = {node.name: node for node in cost(graph).nodes}
    assert nodes["layer1.0.gn1"].parameters == 8 + 8
    assert nodes["layer1.0.se.conv"].parameters == 3
    assert nodes["layer1.0.se.conv"].macs == 8 * 3
    # 9×9 -> blur (taps 3, stride 2, padding 1) -> 5×5, 8 channels, 9 MACs each.
    assert (nodes["layer1.0.aa"].parameters, nodes["layer1.0.aa"].macs) == (0, 8 * 5 * 5 * 9)
    assert nodes["layer1.0.conv1"].macs == 8 * 9 * 9 * 16 * 9


def test_batch_norm_folding_leaves_a_standardised_conv_alone(tmp_path: Path) -> None:
    block = BLOCK.replace("  gn1: {op: group_norm, groups: groups}", "  gn1: {op: batch_norm}")
    graph = compile_spec(write_network(tmp_path, block))
    folded = lower_for_inference(graph)
    folded_convs = {fold.conv for fold in folds(folded)}
    assert "layer1.0.conv1" not in folded_convs  # standardised: its BatchNorm stays
    assert "layer1.0.conv2" in folded_convs
    assert "gn1" in {node.name for node in folded.modules[1].nodes}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "padding_mode: reflect",
            "padding_mode: mirror",
            r"blocks/norm_block\.yaml:8:.*padding_mode.*'zeros' or 'reflect'",
        ),
        ("se.conv: {op: channel_conv, kernel: 3}", "se.conv: {op: channel_conv, kernel: 4}", "odd kernel"),
        ("gn1: {op: group_norm, groups: groups}", "gn1: {op: group_norm, groups: 3}", "groups=3 must divide"),
        ("gn1: {op: group_norm, groups: groups}", "gn1: {op: group_norm}", "groups"),
        ("standardize_epsilon: 1e-8", "standardize_epsilon: 0", "standardize_epsilon"),
        ("pool: {op: global_average_pool}", "pool: {op: relu}", "add a global_average_pool before it"),
    ],
    ids=["padding-mode", "even-kernel", "groups-divide", "groups-missing", "epsilon-zero", "unpooled"],
)
def test_bad_attributes_are_one_located_line(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in BLOCK
    with pytest.raises(RescompileError, match=message) as raised:
        compile_spec(write_network(tmp_path, BLOCK.replace(old, new)))
    # Spec errors point into the block file; shape errors at the stage that builds the block.
    assert re.fullmatch(r"\S+/(blocks/norm_block|net)\.yaml:\d+:\d+: [^\n]+", str(raised.value)), raised.value
