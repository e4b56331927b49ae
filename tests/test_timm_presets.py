"""Every built-in preset named after a timm model is that model: timm's state_dict loads with
``strict=True`` and no key renaming, the parameter count and MACs are timm's, and eval outputs,
train-mode outputs and the updated running statistics are timm's (random weights and random
normalisation statistics and affine parameters, so that no zero-initialised layer hides a branch)."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import NamedTuple

import pytest
import timm
import torch
import torchvision
from conftest import PART_COVERING_PRESETS
from support import assert_backends_agree, randomise_normalisation
from torch.utils.flop_counter import FlopCounterMode

from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec, cost
from rescompile.compiler.ir import Graph
from rescompile.spec import builtin_networks
from rescompile.testing import assert_close

TIMM_PRESETS = [
    "resnet50c",
    "resnet50d",
    "resnet50s",
    "resnet50t",
    "resnet200d",
    "seresnet50",
    "seresnext50_32x4d",
    "resnetrs50",
    "resnetaa50",
    "resnetblur50",
    "resnet50_gn",
    "ecaresnet50d",
    "resnetv2_50",
    "resnetv2_50x1_bit",
    "res2net50_26w_4s",
    "skresnet18",
    "resnest50d",
    "convnext_tiny",
    "regnetx_016",
    "regnety_016",
    "gcresnet50t",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "efficientnetv2_rw_s",
    "regnetz_b16",
    "cspresnet50",
    "cspresnext50",
    "cspdarknet53",
]
OTHER_ORDER = {"resnetv2_50": ".downsample.", "resnetv2_50x1_bit": ".downsample.", "gcresnet50t": ".shortcut."}
"""timm's PreActBottleneck registers ``downsample`` before ``norm1``, and ByobNet's blocks ``shortcut``
first; a generated block registers the shortcut module last. The keys are the same (strict loading
needs no order); so is every other key's order."""
SIZE = 224
SMALL_SIZE = 96
"""Every preset is compared with timm at 96×96 (or at its odd size) and at 224 in the slow tail: a
preset's layers, and so its keys, parameters and code, do not depend on the input size. By default
the presets among PART_COVERING_PRESETS run at the small size: the others are made of their parts."""
ODD_SIZE = dict.fromkeys(
    (
        *("convnext_tiny", "regnetx_016", "regnety_016", "gcresnet50t", "mobilenetv2_100", "mobilenetv3_large_100"),
        *("efficientnet_b0", "efficientnetv2_rw_s", "regnetz_b16"),
        *("cspresnet50", "cspresnext50", "cspdarknet53"),
    ),
    97,
)
"""Compared with timm at an odd size by default (instead of 96): ConvNeXt's 4×4 stride-4 stem floors it
(97 -> 24), RegNet's, MobileNet's, EfficientNet's and RegNetZ's strided 3×3 and 5×5 convs pad it
(97 -> 49 -> 25 -> 13 -> 7 -> 4), global context's softmax runs over odd positions, and CSPNet's
halves are split and concatenated at odd sizes."""


class Pair(NamedTuple):
    graph: Graph
    model: torch.nn.Module
    reference: torch.nn.Module


@functools.cache
def pair(name: str, size: int) -> Pair:
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False)
    randomise_normalisation(reference, seed=1)
    graph = compile_spec(name, size=size)
    model = torch_backend.build_module(graph)
    model.load_state_dict(reference.state_dict(), strict=True)
    return Pair(graph, model, reference)


def small_size(name: str) -> int:
    return ODD_SIZE.get(name, SMALL_SIZE)


def sizes() -> list[object]:
    params: list[object] = []
    for name in TIMM_PRESETS:
        small = small_size(name)
        default = [] if name in PART_COVERING_PRESETS else [pytest.mark.slow]
        params.append(pytest.param(name, small, id=f"{name}-{small}", marks=default))
        params.append(pytest.param(name, SIZE, id=f"{name}-{SIZE}", marks=pytest.mark.slow))
    return params


TIMM_NOT_TORCHVISION = {"convnext_tiny", "efficientnet_b0"}
"""Built-ins named like a torchvision model too that are timm's (their keys are timm's, stages.0...)."""


def test_every_builtin_timm_model_outside_torchvision_is_checked_here() -> None:
    timm_names = set(builtin_networks()) & set(timm.list_models())
    torchvision_names = set(torchvision.models.list_models()) - TIMM_NOT_TORCHVISION
    assert timm_names - torchvision_names == set(TIMM_PRESETS)


@pytest.mark.parametrize("name", TIMM_PRESETS)
def test_state_dict_keys_are_timms_in_timms_order(name: str) -> None:
    _graph, model, timms = pair(name, small_size(name))  # the other tests' pair: built once
    keys, reference = list(model.state_dict()), list(timms.state_dict())
    assert set(keys) == set(reference)
    if name in OTHER_ORDER:
        shortcut = OTHER_ORDER[name]
        keys, reference = ([key for key in keys if shortcut not in key], [k for k in reference if shortcut not in k])
    assert keys == reference


@pytest.mark.parametrize(("name", "size"), sizes())
def test_parameters_and_macs_are_timms(name: str, size: int) -> None:
    graph, _model, reference = pair(name, size)
    report = cost(graph)
    assert report.parameters == sum(parameter.numel() for parameter in reference.parameters())
    # torch's own FLOP counter sees every convolution, functional ones too (timm's BlurPool2d calls
    # F.conv2d), and counts a multiply-accumulate as 2 FLOPs.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference.eval()(torch.zeros(1, 3, size, size))
    assert counter.get_total_flops() == 2 * report.macs


