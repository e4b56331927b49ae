"""Transitions that hold their stage's blocks (``blocks: {input, out_channels}``, a stage layout):
the blocks run inside the transition, between its two halves in the IR; another layout than
cspresnet50's (tests/test_timm_presets.py) agrees in every backend; misuse is a located error."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import assert_backends_agree

from rescompile.compiler import compile_spec
from rescompile.spec.errors import RescompileError

HALF_FIRST = """\
name: half_first
parameters: {expand_ratio: 1.0}
derived: {expanded: round(width * expand_ratio)}
blocks: {input: part, out_channels: width}
nodes:
  conv_exp: {op: conv, out_channels: expanded, kernel: 1}
  bn_exp: {op: batch_norm}
  act_exp: {op: leaky_relu, negative_slope: 0.1}
  part: {op: channel_slice, parts: 2, index: 0}
  conv_b: {op: conv, out_channels: expanded // 2, kernel: 1}
  rest: {op: channel_slice, parts: 2, index: 1, input: act_exp}
  cat: {op: concat, inputs: [conv_b, rest]}
  fuse: {op: conv, out_channels: width, kernel: 1}
"""
"""A layout other than CSPNet's: the blocks on the first half, no downsampling conv, expand ratio 1."""


def test_a_held_layout_agrees_in_every_backend(tmp_path: Path) -> None:
    (tmp_path / "transitions").mkdir()
    (tmp_path / "transitions" / "half_first.yaml").write_text(HALF_FIRST)
    network = NETWORK.format(stages="stages.{index}.blocks").replace("transition: held", "transition: half_first")
    network = network.replace(
        "  - {depth: 1, width: 16}\n", "  - {depth: 1, width: 16}\n  - {depth: 2, width: 32, stride: 2}\n"
    )
    (tmp_path / "net.yaml").write_text(network)
    graph = compile_spec(tmp_path / "net.yaml")
    assert [stage.path for stage in graph.stages] == ["stages.0.blocks", "stages.1.blocks"]
    assert graph.blocks[0].in_shape[0] == 8  # the first half of conv_exp's 16 channels
    assert_backends_agree(graph)


def test_the_blocks_are_inside_the_transition_between_its_halves() -> None:
    graph = compile_spec("cspresnet50", size=64)
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
