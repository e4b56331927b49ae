"""``rescompile bench SPEC``: the generated model's speed, beside a reference model in the same run.

The candidate is SPEC compiled for ``--backend`` (torch, flax or onnx). The reference, where one
exists, is the model a user would otherwise run: torchvision's or timm's model of the same name
(torch, and ONNX Runtime on ``torch.onnx.export``'s file of it), or the hand-written Flax ResNet-50
(:mod:`rescompile.handwritten_flax_resnet50`). Both get the same canonical weights and inputs and,
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
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rescompile.arguments import ArgumentParser, parse_seed, parse_size
from rescompile.backends.registry import BACKENDS
from rescompile.check import Progress, refuse_large_batch
from rescompile.compiler.cost import cost
from rescompile.compiler.ir import Graph
from rescompile.compiler.pipeline import compile_spec
from rescompile.compiler.weights import Weights, random_weights
from rescompile.frameworks import import_framework
from rescompile.spec.errors import RescompileError
from rescompile.testing import TOLERANCES, max_differences, within

if TYPE_CHECKING:
    import torch

Step = Callable[[], None]
"""One batch through a model (forward, or a training step), returning when the device is done."""

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
class Timed:
    """A model as the benchmark runs it."""

    name: str
    step: Step
    outputs: Callable[[], np.ndarray[Any, Any]] | None = None
    """One forward pass's output in fp32 (NCHW logits), for checking the pair agree; None in training."""


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
    if options.backend == "onnx" and (options.train or options.compile or options.dtype != "fp32"):
        raise RescompileError("--backend onnx times ONNX Runtime inference in fp32: no --train, --compile or --dtype")
    if options.inference and options.backend == "flax":
        raise RescompileError("--inference applies to --backend torch and onnx (XLA folds BatchNorm itself under jit)")
    if options.channels_last and options.backend != "torch":
        raise RescompileError("--channels-last applies to --backend torch only")
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
    setup = {"torch": _torch_models, "flax": _flax_models, "onnx": _onnx_models}[options.backend]
    device_name, models = setup(graph, weights, images, labels, options)
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


# --- torch ----------------------------------------------------------------------------------------


def torch_reference(name: str) -> torch.nn.Module | None:
    """torchvision's model of this name, else timm's, else None."""
    torchvision: Any = import_framework("torchvision", "bench's reference model (or --no-reference)", "test")
    if name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, weights=None)  # type: ignore[no-any-return]
    try:
        import timm
    except ImportError:
        return None
    return timm.create_model(name, pretrained=False) if timm.is_model(name) else None


