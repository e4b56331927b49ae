"""Direct ONNX emission from the IR against torch.onnx.export of the same torch model.

For one architecture (resnet152 by default) and one set of weights this times, in one run:

* direct: ``emit_model`` + serialisation (the IR is compiled once beforehand, and timed apart),
  with BatchNorm kept (the default) and folded (``fold_bn=True``);
* onnx-ir: the same emitted model serialised by onnx-ir (``onnx_ir.save``, ``onnx_ir.to_proto``)
  instead of the backend's hand-framed protobuf, BatchNorm kept and folded: the alternative that
  issue #9 asked to compare (:func:`onnx_ir_model`; onnx-ir comes with onnxscript, a test extra);
* the legacy TorchScript exporter, ``torch.onnx.export(..., dynamo=False)``, which folds BatchNorm
  into the convs of an eval-mode model, so ``fold_bn`` is its like-for-like counterpart;
* the dynamo exporter, ``torch.onnx.export(..., dynamo=True)``, where it works;

each both to a file (``save_model``; ``torch.onnx.export(model, args, path)``) and to bytes in
memory (``OnnxModel.to_bytes``; an ``io.BytesIO``; ``ONNXProgram.model_proto``), and prints the
time ratios, the file sizes and ONNX Runtime's latency on each file (same input, CPU provider,
warm-up runs, then the median of timed runs interleaved across the files). Not a test: timings
depend on the machine. Run: ``.venv/bin/python benchmarks/onnx_emit.py [--architecture NAME]``.
On cores shared with other work, prefix ``OMP_NUM_THREADS=1``: torch's OpenMP threads then cannot
wait on each other, which made the legacy exporter's times vary several-fold (README.md, ONNX).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx_ir

    from rescompile.backends.onnx_backend import OnnxModel


@dataclass
class Emitter:
    name: str
    to_file: Callable[[Path], object]
    in_memory: Callable[[], object]
    file_times: list[float] = field(default_factory=list)
    memory_times: list[float] = field(default_factory=list)
    error: str | None = None
    path: Path | None = None
    size: int = 0
    latencies: list[float] = field(default_factory=list)
    difference: float = float("nan")

    @property
    def file_seconds(self) -> float:
        return statistics.median(self.file_times)

    @property
    def memory_seconds(self) -> float:
        return statistics.median(self.memory_times)

    @property
    def latency(self) -> float:
        return statistics.median(self.latencies)


def slug(name: str) -> str:
    return "".join(character if character.isalnum() else "-" for character in name).strip("-")


def file_size(path: Path) -> int:
    # Count every file belonging to the model, should an exporter put weights in PATH.data.
    return sum(candidate.stat().st_size for candidate in path.parent.glob(f"{path.name}*"))


def timed(action: Callable[[], object]) -> float:
    # The exporters print progress and warnings; keep the report readable.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        start = time.perf_counter()
        action()
        return time.perf_counter() - start


def session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_ir_model(model: OnnxModel) -> onnx_ir.Model:
    """``model`` as an onnx-ir Model whose initializers wrap the emitted arrays (no copy); folded
    weights are computed when serialised, as the backend does. Serialised, its bytes are the
    backend's (onnx.helper sorts attributes, onnx-ir keeps their order: the emitted ones are sorted).
    """
    import onnx_ir as ir

    from rescompile.backends.onnx_backend import ScaledWeight

    converted = ir.serde.deserialize_model(model.skeleton)
    for value, data in zip(converted.graph.initializers.values(), model.data, strict=True):
        # Deserialising typed each initializer's value, which onnx-ir would write as value_info too.
        value.type, value.shape = None, None
        if isinstance(data, ScaledWeight):
            shape = ir.Shape(data.shape)
            value.const_value = ir.LazyTensor(lambda data=data: ir.Tensor(data.compute()), ir.DataType.FLOAT, shape)
        else:
            value.const_value = ir.Tensor(data)
    return converted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--architecture", default="resnet152", help="built-in name or spec file (default resnet152)")
    parser.add_argument("--size", type=int, default=None, help="input height and width (default: the spec's)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the ORT latency input (default 1)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset for every file (default: the backend's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each emission (median; default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed ORT runs per file (default 3)")
    parser.add_argument("--runs", type=int, default=20, help="timed ORT runs per file (median; default 20)")
    parser.add_argument("--skip-dynamo", action="store_true", help="leave out the dynamo exporter (the slowest)")
    parser.add_argument("--keep", type=Path, default=None, help="write the files to this folder and keep them")
    arguments = parser.parse_args(argv)

    import onnx_ir
    import onnxruntime
    import torch

    from rescompile.backends.onnx_backend import DEFAULT_OPSET, emit_model, save_model
    from rescompile.backends.torch_backend import build_module, load_weights
    from rescompile.compiler.pipeline import compile_spec
    from rescompile.compiler.weights import random_weights

    opset = arguments.opset or DEFAULT_OPSET
    start = time.perf_counter()
    graph = compile_spec(arguments.architecture, size=arguments.size)
    compile_seconds = time.perf_counter() - start
    weights = random_weights(graph)
    model = build_module(graph)
    load_weights(model, graph, weights)
    model.eval()
    x = np.random.default_rng(0).standard_normal((arguments.batch, *graph.input_shape)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    example = (torch.from_numpy(x),)

    statistics_names = ("running_mean", "running_var")
    parameters = sum(array.size for name, array in weights.items() if not name.endswith(statistics_names))
    shape = "×".join(map(str, graph.input_shape))
    print(f"{graph.name}, input {arguments.batch}×{shape}, opset {opset}, {parameters:,} parameters")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} torch threads")
    print(f"spec -> IR (compile_spec, once, not in the times below): {compile_seconds * 1000:.0f} ms")

    def legacy(destination: Path | io.BytesIO) -> None:
        target = str(destination) if isinstance(destination, Path) else destination
        dynamic_axes = {"input": {0: "batch"}, "output": {0: "batch"}}
        torch.onnx.export(
            model,
            example,
            target,  # type: ignore[arg-type]  # the legacy exporter still writes to a file object
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=dynamic_axes,
        )

    def dynamo(path: Path | None) -> object:
        program = torch.onnx.export(
            model,
            example,
            None if path is None else str(path),
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            input_names=["input"],
            output_names=["output"],
        )
        return None if path is not None or program is None else program.model_proto.SerializeToString()

    emitters = [
        Emitter(
            "direct (rescompile)",
            lambda path: save_model(emit_model(graph, weights, opset=opset), path),
            lambda: emit_model(graph, weights, opset=opset).to_bytes(),
        ),
        Emitter(
            "direct, fold_bn",
            lambda path: save_model(emit_model(graph, weights, opset=opset, fold_bn=True), path),
            lambda: emit_model(graph, weights, opset=opset, fold_bn=True).to_bytes(),
        ),
        Emitter(
            "onnx-ir serialiser",
            lambda path: onnx_ir.save(onnx_ir_model(emit_model(graph, weights, opset=opset)), path),
            lambda: onnx_ir.to_proto(onnx_ir_model(emit_model(graph, weights, opset=opset))).SerializeToString(),
        ),
        Emitter(
            "onnx-ir, fold_bn",
            lambda path: onnx_ir.save(onnx_ir_model(emit_model(graph, weights, opset=opset, fold_bn=True)), path),
            lambda: onnx_ir.to_proto(
                onnx_ir_model(emit_model(graph, weights, opset=opset, fold_bn=True))
            ).SerializeToString(),
        ),
        Emitter("torch.onnx legacy", legacy, lambda: legacy(io.BytesIO())),
    ]
    if not arguments.skip_dynamo:
        emitters.append(Emitter("torch.onnx dynamo", dynamo, lambda: dynamo(None)))

    with contextlib.ExitStack() as stack:
        folder = arguments.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        # NOTE: repeats interleave the emitters (shared machines drift). Every timed emission writes
        # a new file (replacing an existing 200 MB file makes ext4 flush it) and deletes it at once,
        # so that no emitter's timing meets the kernel writing back an earlier emitter's file.
        for repeat in range(arguments.repeats):
            for emitter in emitters:
                if emitter.error is not None:
                    continue
                path = folder / f"{graph.name}-{slug(emitter.name)}-{repeat}.onnx"
                try:
                    emitter.file_times.append(timed(functools.partial(emitter.to_file, path)))
                    emitter.memory_times.append(timed(emitter.in_memory))
                except Exception as error:
                    emitter.error = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
                    traceback.print_exc(limit=2, file=sys.stderr)
                for written in folder.glob(f"{path.name}*"):
                    written.unlink()
        # The files ONNX Runtime runs, written once more, untimed.
        for emitter in emitters:
            if emitter.error is None:
                emitter.path = folder / f"{graph.name}-{slug(emitter.name)}.onnx"
                timed(functools.partial(emitter.to_file, emitter.path))

        # ONNX Runtime: one session per file, the same input, runs interleaved across the files.
        working = [emitter for emitter in emitters if emitter.error is None and emitter.path is not None]
        sessions = []
        for emitter in working:
            assert emitter.path is not None
            emitter.size = file_size(emitter.path)
            runner = session(emitter.path)
            feed = {runner.get_inputs()[0].name: x}
            output = np.asarray(runner.run(None, feed)[0])
            # Relative to the logits' scale: random_weights give resnet152 logits of ~1e8.
            emitter.difference = float(np.abs(output - reference).max() / np.abs(reference).max())
            for _ in range(arguments.warmup):
                runner.run(None, feed)
            sessions.append((runner, feed))
        for _ in range(arguments.runs):
            for emitter, (runner, feed) in zip(working, sessions, strict=True):
                start = time.perf_counter()
                runner.run(None, feed)
                emitter.latencies.append(time.perf_counter() - start)

    direct, folded, ir_kept, ir_folded = emitters[:4]
    print()
    print(
        f"{'emitter':<21}{'to file':>10}{'ratio':>8}{'in memory':>11}{'ratio':>8}"
        f"{'file size':>12}{'ORT latency':>13}{'max|Δ|/max|torch|':>19}"
    )
    for emitter in emitters:
        if emitter.error is not None:
            print(f"{emitter.name:<21} failed: {emitter.error}")
            continue
        print(
            f"{emitter.name:<21}{emitter.file_seconds * 1000:>7.0f} ms"
            f"{emitter.file_seconds / direct.file_seconds:>7.1f}×"
            f"{emitter.memory_seconds * 1000:>8.0f} ms{emitter.memory_seconds / direct.memory_seconds:>7.1f}×"
            f"{emitter.size / 2**20:>8.1f} MiB{emitter.latency * 1000:>10.1f} ms{emitter.difference:>19.2e}"
        )
    exporters = [emitter for emitter in emitters if emitter.name.startswith("torch") and emitter.error is None]
    if exporters:
        by_file = min(exporters, key=lambda emitter: emitter.file_seconds)
        by_memory = min(exporters, key=lambda emitter: emitter.memory_seconds)
        print()
        print(
            f"direct emission vs the fastest exporter: {by_memory.memory_seconds / direct.memory_seconds:.1f}× "
            f"faster in memory ({by_memory.name}), {by_file.file_seconds / direct.file_seconds:.1f}× faster "
            f"to a file ({by_file.name}); ORT latency {direct.latency * 1000:.1f} ms vs "
            f"{by_file.latency * 1000:.1f} ms ({(direct.latency / by_file.latency - 1) * 100:+.1f}%)"
        )
        if folded.error is None:
            # The legacy exporter folds BatchNorm into the convs (eval mode), so this is like for like.
            print(
                f"with BatchNorm folded too: {by_memory.memory_seconds / folded.memory_seconds:.1f}× faster in memory, "
                f"{by_file.file_seconds / folded.file_seconds:.1f}× faster to a file"
            )
        if ir_kept.error is None and ir_folded.error is None:
            print(
                f"onnx-ir's serialiser instead: {by_memory.memory_seconds / ir_kept.memory_seconds:.1f}× faster in "
                f"memory, {by_file.file_seconds / ir_kept.file_seconds:.1f}× faster to a file; with BatchNorm folded "
                f"{by_memory.memory_seconds / ir_folded.memory_seconds:.1f}× and "
                f"{by_file.file_seconds / ir_folded.file_seconds:.1f}×"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
