"""Scalar constants (``add`` and ``mul`` with a ``constant``, ``clamp``), the broadcasting ``add``,
and GCNet's attention pooling (``spatial_softmax`` over the H·W positions of each channel, then
``weighted_spatial_sum``): the torch backend computes what torch computes for the same expression,
bit for bit, and the three backends agree within 1e-5."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import elementwise_network
from support import assert_block_is_input_plus, layer
from torch.utils.flop_counter import FlopCounterMode

from rescompile.backends import torch_backend
from rescompile.backends.registry import BACKENDS
from rescompile.check import check, format_result
from rescompile.cli import main
from rescompile.compiler import compile_spec, cost
from rescompile.compiler.ir import Graph
from rescompile.compiler.ops import Add, ShapeError
from rescompile.compiler.weights import random_weights
from rescompile.spec.errors import RescompileError
from rescompile.testing import Tolerance

BLOCKS = Tolerance(atol=1e-5, rtol=1e-5)
"""Per block: a block of values in the tens (a constant of -2.5 scales them) is compared relatively too."""

CONSTANT_CASES: list[tuple[str, dict[str, object], Callable[[torch.Tensor], torch.Tensor]]] = [
    ("add", {"inputs": "[conv]", "constant": 3}, lambda v: v + 3),
    ("add", {"inputs": "[conv]", "constant": -0.1}, lambda v: v + -0.1),  # 0.1 is not a float32
    ("mul", {"inputs": "[conv]", "constant": 0.1}, lambda v: v * 0.1),
    ("mul", {"inputs": "[conv]", "constant": -2.5}, lambda v: v * -2.5),
    ("clamp", {"minimum": 0, "maximum": 6}, lambda v: torch.clamp(v, 0, 6)),
    ("clamp", {"minimum": -0.1}, lambda v: torch.clamp(v, min=-0.1)),
    ("clamp", {"maximum": 1.5}, lambda v: torch.clamp(v, max=1.5)),
]
CONSTANT_IDS = [f"{kind}-{'-'.join(str(v) for k, v in a.items() if k != 'inputs')}" for kind, a, _ in CONSTANT_CASES]


def agree_within_1e_5(graph: Graph) -> float:
    """The largest output difference of any pair of backends, asserting each pair's outputs agree within 1e-5."""
    weights = random_weights(graph, seed=3)
    inputs = (3 * np.random.default_rng(4).standard_normal((2, *graph.input_shape))).astype(np.float32)
    result = check(graph, tuple(BACKENDS), dict.fromkeys(BACKENDS, weights), inputs, BLOCKS)
    assert all(pair.first_mismatch is None for pair in result.pairs), format_result(result)
    largest = max(pair.output_max_abs for pair in result.pairs)
    assert largest <= 1e-5, format_result(result)
    return largest


@pytest.mark.parametrize(("kind", "attributes", "reference"), CONSTANT_CASES, ids=CONSTANT_IDS)
def test_a_constant_op_computes_torchs_expression_exactly(
    kind: str, attributes: dict[str, object], reference: Callable[[torch.Tensor], torch.Tensor], tmp_path: Path
) -> None:
    assert_block_is_input_plus(elementwise_network(tmp_path, kind, attributes), reference)


@pytest.mark.parametrize(("kind", "attributes"), [(k, a) for k, a, _ in CONSTANT_CASES], ids=CONSTANT_IDS)
def test_all_backends_agree_on_a_constant_op(kind: str, attributes: dict[str, object], tmp_path: Path) -> None:
    agree_within_1e_5(compile_spec(elementwise_network(tmp_path, kind, attributes)))


GLOBAL_CONTEXT_BLOCK = """\
name: context_block
description: A basic block with GCNet's global context (Cao et al. 2019) added to its branch.
out_channels: width
nodes:
  conv: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1, bias: true}
  conv_attn: {op: conv, out_channels: 1, kernel: 1, bias: true}
  attn: {op: spatial_softmax}
  context: {op: weighted_spatial_sum, inputs: [conv, attn]}
  transform: {op: conv, out_channels: width, kernel: 1, bias: true}
  fused: {op: add, inputs: [conv, transform]}
  add: {op: add, inputs: [fused, shortcut]}
"""

NETWORK = """\
name: context_net
input: {{channels: 3, size: {size}}}
stem: cifar
block: context_block
shortcut: B
stages:
  - {{depth: 1, width: 16}}
  - {{depth: 1, width: 32, stride: 2}}
head: classifier
head_parameters: {{classes: 10}}
"""


