"""rescompile.efficientnet writes EfficientNet specs from timm's block strings and multipliers: the
shipped efficientnet_b0 and efficientnetv2_rw_s are its output, models that are not shipped
(EfficientNet-B3: width × 1.2, depth × 1.4; efficientnetv2_rw_t, whose first stage is ConvBnAct;
MobileNetV3s, large and small, of other widths) are timm's, and a block string it cannot write is
one line and a non-zero status."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from support import assert_backends_agree, assert_is_reference
from timm.models._efficientnet_builder import decode_arch_def

from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec
from rescompile.efficientnet import main, parse_stage
from rescompile.spec import builtin_directory
from rescompile.testing import assert_close

SHIPPED = [
    ("efficientnet_b0", ["--arch", "efficientnet"]),
    ("efficientnetv2_rw_s", ["--arch", "efficientnetv2_rw_s"]),
    ("tv_efficientnet_b0", ["--arch", "efficientnet", "--keys", "torchvision"]),
    # timm's by tests/test_timm_presets.py
    ("mobilenetv3_large_100", ["--arch", "mobilenetv3_large"]),
]
NOT_SHIPPED = [
    ("efficientnet_b3", ["--arch", "efficientnet", "--channel-multiplier", "1.2", "--depth-multiplier", "1.4"]),
    ("efficientnetv2_rw_t", ["--arch", "efficientnetv2_s", "--channel-multiplier", "0.8", "--depth-multiplier", "0.9"]),
    # Every width scaled (the stem too, at 0.75 exactly), the head's 1280 features not.
    ("mobilenetv3_large_075", ["--arch", "mobilenetv3_large", "--channel-multiplier", "0.75"]),
    # An SE gate in the first (depthwise separable) block, three strings in a stage, a 1024-wide head.
    ("mobilenetv3_small_100", ["--arch", "mobilenetv3_small"]),
    # The stem stays 16 wide below a multiplier of 0.75.
    ("mobilenetv3_small_050", ["--arch", "mobilenetv3_small", "--channel-multiplier", "0.5"]),
]


@pytest.mark.parametrize(("name", "arguments"), SHIPPED)
def test_the_shipped_efficientnets_are_the_generators_output(name: str, arguments: list[str], tmp_path: Path) -> None:
    written = tmp_path / f"{name}.yaml"
    assert main([name, *arguments, "-o", str(written)]) == 0
    assert written.read_text() == (builtin_directory() / f"{name}.yaml").read_text()


@pytest.mark.parametrize(("name", "arguments"), NOT_SHIPPED)
def test_an_efficientnet_of_other_multipliers_is_timms(name: str, arguments: list[str], tmp_path: Path) -> None:
    path = tmp_path / f"{name}.yaml"
    assert main([name, *arguments, "-o", str(path)]) == 0
    torch.manual_seed(0)
    assert_is_reference(path, timm.create_model(name, pretrained=False), size=65)


def test_a_torchvision_efficientnet_of_other_multipliers_is_torchvisions(tmp_path: Path) -> None:
    """torchvision's EfficientNet-B2 (width × 1.1, depth × 1.2; its head conv 4 × 352 = 1408 wide)."""
    path = tmp_path / "tv_efficientnet_b2.yaml"
    arguments = ["--arch", "efficientnet", "--channel-multiplier", "1.1", "--depth-multiplier", "1.2"]
    assert main(["tv_efficientnet_b2", *arguments, "--keys", "torchvision", "-o", str(path)]) == 0
    torch.manual_seed(0)
    reference = torchvision.models.efficientnet_b2(weights=None, dropout=0.0, stochastic_depth_prob=0.0)
    assert_is_reference(path, reference, size=65)


def timm_b0_with_drop_path(path: Path) -> torch.nn.Module:
    """timm's efficientnet_b0 at drop_path_rate 0.5, and the built-in with that rate in every stage."""
    text = (builtin_directory() / "efficientnet_b0.yaml").read_text()
    path.write_text(text.replace("se_ratio: 0.25}", "se_ratio: 0.25, drop_path_rate: 0.5}"))
    return timm.create_model("efficientnet_b0", pretrained=False, drop_path_rate=0.5)


def torchvision_b0_with_stochastic_depth(path: Path) -> torch.nn.Module:
    """torchvision's efficientnet_b0 at its default stochastic depth, 0.2 (no dropout: no op writes
    it), and tv_efficientnet_b0 extended with that rate."""
    path.write_text("extends: tv_efficientnet_b0\nname: net\nblock_parameters: {drop_path_rate: 0.2}\n")
    model: torch.nn.Module = torchvision.models.efficientnet_b0(weights=None, dropout=0.0)
    return model


