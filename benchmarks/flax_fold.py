"""Does folding BatchNorm into the convolutions speed up a jitted Flax ResNet-50 (eval mode)?

Issue #12 asks for the torch backend's inference lowering in Flax too, where it helps. This times
the hand-written Flax ResNet-50 (``handwritten_flax_resnet50.py`` beside it) against the same
network with every BatchNorm folded into its conv (a conv with a bias, no BatchNorm), both
compiled by ``jax.jit`` over their split state (weights are arguments, not constants, as when a
model is served), interleaved, in one run. The folded weights are random: only speed is measured.

Run: ``.venv/bin/python benchmarks/flax_fold.py [--batch 8] [--size 224] [--rounds 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import handwritten_flax_resnet50 as handwritten  # beside this file: python puts its folder on sys.path
import jax
import numpy as np
from flax import nnx


def folded_resnet50() -> nnx.Module:
    """The hand-written ResNet-50 built with biased convs and no BatchNorm (its helpers swapped)."""
    plain_conv, plain_batch_norm = handwritten.conv, handwritten.batch_norm

    def biased_conv(in_features: int, out_features: int, kernel: int, stride: int, *, rngs: nnx.Rngs) -> nnx.Conv:
        padding = kernel // 2
        return nnx.Conv(
            in_features,
            out_features,
            kernel_size=(kernel, kernel),
            strides=stride,
            padding=((padding, padding), (padding, padding)),
            use_bias=True,
            rngs=rngs,
        )

    def no_batch_norm(features: int, *, rngs: nnx.Rngs) -> Any:
        return lambda x: x

    handwritten.conv, handwritten.batch_norm = biased_conv, no_batch_norm  # type: ignore[assignment]
    try:
        return handwritten.ResNet50(rngs=nnx.Rngs(0))
    finally:
        handwritten.conv, handwritten.batch_norm = plain_conv, plain_batch_norm


def compiled(model: nnx.Module, images: jax.Array) -> Callable[[], None]:
    model.eval()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, images: nnx.merge(graphdef, state)(images)).lower(state, images).compile()
    return lambda: forward(state, images).block_until_ready()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=20)
    arguments = parser.parse_args()
    images = jax.numpy.asarray(
        np.random.default_rng(0).standard_normal((arguments.batch, arguments.size, arguments.size, 3), np.float32)
    )
    models = {
        "with BatchNorm": compiled(handwritten.ResNet50(rngs=nnx.Rngs(0)), images),
        "BatchNorm folded": compiled(folded_resnet50(), images),
    }
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for step in models.values():
        for _ in range(3):
            step()
    for index in range(arguments.rounds):
        for name, step in models.items() if index % 2 == 0 else reversed(models.items()):
            started = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - started)
    device = jax.devices()[0]
    print(f"resnet50, batch {arguments.batch}, {arguments.size}×{arguments.size}, fp32, jax.jit, {device.platform}")
    for name, times in seconds.items():
        print(f"{name:18s} median {statistics.median(times) * 1e3:8.1f} ms per batch ({len(times)} rounds)")
    ratio = statistics.median(seconds["with BatchNorm"]) / statistics.median(seconds["BatchNorm folded"])
    print(f"speed-up from folding: {ratio:.3f}")


if __name__ == "__main__":
    main()
