"""Another RegNetZ of timm's byobnet is a change of the regnetz block's parameters: regnetz_c16 is
regnetz_b16 with bottle_ratio 4 (docs/language.md says so), and loads and computes as timm's."""

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
