"""timm's resnetv2_50 (pre-activation, He et al. 2016b), written in YAML only: the naming scheme
gives timm's state_dict keys exactly, and the shortcut that reads the pre-activation gives its
outputs."""

from __future__ import annotations

import timm
import torch
from torch import nn

from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec
from rescompile.compiler.cost import cost
from rescompile.compiler.weights import weight_shapes
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
