"""Another RegNetZ of timm's byobnet is a change of the regnetz block's parameters: regnetz_c16 is
regnetz_b16 with bottle_ratio 4 (docs/language.md says so), and loads and computes as timm's; so is
regnetz_d8, with the regnet stem's tiered stem_type and other widths."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from support import assert_is_reference


def test_regnetz_c16_is_regnetz_b16_with_bottle_ratio_4(tmp_path: Path) -> None:
    path = tmp_path / "regnetz_c16.yaml"
    path.write_text("extends: regnetz_b16\nname: regnetz_c16\nblock_parameters: {bottle_ratio: 4.0}\n")
    torch.manual_seed(0)
    assert_is_reference(path, timm.create_model("regnetz_c16", pretrained=False), size=65)


REGNETZ_D8 = """extends: regnetz_b16
name: regnetz_d8
stem_parameters: {width: 64, stem_type: tiered}
block_parameters: {group_size: 8, bottle_ratio: 4.0}
stages:
  - {depth: 3, width: 64}
  - {depth: 6, width: 128, stride: 2}
  - {depth: 12, width: 256, stride: 2}
  - {depth: 3, width: 384, stride: 2}
head_parameters: {features: 1792}
"""


def test_regnetz_d8_is_the_built_in_parts_with_the_tiered_stem(tmp_path: Path) -> None:
    path = tmp_path / "regnetz_d8.yaml"
    path.write_text(REGNETZ_D8)
    torch.manual_seed(0)
    assert_is_reference(path, timm.create_model("regnetz_d8", pretrained=False), size=65)
