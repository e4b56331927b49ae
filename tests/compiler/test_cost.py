"""The cost pass reproduces the published numbers exactly (torchvision's model documentation and
He et al. 2016), for every preset that has one."""

import pytest
import timm

from rescompile.compiler import compile_spec, cost
from rescompile.spec import builtin_networks

# (parameters, GMACs rounded to 3 decimals as published); None where only parameters are published.
REFERENCE = {
    "resnet18": (11_689_512, 1.814),
    "resnet34": (21_797_672, 3.664),
    "resnet50": (25_557_032, 4.089),
    "resnet101": (44_549_160, 7.801),
    "resnet152": (60_192_808, 11.514),
    "resnet50_v1": (25_557_032, 3.858),
    "resnet101_v1": (44_549_160, 7.570),
    "resnet152_v1": (60_192_808, 11.282),
    "wide_resnet50_2": (68_883_240, 11.398),
    "resnext50_32x4d": (25_028_904, 4.230),
    "resnetv2_50": (25_549_352, 4.089),  # timm's, measured with forward hooks on timm's model
    "resnet20": (269_722, None),
    "resnet32": (464_154, None),
    "resnet44": (658_586, None),
    "resnet56": (853_018, None),
    "resnet110": (1_727_962, None),
    "resnet1202": (19_421_274, None),
    # torchvision's documentation: 5,288,548 parameters, 0.39 GFLOPS (its MACs; 0.386 by torch's counter).
    "tv_efficientnet_b0": (5_288_548, 0.386),
    # torchvision's documentation: 3,504,872 and 5,483,032 parameters, 0.301 and 0.217 GFLOPS (its MACs).
    "tv_mobilenet_v2": (3_504_872, 0.301),
    "tv_mobilenet_v3_large": (5_483_032, 0.217),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_preset_matches_published_parameters_and_macs(name: str) -> None:
    parameters, gmacs = REFERENCE[name]
    report = cost(compile_spec(name))
    assert report.parameters == parameters
    if gmacs is not None:
        assert round(report.macs / 1e9, 3) == gmacs


def test_plain_networks_have_the_parameters_of_their_residual_twins_without_projections() -> None:
    # Option A adds no parameters, so plain20…56 equal resnet20…56 exactly (the paper's fair comparison).
    for depth in (20, 32, 44, 56):
        assert cost(compile_spec(f"plain{depth}")).parameters == REFERENCE[f"resnet{depth}"][0]
    # plain18 lacks resnet18's three projection shortcuts (1×1 conv + BN each).
    projections = sum(cin * cout + 2 * cout for cin, cout in [(64, 128), (128, 256), (256, 512)])
    assert cost(compile_spec("plain18")).parameters == REFERENCE["resnet18"][0] - projections


def test_every_builtin_has_a_reference_or_is_plain_or_is_a_timm_model() -> None:
    """Published numbers above; timm's presets are checked against the installed timm itself
    (tests/test_timm_presets.py, which checks that it covers every timm name among the built-ins)."""
    # preact_*: checked against a transcription of the authors' code (tests/test_preact_cifar.py).
    unreferenced = {name for name in builtin_networks() if not name.startswith(("plain", "preact_"))} - set(REFERENCE)
    assert unreferenced <= set(timm.list_models())


def test_stage_totals_add_up_to_the_network_total() -> None:
    report = cost(compile_spec("resnet50"))
    stages = report.group_by("stage")
    assert [stage.name for stage in stages] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert sum(stage.parameters for stage in stages) == report.parameters
    assert sum(stage.macs for stage in stages) == report.macs
    assert [stage.output_shape for stage in stages][1:5] == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    blocks = report.group_by("block")
    assert len(blocks) == 1 + 16 + 1


def test_hand_computed_costs_of_the_resnet18_stem() -> None:
    report = cost(compile_spec("resnet18"))
    conv1 = next(node for node in report.nodes if node.name == "conv1")
    # 64 filters of 3×7×7 over a 112×112 output map.
    assert conv1.parameters == 64 * 3 * 7 * 7
    assert conv1.macs == 64 * 3 * 7 * 7 * 112 * 112
    assert conv1.activations == 64 * 112 * 112
    bn1 = next(node for node in report.nodes if node.name == "bn1")
    assert (bn1.parameters, bn1.macs) == (128, 0)
