"""``rescompile check``: compile one spec to several backends, give them the same weights and
inputs, and prove they compute the same function — or name the first block where they do not.

Each backend is one entry of :data:`~rescompile.backends.registry.BACKENDS`, whose
``module_outputs`` builds the model from the graph, loads the canonical weights, runs the input in
fp32 eval mode, and returns every module's output (``stem``, each block by canonical path
``layer1.0``, ``head``) in torch layout (NCHW).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from rescompile.arguments import ArgumentParser, parse_seed, parse_size
from rescompile.backends.interface import Outputs, module_names
from rescompile.backends.registry import BACKENDS
from rescompile.backends.surface import FeaturePoint, feature_node, feature_points
from rescompile.compiler.cost import cost
from rescompile.compiler.ir import Graph
from rescompile.compiler.pipeline import compile_spec
from rescompile.compiler.weights import Weights, check_weights, random_weights, read_weights
from rescompile.spec.errors import RescompileError
from rescompile.testing import TOLERANCES, Tolerance, max_differences, within

MAX_CHECK_VALUES = 2**30
"""The most activation values (batch × every node's output) one backend may compute in a check."""

MAX_TRAIN_STEPS = 10_000
"""The most steps ``check --train-steps`` takes (each keeps its loss; a float64 step of resnet20
takes about a tenth of a second on a CPU)."""

TRAINING_BACKENDS = tuple(name for name, backend in BACKENDS.items() if backend.trains)
"""The backends ``check --train-steps`` trains: ONNX Runtime runs inference only."""


def refuse_large_batch(graph: Graph, batch: int, limit: int, gib: int) -> None:
    """Refuse a ``--batch`` whose activations (batch × every node's output) pass ``limit`` values
    (``gib`` GiB in fp32), before anything is allocated."""
    values = batch * cost(graph).activations
    if values > limit:
        raise RescompileError(
            f"--batch {batch} needs {values:,} activation values per backend, over the limit of "
            f"{limit:,} ({gib} GiB in fp32); use a smaller --batch or --size"
        )


@dataclass(frozen=True)
class FeatureResult:
    """How two backends compare at one feature map of timm's ``feature_info`` (``layer2``)."""

    module: str
    max_abs: float
    agree: bool


@dataclass(frozen=True)
class PairResult:
    """How two backends compare: at the output, the first module over tolerance, and every feature
    map the backends all compute (:func:`feature_outputs`)."""

    first: str
    second: str
    output_max_abs: float
    output_max_rel: float
    first_mismatch: str | None
    mismatch_max_abs: float
    features: tuple[FeatureResult, ...] = ()

    @property
    def agree(self) -> bool:
        return self.first_mismatch is None and all(feature.agree for feature in self.features)


def feature_outputs(graph: Graph) -> dict[str, str | None]:
    """timm's feature maps of ``graph`` (``feature_info``'s module names, in order) -> the module
    output that is that map in :data:`~rescompile.backends.interface.Outputs` (a stage's map is its
    last block's output, a stem map at the stem's end is ``stem``); None for a map inside the stem
    (ResNet's ``act1``), which only the torch model exposes (Flax runs its stem whole)."""

    def output(point: FeaturePoint) -> str | None:
        index, node = feature_node(graph, point)
        if index == 0:
            return "stem" if node == graph.modules[0].output else None
        return graph.modules[index].path

    return {point.module: output(point) for point in feature_points(graph)}


@dataclass(frozen=True)
class CheckResult:
    graph: Graph
    backends: tuple[str, ...]
    tolerance: Tolerance
    pairs: tuple[PairResult, ...]
    seconds: dict[str, float]

    @property
    def agree(self) -> bool:
        return all(pair.agree for pair in self.pairs)


class Progress:
    """One status line on stderr, rewritten in place, on a terminal only: in a log or a pipe a
    progress line would stand before an error and make it two lines."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()

    def step(self, message: str) -> None:
        self.done += 1
        filled = round(20 * self.done / self.total)
        line = f"[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} {message}"
        if self.live:
            self.stream.write(f"\r\033[K{line}")
            self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()


def compare(graph: Graph, first: str, second: str, a: Outputs, b: Outputs, tolerance: Tolerance) -> PairResult:
    """Compare module by module in network order; the output is the head's."""
    mismatch: str | None = None
    mismatch_abs = 0.0
    for name in module_names(graph):
        if not within(a[name], b[name], tolerance):
            mismatch = name
            mismatch_abs = max_differences(a[name], b[name])[0]
            break
    output_abs, output_rel = max_differences(a["head"], b["head"])
    features = tuple(
        FeatureResult(module, max_differences(a[name], b[name])[0], within(a[name], b[name], tolerance))
        for module, name in feature_outputs(graph).items()
        if name is not None
    )
    return PairResult(first, second, output_abs, output_rel, mismatch, mismatch_abs, features)


def check(
    graph: Graph,
    backends: Sequence[str],
    weights: Mapping[str, Weights],
    inputs: npt.NDArray[np.float32],
    tolerance: Tolerance,
    progress: Progress | None = None,
) -> CheckResult:
    """Run ``inputs`` through every backend with its weights (normally one set for all) and compare
    every pair. ``weights`` maps backend name to canonical weights."""
    outputs: dict[str, Outputs] = {}
    seconds: dict[str, float] = {}
    for backend in backends:
        if progress is not None:
            progress.step(f"building and running {backend}")
        started = time.perf_counter()
        outputs[backend] = BACKENDS[backend].module_outputs(graph, weights[backend], inputs)
        seconds[backend] = time.perf_counter() - started
    pairs = tuple(
        compare(graph, first, second, outputs[first], outputs[second], tolerance)
        for first, second in combinations(backends, 2)
    )
    if progress is not None:
        progress.step("compared")
    return CheckResult(graph, tuple(backends), tolerance, pairs, seconds)


def format_result(result: CheckResult) -> str:
    graph = result.graph
    lines = [
        f"{graph.name}: input {'×'.join(map(str, graph.input_shape))}, {len(graph.blocks)} blocks, "
        f"tolerance atol={result.tolerance.atol:g} rtol={result.tolerance.rtol:g} (fp32)",
        f"{'pair':<14} {'output max abs':>14} {'output max rel':>14}  first block over tolerance",
    ]
    for pair in result.pairs:
        where = (
            "none" if pair.first_mismatch is None else f"{pair.first_mismatch} (max abs {pair.mismatch_max_abs:.3e})"
        )
        lines.append(
            f"{pair.first + ' / ' + pair.second:<14} {pair.output_max_abs:>14.3e} {pair.output_max_rel:>14.3e}  {where}"
        )
    lines += _feature_lines(result)
    timing = ", ".join(f"{backend} {seconds:.1f} s" for backend, seconds in result.seconds.items())
    lines.append(f"{'all backends agree' if result.agree else 'MISMATCH'} ({timing})")
    return "\n".join(lines)


def _feature_lines(result: CheckResult) -> list[str]:
    """One line per feature map of timm's ``feature_info``: each pair's max abs difference there,
    ``ok`` or ``OVER``; a map inside the stem is named as not compared."""
    outputs = feature_outputs(result.graph)
    if not outputs or not result.pairs:
        return []
    lines = [f"{'feature map':<14} " + " ".join(f"{pair.first + ' / ' + pair.second:>19}" for pair in result.pairs)]
    by_pair = [{feature.module: feature for feature in pair.features} for pair in result.pairs]
    for module, name in outputs.items():
        if name is None:
            lines.append(f"{module:<14} not compared: inside the stem, which the Flax model runs whole")
            continue
        cells = [by_module[module] for by_module in by_pair]
        lines.append(
            f"{module:<14} " + " ".join(f"{cell.max_abs:>14.3e} {'ok' if cell.agree else 'OVER':>4}" for cell in cells)
        )
    return lines


def _backends(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or len(names) < 2 or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected two or more of {','.join(BACKENDS)}, got {text!r}")
    return names


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        # A NaN tolerance made every comparison pass: 'all backends agree' whatever they computed.
        raise argparse.ArgumentTypeError(f"expected a finite tolerance of at least 0, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    result = ArgumentParser(
        prog="rescompile check",
        description="Compile SPEC to several backends, load the same weights, run the same inputs and compare "
        "them module by module. Exit status 0 when all agree within tolerance, 1 otherwise.",
    )
    result.add_argument("spec", help="a spec file or a built-in name")
    result.add_argument(
        "--backends",
        type=_backends,
        help=f"comma-separated (default: all; with --train-steps, {','.join(TRAINING_BACKENDS)}, the ones it trains)",
    )
    result.add_argument("--seed", type=parse_seed, default=0, help="seed of the random weights and inputs (default 0)")
    result.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    result.add_argument("--size", type=parse_size, help="input size (default: the spec's)")
    result.add_argument("--weights", type=Path, help="canonical weights (.safetensors); default: random, seeded")
    result.add_argument(
        "--train-steps",
        type=int,
        help="instead: train N steps of SGD (lr 0.1, momentum 0.9, weight decay 1e-4) in "
        f"{' and '.join(TRAINING_BACKENDS)} from the same weights on the same batches, in float64, and compare "
        "every loss, weight and running statistic "
        f"(tolerance {TRAINING_TOLERANCE.rtol:g} of scale)",
    )
    network = TOLERANCES["network"]
    result.add_argument(
        "--atol", type=_tolerance, default=network.atol, help=f"absolute tolerance (default {network.atol:g})"
    )
    result.add_argument(
        "--rtol", type=_tolerance, default=network.rtol, help=f"relative tolerance (default {network.rtol:g})"
    )
    return result


def main(arguments: Sequence[str]) -> int:
    options = parser().parse_args(arguments)
    if options.batch < 1:
        raise RescompileError(f"--batch must be at least 1, got {options.batch}")
    if options.train_steps is not None:
        return _train_check(options)
    if options.backends is None:
        options.backends = list(BACKENDS)
    progress = Progress(total=len(options.backends) + 2)
    progress.step(f"compiling {options.spec}")
    try:
        graph = compile_spec(options.spec, options.size)
        refuse_large_batch(graph, options.batch, MAX_CHECK_VALUES, 4)
        weights = read_weights(options.weights) if options.weights else random_weights(graph, options.seed)
        check_weights(graph, weights)
        generator = np.random.default_rng(options.seed + 1)
        inputs = generator.standard_normal((options.batch, *graph.input_shape)).astype(np.float32)
        result = check(
            graph,
            options.backends,
            dict.fromkeys(options.backends, weights),
            inputs,
            Tolerance(options.atol, options.rtol),
            progress,
        )
    finally:
        progress.close()
    print(format_result(result))
    return 0 if result.agree else 1


TRAINING_TOLERANCE = Tolerance(atol=1e-6, rtol=1e-6)
"""float64 training in torch and Flax agrees to ~1e-12 in losses and ~1e-8 in weights (resnet20,
plain20, resnet18, 10 steps). NOTE: float64 because float32 cannot show it: these nets' float32
gradients are ~1% from their own float64 ones in torch alone (plain20, batch 16), and SGD at lr
0.1 amplifies that step by step."""


def _train_check(options: argparse.Namespace) -> int:
    """Every backend that trains, from the same weights on the same batches; each compared with the first."""
    from rescompile.training import batches, compare, train

    if not 1 <= options.train_steps <= MAX_TRAIN_STEPS:
        raise RescompileError(f"--train-steps must be from 1 to {MAX_TRAIN_STEPS:,}, got {options.train_steps:,}")
    trainers = " and ".join(TRAINING_BACKENDS)
    if options.backends is not None and sorted(options.backends) != sorted(TRAINING_BACKENDS):
        raise RescompileError(
            f"--train-steps compares {trainers} (the backends that train); got --backends {','.join(options.backends)}"
        )
    for backend in TRAINING_BACKENDS:
        BACKENDS[backend].op_kinds()  # a missing or broken framework is one line, before anything else
    progress = Progress(total=1 + len(TRAINING_BACKENDS))
    try:
        progress.step(f"compiling {options.spec}")
        graph = compile_spec(options.spec, options.size)
        batch = max(options.batch, 2)  # BatchNorm in training needs two values per channel
        refuse_large_batch(graph, batch, MAX_CHECK_VALUES, 4)
        weights = read_weights(options.weights) if options.weights else random_weights(graph, options.seed)
        check_weights(graph, weights)
        data = batches(graph, options.train_steps, batch, options.seed + 1)
        runs = {}
        for backend in TRAINING_BACKENDS:
            progress.step(f"training {backend}, {options.train_steps} steps")
            runs[backend] = train(backend, graph, weights, data, float64=True)
    finally:
        progress.close()
    reference, *others = TRAINING_BACKENDS
    print(f"{'step':>4}" + "".join(f"  {f'{backend} loss':>14}" for backend in TRAINING_BACKENDS))
    for index, losses in enumerate(zip(*(run.losses for run in runs.values()), strict=True)):
        print(f"{index + 1:>4}" + "".join(f"  {loss:>14.8f}" for loss in losses))
    agree = True
    for other in others:
        comparison = compare(runs[reference], runs[other], TRAINING_TOLERANCE)
        print(
            f"losses within {comparison.loss_max_relative:.1e} of scale; weights and running statistics within "
            f"{comparison.weights_max_relative:.1e} (worst: {comparison.worst_weight})"
        )
        if comparison.first_mismatch is not None:
            print(f"{reference} and {other} diverge first at {comparison.first_mismatch}")
            agree = False
    if not agree:
        return 1
    print(f"{trainers} train alike ({options.train_steps} steps, float64)")
    return 0
