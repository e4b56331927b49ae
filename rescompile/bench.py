"""``rescompile bench SPEC``: the generated model's speed, beside a reference model in the same run.

The candidate is SPEC compiled for ``--backend`` (torch, flax or onnx). The reference, where one
exists, is the model a user would otherwise run: torchvision's or timm's model of the same name
(torch, and ONNX Runtime on ``torch.onnx.export``'s file of it), or the hand-written Flax ResNet-50
(``benchmarks/handwritten_flax_resnet50.py``). Each backend sets its pair up itself
(:meth:`rescompile.backends.interface.Runtime.bench_models`). Both get the same canonical weights and inputs and,
in fp32, are first checked to compute the same outputs.

Timing: ``--warmup`` untimed steps each (compilation happens there), then ``--rounds`` rounds,
each timing one step of both models, their order alternating from round to round, so that drift
in the machine's load falls on both alike. Each step ends by waiting for the device. Printed: the
median milliseconds per batch with the interquartile range (the spread), images per second from
the median, and achieved TFLOP/s. FLOPs are the cost pass's MACs × 2 per image (a multiply-add
is two FLOPs); a training step (forward, backward, SGD update) counts as 3 × the forward's FLOPs,
the usual convention (the backward computes gradients of inputs and of weights, each about one
forward). On a GPU whose name is in :data:`PEAK_TFLOPS`, also the fraction of its peak.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rescompile.arguments import ArgumentParser, parse_seed, parse_size
from rescompile.backends.interface import BenchSetup, Timed
from rescompile.backends.registry import BACKENDS
from rescompile.check import Progress, refuse_large_batch
from rescompile.compiler.cost import cost
from rescompile.compiler.pipeline import compile_spec
from rescompile.compiler.weights import random_weights
from rescompile.spec.errors import RescompileError
from rescompile.testing import TOLERANCES, max_differences, within

PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    # Dense tensor-core peaks from NVIDIA's data sheets (no sparsity); fp32 is the plain (non-TF32)
    # rate. The first entry whose text is in the device's name applies.
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
)
"""Device name text -> peak TFLOP/s per ``--dtype``."""

DTYPES = ("fp32", "bf16", "fp16")
TRAINING_FLOPS_FACTOR = 3


@dataclass(frozen=True)
class Result:
    name: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> tuple[float, float]:
        """The interquartile range of the step times, in seconds."""
        if len(self.seconds) < 2:
            return self.seconds[0], self.seconds[0]
        quartiles = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return quartiles[0], quartiles[2]


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """The peak of a device by its name (:data:`PEAK_TFLOPS`), None when it is not listed."""
    return next((peaks[dtype] for text, peaks in PEAK_TFLOPS if text in device_name), None)


def parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="rescompile bench",
        description="Time SPEC's generated model, interleaved with a reference model of the same name "
        "(torchvision or timm; hand-written Flax for resnet50) in the same run, and print the ratio.",
    )
    parser.add_argument("spec", help="a network spec file or a built-in name such as resnet50")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="the generated model (default: torch)")
    parser.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--size", type=parse_size, help="override the spec's input size, e.g. 160 or 224x160")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights and activations (default fp32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    parser.add_argument("--train", action="store_true", help="time training steps: forward, backward, SGD update")
    parser.add_argument("--compile", action="store_true", help="torch.compile (torch) or jax.jit (flax) both models")
    parser.add_argument(
        "--inference",
        action="store_true",
        help="the generated model lowered for inference (torch: BatchNorm folded, channels_last; onnx: folded)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="torch: both models and inputs in channels_last memory format"
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each model first (default 3)")
    parser.add_argument("--no-reference", action="store_true", help="time the generated model alone")
    parser.add_argument("--seed", type=parse_seed, default=0, help="seed of the weights and inputs (default 0)")
    return parser


def _refuse_combinations(options: argparse.Namespace) -> None:
    if options.batch < 1 or options.rounds < 1 or options.warmup < 0:
        raise RescompileError("--batch and --rounds must be at least 1, --warmup at least 0")
    if options.inference and options.train:
        raise RescompileError("--inference lowers a model for evaluation (BatchNorm folded away); drop --train")
    given = {
        "train": options.train,
        "compile": options.compile,
        "dtype": options.dtype != "fp32",
        "inference": options.inference,
        "channels_last": options.channels_last,
    }
    for switch, used in given.items():
        if used and switch not in BACKENDS[options.backend].bench_options:
            takers = [name for name, backend in BACKENDS.items() if switch in backend.bench_options]
            flag = f"--{switch.replace('_', '-')}"
            raise RescompileError(
                f"{flag} applies to --backend {' and '.join(takers)}{'' if len(takers) > 1 else ' only'}, "
                f"not {options.backend}"
            )
    if options.dtype == "fp16" and options.device == "cpu":
        raise RescompileError(
            "--dtype fp16 needs --device cuda (CPU half-precision kernels are missing or slow); use --dtype bf16"
        )


MAX_BENCH_VALUES = 2**35
"""The most activation values (batch × every node's output) a benchmarked batch may have: 128 GiB
in fp32, beyond any one device (resnet50 at batch 256, 224×224, has 9.6e9)."""


def main(arguments: Sequence[str]) -> int:
    options = parser().parse_args(arguments)
    _refuse_combinations(options)
    graph = compile_spec(options.spec, options.size)
    refuse_large_batch(graph, options.batch, MAX_BENCH_VALUES, 128)
    BACKENDS[options.backend].op_kinds()  # a missing framework is one line, before anything else
    weights = random_weights(graph, options.seed)
    images = np.random.default_rng(options.seed).standard_normal((options.batch, *graph.input_shape), np.float32)
    labels = np.random.default_rng(options.seed + 1).integers(0, graph.output_shape[0], options.batch)
    setup = BenchSetup(
        options.batch,
        options.dtype,
        options.device,
        train=options.train,
        compile=options.compile,
        inference=options.inference,
        channels_last=options.channels_last,
        reference=not options.no_reference,
    )
    device_name, models = BACKENDS[options.backend].bench_models(graph, weights, images, labels, setup)
    flops = 2 * cost(graph).macs * options.batch * (TRAINING_FLOPS_FACTOR if options.train else 1)
    mode = "training step (forward, backward, SGD)" if options.train else "inference (eval mode)"
    extras = [word for word, on in (("compiled", options.compile), ("lowered", options.inference)) if on]
    extras += ["channels_last"] if options.channels_last else []
    shape = "×".join(map(str, graph.input_shape[1:]))
    print(f"{graph.name}: {options.backend}, {mode}, batch {options.batch}, {shape}, {options.dtype}")
    print(f"device: {device_name}{''.join(f', {extra}' for extra in extras)}")
    if len(models) == 2:
        _check_agreement(models)
    results = _run(models, options.warmup, options.rounds)
    peak = peak_tflops(device_name, options.dtype) if options.device == "cuda" else None
    for result in results:
        achieved = flops / result.median / 1e12
        low, high = result.spread
        line = (
            f"{result.name:<34} images/s {options.batch / result.median:9.1f}  ms/batch {result.median * 1e3:8.2f} "
            f"(IQR {low * 1e3:.2f}-{high * 1e3:.2f}, {len(result.seconds)} rounds)  TFLOP/s {achieved:.3f}"
        )
        if peak is not None:
            line += f"  of peak {100 * achieved / peak:.1f}% ({peak:g})"
        print(line)
    if len(results) == 2:
        candidate, reference = results
        print(f"ratio {candidate.name} / {reference.name}: {reference.median / candidate.median:.3f} (images/s)")
    factor = f"× {TRAINING_FLOPS_FACTOR} for a training step" if options.train else "per forward"
    print(f"FLOPs: 2 per MAC of the cost pass, {flops / options.batch / 1e9:.2f} GFLOPs per image ({factor})")
    return 0


def _check_agreement(models: list[Timed]) -> None:
    """In fp32 inference, the candidate and the reference must compute the same function first."""
    candidate, reference = models
    if candidate.outputs is None or reference.outputs is None:
        return
    actual, expected = candidate.outputs(), reference.outputs()
    max_abs = max_differences(actual, expected)[0]
    if not within(actual, expected, TOLERANCES["network"]):
        raise RescompileError(
            f"{candidate.name} and {reference.name} disagree (max abs difference {max_abs:.3g}); not timing them"
        )
    print(f"outputs agree: max abs difference {max_abs:.2e}")


def _run(models: list[Timed], warmup: int, rounds: int) -> list[Result]:
    for model in models:
        for _ in range(warmup):
            model.step()
    seconds: dict[str, list[float]] = {model.name: [] for model in models}
    progress = Progress(rounds)
    try:
        for index in range(rounds):
            # Alternate the order, so that neither model always runs right after the other.
            for model in models if index % 2 == 0 else models[::-1]:
                started = time.perf_counter()
                model.step()
                seconds[model.name].append(time.perf_counter() - started)
            progress.step(" ".join(f"{name} {statistics.median(t) * 1e3:.1f} ms" for name, t in seconds.items()))
    finally:
        progress.close()  # an error (or Ctrl-C) then stands on a line of its own
    return [Result(model.name, seconds[model.name]) for model in models]
