"""``drop_path`` (stochastic depth, timm's DropPath) in every backend, and the built-in blocks'
``drop_path_rate`` with timm's linear schedule over ``block_index``: per-instance rates, the same
mask giving the same outputs in torch and flax, the drop rate and the preserved mean measured, and
the identity in inference in all three backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from support import layer
from timm.layers import drop_path as timm_drop_path

from rescompile.backends import flax_backend, torch_backend
from rescompile.backends.registry import BACKENDS
from rescompile.compiler import compile_spec
from rescompile.compiler.ir import DropPath, Graph
from rescompile.compiler.weights import random_weights
from rescompile.testing import assert_close

NETWORK = """\
name: dropping
input: {channels: 3, size: 8}
stem: cifar
block: basic
block_parameters: {drop_path_rate: RATE}
shortcut: B
stages:
  - {depth: 2, width: 8}
  - {depth: 2, width: 16, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""


def network(tmp_path: Path, rate: float) -> Graph:
    path = tmp_path / f"net_{rate}.yaml"
    path.write_text(NETWORK.replace("RATE", repr(rate)))
    return compile_spec(path)


def images(graph: Graph, batch: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, *graph.input_shape)).astype(np.float32)


def test_each_block_drops_at_timms_linear_schedule(tmp_path: Path) -> None:
    """timm's make_blocks: block_dpr = drop_path_rate * net_block_idx / (net_num_blocks - 1)."""
    graph = network(tmp_path, 0.3)
    expected = [0.3 * index / (4 - 1) for index in range(4)]
    assert [node.op.rate for _, node in graph.nodes() if isinstance(node.op, DropPath)] == expected
    torch_model = torch_backend.build_module(graph)
    flax_model = flax_backend.build_module(graph)
    for model in (torch_model, flax_model):
        blocks = [layer(model, f"layer{stage}.{index}") for stage in (1, 2) for index in (0, 1)]
        assert [block.drop_path.rate for block in blocks] == expected


def _torch_train_logits(model: torch.nn.Module, graph: Graph, weights: Any, x: np.ndarray) -> np.ndarray:
    torch_backend.load_weights(model, graph, weights)
    model.train()
    with torch.no_grad():
        logits: np.ndarray = model(torch.from_numpy(x)).numpy()
    return logits


def _flax_train_logits(model: nnx.Module, graph: Graph, weights: Any, x: np.ndarray) -> np.ndarray:
    flax_backend.load_weights(model, graph, weights)
    model.train()
    return np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1))))


def test_with_the_same_mask_torch_and_flax_agree_in_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mask draw is the one seam: both DropPath classes take it from ``keep_mask``, patched
    here to drop sample 1 in every block; everything else is the generated code's own arithmetic."""
    graph = network(tmp_path, 0.5)
    weights = random_weights(graph, seed=1)
    x = images(graph)
    keep = np.array([1, 0, 1, 1], np.float32).reshape(4, 1, 1, 1)
    # Each build executes the generated source afresh: patch the classes of these very models.
    torch_model = torch_backend.build_module(graph)
    flax_model = flax_backend.build_module(graph)
    torch_class, flax_class = (
        type(layer(torch_model, "layer2.1.drop_path")),
        type(layer(flax_model, "layer2.1.drop_path")),
    )
    monkeypatch.setattr(torch_class, "keep_mask", lambda self, x: torch.from_numpy(keep.copy()))  # divided in place
    monkeypatch.setattr(flax_class, "keep_mask", lambda self, x: jnp.asarray(keep))
    torch_logits = _torch_train_logits(torch_model, graph, weights, x)
    flax_logits = _flax_train_logits(flax_model, graph, weights, x)
    assert_close(flax_logits, torch_logits, tolerance="network", what="train-mode logits with one mask")
    # The mask mattered: keeping every sample gives other logits.
    monkeypatch.setattr(torch_class, "keep_mask", lambda self, x: torch.ones(4, 1, 1, 1))
    assert not np.allclose(_torch_train_logits(torch_model, graph, weights, x), torch_logits, atol=1e-3)


