"""group_norm, the weight-standardised conv, blur_pool and channel_conv in every backend, checked
against the timm layers they mirror (GroupNorm, StdConv2d, BlurPool2d, EcaModule) with copied
weights, and across backends on small networks with random weights and random affine parameters.

Bottlenecks written in YAML load the state_dict of timm's own blocks strictly, with no key renamed,
and compute what they compute: resnet.py's ``Bottleneck`` built with GroupNorm (resnet50_gn),
BlurPool2d (resnetblur50) and EcaModule (ecaresnet50d), and resnetv2.py's non-pre-activation
``Bottleneck`` with StdConv2d, GroupNormAct and DownsampleConv (BiT's layers)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from support import infer_shapes, layer
from timm.layers import BlurPool2d, EcaModule, GroupNorm, GroupNormAct, StdConv2d
from timm.models.resnet import Bottleneck
from timm.models.resnetv2 import Bottleneck as ResNetV2Bottleneck
from timm.models.resnetv2 import DownsampleConv
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rescompile.backends import flax_backend, onnx_backend, torch_backend
from rescompile.backends.registry import BACKENDS
from rescompile.compiler import compile_spec, cost
from rescompile.compiler.ir import BlurPool, Graph
from rescompile.compiler.ops import PaddingMode
from rescompile.compiler.weights import random_weights
from rescompile.testing import assert_close

BOTTLENECK = """\
name: timm_bottleneck
description: timm's Bottleneck (resnet.py) with stride on the 3×3, or on a blur pool after it.
out_channels: width * 4
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1}
  bn1: {op: batch_norm}
  act1: {op: relu}
  conv2: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  bn2: {op: batch_norm}
  act2: {op: relu}
  conv3: {op: conv, out_channels: width * 4, kernel: 1}
  bn3: {op: batch_norm, zero_init: true}
  add: {op: add, inputs: [bn3, shortcut]}
  act3: {op: relu}
