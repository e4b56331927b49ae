"""The paper's pre-activation CIFAR nets (He et al. 2016b, "Identity Mappings in Deep Residual
Networks"), preact_resnet110 and preact_resnet164, against a hand-written PyTorch transcription of
the authors' code (resnet-pre-act.lua): conv1-BN-ReLU, a first unit that starts with its convolution
and whose paths both read conv1's activation, later units BN-ReLU-conv with projections (1×1, no BN)
reading the pre-activation and identities the raw input, and a final BN-ReLU before pooling."""

from __future__ import annotations

import pytest
import torch
from support import randomise_normalisation
from torch import nn

from rescompile.backends import torch_backend
from rescompile.compiler import compile_spec, cost
from rescompile.testing import assert_close


class Projection(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class Unit(nn.Module):
    """One pre-activation unit; ``first``: the unit after conv1, without its own BN-ReLU."""

    def __init__(self, in_channels: int, width: int, stride: int, bottleneck: bool, first: bool) -> None:
        super().__init__()
        out_channels = width * 4 if bottleneck else width
        self.first = first
        if not first:
            self.bn1 = nn.BatchNorm2d(in_channels)
        if bottleneck:
            self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bottleneck = bottleneck
        projects = stride != 1 or in_channels != out_channels
        self.downsample = Projection(in_channels, out_channels, stride) if projects else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = x if self.first else torch.relu(self.bn1(x))
        out: torch.Tensor = self.conv1(preact)
        out = self.conv2(torch.relu(self.bn2(out)))
        if self.bottleneck:
            out = self.conv3(torch.relu(self.bn3(out)))
        # 'both_preact': a projection reads the pre-activation; an identity reads x itself.
        shortcut = x if self.downsample is None else self.downsample(preact)
        return out + shortcut


class PreActResNet(nn.Module):
    layer1: nn.Sequential  # the stages, set by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, units: int, bottleneck: bool, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        channels = 16
        for index, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)]):
            stage = []
            for unit in range(units):
                first = index == 0 and unit == 0
                stage.append(Unit(channels, width, stride if unit == 0 else 1, bottleneck, first))
                channels = width * 4 if bottleneck else width
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.final_bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.relu(self.final_bn(x)).mean(dim=(2, 3))
        logits: torch.Tensor = self.fc(x)
        return logits


@pytest.mark.parametrize(("name", "bottleneck"), [("preact_resnet110", False), ("preact_resnet164", True)])
def test_the_preset_is_the_papers_network(name: str, bottleneck: bool) -> None:
    torch.manual_seed(0)
    reference = PreActResNet(units=18, bottleneck=bottleneck)
    randomise_normalisation(reference, seed=1)
    graph = compile_spec(name)
    model = torch_backend.build_module(graph)
    model.load_state_dict(reference.state_dict(), strict=True)
    assert cost(graph).parameters == sum(parameter.numel() for parameter in reference.parameters())
    inputs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(model.eval()(inputs).numpy(), reference.eval()(inputs).numpy(), tolerance="same_framework")
        assert_close(model.train()(inputs).numpy(), reference.train()(inputs).numpy(), tolerance="same_framework")


def test_parameter_counts_by_hand() -> None:
    """He et al. 2016b, Table 3 gives 1.7M for both; the exact counts, unit by unit."""

    def basic(in_channels: int, width: int, first: bool = False) -> int:
        projection = in_channels * width if in_channels != width else 0
        return (0 if first else 2 * in_channels) + in_channels * width * 9 + 2 * width + width * width * 9 + projection

    stem, head = 3 * 16 * 9 + 2 * 16, 2 * 64 + 64 * 10 + 10
    stages = basic(16, 16, first=True) + 17 * basic(16, 16) + basic(16, 32) + 17 * basic(32, 32)
    stages += basic(32, 64) + 17 * basic(64, 64)
    assert cost(compile_spec("preact_resnet110")).parameters == stem + stages + head == 1_730_522
    assert round(cost(compile_spec("preact_resnet164")).parameters / 1e6, 1) == 1.7
