"""batch_norm's ``epsilon`` and ``momentum`` as expressions of a part's parameters (torchvision's
MobileNetV3 normalises with eps=0.001): a stem and a block taking them as parameters compute
torch.nn.BatchNorm2d's function with those values, in every backend."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from support import assert_backends_agree, layer

from rescompile.backends import flax_backend, torch_backend
from rescompile.compiler import compile_spec
from rescompile.compiler.ir import Graph
from rescompile.compiler.weights import random_weights
from rescompile.spec.errors import RescompileError

STEM = """\
name: eps_stem
parameters: {width: 8, eps: 0.001, momentum: 0.1}
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, padding: 1}
  bn1: {op: batch_norm, epsilon: eps, momentum: momentum}
  relu: {op: relu}
"""
BLOCK = """\
name: eps_block
parameters: {bn_eps: 0.001, bn_momentum: 0.1}
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}
  bn1: {op: batch_norm, epsilon: bn_eps * 2, momentum: bn_momentum}
  add: {op: add, inputs: [bn1, shortcut]}
"""
NETWORK = """\
name: eps_net
input: {channels: 3, size: 8}
stem: eps_stem
stem_parameters: {width: 8, eps: STEM_EPS, momentum: 0.01}
block: eps_block
block_parameters: {bn_eps: 0.125, bn_momentum: 0.3}
shortcut: B
stages:
  - {depth: 1, width: 8}
  - {depth: 1, width: 16, stride: 2}
head: classifier
head_parameters: {classes: 4}
"""


def network(tmp_path: Path, stem_eps: str = "0.25") -> Path:
    (tmp_path / "stems").mkdir(exist_ok=True)
    (tmp_path / "blocks").mkdir(exist_ok=True)
    (tmp_path / "stems" / "eps_stem.yaml").write_text(STEM)
    (tmp_path / "blocks" / "eps_block.yaml").write_text(BLOCK)
    path = tmp_path / "net.yaml"
    path.write_text(NETWORK.replace("STEM_EPS", stem_eps))
    return path


def _torch_model(graph: Graph) -> torch.nn.Module:
    model = torch_backend.build_module(graph)
    torch_backend.load_weights(model, graph, random_weights(graph, seed=3))
    return model


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_stems_and_blocks_batch_norms_are_torchs_with_their_parameters(tmp_path: Path, mode: str) -> None:
    model = _torch_model(compile_spec(network(tmp_path)))
    for path, epsilon, momentum, channels in (("bn1", 0.25, 0.01, 8), ("layer2.0.bn1", 0.25, 0.3, 16)):
        generated = layer(model, path)
        reference = torch.nn.BatchNorm2d(channels, eps=epsilon, momentum=momentum)
        reference.load_state_dict(generated.state_dict())
        x = torch.randn(2, channels, 4, 4, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            torch.testing.assert_close(getattr(generated, mode)()(x), getattr(reference, mode)()(x), rtol=0, atol=0)
        # In training, the running statistics follow the momentum.
        torch.testing.assert_close(generated.running_var, reference.running_var, rtol=0, atol=0)


def test_the_block_class_takes_them_as_parameters(tmp_path: Path) -> None:
    graph = compile_spec(network(tmp_path))
    torch_source = torch_backend.emit_source(graph)
    flax_source = flax_backend.emit_source(graph)
    assert "nn.BatchNorm2d(width, eps=bn_eps * 2, momentum=bn_momentum)" in torch_source
    assert "BatchNorm(width, momentum=1 - bn_momentum, epsilon=bn_eps * 2)" in flax_source
    flax_model = flax_backend.build_module(graph)
    assert (layer(flax_model, "layer2.0.bn1").momentum, layer(flax_model, "layer2.0.bn1").epsilon) == (0.7, 0.25)
    assert (layer(flax_model, "bn1").momentum, layer(flax_model, "bn1").epsilon) == (0.99, 0.25)


def test_every_backend_computes_the_same_with_them(tmp_path: Path) -> None:
    assert_backends_agree(compile_spec(network(tmp_path)))


def test_an_epsilon_out_of_range_is_one_located_line(tmp_path: Path) -> None:
    with pytest.raises(RescompileError) as raised:
        compile_spec(network(tmp_path, stem_eps="-0.5"))
    # At the network's value, naming the stem's line that computed it.
    pattern = (
        r"\S+/net\.yaml:4:\d+: stem: nodes\.bn1\.epsilon = eps gives -0\.5; it must be a number in \(0\.0, inf\) "
        r"\(computed at \S+/stems/eps_stem\.yaml:5:\d+\)"
    )
    assert re.fullmatch(pattern, str(raised.value)), raised.value
