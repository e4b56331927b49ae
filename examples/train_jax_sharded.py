"""Data-parallel training of the generated Flax model with ``jax.sharding`` across devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python examples/train_jax_sharded.py --steps 30

On CPU the flag makes two host devices (this script sets it when it is absent); on GPUs or TPUs
every device is used as it is. rescompile only builds the model (``rescompile.create_model(...,
backend="flax")``); the mesh, the shardings, optax and ``nnx.jit`` are JAX's and Flax's. The batch
is split over the mesh's ``data`` axis, the weights are replicated, and XLA inserts the gradient
all-reduce (and BatchNorm's global batch statistics). The data is a fixed synthetic set (no
download). At the end the script checks that every device's replica of every weight is identical
and that the loss fell; the exit status says whether both held.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import rescompile


def synthetic_data(samples: int, size: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded NHWC images and labels, a fixed function of the images (balanced classes)."""
    images = np.random.default_rng(0).standard_normal((samples, size, size, 3)).astype(np.float32)
    labels = images.mean(axis=(1, 2, 3)).argsort().argsort() * classes // samples
    return images, labels.astype(np.int32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="resnet20", help="a built-in name or a spec file (default: resnet20)")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps (default: 30)")
    parser.add_argument("--batch", type=int, default=16, help="images per device per step (default: 16)")
    parser.add_argument("--size", type=int, default=32, help="input height and width (default: 32)")
    options = parser.parse_args()

    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    split = NamedSharding(mesh, PartitionSpec("data"))

    model = rescompile.create_model(options.spec, backend="flax", num_classes=10, input_size=options.size)
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
    # Every weight and optimiser state replicated on every device.
    state = nnx.state((model, optimizer))
    nnx.update((model, optimizer), jax.device_put(state, replicated))

    @nnx.jit
    def train_step(model: nnx.Module, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array) -> jax.Array:
        def loss_function(model: nnx.Module) -> jax.Array:
            logits = model(images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_function)(model)
        optimizer.update(model, grads)
        return loss

    global_batch = options.batch * len(devices)
    images, labels = synthetic_data(global_batch * 4, options.size, classes=10)
    order = np.random.default_rng(1)
    losses: list[float] = []
    for step in range(1, options.steps + 1):
        chosen = order.choice(len(images), global_batch, replace=False)
        batch = jax.device_put(jnp.asarray(images[chosen]), split)
        target = jax.device_put(jnp.asarray(labels[chosen]), split)
        losses.append(float(train_step(model, optimizer, batch, target)))
        if step % 10 == 0 or step == options.steps:
            print(f"step {step:4d}  loss {losses[-1]:.4f}", flush=True)

    # Each device holds a full replica of each weight: they must be the same numbers.
    identical = all(
        len(value.addressable_shards) == len(devices)
        and all(
            np.array_equal(np.asarray(shard.data), np.asarray(value.addressable_shards[0].data))
            for shard in value.addressable_shards
        )
        for value in jax.tree.leaves(nnx.state(model, nnx.Param))
    )
    fell = sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    print(f"{len(devices)} devices; replicas identical: {identical}; loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return 0 if identical and fell and len(devices) > 1 else 1


if __name__ == "__main__":
    sys.exit(main())
