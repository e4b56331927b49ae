"""rescompile.regnet writes RegNet specs from the paper's parameters: its stages are timm's for
every RegNet of timm's zoo, the shipped regnetx_016 and regnety_016 are its output, and a RegNet
that is not shipped (RegNetY-3.2GF: four other numbers) is timm's model."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from support import randomise_normalisation
from timm.models.regnet import adjust_widths_groups_comp, generate_regnet, model_cfgs

from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec, cost
from rescompile.regnet import main, regnet_stages
from rescompile.spec import builtin_directory
from rescompile.testing import assert_close

# (name, w0, wa, wm, depth, group width, SE ratio) as timm's model_cfgs state them.
SHIPPED = [
    ("regnetx_016", ["--w0", "80", "--wa", "34.01", "--wm", "2.25", "--depth", "18", "--group-width", "24"]),
    (
        "regnety_016",
        ["--w0", "48", "--wa", "20.71", "--wm", "2.65", "--depth", "27", "--group-width", "24", "--se-ratio", "0.25"],
    ),
]


@pytest.mark.parametrize("name", sorted(model_cfgs))
def test_stages_are_timms_for_every_regnet_in_its_zoo(name: str) -> None:
    cfg = model_cfgs[name]
    widths, stage_count, groups = generate_regnet(cfg.wa, cfg.w0, cfg.wm, cfg.depth, cfg.group_size)
    stage_widths = sorted(set(widths))
    depths = [widths.count(width) for width in stage_widths]
    ratios = [cfg.bottle_ratio] * stage_count
    expected_widths, expected_groups = adjust_widths_groups_comp(stage_widths, ratios, groups, cfg.group_min_ratio)
    stages = regnet_stages(cfg.w0, cfg.wa, cfg.wm, cfg.depth, cfg.group_size, cfg.bottle_ratio, cfg.group_min_ratio)
    assert [(stage.depth, stage.width, stage.group_width) for stage in stages] == list(
        zip(depths, expected_widths, expected_groups, strict=True)
    )


@pytest.mark.parametrize(("name", "arguments"), SHIPPED)
def test_the_shipped_regnets_are_the_generators_output(name: str, arguments: list[str], tmp_path: Path) -> None:
    written = tmp_path / f"{name}.yaml"
    assert main([name, *arguments, "-o", str(written)]) == 0
    assert written.read_text() == (builtin_directory() / f"{name}.yaml").read_text()


def test_regnety_032_written_from_four_other_numbers_is_timms(tmp_path: Path) -> None:
    path = tmp_path / "regnety_032.yaml"
    arguments = ["--w0", "80", "--wa", "42.63", "--wm", "2.66", "--depth", "21", "--group-width", "24"]
    assert main(["regnety_032", *arguments, "--se-ratio", "0.25", "-o", str(path)]) == 0
    torch.manual_seed(0)
    reference = timm.create_model("regnety_032", pretrained=False).eval()
    randomise_normalisation(reference, seed=1)
    graph = compile_spec(path, size=64)
    model = torch_backend.build_module(graph).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert cost(graph).parameters == sum(parameter.numel() for parameter in reference.parameters())
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(model(inputs).numpy(), reference(inputs).numpy(), tolerance="same_framework", what="logits")


def test_impossible_parameters_are_one_line_and_a_non_zero_status(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--w0", "50", "--wa", "20", "--wm", "2.5", "--depth", "10", "--group-width", "8"]
    assert main(["bad", *arguments]) == 1
    assert capsys.readouterr().err == (
        "rescompile.regnet: RegNet needs wa >= 0, w0 > 0 a multiple of 8, wm > 1, depth > 0 and group_width > 0\n"
    )