@pytest.mark.parametrize(("name", "size"), sizes())
def test_eval_outputs_are_timms(name: str, size: int) -> None:
    _graph, model, reference = pair(name, size)
    inputs = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference.eval()(inputs)
        actual = model.eval()(inputs)
    assert_close(actual.numpy(), expected.numpy(), tolerance="same_framework", what=f"{name} eval logits")


@pytest.mark.parametrize(("name", "size"), sizes())
def test_train_mode_outputs_and_running_statistics_are_timms(name: str, size: int) -> None:
    _, model, reference = pair(name, size)
    # Fresh copies: the pair is shared with the eval test, and a training pass moves statistics.
    model, reference = copy.deepcopy(model), copy.deepcopy(reference)
    inputs = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference.train()(inputs)
        actual = model.train()(inputs)
    assert_close(actual.numpy(), expected.numpy(), tolerance="same_framework", what=f"{name} train logits")
    expected_state, actual_state = reference.state_dict(), model.state_dict()
    for key, value in expected_state.items():
        if key.endswith(("running_mean", "running_var")):
            assert_close(actual_state[key].numpy(), value.numpy(), tolerance="same_framework", what=key)


CHECK_SIZE = 33
"""Odd after every stride-2 step as 97 is (33 → 17 → 9 → 5 → 3 → 2, 97 → 49 → 25 → 13 → 7 → 4), so
ceil-mode and floor pooling and padded strided convs differ just as they do there, at a ninth of
97's cost (all three backends ran resnest50d at 97 in 28 s of CPU time, at 33 in 2.5 s)."""


def check_sizes() -> list[object]:
    """Every preset at 97 and 224 in the slow tail; by default the part-covering presets at 33."""
    return [
        *(
            pytest.param(name, CHECK_SIZE, id=f"{name}-{CHECK_SIZE}")
            for name in TIMM_PRESETS
            if name in PART_COVERING_PRESETS
        ),
        *(
            pytest.param(name, size, id=f"{name}-{size}", marks=pytest.mark.slow)
            for name in TIMM_PRESETS
            for size in (97, SIZE)
        ),
    ]


@pytest.mark.parametrize(("name", "size"), check_sizes())
def test_all_backends_agree(name: str, size: int) -> None:
    graph = compile_spec(name, size=size)
    assert_backends_agree(graph)


def test_the_docs_list_every_preset_with_its_parameters_and_macs() -> None:
    page = (Path(__file__).parent.parent / "docs" / "architectures.md").read_text()
    for name in TIMM_PRESETS:
        row = re.search(rf"^\| {name} \|.*\| ([\d,]+) \| ([\d.]+) \|$", page, re.MULTILINE)
        assert row is not None, f"docs/architectures.md lists no row for {name}"
        report = cost(compile_spec(name))
        assert (row[1], row[2]) == (f"{report.parameters:,}", f"{report.macs / 1e9:.3f}"), name


USER_WRITTEN = {
    # Written from docs/language.md with the built-in parts, as a user would: not built-ins.
    "mobilenetv3_small_100": """name: mobilenetv3_small_100
input: {channels: 3, size: 224}
naming: {stages: "blocks.{index}"}
stem: timm_efficientnet
stem_parameters: {width: 16, act: hardswish}
block: timm_inverted_residual
block_parameters: {se_gate: hardsigmoid, act: hardswish}
shortcut: {where_shapes_match: identity, where_shapes_change: none}
stages:
  - depth: 1
    width: 16
    stride: 2
    block: timm_depthwise_separable
    block_parameters: {se_ratio: 0.25, se_gate: hardsigmoid}
  - depth: 2
    width: 24
    stride: 2
    block_parameters: {act: relu}
    per_block_parameters: [{expansion: 4.5}, {expansion: 3.67}]
  - depth: 3
    width: 40
    stride: 2
    block_parameters: {kernel: 5, se_ratio: 0.25}
    per_block_parameters: [{expansion: 4}, {}, {}]
  - {depth: 2, width: 48, block_parameters: {kernel: 5, expansion: 3, se_ratio: 0.25}}
  - {depth: 3, width: 96, stride: 2, block_parameters: {kernel: 5, se_ratio: 0.25}}
  - {depth: 1, width: 576, block: timm_conv_bn_act, block_parameters: {act: hardswish}}
head: timm_mobilenetv3
head_parameters: {width: 1024}
""",
    "mobilenetv2_140": """name: mobilenetv2_140
extends: mobilenetv2_100
stem_parameters: {width: 48}
stages:
  - {depth: 1, width: 24, block: timm_depthwise_separable, block_parameters: {act: relu6}}
  - {depth: 2, width: 32, stride: 2}
  - {depth: 3, width: 48, stride: 2}
  - {depth: 4, width: 88, stride: 2}
  - {depth: 3, width: 136}
  - {depth: 3, width: 224, stride: 2}
  - {depth: 1, width: 448}
head_parameters: {width: 1792}
""",
}


@pytest.mark.parametrize(
    "name", [pytest.param("mobilenetv3_small_100"), pytest.param("mobilenetv2_140", marks=pytest.mark.slow)]
)
def test_other_models_of_a_family_written_from_the_docs_are_timms(name: str, tmp_path: Path) -> None:
    (tmp_path / "net.yaml").write_text(USER_WRITTEN[name])
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False)
    randomise_normalisation(reference, seed=1)
    graph = compile_spec(tmp_path / "net.yaml", size=97)
    model = torch_backend.build_module(graph)
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    assert cost(graph).parameters == sum(parameter.numel() for parameter in reference.parameters())
    inputs = torch.randn(2, 3, 97, 97, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for mode in ("eval", "train"):
            expected, actual = getattr(reference, mode)()(inputs), getattr(model, mode)()(inputs)
            assert_close(actual.numpy(), expected.numpy(), tolerance="same_framework", what=f"{name} {mode} logits")
