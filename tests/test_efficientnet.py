"""rescompile.efficientnet writes EfficientNet specs from timm's block strings and multipliers: the
shipped efficientnet_b0 and efficientnetv2_rw_s are its output, models that are not shipped
(EfficientNet-B3: width × 1.2, depth × 1.4; efficientnetv2_rw_t, whose first stage is ConvBnAct) are
timm's, and a block string it cannot write is one line and a non-zero status."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from support import assert_backends_agree, assert_is_reference

from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec
from rescompile.efficientnet import main
from rescompile.spec import builtin_directory
from rescompile.testing import assert_close

SHIPPED = [
    ("efficientnet_b0", ["--arch", "efficientnet"]),
    ("efficientnetv2_rw_s", ["--arch", "efficientnetv2_rw_s"]),
    ("tv_efficientnet_b0", ["--arch", "efficientnet", "--keys", "torchvision"]),
]
NOT_SHIPPED = [
    ("efficientnet_b3", ["--arch", "efficientnet", "--channel-multiplier", "1.2", "--depth-multiplier", "1.4"]),
    ("efficientnetv2_rw_t", ["--arch", "efficientnetv2_s", "--channel-multiplier", "0.8", "--depth-multiplier", "0.9"]),
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
        ("ir_r2_k3_s2_e6_c24_nre", "option 'nre' is not supported (r, k, s, e, c, se, and skip for cn)"),
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


@pytest.mark.slow
def test_tv_efficientnet_b0_agrees_in_every_backend_at_97() -> None:
    """`rescompile check` at an odd size (its strided convs pad 97 -> 49 -> 25 -> 13 -> 7 -> 4); by
    default tests/test_check.py checks it at 32."""
    assert_backends_agree(compile_spec("tv_efficientnet_b0", size=97))
