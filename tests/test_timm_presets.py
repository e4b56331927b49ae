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
    "efficientnet_b0",
    "efficientnetv2_rw_s",
    "regnetz_b16",
]
OTHER_ORDER = {"resnetv2_50", "resnetv2_50x1_bit"}
"""timm's PreActBottleneck registers ``downsample`` before ``norm1``; a generated block registers the
shortcut module last. The keys are the same (strict loading needs no order); so is every other key's order."""
SIZE = 224
SMALL_SIZE = 96
"""The presets outside PART_COVERING_PRESETS (their parts, and so their code, are those of presets
compared at 224) are compared at 96×96 by default and at 224 in the slow tail."""
ODD_SIZE = dict.fromkeys(
    ("convnext_tiny", "regnetx_016", "regnety_016", "efficientnet_b0", "efficientnetv2_rw_s", "regnetz_b16"), 97
)
"""Also compared with timm at an odd size by default: ConvNeXt's 4×4 stride-4 stem floors it (97 -> 24), RegNet's
strided 3×3s pad it (97 -> 49 -> 25 -> 13 -> 7 -> 4), as EfficientNet's and RegNetZ's strided 3×3 and 5×5 depthwise
convs do."""


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


def sizes() -> list[object]:
    params: list[object] = []
    for name in TIMM_PRESETS:
        if name not in PART_COVERING_PRESETS:
            params.append(pytest.param(name, SMALL_SIZE, id=f"{name}-{SMALL_SIZE}"))
            params.append(pytest.param(name, SIZE, id=f"{name}-{SIZE}", marks=pytest.mark.slow))
        else:
            params.append(pytest.param(name, SIZE, id=f"{name}-{SIZE}"))
        if name in ODD_SIZE:
            params.append(pytest.param(name, ODD_SIZE[name], id=f"{name}-{ODD_SIZE[name]}"))
    return params


TIMM_NOT_TORCHVISION = {"convnext_tiny", "efficientnet_b0"}
"""Built-ins named like a torchvision model too that are timm's (their keys are timm's, stages.0...)."""


def test_every_builtin_timm_model_outside_torchvision_is_checked_here() -> None:
    timm_names = set(builtin_networks()) & set(timm.list_models())
    torchvision_names = set(torchvision.models.list_models()) - TIMM_NOT_TORCHVISION
    assert timm_names - torchvision_names == set(TIMM_PRESETS)


@pytest.mark.parametrize("name", TIMM_PRESETS)
def test_state_dict_keys_are_timms_in_timms_order(name: str) -> None:
    graph = compile_spec(name, size=64)
    keys = list(torch_backend.build_module(graph).state_dict())
    reference = list(timm.create_model(name, pretrained=False).state_dict())
    assert set(keys) == set(reference)
    if name in OTHER_ORDER:
        keys, reference = (
            [key for key in keys if ".downsample." not in key],
            [k for k in reference if ".downsample." not in k],
        )
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


def check_sizes() -> list[object]:
    """Every preset at 224 and 97 in the slow tail; by default the part-covering presets at 97, an odd
    size where ceil-mode and floor pooling differ (97 → 49 → 25 → 13 → 7 → 4)."""
    return [
        *(
            pytest.param(name, 97, id=f"{name}-97", marks=[] if name in PART_COVERING_PRESETS else [pytest.mark.slow])
            for name in TIMM_PRESETS
        ),
        *(pytest.param(name, SIZE, id=f"{name}-{SIZE}", marks=pytest.mark.slow) for name in TIMM_PRESETS),
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
