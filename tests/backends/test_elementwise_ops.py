"""Every elementwise activation of the op table, in a small network built from the table
(``conftest.elementwise_network``): the three backends agree on it within 1e-5, and the torch
backend computes what torch.nn's own module computes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import timm.layers
import torch
from conftest import ELEMENTWISE_OP_KINDS, elementwise_network
from support import assert_block_is_input_plus

from rescompile.backends.registry import BACKENDS
from rescompile.check import check, format_result
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import random_weights
from rescompile.testing import Tolerance

REFERENCES: dict[str, torch.nn.Module] = {
    "relu": torch.nn.ReLU(),
    "sigmoid": torch.nn.Sigmoid(),
    "gelu": torch.nn.GELU(),
    "hardswish": torch.nn.Hardswish(),
    "relu6": torch.nn.ReLU6(),
    "leaky_relu": torch.nn.LeakyReLU(),
    "hardsigmoid": torch.nn.Hardsigmoid(),
    "silu": torch.nn.SiLU(),
    "mish": torch.nn.Mish(),
    "tanh": torch.nn.Tanh(),
    "quick_gelu": timm.layers.QuickGELU(),
}
"""torch.nn's module for each elementwise op with its default attributes."""

VARIANTS: list[tuple[str, Mapping[str, object], torch.nn.Module]] = [
    ("leaky_relu", {"negative_slope": 0.25}, torch.nn.LeakyReLU(0.25)),  # exact in float32, as torch's float64
    ("gelu", {"approximate": "tanh"}, torch.nn.GELU(approximate="tanh")),
]
"""Ops with attributes other than their defaults, and torch.nn's module for them."""

CASES = [pytest.param(kind, {}, id=kind) for kind in ELEMENTWISE_OP_KINDS] + [
    pytest.param(kind, attributes, id=f"{kind}-{'-'.join(map(str, attributes.values()))}")
    for kind, attributes, _ in VARIANTS
]
TIGHT = Tolerance(atol=1e-5, rtol=0.0)


def test_every_elementwise_op_has_a_torch_reference() -> None:
    assert set(REFERENCES) == set(ELEMENTWISE_OP_KINDS)


@pytest.mark.parametrize(("kind", "attributes"), CASES)
def test_all_backends_agree_within_1e_5(kind: str, attributes: Mapping[str, object], tmp_path: Path) -> None:
    graph = compile_spec(elementwise_network(tmp_path, kind, attributes))
    weights = random_weights(graph, seed=3)
    # Inputs spread over [-6, 6] and beyond, where the piecewise activations change formula.
    inputs = (3 * np.random.default_rng(4).standard_normal((2, *graph.input_shape))).astype(np.float32)
    result = check(graph, tuple(BACKENDS), dict.fromkeys(BACKENDS, weights), inputs, TIGHT)
    assert all(pair.first_mismatch is None for pair in result.pairs), format_result(result)
    assert max(pair.output_max_abs for pair in result.pairs) <= 1e-5, format_result(result)


@pytest.mark.parametrize(
    ("kind", "attributes", "reference"),
    [pytest.param(kind, {}, module, id=kind) for kind, module in REFERENCES.items()]
    + [pytest.param(kind, attributes, module, id=f"{kind}-variant") for kind, attributes, module in VARIANTS],
)
def test_the_torch_block_computes_torch_nn(
    kind: str, attributes: Mapping[str, object], reference: torch.nn.Module, tmp_path: Path
) -> None:
    assert_block_is_input_plus(elementwise_network(tmp_path, kind, attributes), reference)
