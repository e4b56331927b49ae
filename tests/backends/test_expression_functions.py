"""Float parameters, expression functions and ``block_index`` in generated source: block classes
compute their layers' sizes from the same expressions the compiler evaluated (ECA's kernel rule
with ``log2``, SE's width with ``make_divisible``, a width that varies with the block's index),
so the torch and flax modules load the compiler's weights strictly and agree with ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest

from rescompile.backends import flax_backend, torch_backend
from rescompile.cli import main
from rescompile.compiler import compile_spec
from rescompile.compiler.ir import Conv, Graph
from rescompile.compiler.weights import random_weights, weight_shapes

# Not a real variant: a block whose sizes exercise every function, a float and the block's index.
BLOCK = """\
name: sized
parameters: {se_ratio: 0.25, gamma: 2, beta: 1}
derived:
  t: int(abs(log2(width) + beta) / gamma)
  eca_kernel: max(t if t % 2 else t + 1, 3)
  squeezed: make_divisible(width * se_ratio, 8, round_limit=0.0)
  inner: width + 8 * (block_index % 2) + round(block_count / 4)
out_channels: width
nodes:
  conv1: {op: conv, out_channels: inner, kernel: 3, stride: stride, padding: 1}
  bn1: {op: batch_norm}
  relu1: {op: relu}
  conv2: {op: conv, out_channels: width, kernel: eca_kernel, padding: eca_kernel // 2}
  bn2: {op: batch_norm}
  reduce: {op: conv, out_channels: squeezed, kernel: 1}
  expand: {op: conv, out_channels: width, kernel: 1}
  add: {op: add, inputs: [expand, shortcut]}
  relu2: {op: relu}
"""

NETWORK = """\
name: sized_net
input: {channels: 3, size: 8}
stem: cifar
block: sized
block_parameters: {se_ratio: 0.3}
shortcut: B
stages:
  - {depth: 3, width: 16}
  - {depth: 2, width: 256, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""


@pytest.fixture
def network(tmp_path: Path) -> Path:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "sized.yaml").write_text(BLOCK)
    (tmp_path / "net.yaml").write_text(NETWORK)
    return tmp_path / "net.yaml"


def _conv(graph: Graph, path: str, name: str) -> Conv:
    op = next(node.op for module, node in graph.nodes() if module.path == path and node.name == name)
    assert isinstance(op, Conv)
    return op


def test_the_compiler_evaluates_the_functions(network: Path) -> None:
    graph = compile_spec(network)
    # timm's EcaModule(channels, gamma=2, beta=1): 16 channels -> t = 2 -> 3; 256 -> t = 4 -> 5.
    assert _conv(graph, "layer1.0", "conv2").kernel == (3, 3)
    assert _conv(graph, "layer2.0", "conv2").kernel == (5, 5)
    # make_divisible(16 * 0.3, 8, round_limit=0.0) = 8; make_divisible(256 * 0.3, 8, round_limit=0.0) = 80.
    assert _conv(graph, "layer1.0", "reduce").out_channels == 8
    assert _conv(graph, "layer2.0", "reduce").out_channels == 80
    # inner = width + 8 * (block_index % 2) + round(5 / 4): the blocks' own indices, 0 to 4.
    inner = [_conv(graph, block.path, "conv1").out_channels for block in graph.blocks]
    assert inner == [16 + 1, 16 + 8 + 1, 16 + 1, 256 + 8 + 1, 256 + 1]


def test_generated_torch_and_flax_compute_what_the_compiler_did(network: Path) -> None:
    """Loading is strict about every shape: each block built from generated source with its own
    block_index has the compiler's layer sizes."""
    graph = compile_spec(network)
    weights = random_weights(graph, seed=0)
    for source in (torch_backend.emit_source(graph), flax_backend.emit_source(graph)):
        assert "import math\n" in source and "math.log2(width)" in source
        assert source.count("def make_divisible(") == 1
        assert "block_index=first_block_index + index" in source and "block_count=5" in source
    torch_model = torch_backend.build_module(graph)
    torch_backend.load_weights(torch_model, graph, weights)
    assert {name: tuple(value.shape) for name, value in torch_model.state_dict().items() if name in weights} == (
        weight_shapes(graph)
    )
    flax_backend.load_weights(flax_backend.build_module(graph), graph, weights)


def test_all_backends_agree(network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(network), "--backends", "torch,flax,onnx"]) == 0
    assert "all backends agree" in capsys.readouterr().out


def test_a_network_without_functions_imports_nothing_more() -> None:
    for source in (
        torch_backend.emit_source(compile_spec("resnet18")),
        flax_backend.emit_source(compile_spec("resnet18")),
    ):
        assert "import math" not in source and "make_divisible" not in source
