"""timm's naming scheme (``stages.0.blocks.0``, ``stem.conv``, ``head.fc``) on a small pre-activation
network: every backend names and computes the same modules. (The resnetv2_50 preset itself is
checked against timm in tests/test_timm_presets.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rescompile.backends import torch_backend
from rescompile.backends.registry import BACKENDS
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import random_weights
from rescompile.testing import assert_close

SMALL_V2 = """extends: resnetv2_50
name: small_v2
input: {channels: 3, size: 33}
stages:
  - {depth: 2, width: 4}
  - {depth: 2, width: 8, stride: 2}
head_parameters: {classes: 5}
"""


def test_all_backends_agree_on_a_small_timm_style_network(tmp_path: Path) -> None:
    (tmp_path / "net.yaml").write_text(SMALL_V2)
    graph = compile_spec(tmp_path / "net.yaml")
    weights = random_weights(graph, seed=0)
    expected = {"stem.conv.weight", "stages.0.blocks.0.downsample.conv.weight", "stages.1.blocks.1.norm3.running_var"}
    assert expected | {"norm.weight", "head.fc.bias"} <= set(weights)
    state = torch_backend.build_module(graph).state_dict()
    assert [name for name in state if not name.endswith("num_batches_tracked")] == list(weights)
    inputs = np.random.default_rng(1).standard_normal((2, *graph.input_shape)).astype(np.float32)
    outputs = {name: backend.module_outputs(graph, weights, inputs) for name, backend in BACKENDS.items()}
    assert list(outputs["torch"]) == [
        "stem",
        "stages.0.blocks.0",
        "stages.0.blocks.1",
        "stages.1.blocks.0",
        "stages.1.blocks.1",
        "head",
    ]
    for name in ("flax", "onnx"):
        for module, value in outputs["torch"].items():
            assert_close(outputs[name][module], value, tolerance="network", what=f"{name} {module}")
