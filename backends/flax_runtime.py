"""What is done with a built Flax model (:class:`~rescompile.backends.interface.Runtime`): the
benchmark set-up of ``rescompile bench``, the model ``create_model`` returns, the training step of
``check --train-steps`` (optax) and the weight layout of ``weights convert`` (the generated
module's own)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax  # type: ignore[import-untyped]
from flax import nnx

from rescompile.backends import flax_backend
from rescompile.backends.interface import SGD, Batch, BenchSetup, Model, Timed, TrainingRun
from rescompile.backends.surface import TimmHead, feature_points
from rescompile.compiler.ir import Graph
from rescompile.compiler.weights import Weights
from rescompile.spec.errors import RescompileError

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}
HANDWRITTEN_RESNET50 = "benchmarks/handwritten_flax_resnet50.py"


def weight_layout(graph: Graph, weights: Weights) -> Weights:
    return flax_backend.flax_layout(graph, weights)


def timm_model(model: Model, graph: Graph, head: TimmHead) -> Model:
    """The generated model with timm's head options, or its features model
    (:class:`rescompile.backends.flax_features.FlaxFeatureNet`)."""
    if not head.features_only:
        return head.reset(model, graph)
    from rescompile.backends.flax_features import FlaxFeatureNet

    return FlaxFeatureNet(model, graph, feature_points(graph), head.chosen(graph))


def train(graph: Graph, weights: Weights, data: Iterable[Batch], sgd: SGD, float64: bool) -> TrainingRun:
    """optax's ``add_decayed_weights`` before ``sgd(momentum=...)`` is torch's SGD exactly."""
    with jax.enable_x64(float64):
        return _train(graph, weights, data, sgd, float64)


def _train(graph: Graph, weights: Weights, data: Iterable[Batch], sgd: SGD, float64: bool) -> TrainingRun:
    model = flax_backend.module_for_weights(graph)
    flax_backend.load_weights(model, graph, weights)
    dtype = jnp.float64 if float64 else jnp.float32
    nnx.update(model, jax.tree.map(lambda value: value.astype(dtype), nnx.state(model)))
    model.train()
    chain = optax.chain(
        optax.add_decayed_weights(sgd.weight_decay), optax.sgd(sgd.learning_rate, momentum=sgd.momentum)
    )
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
    return TrainingRun(losses, flax_backend.to_weights(model, graph))


def bench_models(
    graph: Graph,
    weights: Weights,
    images: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    setup: BenchSetup,
) -> tuple[str, list[Timed]]:
    """The generated model beside the hand-written Flax ResNet-50 (``benchmarks/``), for resnet50."""
    try:
        device = jax.devices("gpu" if setup.device == "cuda" else "cpu")[0]
    except RuntimeError:
        raise RescompileError(
            "--device cuda: jax sees no GPU here (a CUDA jaxlib is needed); use --device cpu"
        ) from None
    dtype = DTYPES[setup.dtype]
    generated = flax_backend.module_for_weights(graph)
    flax_backend.load_weights(generated, graph, weights)
    candidates: list[tuple[str, nnx.Module]] = [("rescompile flax", generated)]
    if graph.name == "resnet50" and graph.output_shape == (1000,) and setup.reference:
        handwritten = _handwritten_resnet50()
        # The same attribute names give the same state paths: the generated model's weights load into it.
        nnx.update(handwritten, nnx.state(generated))
        candidates.append(("hand-written flax resnet50", handwritten))
    inputs = jax.device_put(jnp.asarray(images.transpose(0, 2, 3, 1), dtype), device)
    targets = jax.device_put(jnp.asarray(labels), device)
    models = []
    for name, model in candidates:
        # Copied: the two models must not share buffers, which a training step donates.
        floating = jax.tree.map(
            lambda value: jnp.array(value, dtype, copy=True), nnx.state(model, (nnx.Param, nnx.BatchStat))
        )
        nnx.update(model, jax.device_put(floating, device))
        models.append(_timed(name, model, inputs, targets, setup))
    return f"{device.platform} ({device.device_kind})", models


def _handwritten_resnet50() -> nnx.Module:
    """The reference model, read from the source tree: it is a benchmark's, not the package's, so
    an installed rescompile (without ``benchmarks/``) has no reference and says so."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / HANDWRITTEN_RESNET50
    spec = importlib.util.spec_from_file_location("handwritten_flax_resnet50", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise RescompileError(
            f"the hand-written Flax ResNet-50 is {HANDWRITTEN_RESNET50} of a source checkout, not found at {path}; "
            "time the generated model alone with --no-reference"
        )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model: nnx.Module = module.ResNet50(rngs=nnx.Rngs(1))
    return model


def _timed(name: str, model: Any, inputs: Any, targets: Any, setup: BenchSetup) -> Timed:
    if not setup.train:
        model.eval()
        graphdef, state = nnx.split(model)

        def forward(state: Any, images: jax.Array) -> jax.Array:
            result: jax.Array = nnx.merge(graphdef, state)(images)
            return result

        # NOTE: jax.jit over the split state, not nnx.jit: no per-call graph traversal, for either model.
        run = jax.jit(forward) if setup.compile else forward

        def outputs() -> np.ndarray[Any, Any]:
            return np.asarray(run(state, inputs), np.float32)

        def infer() -> None:
            run(state, inputs).block_until_ready()

        return Timed(name, infer, outputs if setup.dtype == "fp32" else None)
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def train_step(state: Any, images: jax.Array, labels: jax.Array) -> tuple[Any, jax.Array]:
        model, optimizer = nnx.merge(graphdef, state)

        def loss_of(model: nnx.Module) -> jax.Array:
            logits = model(images)
            loss: jax.Array = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss

        loss, grads = nnx.value_and_grad(loss_of)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    step_function = jax.jit(train_step, donate_argnums=0) if setup.compile else train_step
    current = [state]

    def train() -> None:
        current[0], loss = step_function(current[0], inputs, targets)
        loss.block_until_ready()

    return Timed(name, train)
