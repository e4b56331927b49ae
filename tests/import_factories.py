"""Small hand-written torch models for tests/test_import.py, imported by ``rescompile import
import_factories:NAME`` (tests/ is on the path): one torchvision's parts compute, one they do not."""

from __future__ import annotations

import torch
import torchvision
from torch import nn


def small_resnet(classes: int = 10) -> nn.Module:
    """torchvision's ResNet class with basic blocks, one per stage, narrow: built-in parts compute it."""
    model: nn.Module = torchvision.models.resnet.ResNet(
        torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=classes
    )
    return model


def gelu_stem_resnet() -> nn.Module:
    """:func:`small_resnet` with GELU in its stem, where every built-in stem has ReLU."""
    model = small_resnet()
    model.relu = nn.GELU()
    return model


class GeluBlock(nn.Module):
    """A basic block with GELU where torchvision's has ReLU: the same weights, another function."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.gelu(self.bn1(self.conv1(x)))
        return nn.functional.gelu(self.bn2(self.conv2(out)) + x)


class GeluNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(GeluBlock(16), GeluBlock(16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        logits: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits


def gelu_net() -> nn.Module:
    return GeluNet()


class EntryNet(nn.Module):
    """A stem whose convolution is named ``entry``, where every built-in stem names its layers otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.entry = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.layer1 = nn.Sequential(GeluBlock(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(self.layer1(self.entry(x)).mean((2, 3)))
        return logits


def entry_net() -> nn.Module:
    return EntryNet()