def context_network(folder: Path, size: int = 9) -> Path:
    (folder / "blocks").mkdir(exist_ok=True)
    (folder / "blocks" / "context_block.yaml").write_text(GLOBAL_CONTEXT_BLOCK)
    (folder / "net.yaml").write_text(NETWORK.format(size=size))
    return folder / "net.yaml"


def test_global_context_computes_timms_formula_exactly(tmp_path: Path) -> None:
    graph = compile_spec(context_network(tmp_path))
    model = torch_backend.build_module(graph).eval()
    torch_backend.load_weights(model, graph, random_weights(graph, seed=5))
    block = layer(model, "layer1.0")
    x = torch.randn(2, 16, 9, 9, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y = block.conv(x)
        batch, channels, height, width = y.shape
        # timm's GlobalContext.forward, word for word.
        attn = block.conv_attn(y).reshape(batch, 1, height * width)
        attn = torch.nn.functional.softmax(attn, dim=-1).unsqueeze(3)
        context = (y.reshape(batch, channels, height * width).unsqueeze(1) @ attn).view(batch, channels, 1, 1)
        expected = x + (y + block.transform(context))
        torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("size", [9, 16])
def test_all_backends_agree_on_global_context(size: int, tmp_path: Path) -> None:
    agree_within_1e_5(compile_spec(context_network(tmp_path, size)))


def test_the_weighted_spatial_sum_costs_its_matmuls_macs(tmp_path: Path) -> None:
    graph = compile_spec(context_network(tmp_path))
    macs = cost(graph).macs
    sums = [node for module in graph.modules for node in module.nodes if node.op.kind == "weighted_spatial_sum"]
    assert [node.shape for node in sums] == [(16, 1, 1), (32, 1, 1)]
    # 16 channels at 9×9, 32 at 5×5: C·H·W multiply-accumulates each, as torch's flop counter counts the matmul.
    model = torch_backend.build_module(graph).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 9, 9))
    assert counter.get_total_flops() == 2 * macs
    assert sum(node.op.macs(node.in_shapes, node.shape) for node in sums if node.shape) == 16 * 81 + 32 * 25


MISUSE_BLOCK = GLOBAL_CONTEXT_BLOCK.replace(
    "  add: {op: add, inputs: [fused, shortcut]}\n",
    "  misuse: NODE\n  add: {op: add, inputs: [misuse, shortcut]}\n",
)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            "{op: add, inputs: [fused, conv], constant: 1}",
            r"add with a constant reads one value \(inputs: \[x\]\), got 2",
        ),
        ("{op: add, inputs: [fused]}", r"add needs two or more values, or one value and a constant"),
        ("{op: mul, inputs: [fused]}", r"mul needs two values, or one value and a constant"),
        ("{op: mul, inputs: [fused, conv, transform]}", r"inputs"),
        ("{op: add, inputs: [fused, shortcut], constant: 1}", r"a residual add .* cannot add a constant"),
        ("{op: clamp}", r"clamp needs a minimum, a maximum or both"),
        ("{op: clamp, minimum: 2, maximum: 1}", r"clamp's minimum 2.0 is greater than its maximum 1.0"),
        ("{op: weighted_spatial_sum, inputs: [fused, transform]}", r"needs weights of one channel .* 1×9×9"),
        ("{op: spatial_softmax, inputs: [fused]}", r"inputs"),
    ],
)
def test_misuse_is_a_located_error(node: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each misuse is one line at the node (``file:LINE:COL``), from the command line too."""
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "context_block.yaml").write_text(MISUSE_BLOCK.replace("NODE", node))
    (tmp_path / "net.yaml").write_text(NETWORK.format(size=9))
    with pytest.raises(RescompileError, match=rf"context_block.yaml:11:\d+: .*{message}"):
        compile_spec(tmp_path / "net.yaml")
    assert main(["validate", str(tmp_path / "net.yaml")]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "context_block.yaml:11:" in error


def test_values_that_do_not_broadcast_are_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="add cannot broadcast 16×9×9 and 2×9×9: each dimension must match or be 1"):
        Add(None).output_shape(((16, 9, 9), (2, 9, 9)))
    assert Add(None).output_shape(((16, 9, 9), (16, 1, 1), (1, 9, 9))) == (16, 9, 9)
    assert Add(None, 3.0).output_shape(((16, 9, 9),)) == (16, 9, 9)
