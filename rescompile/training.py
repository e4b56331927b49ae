"""Training equivalence: the same SGD steps in torch and in Flax give the same model.

From the same canonical weights, on the same batches, ``steps`` steps of SGD with momentum and
weight decay (the paper's optimiser: lr 0.1, momentum 0.9, weight decay 1e-4) run in torch
(``torch.optim.SGD``) and in Flax (optax). torch's SGD adds ``weight_decay * w`` to the gradient
before the momentum buffer (``b = m * b + g + wd * w``, ``w -= lr * b``), and to every parameter,
BatchNorm's included; optax's ``add_decayed_weights`` before ``sgd(momentum=...)`` is exactly that
chain. The losses at every step, the weights and the BatchNorm running statistics after the last
step are compared, and the first value that differs is named.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rescompile.compiler.ir import Graph
from rescompile.compiler.weights import Weights
from rescompile.testing import Tolerance, max_differences, within

LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4

Batch = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]


@dataclass(frozen=True)
class Run:
    """One framework's training: the loss of every step and the canonical weights at the end."""

    losses: list[float]
    weights: Weights


@dataclass(frozen=True)
class Comparison:
    first_mismatch: str | None
    """The first loss (``step 3 loss``) or weight (``layer1.0.conv1.weight``) outside the tolerance."""
    loss_max_relative: float
    weights_max_relative: float
    worst_weight: str


@dataclass(frozen=True)
class Batches:
    """``steps`` seeded batches of images (NCHW) and labels over the network's output classes,
    drawn as they are iterated (one batch in memory at a time: every batch at once was 10**9 of
    them), the same ones on every iteration, so that torch and Flax see the same data."""

    graph: Graph
    steps: int
    batch: int
    seed: int

    def __iter__(self) -> Iterator[Batch]:
        generator = np.random.default_rng(self.seed)
        classes = self.graph.output_shape[0]
        for _ in range(self.steps):
            yield (
                generator.standard_normal((self.batch, *self.graph.input_shape)).astype(np.float32),
                generator.integers(0, classes, self.batch).astype(np.int64),
            )

    def __len__(self) -> int:
        return self.steps


def batches(graph: Graph, steps: int, batch: int, seed: int) -> Batches:
    """:class:`Batches` by keyword-free call, as the tests and ``check --train-steps`` use it."""
    return Batches(graph, steps, batch, seed)


def train_torch(graph: Graph, weights: Weights, data: Iterable[Batch], float64: bool = False) -> Run:
    import torch

    from rescompile.backends import torch_backend

    model = torch_backend.build_module(graph)
    torch_backend.load_weights(model, graph, weights)
    dtype = torch.float64 if float64 else torch.float32
    model = model.to(dtype).train()
    optimizer = torch.optim.SGD(model.parameters(), LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    losses = []
    for images, labels in data:
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(images).to(dtype)), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(loss.item())
    return Run(losses, torch_backend.to_weights(model.float(), graph))


def train_flax(graph: Graph, weights: Weights, data: Iterable[Batch], float64: bool = False) -> Run:
    import jax

    with jax.enable_x64(float64):
        return _train_flax(graph, weights, data, float64)


def _train_flax(graph: Graph, weights: Weights, data: Iterable[Batch], float64: bool) -> Run:
    import jax
    import jax.numpy as jnp
    import optax  # type: ignore[import-untyped]
    from flax import nnx

    from rescompile.backends import flax_backend

    model = flax_backend.module_for_weights(graph)
    flax_backend.load_weights(model, graph, weights)
    dtype = jnp.float64 if float64 else jnp.float32
    nnx.update(model, jax.tree.map(lambda value: value.astype(dtype), nnx.state(model)))
    model.train()  # type: ignore[no-untyped-call]  # flax's Module.train(**attributes) is unannotated
    chain = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LEARNING_RATE, momentum=MOMENTUM))
    optimizer = nnx.Optimizer(model, chain, wrt=nnx.Param)

    @nnx.jit
    def step(
        model: nnx.Module, optimizer: nnx.Optimizer[nnx.Module], images: jax.Array, labels: jax.Array
    ) -> jax.Array:
        def loss_of(model: nnx.Module) -> jax.Array:
            logits = model(images)
            loss: jax.Array = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss

        loss, grads = nnx.value_and_grad(loss_of)(model)
        optimizer.update(model, grads)
        result: jax.Array = loss
        return result

    losses = []
    for images, labels in data:
        nhwc = jnp.asarray(images.transpose(0, 2, 3, 1), dtype)
        losses.append(float(step(model, optimizer, nhwc, jnp.asarray(labels))))
    return Run(losses, flax_backend.to_weights(model, graph))


def compare(reference: Run, other: Run, tolerance: Tolerance) -> Comparison:
    """Losses step by step, then every weight and running statistic in network order."""
    first: str | None = None
    loss_relative = 0.0
    for index, (expected, actual) in enumerate(zip(reference.losses, other.losses, strict=True)):
        loss_relative = max(loss_relative, max_differences([actual], [expected])[1])
        if first is None and not within([actual], [expected], tolerance):
            first = f"step {index + 1} loss ({expected:.6f} vs {actual:.6f})"
    worst, worst_name = 0.0, ""
    for name, expected_array in reference.weights.items():
        relative = max_differences(other.weights[name], expected_array)[1]
        if relative > worst or not worst_name:
            worst, worst_name = relative, name
        if first is None and not within(other.weights[name], expected_array, tolerance):
            first = name
    return Comparison(first, loss_relative, worst, worst_name)
