"""Transitions that hold their stage's blocks (``blocks: {input, out_channels}``, a stage layout):
examples/csp/cspresnet50.yaml, written with one, is timm's cspresnet50 key for key in timm's order,
with its parameters, MACs and outputs; torch and ONNX agree; misuse is a located error."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from support import randomise_normalisation
from torch.utils.flop_counter import FlopCounterMode

from rescompile.backends import torch_backend
from rescompile.cli import main
from rescompile.compiler import compile_spec, cost
from rescompile.spec.errors import RescompileError
from rescompile.testing import assert_close

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "csp" / "cspresnet50.yaml"
SIZE = 97


def test_cspresnet50_is_timms_keys_parameters_macs_and_outputs() -> None:
    graph = compile_spec(EXAMPLE, size=SIZE)
    model = torch_backend.build_module(graph)
    torch.manual_seed(0)
    reference = timm.create_model("cspresnet50", pretrained=False)
    randomise_normalisation(reference, seed=1)
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    report = cost(graph)
    assert report.parameters == sum(parameter.numel() for parameter in reference.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference.eval()(torch.zeros(1, 3, SIZE, SIZE))
    assert counter.get_total_flops() == 2 * report.macs
    inputs = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    for mode in ("eval", "train"):
        with torch.no_grad():
            expected = getattr(reference, mode)()(inputs)
            actual = getattr(model, mode)()(inputs)
        assert_close(actual.numpy(), expected.numpy(), tolerance="same_framework", what=f"{mode} logits")


def test_torch_and_onnx_agree() -> None:
    assert main(["check", str(EXAMPLE), "--size", "64", "--backends", "torch,onnx"]) == 0


def test_the_blocks_are_inside_the_transition_between_its_halves() -> None:
    graph = compile_spec(EXAMPLE, size=64)
    stage = graph.stages[1]
    before, after = graph.transition_of(stage), graph.transition_after_of(stage)
    assert before is not None and after is not None and stage.held
    assert (before.path, after.path, stage.path) == ("stages.1", "stages.1", "stages.1.blocks")
    assert before.nodes[-1].name == "part" and after.nodes[0].inputs == ("input",)
    assert dict(after.carried) == {"cross": before.nodes[-2].shape}


NETWORK = """\
name: net
input: {{channels: 3, size: 32}}
naming: {{stages: "{stages}", transitions: "stages.{{index}}"}}
stem: cifar
block: basic
shortcut: B
transition: held
stages:
  - {{depth: 1, width: 16}}
head: classifier
head_parameters: {{classes: 10}}
"""
HELD = """\
name: held
blocks: {{input: {input}, out_channels: {channels}}}
nodes:
  conv: {{op: conv, out_channels: width, kernel: 1}}
  cross: {{op: channel_slice, parts: 2, index: 0}}
  part: {{op: channel_slice, parts: 2, index: 1, input: conv}}
  cat: {{op: concat, inputs: [cross, {read}]}}
"""


@pytest.mark.parametrize(
    ("stages", "input", "channels", "read", "message"),
    [
        ("stages.{index}.blocks", "prat", "width // 2", "blocks", r"held.yaml:2:17: blocks.input 'prat' is not a node"),
        (
            "stages.{index}.blocks",
            "part",
            "width // 2",
            "blocks",
            r"held.yaml:2:37: .*declares blocks.out_channels = width // 2 = 8, but the stage's blocks output 16",
        ),
        ("stages.{index}.blocks", "part", "widht", "blocks", r"held.yaml:2:37: 'widht' in blocks.out_channels"),
        ("stages.{index}.blocks", "part", "width // 2", "input", r"held.yaml:7:37: node 'cat' runs after the stage's"),
        ("layer{number}", "part", "width // 2", "blocks", r"net.yaml:3:\d+: .*holds its blocks, at 'stages.0.blocks'"),
    ],
)
def test_misuse_is_a_located_error(
    stages: str, input: str, channels: str, read: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "transitions").mkdir()
    (tmp_path / "transitions" / "held.yaml").write_text(HELD.format(input=input, channels=channels, read=read))
    (tmp_path / "net.yaml").write_text(NETWORK.format(stages=stages))
    with pytest.raises(RescompileError, match=message):
        compile_spec(tmp_path / "net.yaml")
