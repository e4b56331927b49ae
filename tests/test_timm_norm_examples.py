"""examples/resnet50_gn.yaml, examples/ecaresnet50d.yaml and examples/resnetblur50.yaml, written with
group_norm, channel_conv and blur_pool, are timm's models: timm's state_dict loads strictly in
timm's key order with no key renamed, the parameter count and MACs are timm's, eval and train-mode
outputs and updated running statistics are timm's (random weights, random normalisation statistics
and affine parameters), and every backend agrees at an odd size."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from rescompile.backends import torch_backend
from rescompile.backends.registry import BACKENDS
from rescompile.check import check, format_result
from rescompile.compiler import compile_spec, cost
from rescompile.compiler.ir import BlurPool, Graph
from rescompile.compiler.weights import random_weights
from rescompile.testing import TOLERANCES, assert_close, count_macs, randomise_normalisation

EXAMPLES = Path(__file__).parent.parent / "examples"
NAMES = ["resnet50_gn", "ecaresnet50d", "resnetblur50"]
SIZE = 64


class Pair(NamedTuple):
    graph: Graph
    model: torch.nn.Module
    reference: torch.nn.Module


@functools.cache
def pair(name: str) -> Pair:
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False)
    randomise_normalisation(reference, seed=1)
    graph = compile_spec(EXAMPLES / f"{name}.yaml", size=SIZE)
    model = torch_backend.build_module(graph)
    model.load_state_dict(reference.state_dict(), strict=True)
    return Pair(graph, model, reference)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_are_timms_in_timms_order(name: str) -> None:
    _, model, reference = pair(name)
    assert list(model.state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_parameters_and_macs_are_timms(name: str) -> None:
    graph, _, reference = pair(name)
    report = cost(graph)
    assert report.parameters == sum(parameter.numel() for parameter in reference.parameters())
    inputs = torch.zeros(1, 3, SIZE, SIZE)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference.eval()(inputs)
    assert counter.get_total_flops() == 2 * report.macs
    # Module hooks see no module for timm's BlurPool2d (an F.conv2d call): they count all but the blurs.
    blurs = {module.canonical(node.name) for module, node in graph.nodes() if isinstance(node.op, BlurPool)}
    blur_macs = sum(node.macs for node in report.nodes if node.name in blurs)
    assert (blur_macs > 0) == (name == "resnetblur50")
    assert count_macs(reference, inputs) == report.macs - blur_macs


def test_at_224_the_parameters_and_macs_are_timms_published_ones() -> None:
    # timm's resnet50_gn has torchvision's resnet50 counts (GroupNorm has BatchNorm's parameters).
    report = cost(compile_spec(EXAMPLES / "resnet50_gn.yaml"))
    assert (report.parameters, report.macs) == (25_557_032, 4_089_184_256)
    report = cost(compile_spec(EXAMPLES / "ecaresnet50d.yaml"))
    reference = timm.create_model("ecaresnet50d", pretrained=False).eval()
    assert report.macs == count_macs(reference, torch.zeros(1, 3, 224, 224))
    assert report.parameters == 25_576_350


@pytest.mark.parametrize("name", NAMES)
def test_eval_and_train_outputs_and_running_statistics_are_timms(name: str) -> None:
    _, model, reference = pair(name)
    inputs = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(model.eval()(inputs).numpy(), reference.eval()(inputs).numpy(), tolerance="same_framework")
    model, reference = copy.deepcopy(model), copy.deepcopy(reference)
    inputs = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, actual = reference.train()(inputs), model.train()(inputs)
    assert_close(actual.numpy(), expected.numpy(), tolerance="same_framework", what=f"{name} train logits")
    actual_state = model.state_dict()
    for key, value in reference.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            assert_close(actual_state[key].numpy(), value.numpy(), tolerance="same_framework", what=key)


@pytest.mark.parametrize("name", NAMES)
def test_all_backends_agree_at_an_odd_size(name: str) -> None:
    graph = compile_spec(EXAMPLES / f"{name}.yaml", size=97)
    weights = random_weights(graph, seed=0)
    inputs = np.random.default_rng(1).standard_normal((2, *graph.input_shape)).astype(np.float32)
    backends = tuple(BACKENDS)
    result = check(graph, backends, dict.fromkeys(backends, weights), inputs, TOLERANCES["network"])
    assert all(pair.first_mismatch is None for pair in result.pairs), format_result(result)