def test_the_torch_drop_path_draws_as_timms(tmp_path: Path) -> None:
    """Same seed, same draws: the generated DropPath equals timm.layers.drop_path bit for bit."""
    module = layer(torch_backend.build_module(network(tmp_path, 0.5)), "layer2.1.drop_path")
    module.train()
    x = torch.randn(64, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    ours = module(x)
    torch.manual_seed(7)
    theirs = timm_drop_path(x, module.rate, training=True)
    assert torch.equal(ours, theirs)


def _dropped_and_mean(outputs: np.ndarray, rate: float) -> tuple[float, float]:
    """Each sample is all 0 or all 1 / (1 - rate) (inputs are ones): the fraction dropped and the mean."""
    per_sample = outputs.reshape(len(outputs), -1)
    dropped = np.all(per_sample == 0, axis=1)
    assert np.allclose(per_sample[~dropped], 1 / (1 - rate), rtol=1e-6)  # whole samples, scaled
    return float(dropped.mean()), float(outputs.mean())


SAMPLES = 20_000
# Binomial: the dropped fraction's standard deviation is sqrt(0.3 * 0.7 / 20000) = 0.0032; the
# mean's sqrt(0.3 / 0.7 / 20000) = 0.0046. Tolerances of about five of them (draws are seeded).
RATE_TOLERANCE = 0.016
MEAN_TOLERANCE = 0.023


def test_without_a_mask_the_drop_rate_and_the_mean_are_measured(tmp_path: Path) -> None:
    graph = network(tmp_path, 0.9)  # the last block drops at 0.9; take a DropPath at 0.3 from the classes
    torch_class = type(layer(torch_backend.build_module(graph), "layer1.0.drop_path"))
    flax_class = type(layer(flax_backend.build_module(graph), "layer1.0.drop_path"))
    torch.manual_seed(0)
    torch_module = torch_class(0.3).train()
    torch_out = torch_module(torch.ones(SAMPLES, 2, 1, 1)).numpy()
    flax_module = flax_class(0.3, rngs=nnx.Rngs(0))
    flax_out = np.asarray(flax_module(jnp.ones((SAMPLES, 1, 1, 2))))
    for what, outputs in (("torch", torch_out), ("flax", flax_out)):
        dropped, mean = _dropped_and_mean(outputs, 0.3)
        assert abs(dropped - 0.3) < RATE_TOLERANCE, what
        assert abs(mean - 1.0) < MEAN_TOLERANCE, what
    # Flax draws again on each call (its stream advances), under jit too.
    again = np.asarray(nnx.jit(lambda module, x: module(x))(flax_module, jnp.ones((SAMPLES, 1, 1, 2))))
    assert not np.array_equal(again, flax_out)


def test_rate_zero_and_eval_mode_are_the_identity(tmp_path: Path) -> None:
    graph = network(tmp_path, 0.5)
    torch_class = type(layer(torch_backend.build_module(graph), "layer1.0.drop_path"))
    flax_class = type(layer(flax_backend.build_module(graph), "layer1.0.drop_path"))
    x = torch.randn(8, 2, 3, 3)
    assert torch_class(0.0).train()(x) is x
    assert torch_class(0.5).eval()(x) is x
    y = jax.random.normal(jax.random.key(0), (8, 3, 3, 2))
    assert flax_class(0.0, rngs=nnx.Rngs(0))(y) is y
    module = flax_class(0.5, rngs=nnx.Rngs(0))
    module.eval()
    assert module(y) is y
    # At rate 0 a flax model holds no random stream: its state (and initialisation) is as without drop_path.
    assert not nnx.to_flat_state(nnx.state(flax_backend.build_module(network(tmp_path, 0.0)), nnx.RngState))


def test_inference_is_the_identity_in_every_backend(tmp_path: Path) -> None:
    """With rates up to 0.5, all three backends give every module's output of the same network
    without stochastic depth (the weights are the same: drop_path has none)."""
    dropping, plain = network(tmp_path, 0.5), network(tmp_path, 0.0)
    weights = random_weights(dropping, seed=3)
    x = images(dropping, batch=2)
    expected = BACKENDS["torch"].module_outputs(plain, weights, x)
    for name, backend in BACKENDS.items():
        outputs = backend.module_outputs(dropping, weights, x)
        for module, value in outputs.items():
            assert_close(value, expected[module], tolerance="block", what=f"{name} {module}")
