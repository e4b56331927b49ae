"""Jitted forward throughput of rescompile's generated flax ResNet-50 against a hand-written one.

Both models (``rescompile.backends.flax_backend.build_module`` and
``handwritten_flax_resnet50.ResNet50``) get the same weights, are checked to compute the same
logits, and are timed in the same run on jax's default device (the GPU when there is one): eval
mode, fp32, compiled ahead of time by ``jax.jit`` over the split state (no per-call graph
traversal), warm-up calls, then timed calls alternating between the two models, each ended by
``block_until_ready``. It also compares the optimised XLA programs' operation counts, which do
not depend on machine load. Prints
images/s from the median call time and the ratio generated / hand-written (the goal: ≥ 0.98),
and the same ratio for the fastest calls, which a busy machine disturbs less.
Not a test: timings depend on the machine.

Run: ``.venv/bin/python benchmarks/flax_throughput.py [--batch 8] [--size 224] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable

import flax
import jax
import numpy as np
from flax import nnx
from handwritten_flax_resnet50 import ResNet50  # beside this file: python puts its folder on sys.path

from rescompile.backends import flax_backend
from rescompile.compiler import compile_spec

Forward = Callable[[jax.Array], jax.Array]


def compiled_forward(model: nnx.Module, images: jax.Array) -> tuple[Forward, str]:
    """``model(x)`` compiled ahead of time by ``jax.jit`` with the model's state as an argument (not
    a constant), and the optimised XLA program's text."""
    model.eval()
    graphdef, state = nnx.split(model)

    def forward(state: nnx.State, images: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(images)  # type: ignore[no-any-return]

    compiled = jax.jit(forward).lower(state, images).compile()
    return (lambda images: compiled(state, images)), compiled.as_text()


def operations(program: str) -> Counter[str]:
    """How many of each operation an optimised XLA program has (``convolution``, ``fusion``, …)."""
    return Counter(re.findall(r"= \S+ ([a-z][\w-]*)\(", program))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="images per call (default 8)")
    parser.add_argument("--size", type=int, default=224, help="image height and width (default 224)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per model (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per model after compiling (default 3)")
    arguments = parser.parse_args()

    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), jax {jax.__version__}, flax {flax.__version__}")
    print(f"resnet50, batch {arguments.batch}, {arguments.size}×{arguments.size}, fp32, eval mode")

    graph = compile_spec("resnet50", size=arguments.size)
    generated = flax_backend.build_module(graph, seed=0)
    handwritten = ResNet50(rngs=nnx.Rngs(1))
    # The same attribute names give the same state paths: one model's weights load into the other.
    nnx.update(handwritten, nnx.state(generated))
    images = jax.device_put(
        np.random.default_rng(0).standard_normal((arguments.batch, arguments.size, arguments.size, 3), np.float32)
    )
    models = {}
    programs = {}
    for name, model in (("generated (rescompile)", generated), ("hand-written flax.nnx", handwritten)):
        started = time.perf_counter()
        models[name], programs[name] = compiled_forward(model, images)
        print(f"{name}: compiled in {time.perf_counter() - started:.1f} s")
    counts = [operations(program) for program in programs.values()]
    print(
        f"optimised XLA programs: {' and '.join(str(sum(count.values())) for count in counts)} operations, "
        f"same count of every kind: {counts[0] == counts[1]}"
    )

    logits = []
    for forward in models.values():
        logits.append(np.asarray(forward(images).block_until_ready()))
        for _ in range(arguments.warmup):
            forward(images).block_until_ready()
    difference = float(np.abs(logits[0] - logits[1]).max())
    print(f"same weights: logits differ by at most {difference:.2e} (max |logit| {np.abs(logits[1]).max():.3g})")

    # Alternate the two so that drift in machine load affects both alike.
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(arguments.repeats):
        for name, forward in models.items():
            started = time.perf_counter()
            forward(images).block_until_ready()
            seconds[name].append(time.perf_counter() - started)

    throughput = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        throughput[name] = arguments.batch / median
        print(
            f"{name:24s} {throughput[name]:8.1f} images/s  (median {median * 1e3:.1f} ms per batch, "
            f"min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, {len(times)} calls)"
        )
    generated_rate, handwritten_rate = throughput.values()
    generated_best, handwritten_best = (min(times) for times in seconds.values())
    print(f"ratio generated / hand-written: {generated_rate / handwritten_rate:.3f} (goal ≥ 0.98)")
    print(f"ratio of the fastest calls:     {handwritten_best / generated_best:.3f} (less sensitive to machine load)")


if __name__ == "__main__":
    main()
