"""timm's resnetv2_50 (pre-activation, He et al. 2016b), written in YAML only: the naming scheme
gives timm's state_dict keys exactly, and the shortcut that reads the pre-activation gives its
outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from rescompile.backends import torch_backend
from rescompile.backends.registry import BACKENDS
from rescompile.compiler import compile_spec
from rescompile.compiler.cost import cost
from rescompile.compiler.weights import random_weights, weight_shapes
from rescompile.testing import assert_close


def _randomise_batch_norm(model: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters (timm's BatchNormAct2d is a BatchNorm2d)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.1)


def test_resnetv2_50_loads_timms_state_dict_strictly_and_gives_its_outputs() -> None:
    torch.manual_seed(0)
    reference = timm.create_model("resnetv2_50", pretrained=False).eval()
    _randomise_batch_norm(reference, seed=1)
    graph = compile_spec("resnetv2_50", size=96)
    model = torch_backend.build_module(graph).eval()
    model.load_state_dict(reference.state_dict(), strict=True)  # no key renamed
    parameters = {name for name, _ in reference.named_parameters()}
    buffers = {name for name, _ in reference.named_buffers() if not name.endswith("num_batches_tracked")}
    assert set(weight_shapes(graph)) == parameters | buffers
    assert cost(graph).parameters == sum(parameter.numel() for parameter in reference.parameters())
    inputs = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(inputs).numpy()
        assert_close(model(inputs).numpy(), expected, tolerance="same_framework", what="resnetv2_50")


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