def _torch_models(
    graph: Graph,
    weights: Weights,
    images: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    options: argparse.Namespace,
) -> tuple[str, list[Timed]]:
    import torch

    from rescompile.backends import torch_backend

    if options.device == "cuda" and not torch.cuda.is_available():
        raise RescompileError("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    device = torch.device(options.device)
    # NOTE: cuDNN picks its fastest algorithm per shape (for both models); the first steps, untimed, try them.
    torch.backends.cudnn.benchmark = options.device == "cuda"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[options.dtype]
    device_name = (
        torch.cuda.get_device_name(device) if options.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    )
    candidates: list[tuple[str, torch.nn.Module]] = []
    lowered = " --inference" if options.inference else ""
    candidates.append((f"rescompile torch{lowered}", torch_backend.build_module(graph, inference=options.inference)))
    reference = None if options.no_reference else torch_reference(graph.name)
    if reference is not None:
        candidates.append((f"{type(reference).__module__.split('.')[0]} {graph.name}", reference))
    inputs = torch.from_numpy(images).to(device, dtype)
    targets = torch.from_numpy(labels).to(device)
    # NOTE: the lowered model converts its input to channels_last itself (timed); --channels-last
    # gives every model channels_last inputs, as a user tuning torchvision would.
    if options.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    models: list[Timed] = []
    for name, module in candidates:
        try:
            torch_backend.load_weights(module, graph, weights)
        except (RescompileError, RuntimeError) as error:
            print(f"reference {name} skipped: its state_dict does not fit {graph.name} ({error})", file=sys.stderr)
            continue
        module = module.to(device, dtype)
        if options.channels_last:
            module = module.to(memory_format=torch.channels_last)
        models.append(_torch_timed(name, module, inputs, targets, options))
    return device_name, models


def _torch_timed(
    name: str, module: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, options: argparse.Namespace
) -> Timed:
    import torch

    def synchronize() -> None:
        if options.device == "cuda":
            torch.cuda.synchronize()

    module.train(options.train)
    forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(module) if options.compile else module

    def outputs() -> np.ndarray[Any, Any]:
        with torch.inference_mode():
            result: np.ndarray[Any, Any] = forward(inputs).float().cpu().numpy()
        return result

    if not options.train:

        def infer() -> None:
            with torch.inference_mode():
                forward(inputs)
            synchronize()

        return Timed(name, infer, outputs if options.dtype == "fp32" else None)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(forward(inputs), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        synchronize()

    return Timed(name, train)


# --- flax -----------------------------------------------------------------------------------------


def _flax_models(
    graph: Graph,
    weights: Weights,
    images: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    options: argparse.Namespace,
) -> tuple[str, list[Timed]]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rescompile.backends import flax_backend

    try:
        device = jax.devices("gpu" if options.device == "cuda" else "cpu")[0]
    except RuntimeError:
        raise RescompileError(
            "--device cuda: jax sees no GPU here (a CUDA jaxlib is needed); use --device cpu"
        ) from None
    dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}[options.dtype]
    generated = flax_backend.module_for_weights(graph)
    flax_backend.load_weights(generated, graph, weights)
    candidates: list[tuple[str, nnx.Module]] = [("rescompile flax", generated)]
    if graph.name == "resnet50" and graph.output_shape == (1000,) and not options.no_reference:
        from rescompile.handwritten_flax_resnet50 import ResNet50

        handwritten = ResNet50(rngs=nnx.Rngs(1))
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
        models.append(_flax_timed(name, model, inputs, targets, options))
    return f"{device.platform} ({device.device_kind})", models


def _flax_timed(name: str, model: Any, inputs: Any, targets: Any, options: argparse.Namespace) -> Timed:
    import jax
    import optax  # type: ignore[import-untyped]
    from flax import nnx

    if not options.train:
        model.eval()
        graphdef, state = nnx.split(model)

        def forward(state: Any, images: jax.Array) -> jax.Array:
            result: jax.Array = nnx.merge(graphdef, state)(images)
            return result

        # NOTE: jax.jit over the split state, not nnx.jit: no per-call graph traversal, for either model.
        run = jax.jit(forward) if options.compile else forward

        def outputs() -> np.ndarray[Any, Any]:
            return np.asarray(run(state, inputs), np.float32)

        def infer() -> None:
            run(state, inputs).block_until_ready()

        return Timed(name, infer, outputs if options.dtype == "fp32" else None)
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

    step_function = jax.jit(train_step, donate_argnums=0) if options.compile else train_step
    current = [state]

    def train() -> None:
        current[0], loss = step_function(current[0], inputs, targets)
        loss.block_until_ready()

    return Timed(name, train)


# --- onnx -----------------------------------------------------------------------------------------


def _onnx_models(
    graph: Graph,
    weights: Weights,
    images: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    options: argparse.Namespace,
) -> tuple[str, list[Timed]]:
    import io

    onnxruntime: Any = import_framework("onnxruntime", "bench --backend onnx", "onnx")

    from rescompile.backends import onnx_backend

    provider = "CUDAExecutionProvider" if options.device == "cuda" else "CPUExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        raise RescompileError("--device cuda: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    names = [f"rescompile onnx{' --inference' if options.inference else ''}"]
    sources = [onnx_backend.emit_model(graph, weights, fold_bn=options.inference).to_bytes()]
    reference = None if options.no_reference else torch_reference(graph.name)
    if reference is not None:
        import torch

        from rescompile.backends import torch_backend

        torch_backend.load_weights(reference, graph, weights)
        buffer: Any = io.BytesIO()  # NOTE: export's annotation names paths only; it writes file objects too
        example = torch.from_numpy(images)
        batch = {0: "batch"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter: the baseline, on purpose
            torch.onnx.export(
                reference.eval(),
                (example,),
                buffer,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": batch, "output": batch},
                dynamo=False,
            )
        names.append(f"torch.onnx.export {graph.name}")
        sources.append(buffer.getvalue())
    session_options = onnxruntime.SessionOptions()
    session_options.log_severity_level = 3  # errors only
    models = []
    for name, source in zip(names, sources, strict=True):
        models.append(
            _onnx_timed(name, onnxruntime.InferenceSession(source, session_options, providers=[provider]), images)
        )
    return f"{options.device} (onnxruntime {onnxruntime.__version__}, {provider})", models


def _onnx_timed(name: str, session: Any, images: np.ndarray[Any, Any]) -> Timed:
    feed = {session.get_inputs()[0].name: images}

    def outputs() -> np.ndarray[Any, Any]:
        return np.asarray(session.run(None, feed)[0], np.float32)

    def step() -> None:
        session.run(None, feed)

    return Timed(name, step, outputs)
