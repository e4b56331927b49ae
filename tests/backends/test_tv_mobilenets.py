"""torchvision's mobilenet_v2 and mobilenet_v3_large as the built-ins tv_mobilenet_v2 and
tv_mobilenet_v3_large (torchvision's keys, features.1 ... numbered across the stages), and its
mobilenet_v3_small written as a spec from the same parts: strict loads, parameters, MACs, eval and
train-mode outputs, and every backend's agreement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from support import assert_backends_agree, randomise_normalisation
from torch.utils.flop_counter import FlopCounterMode

from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec, cost
from rescompile.testing import assert_close

# mobilenet_v3_small from the parts tv_mobilenet_v3_large uses; expansion ratios as timm's
# mobilenetv3_small_100 (make_divisible(24 × 3.67) = 88, torchvision's expanded width).
V3_SMALL = """name: tv_mobilenet_v3_small
input: {channels: 3, size: 224}
naming: {stages: features, blocks: "{network_number}"}
stem: tv_mobilenetv3
block: tv_mobilenetv3
shortcut: {where_shapes_match: identity, where_shapes_change: none}
stages:
  - {depth: 1, width: 16, stride: 2, block_parameters: {se: 1}}
  - {depth: 2, width: 24, stride: 2, per_block_parameters: [{expansion: 4.5}, {expansion: 3.67}]}
  - depth: 3
    width: 40
    stride: 2
    block_parameters: {kernel: 5, expansion: 6, act: hardswish, se: 1}
    per_block_parameters: [{expansion: 4}, {}, {}]
  - {depth: 2, width: 48, block_parameters: {kernel: 5, expansion: 3, act: hardswish, se: 1}}
  - {depth: 3, width: 96, stride: 2, block_parameters: {kernel: 5, expansion: 6, act: hardswish, se: 1}}
head: tv_mobilenetv3_head
head_parameters: {stage: 12, features: 1024}
"""


def assert_is_torchvisions(spec: str | Path, reference_name: str, size: int) -> None:
    """Keys in torchvision's order, its parameters and MACs, eval and train-mode outputs. The
    reference's classifier dropout (the identity in evaluation; no op writes it) is off."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, reference_name)(weights=None, dropout=0.0)
    randomise_normalisation(reference, seed=1)
    graph = compile_spec(spec, size=size)
    model = torch_backend.build_module(graph)
    model.load_state_dict(reference.state_dict(), strict=True)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert cost(graph).parameters == sum(parameter.numel() for parameter in reference.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference.eval()(torch.zeros(1, 3, size, size))
    assert counter.get_total_flops() == 2 * cost(graph).macs
    inputs = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for mode in ("eval", "train"):
            expected, actual = getattr(reference, mode)()(inputs), getattr(model, mode)()(inputs)
            assert_close(actual.numpy(), expected.numpy(), tolerance="same_framework", what=f"{mode} at {size}")


@pytest.mark.parametrize("size", [224, 97])
@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large"])
def test_tv_mobilenet_is_torchvisions(name: str, size: int) -> None:
    assert_is_torchvisions(f"tv_{name}", name, size)


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 97])
def test_mobilenet_v3_small_written_from_the_same_parts_is_torchvisions(size: int, tmp_path: Path) -> None:
    (tmp_path / "tv_mobilenet_v3_small.yaml").write_text(V3_SMALL)
    assert_is_torchvisions(tmp_path / "tv_mobilenet_v3_small.yaml", "mobilenet_v3_small", size)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tv_mobilenet_v2", "tv_mobilenet_v3_large"])
def test_tv_mobilenet_agrees_in_every_backend_at_97(name: str) -> None:
    """`rescompile check` at an odd size (97 -> 49 -> 25 -> 13 -> 7 -> 4); tests/test_check.py checks the
    built-ins at 32."""
    assert_backends_agree(compile_spec(name, size=97))
