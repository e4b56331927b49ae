"""torchvision's mobilenet_v2 and mobilenet_v3_large as the built-ins tv_mobilenet_v2 and
tv_mobilenet_v3_large (torchvision's keys, features.1 ... numbered across the stages), and its
mobilenet_v3_small written as a spec from the same parts: strict loads, parameters, MACs, eval and
train-mode outputs, and every backend's agreement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from support import assert_backends_agree, assert_is_reference
from torch.utils.flop_counter import FlopCounterMode

from rescompile.compiler import compile_spec, cost

# mobilenet_v3_small from the parts tv_mobilenet_v3_large uses; expansion ratios as timm's
# mobilenetv3_small_100 (make_divisible(24 × 3.67) = 88, torchvision's expanded width).
V3_SMALL = """name: tv_mobilenet_v3_small
input: {channels: 3, size: 224}
naming: {stages: features, blocks: "{network_number}"}
stem: tv_efficientnet
stem_parameters: {width: 16, act: hardswish}
block: tv_mobilenetv3
shortcut: {where_shapes_match: identity, where_shapes_change: none}
batch_norm: {epsilon: 0.001, momentum: 0.01}
stages:
  - {depth: 1, width: 16, stride: 2, block_parameters: {se_ratio: 0.25}}
  - {depth: 2, width: 24, stride: 2, per_block_parameters: [{expansion: 4.5}, {expansion: 3.67}]}
  - depth: 3
    width: 40
    stride: 2
    block_parameters: {kernel: 5, expansion: 6, act: hardswish, se_ratio: 0.25}
    per_block_parameters: [{expansion: 4}, {}, {}]
  - {depth: 2, width: 48, block_parameters: {kernel: 5, expansion: 3, act: hardswish, se_ratio: 0.25}}
  - {depth: 3, width: 96, stride: 2, block_parameters: {kernel: 5, expansion: 6, act: hardswish, se_ratio: 0.25}}
head: tv_efficientnet_head
head_parameters: {stage: 12, features: 576, hidden: 1024, act: hardswish}
"""


def assert_is_torchvisions(spec: str | Path, reference_name: str, size: int) -> None:
    """Keys in torchvision's order, its parameters, eval and train-mode outputs
    (support.assert_is_reference), and its MACs by torch's counter. The reference's classifier
    dropout (the identity in evaluation; no op writes it) is off."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, reference_name)(weights=None, dropout=0.0)
    assert_is_reference(spec, reference, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference.eval()(torch.zeros(1, 3, size, size))
    assert counter.get_total_flops() == 2 * cost(compile_spec(spec, size=size)).macs


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
