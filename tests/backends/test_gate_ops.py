"""``sigmoid`` and the broadcasting ``mul`` (C×H×W · C×1×1) in every backend: a squeeze-and-excitation
block (Hu et al. 2018) written in YAML alone computes the hand-written formula in torch, and all three
backends agree on it block by block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import layer

from rescompile.backends import torch_backend
from rescompile.cli import main
from rescompile.compiler import compile_spec, cost
from rescompile.compiler.weights import random_weights
from rescompile.spec.errors import RescompileError

SE_BLOCK = """\
name: se_basic
description: A basic block whose branch is scaled per channel by a squeeze-and-excitation gate.
parameters: {reduction: 4}
derived: {squeezed: width // reduction}
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  bn1: {op: batch_norm}
  relu1: {op: relu}
  conv2: {op: conv, out_channels: width, kernel: 3, padding: 1}
  bn2: {op: batch_norm, zero_init: true}
  pool: {op: global_average_pool}
  fc1: {op: conv, out_channels: squeezed, kernel: 1, bias: true}
  relu2: {op: relu}
  fc2: {op: conv, out_channels: width, kernel: 1, bias: true}
  gate: {op: sigmoid}
  scale: {op: mul, inputs: [bn2, gate]}
  add: {op: add, inputs: [scale, shortcut]}
  relu3: {op: relu}
"""

NETWORK = """\
name: se_net
input: {channels: 3, size: 16}
stem: cifar
block: se_basic
shortcut: B
stages:
  - {depth: 2, width: 16}
  - {depth: 1, width: 32, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""


@pytest.fixture
def network(tmp_path: Path) -> Path:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "se_basic.yaml").write_text(SE_BLOCK)
    (tmp_path / "net.yaml").write_text(NETWORK)
    return tmp_path / "net.yaml"


def test_the_gate_parameters_are_counted(network: Path) -> None:
    report = cost(compile_spec(network))
    by_name = {node.name: node.parameters for node in report.nodes}
    # fc1: 16 -> 4 with bias; fc2: 4 -> 16 with bias; sigmoid and mul have none.
    assert by_name["layer1.0.fc1"] == 16 * 4 + 4
    assert by_name["layer1.0.fc2"] == 4 * 16 + 16
    assert by_name["layer1.0.gate"] == by_name["layer1.0.scale"] == 0


def test_torch_block_computes_the_squeeze_and_excitation_formula(network: Path) -> None:
    graph = compile_spec(network)
    model = torch_backend.build_module(graph).eval()
    torch_backend.load_weights(model, graph, random_weights(graph, seed=2))
    block = layer(model, "layer1.0")
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        squeezed = branch.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(block.fc2(torch.relu(block.fc1(squeezed))))
        assert gate.shape == (2, 16, 1, 1)
        expected = torch.relu(branch * gate + x)
        torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


def test_all_backends_agree_on_a_gated_network(network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(network), "--backends", "torch,flax,onnx"]) == 0
    assert "all backends agree" in capsys.readouterr().out


def test_only_add_may_read_the_shortcut(tmp_path: Path) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "se_basic.yaml").write_text(
        SE_BLOCK.replace("inputs: [bn2, gate]", "inputs: [gate, shortcut]")
    )
    (tmp_path / "net.yaml").write_text(NETWORK)
    with pytest.raises(RescompileError, match="only an add node may read 'shortcut'"):
        compile_spec(tmp_path / "net.yaml")
