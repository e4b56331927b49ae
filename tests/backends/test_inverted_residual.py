"""An inverted-residual network (examples/inverted_residual.yaml: MobileNetV2's block, Sandler et
al. 2018, at CIFAR size) under the shortcut policy ``none`` where shapes change: every backend
against a hand-written torch module with the same state_dict keys, loaded strictly. Only blocks
whose shapes match add their input, as timm's ``InvertedResidual.has_skip``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support import assert_backends_agree, count_macs, randomise_normalisation
from torch import nn

from rescompile.backends import torch_backend
from rescompile.backends.registry import BACKENDS
from rescompile.compiler import compile_spec, cost
from rescompile.compiler.weights import weight_shapes
from rescompile.testing import Tolerance, assert_close

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "inverted_residual.yaml"
STAGES = [(1, 16, 1, 1), (2, 24, 2, 6), (3, 32, 2, 6), (2, 32, 1, 6)]
"""The example's stages: depth, width, stride, expansion."""
EQUAL = Tolerance(atol=1e-5, rtol=0.0)


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.conv_pw = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv_pwl = nn.Conv2d(hidden, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.has_skip = stride == 1 and in_channels == width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv_pw(x)))
        out = torch.relu(self.bn2(self.conv_dw(out)))
        projected: torch.Tensor = self.bn3(self.conv_pwl(out))
        return projected + x if self.has_skip else projected


class InvertedResidualNet(nn.Module):
    layer1: nn.Sequential  # the stages, set by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        channels = 32
        for index, (depth, width, stride, expansion) in enumerate(STAGES):
            blocks = []
            for block in range(depth):
                blocks.append(InvertedResidual(channels, width, stride if block == 0 else 1, expansion))
                channels = width
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return logits


@pytest.fixture(scope="module")
def reference() -> InvertedResidualNet:
    torch.manual_seed(0)
    model = InvertedResidualNet()
    randomise_normalisation(model, seed=1)
    return model


def test_only_blocks_whose_shapes_match_have_a_shortcut() -> None:
    graph = compile_spec(EXAMPLE)
    assert [(block.path, block.shortcut) for block in graph.blocks] == [
        ("layer1.0", None),
        ("layer2.0", None),
        ("layer2.1", "identity"),
        ("layer3.0", None),
        ("layer3.1", "identity"),
        ("layer3.2", "identity"),
        ("layer4.0", "identity"),
        ("layer4.1", "identity"),
    ]
    assert not any("downsample" in name for name in weight_shapes(graph))


def test_the_torch_build_is_the_hand_written_network(reference: InvertedResidualNet) -> None:
    graph = compile_spec(EXAMPLE)
    model = torch_backend.build_module(graph)
    model.load_state_dict(reference.state_dict(), strict=True)
    inputs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(model.eval()(inputs).numpy(), reference.eval()(inputs).numpy(), tolerance=EQUAL)
        assert_close(model.train()(inputs).numpy(), reference.train()(inputs).numpy(), tolerance=EQUAL)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_computes_the_hand_written_network(backend: str, reference: InvertedResidualNet) -> None:
    graph = compile_spec(EXAMPLE)
    state = reference.state_dict()
    weights = {name: state[name].numpy() for name in weight_shapes(graph)}
    assert set(weights) == {name for name in state if not name.endswith("num_batches_tracked")}
    inputs = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = reference.eval()(torch.from_numpy(inputs)).numpy()
    outputs = BACKENDS[backend].module_outputs(graph, weights, inputs)
    assert_close(outputs["head"], expected, tolerance=EQUAL)


def test_parameters_and_macs_are_the_hand_written_networks(reference: InvertedResidualNet) -> None:
    graph = compile_spec(EXAMPLE)
    report = cost(graph)
    assert report.parameters == sum(parameter.numel() for parameter in reference.parameters())
    for backend in BACKENDS.values():
        assert backend.count_parameters(backend.build(graph)) == report.parameters, backend.name
    assert report.macs == count_macs(reference, torch.zeros(1, 3, 32, 32))


def test_zero_init_residual_zeroes_only_blocks_with_a_residual_add() -> None:
    model = torch_backend.build_module(compile_spec(EXAMPLE), zero_init_residual=True)
    zeroed = {name for name, value in model.state_dict().items() if name.endswith("bn3.weight") and not value.any()}
    assert zeroed == {f"{block}.bn3.weight" for block in ("layer2.1", "layer3.1", "layer3.2", "layer4.0", "layer4.1")}


def test_none_where_shapes_match_and_a_projection_where_they_change_in_every_backend(tmp_path: Path) -> None:
    """The other side of a mapping: plain blocks where shapes match, projected residuals where they
    change. No built module holds a shortcut for a block without a residual add."""
    (tmp_path / "net.yaml").write_text(
        "name: net\nextends: resnet18\ninput: {channels: 3, size: 40}\n"
        "shortcut: {where_shapes_match: none, where_shapes_change: projection}\n"
    )
    graph = compile_spec(tmp_path / "net.yaml")
    assert [block.shortcut for block in graph.blocks] == [None, None, *["projection", None] * 3]
    expected = set(weight_shapes(graph))
    assert {name for name in expected if "downsample" in name} == {
        f"layer{stage}.0.downsample.{layer}.{tensor}"
        for stage in (2, 3, 4)
        for layer, tensor in [(0, "weight"), (1, "weight"), (1, "bias"), (1, "running_mean"), (1, "running_var")]
    }
    state = torch_backend.build_module(graph).state_dict()
    assert {name for name in state if not name.endswith("num_batches_tracked")} == expected
    assert_backends_agree(graph)
