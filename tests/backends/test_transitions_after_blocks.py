"""Stage transitions that run after a stage's blocks (``transition_after``): they follow the blocks in
the IR, in generated code and in every backend (which agree), bind the stage's output channels, its
width and stride 1, give the stage its output (feature maps), and a stage may opt out; misuse is a
located error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support import assert_backends_agree

from rescompile import create_model
from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import random_weights
from rescompile.spec.errors import RescompileError

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "fused_stages.yaml"


def test_a_transition_after_runs_after_its_stages_blocks_and_not_where_a_stage_says_none() -> None:
    graph = compile_spec(EXAMPLE)
    order = [(module.path, module.role) for module in graph.modules[1:-1]]
    assert order == [
        ("stages.0.blocks.0", "block"),
        ("stages.0.blocks.1", "block"),
        ("stages.0.fuse", "transition"),
        ("stages.1.blocks.0", "block"),
        ("stages.1.blocks.1", "block"),
        ("stages.2.blocks.0", "block"),
        ("stages.2.blocks.1", "block"),
        ("stages.2.fuse", "transition"),
    ]
    fuse = graph.modules[3]
    assert fuse.after_blocks and fuse.stage == "stages.0.blocks"
    assert dict(fuse.parameters) == {"in_channels": 16, "width": 16, "stride": 1}


def test_the_torch_model_runs_the_blocks_then_the_transition(tmp_path: Path) -> None:
    graph = compile_spec(EXAMPLE)
    model: Any = torch_backend.build_module(graph).eval()  # a generated class: its layers are made at run time
    torch_backend.load_weights(model, graph, random_weights(graph, seed=1))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.relu(model.bn1(model.conv1(x)))  # the cifar stem
        for index in range(3):
            for block in model.stages[str(index)].blocks:
                expected = block(expected)
            if index != 1:
                expected = model.stages[str(index)].fuse(expected)
        expected = model.fc(torch.flatten(model.avgpool(expected), 1))
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_all_backends_agree_module_by_module() -> None:
    assert_backends_agree(compile_spec(EXAMPLE))


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_the_stages_feature_map_is_the_transitions_output(backend: str) -> None:
    """timm's features_only model gives, for a stage with a transition after its blocks, that
    transition's output: the torch one is compared with the full model's own modules."""
    torch.manual_seed(0)
    model = create_model(EXAMPLE).eval()
    features = create_model(EXAMPLE, backend, features_only=True)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        stem = model.relu(model.bn1(model.conv1(x)))
        blocks = model.stages["0"].blocks(stem)
        fused = model.stages["0"].fuse(blocks)
    if backend == "torch":
        features.load_state_dict(model.state_dict(), strict=False)  # no head: fc.* are left over
        with torch.no_grad():
            maps = features.eval()(x)
        torch.testing.assert_close(maps[1], fused, rtol=0, atol=0)
    else:
        maps = features(np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1)))
        assert [tuple(feature.shape) for feature in maps] == [
            (1, 32, 32, 16),
            (1, 32, 32, 16),
            (1, 16, 16, 32),
            (1, 8, 8, 64),
        ]
    assert [entry["module"] for entry in features.feature_info.info] == ["relu", "stages.0", "stages.1", "stages.2"]


CSP_EXIT = """\
name: csp_exit
description: CSPNet's exit, a half of the channels through a 1×1 conv beside the other half, then a fusion conv.
nodes:
  part_a: {op: channel_slice, parts: 2, index: 0}
  part_b: {op: channel_slice, input: input, parts: 2, index: 1}
  conv_transition_b.conv: {op: conv, out_channels: in_channels // 2, kernel: 1}
  conv_transition_b.bn: {op: batch_norm}
  conv_transition_b.act: {op: leaky_relu}
  cat: {op: concat, inputs: [part_a, conv_transition_b.act]}
  conv_transition.conv: {op: conv, out_channels: width, kernel: 1}
  conv_transition.bn: {op: batch_norm}
  conv_transition.act: {op: leaky_relu}
"""


def test_a_transition_that_slices_and_concatenates_agrees_in_every_backend(tmp_path: Path) -> None:
    """Not only a chain: CSPNet's exit, a class whose forward reads two values, with timm's keys."""
    (tmp_path / "transitions").mkdir()
    (tmp_path / "transitions" / "csp_exit.yaml").write_text(CSP_EXIT)
    network = EXAMPLE.read_text().replace("transition_after: fuse", "transition_after: csp_exit")
    (tmp_path / "net.yaml").write_text(network.replace("stages.{index}.fuse", "stages.{index}.exit"))
    graph = compile_spec(tmp_path / "net.yaml")
    keys = list(torch_backend.build_module(graph).state_dict())
    assert "stages.2.exit.conv_transition_b.conv.weight" in keys
    assert "stages.2.exit.conv_transition.bn.running_var" in keys
    assert_backends_agree(graph)


NETWORK = """\
name: net
input: {{channels: 3, size: 16}}
naming: {{stages: "stages.{{index}}.blocks", transitions_after: "{after}"}}
stem: cifar
block: basic
shortcut: B
transition_after: {transition}
stages:
  - {{depth: 1, width: 16}}
head: classifier
head_parameters: {{classes: 10}}
"""


@pytest.mark.parametrize(
    ("after", "transition", "message"),
    [
        ("stages.{index}.fuse", "fuze", r"net.yaml:7:19: unknown transition 'fuze' \(did you mean 'fuse'\?\)"),
        (
            "stages.{index}.blocks.fuse",
            "fuse",
            r"net.yaml:3:9: stage 0's transition 'stages.0.blocks.fuse' and its blocks 'stages.0.blocks' would hold "
            r"one another; give naming.transitions_after and naming.stages distinct paths",
        ),
        ("stages.fuse", "fuse", r"net.yaml:3:\d+: .*stage path holds exactly one of \{index\}"),
    ],
)
def test_misuse_is_a_located_error(after: str, transition: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "transitions").mkdir()
    (tmp_path / "transitions" / "fuse.yaml").write_text((EXAMPLE.parent / "transitions" / "fuse.yaml").read_text())
    (tmp_path / "net.yaml").write_text(NETWORK.format(after=after, transition=transition))
    with pytest.raises(RescompileError, match=message):
        compile_spec(tmp_path / "net.yaml")
