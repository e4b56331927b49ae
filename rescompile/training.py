"""Training equivalence: the same SGD steps in torch and in Flax give the same model.

From the same canonical weights, on the same batches, ``steps`` steps of SGD with momentum and
weight decay (the paper's optimiser: lr 0.1, momentum 0.9, weight decay 1e-4) run in torch
(``torch.optim.SGD``) and in Flax (optax), each backend's training step
(:class:`rescompile.backends.interface.Trainer`). torch's SGD adds ``weight_decay * w`` to the gradient
before the momentum buffer (``b = m * b + g + wd * w``, ``w -= lr * b``), and to every parameter,
BatchNorm's included; optax's ``add_decayed_weights`` before ``sgd(momentum=...)`` is exactly that
chain. The losses at every step, the weights and the BatchNorm running statistics after the last
step are compared, and the first value that differs is named.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from rescompile.backends.interface import SGD, Batch, TrainingRun
from rescompile.backends.registry import BACKENDS
from rescompile.compiler.ir import Graph
from rescompile.compiler.weights import Weights
from rescompile.testing import Tolerance, max_differences, within

PAPER_SGD = SGD(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)


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


def train(backend: str, graph: Graph, weights: Weights, data: Iterable[Batch], float64: bool = False) -> TrainingRun:
    """The paper's SGD (:data:`PAPER_SGD`) from ``weights``, one step per batch, in ``backend``
    (one whose registry entry ``trains``)."""
    return BACKENDS[backend].train(graph, weights, data, PAPER_SGD, float64)


def compare(reference: TrainingRun, other: TrainingRun, tolerance: Tolerance) -> Comparison:
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