@pytest.mark.parametrize("pair", [timm_b0_with_drop_path, torchvision_b0_with_stochastic_depth])
def test_drop_path_is_the_references_where_it_adds_the_input(
    pair: Callable[[Path], torch.nn.Module], tmp_path: Path
) -> None:
    """timm and torchvision drop the path only in blocks that add their input, at rate × index /
    count: with the same seed, train-mode outputs are the same, random masks included."""
    path = tmp_path / "net.yaml"
    reference = pair(path).train()
    model = torch_backend.build_module(compile_spec(path, size=64)).train()
    model.load_state_dict(reference.state_dict(), strict=True)
    inputs = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.manual_seed(3)
        expected = reference(inputs)
        torch.manual_seed(3)
        actual = model(inputs)
        torch.manual_seed(4)
        other = model(inputs)
    assert_close(actual.numpy(), expected.numpy(), tolerance="same_framework", what="drop path")
    assert not torch.allclose(actual, other), "the masks are random: another seed drops other samples"


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ("ir_r2_k3_s2_e6_c24_noskip", "option 'noskip' is not supported (r, k, s, e, c, se, nre, and skip for cn)"),
        (
            "ir_r1_k3_s2_e4_c24,ir_r1_k3_s1_e3_c32",
            "a stage's strings share a block type and width, the first its stride",
        ),
        ("er_r4_k3_s2_e4_c48_nre", "'nre' is not supported by er blocks (fused_mbconv is SiLU only)"),
        ("uir_r2_k3_s2_e6_c24", "block type 'uir' is not one of ds, ir, er, cn"),
        ("cn_r2_k3_s1_e1_c24", "cn blocks need '_skip' and the others add their input where shapes match"),
        ("ir_k3_s2_e6_c24", "needs r (repeats), k (kernel), s (stride) and c (channels)"),
        ("er_r4_k3_s2_e4_c48", "torchvision's EfficientNet has ds and ir stages with se0.25 only"),
    ],
)
def test_a_block_string_it_cannot_write_is_one_line(
    stage: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = ["--keys", "torchvision"] if stage.startswith("er") else []
    assert main(["bad", "--stage", stage, "--stem-width", "32", "--features", "1280", *keys]) == 1
    assert capsys.readouterr().err == f"rescompile.efficientnet: {stage!r}: {message}\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        # timm's mobilenetv3_large_150d: depth × 1.2 makes its ConvBnAct stage two blocks, whose second
        # timm does not add its input to; the spec's shortcut policy would.
        (
            ["--channel-multiplier", "1.5", "--depth-multiplier", "1.2"],
            "'cn_r1_k1_s1_c960': MobileNetV3's cn adds no input: its blocks must change the shape",
        ),
        (
            ["--stage", "cn_r2_k3_s1_c24_skip", "--stage", "cn_r1_k1_s1_c960"],
            "'cn_r2_k3_s1_c24_skip': MobileNetV3's blocks add their input where shapes match, its cn never",
        ),
        (["--stage", "er_r4_k3_s2_e4_c48"], "'er_r4_k3_s2_e4_c48': block type 'er' is not one of ds, ir, cn"),
        (["--keys", "torchvision"], "MobileNetV3 is written with timm's keys only"),
    ],
)
def test_a_mobilenetv3_it_cannot_write_is_one_line(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bad", "--arch", "mobilenetv3_large", *arguments]) == 1
    assert capsys.readouterr().err == f"rescompile.efficientnet: {message}\n"


@pytest.mark.slow
def test_tv_efficientnet_b0_agrees_in_every_backend_at_97() -> None:
    """`rescompile check` at an odd size (its strided convs pad 97 -> 49 -> 25 -> 13 -> 7 -> 4); by
    default tests/test_check.py checks it at 32."""
    assert_backends_agree(compile_spec("tv_efficientnet_b0", size=97))


@pytest.mark.parametrize("depth_multiplier", [0.5, 1.2, 1.5, 2.0])
def test_a_stage_of_several_strings_is_deepened_as_timms(depth_multiplier: float) -> None:
    """timm shares a stage's ``ceil(sum × multiplier)`` blocks among its strings from the last: the
    expansions of the blocks, in order, are those of timm's ``decode_arch_def``."""
    strings = ["ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"]
    (timms,) = decode_arch_def([strings], depth_multiplier=depth_multiplier)
    stage = parse_stage(",".join(strings), 1.0, depth_multiplier, "mobilenetv3")
    assert [block.expansion for block in stage.blocks] == [arguments["exp_ratio"] for arguments in timms]