"""
GROUP_NORM = {f"bn{index}: {{op: batch_norm": f"bn{index}: {{op: group_norm, groups: 4" for index in (1, 2, 3)}
BLUR = {
    "conv2: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}": (
        "conv2: {op: conv, out_channels: width, kernel: 3, padding: 1}"
    ),
    "act2: {op: relu}": "act2: {op: relu}\n  aa: {op: blur_pool, taps: 3, stride: stride, padding: 1, "
    "padding_mode: reflect}",
}
ECA = {
    "add: {op: add, inputs: [bn3, shortcut]}": "pool: {op: global_average_pool}\n"
    "  se.conv: {op: channel_conv, kernel: 3}\n"
    "  gate: {op: sigmoid}\n"
    "  scale: {op: mul, inputs: [bn3, gate]}\n"
    "  add: {op: add, inputs: [scale, shortcut]}"
}
STANDARDIZED_3X3 = {
    "conv2: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}": (
        "conv2: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1, standardize_weight: true, "
        "standardize_epsilon: 1e-8}"
    )
}
STANDARDIZED_1X1 = {
    "conv1: {op: conv, out_channels: width, kernel: 1}": (
        "conv1: {op: conv, out_channels: width, kernel: 1, standardize_weight: true}"
    ),
    "conv3: {op: conv, out_channels: width * 4, kernel: 1}": (
        "conv3: {op: conv, out_channels: width * 4, kernel: 1, standardize_weight: true, standardize_epsilon: 1e-8}"
    ),
}

NETWORK = """\
name: timm_layers
input: {channels: 3, size: 11}
stem: cifar
block: timm_bottleneck
shortcut: B
stages:
  - {depth: 1, width: 16, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""


def network(folder: Path, *changes: dict[str, str]) -> Graph:
    block = BOTTLENECK
    for change in changes:
        for old, new in change.items():
            assert old in block, old
            block = block.replace(old, new)
    (folder / "blocks").mkdir(exist_ok=True)
    (folder / "blocks" / "timm_bottleneck.yaml").write_text(block)
    (folder / "net.yaml").write_text(NETWORK)
    return compile_spec(folder / "net.yaml")


def torch_model(graph: Graph, seed: int = 1) -> nn.Module:
    model = torch_backend.build_module(graph).eval()
    torch_backend.load_weights(model, graph, random_weights(graph, seed=seed))
    return model


def images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def all_backends_agree(graph: Graph) -> None:
    weights = random_weights(graph, seed=3)
    x = np.random.default_rng(0).standard_normal((2, *graph.input_shape)).astype(np.float32)
    outputs = {name: backend.module_outputs(graph, weights, x) for name, backend in BACKENDS.items()}
    for name, result in outputs.items():
        for module, value in result.items():
            assert_close(value, outputs["torch"][module], tolerance="block", what=f"{name} {module}")


@pytest.mark.parametrize(
    ("changes", "timm_options"),
    [
        ((GROUP_NORM,), {"norm_layer": partial(GroupNorm, num_groups=4)}),
        ((BLUR,), {"aa_layer": BlurPool2d}),
        ((ECA,), {"attn_layer": EcaModule}),
    ],
    ids=["group_norm-resnet50_gn", "blur_pool-resnetblur50", "channel_conv-ecaresnet50d"],
    # timm's EcaModule(64) picks kernel 3 (t = int((log2(64) + 1) / 2) = 3), as the YAML states.
)
def test_a_yaml_bottleneck_is_timms_bottleneck(
    tmp_path: Path, changes: tuple[dict[str, str], ...], timm_options: dict[str, object]
) -> None:
    graph = network(tmp_path, *changes)
    block = layer(torch_model(graph), "layer1.0")
    # timm's downsample for a stride-2 block: a 1×1 conv and a BatchNorm, as the projection shortcut.
    downsample = nn.Sequential(nn.Conv2d(16, 64, 1, stride=2, bias=False), nn.BatchNorm2d(64))
    reference = Bottleneck(16, 16, stride=2, downsample=downsample, **timm_options).eval()  # type: ignore[arg-type]
    reference.load_state_dict(block.state_dict(), strict=True)  # the same keys, none renamed
    assert set(reference.state_dict()) == set(block.state_dict())
    x = images((2, 16, 11, 11))
    with torch.no_grad():
        assert_close(block(x).numpy(), reference(x).numpy(), tolerance="same_framework")
    # MACs as torch's flop counter (like fvcore) counts timm's block: every aten convolution, the
    # functional one of BlurPool2d and EcaModule's Conv1d included.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference(x[:1])
    block_macs = sum(node.macs for node in cost(graph).nodes if node.name.startswith("layer1.0."))
    assert counter.get_total_flops() == 2 * block_macs


def test_group_norm_equals_timms_group_norm_in_training_mode_too(tmp_path: Path) -> None:
    graph = network(tmp_path, GROUP_NORM)
    ours = layer(torch_model(graph), "layer1.0.bn2").train()
    reference = GroupNorm(16, num_groups=4, eps=1e-5)
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = images((3, 16, 6, 6)) * 3 + 1
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("epsilon", [1e-6, 1e-8])
def test_a_standardised_conv_is_timms_std_conv(tmp_path: Path, epsilon: float) -> None:
    change = {key: value.replace("1e-8", repr(epsilon)) for key, value in STANDARDIZED_3X3.items()}
    graph = network(tmp_path, change)
    conv = layer(torch_model(graph), "layer1.0.conv2")
    reference = StdConv2d(16, 16, 3, stride=2, padding=1, eps=epsilon)
    reference.load_state_dict(conv.state_dict(), strict=True)  # the raw weight, under `weight`
    x = images((2, 16, 9, 9))
    with torch.no_grad():
        torch.testing.assert_close(conv(x), reference(x), rtol=0, atol=0)
        # Not a plain conv: the standardised weight is what it convolves with.
        assert not torch.allclose(conv(x), nn.functional.conv2d(x, conv.weight, stride=2, padding=1), atol=1e-3)


def _with_stem_blur(graph: Graph, pool: BlurPool) -> Graph:
    """resnet18 with its stem's max pool replaced by ``pool``."""
    stem = graph.modules[0]
    nodes = tuple(dataclasses.replace(node, op=pool) if node.name == "maxpool" else node for node in stem.nodes)
    return infer_shapes(
        dataclasses.replace(graph, modules=(dataclasses.replace(stem, nodes=nodes), *graph.modules[1:]))
    )


BLUR_VARIANTS = [
    # (taps, stride, padding mode): timm's padding is ((stride - 1) + (taps - 1)) // 2.
    (3, 2, "reflect"),  # resnetblur50
    (2, 2, "reflect"),
    (4, 2, "zeros"),  # timm's 'blurpc' pads with zeros
    (5, 1, "reflect"),
    (5, 2, "zeros"),
]


@pytest.mark.parametrize(("taps", "stride", "mode"), BLUR_VARIANTS)
def test_blur_pool_is_timms_blur_pool_and_has_no_state(taps: int, stride: int, mode: str) -> None:
    padding = ((stride - 1) + (taps - 1)) // 2
    graph = _with_stem_blur(compile_spec("resnet18", size=26), BlurPool(taps, stride, padding, PaddingMode(mode)))
    model = torch_model(graph)
    assert not [name for name in model.state_dict() if name.startswith("maxpool")]
    reference = BlurPool2d(64, filt_size=taps, stride=stride, pad_mode="constant" if mode == "zeros" else mode)
    assert not reference.state_dict()  # timm's filter is a non-persistent buffer too
    x = images((2, 64, 13, 13))
    with torch.no_grad():
        torch.testing.assert_close(layer(model, "maxpool")(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize(("taps", "stride", "mode"), [BLUR_VARIANTS[0], BLUR_VARIANTS[2], BLUR_VARIANTS[3]])
def test_blur_pool_agrees_across_backends(taps: int, stride: int, mode: str) -> None:
    padding = ((stride - 1) + (taps - 1)) // 2
    graph = _with_stem_blur(compile_spec("resnet18", size=27), BlurPool(taps, stride, padding, PaddingMode(mode)))
    all_backends_agree(graph)


def test_all_backends_agree_on_a_network_of_every_new_op(tmp_path: Path) -> None:
    # Group norm with random affine parameters, standardised convs, a reflect-padded blur pool, ECA.
    all_backends_agree(network(tmp_path, GROUP_NORM, BLUR, ECA, STANDARDIZED_1X1))


def test_onnx_counts_the_parameters_the_cost_pass_counts_and_folds_around_standardised_convs(
    tmp_path: Path,
) -> None:
    block_changes = (BLUR, ECA, STANDARDIZED_1X1)
    graph = network(tmp_path, *block_changes)
    weights = random_weights(graph, seed=4)
    model = onnx_backend.emit_model(graph, weights)
    # The blur filter and the epsilons are Constant nodes, not weights.
    assert onnx_backend.count_parameters(model.proto()) == cost(graph).parameters
    assert {tensor.name for tensor in model.skeleton.graph.initializer} >= set(weights)
    x = np.random.default_rng(0).standard_normal((2, *graph.input_shape)).astype(np.float32)
    plain = onnx_backend.run_onnxruntime(model, x)
    folded = onnx_backend.run_onnxruntime(onnx_backend.emit_model(graph, weights, fold_bn=True), x)
    assert_close(folded, plain, tolerance="block")
    # The raw weights read back unchanged: standardisation happens inside the graph.
    read = onnx_backend.to_weights(model.proto(), graph)
    for name, array in weights.items():
        np.testing.assert_array_equal(read[name], array)


@pytest.mark.parametrize("opset", [11, 13, 21])
def test_group_norm_and_standardised_conv_in_older_and_newer_opsets(tmp_path: Path, opset: int) -> None:
    graph = network(tmp_path, GROUP_NORM, STANDARDIZED_3X3)
    weights = random_weights(graph, seed=5)
    x = np.random.default_rng(1).standard_normal((2, *graph.input_shape)).astype(np.float32)
    expected = onnx_backend.run_onnxruntime(onnx_backend.emit_model(graph, weights), x)
    model = onnx_backend.emit_model(graph, weights, opset=opset)
    assert_close(onnx_backend.run_onnxruntime(model, x), expected, tolerance="same_framework")


def test_zero_init_residual_zeroes_a_closing_group_norm(tmp_path: Path) -> None:
    graph = network(tmp_path, GROUP_NORM)
    model = torch_backend.build_module(graph, zero_init_residual=True)
    assert torch.count_nonzero(layer(model, "layer1.0.bn3.weight")) == 0
    assert torch.count_nonzero(layer(model, "layer1.0.bn2.weight")) == 16
    flax_model = flax_backend.build_module(graph, zero_init_residual=True)
    assert not np.asarray(layer(flax_model, "layer1.0.bn3.scale")[...]).any()


def test_weights_round_trip_through_torch_and_flax(tmp_path: Path) -> None:
    # The channel conv's (1, 1, k) kernel is (k, 1, 1) in flax; group norm's weight is its scale.
    graph = network(tmp_path, GROUP_NORM, BLUR, ECA, STANDARDIZED_1X1)
    weights = random_weights(graph, seed=6)
    flax_model = flax_backend.module_for_weights(graph)
    flax_backend.load_weights(flax_model, graph, weights)
    assert np.asarray(layer(flax_model, "layer1.0.se")["conv"].kernel[...]).shape == (3, 1, 1)
    for backend, read in [
        ("torch", torch_backend.to_weights(torch_model(graph, seed=6), graph)),
        ("flax", flax_backend.to_weights(flax_model, graph)),
    ]:
        assert read.keys() == weights.keys(), backend
        for name, array in weights.items():
            np.testing.assert_array_equal(read[name], array, err_msg=f"{backend} {name}")


def test_the_generated_sources_are_ruff_formatted_and_lint_clean() -> None:
    graph = compile_spec(Path(__file__).parents[2] / "examples" / "timm_norm_variants.yaml")
    settings = ["--isolated", "--line-length", "120", "--stdin-filename", "model.py"]
    ruff = [sys.executable, "-m", "ruff"]
    for emit in (torch_backend.emit_source, flax_backend.emit_source):
        source = emit(graph)
        assert "StdConv2d" in source or "standardized_conv(1e-08)" in source
        formatted = subprocess.run([*ruff, "format", *settings, "-"], input=source, capture_output=True, text=True)
        assert formatted.stdout == source
        lint = subprocess.run([*ruff, "check", *settings, "-"], input=source, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def test_the_cost_pass_counts_the_macs_torchs_flop_counter_counts() -> None:
    graph = compile_spec(Path(__file__).parents[2] / "examples" / "timm_norm_variants.yaml")
    model = torch_backend.build_module(graph).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *graph.input_shape))
    assert counter.get_total_flops() == 2 * cost(graph).macs


BIT_BLOCK = """\
name: bit_bottleneck
description: timm's resnetv2 Bottleneck (non-pre-activation), BiT's layers.
out_channels: width * 4
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1, standardize_weight: true, standardize_epsilon: 1e-8}
  norm1: {op: group_norm, groups: 32}
  act1: {op: relu}
  conv2: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1, standardize_weight: true,
          standardize_epsilon: 1e-8}
  norm2: {op: group_norm, groups: 32}
  act2: {op: relu}
  conv3: {op: conv, out_channels: width * 4, kernel: 1, standardize_weight: true, standardize_epsilon: 1e-8}
  norm3: {op: group_norm, groups: 32, zero_init: true}
  add: {op: add, inputs: [norm3, shortcut]}
  act3: {op: relu}
"""
BIT_SHORTCUT = """\
name: std_projection
description: timm's DownsampleConv, non-pre-activation.
module: downsample
nodes:
  conv: {op: conv, out_channels: out_channels, kernel: 1, stride: stride, standardize_weight: true,
         standardize_epsilon: 1e-8}
  norm: {op: group_norm, groups: 32}
"""
BIT_NETWORK = """\
name: bit_layers
input: {channels: 3, size: 11}
stem: cifar
stem_parameters: {width: 32}
block: bit_bottleneck
shortcut: {where_shapes_match: identity, where_shapes_change: std_projection}
stages:
  - {depth: 1, width: 32, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""


def test_a_yaml_bit_bottleneck_is_timms_resnetv2_bottleneck(tmp_path: Path) -> None:
    for folder, name, text in [("blocks", "bit_bottleneck", BIT_BLOCK), ("shortcuts", "std_projection", BIT_SHORTCUT)]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.yaml").write_text(text)
    (tmp_path / "net.yaml").write_text(BIT_NETWORK)
    graph = compile_spec(tmp_path / "net.yaml")
    block = layer(torch_model(graph), "layer1.0")
    reference = ResNetV2Bottleneck(
        32,
        128,
        stride=2,
        conv_layer=partial(StdConv2d, eps=1e-8),
        norm_layer=partial(GroupNormAct, num_groups=32),
        proj_layer=DownsampleConv,
    ).eval()
    reference.load_state_dict(block.state_dict(), strict=True)
    assert set(reference.state_dict()) == set(block.state_dict())  # downsample.conv.weight, norm1.weight, ...
    x = images((2, 32, 11, 11))
    with torch.no_grad():
        assert_close(block(x).numpy(), reference(x).numpy(), tolerance="same_framework")
    all_backends_agree(graph)
