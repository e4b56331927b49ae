"""How compiling scales with depth (issue #12, item 5): spec -> IR -> source for resnet18 …
resnet1202 and a plain network of 10,000 blocks, the Flax module's abstract build, and the peak
memory of writing resnet152 to ONNX against the size of its weights.

For each network it prints the seconds of: ``compile_spec`` (load, expand, verify), torch source,
Flax source, the Flax module built abstractly (``flax_backend.module_for_weights``: what loading
weights into a Flax model costs before the weights), and the time per block of the whole, which
stays flat when the cost grows linearly with depth. Not a test: timings depend on the machine
(and on its other jobs). Run: ``.venv/bin/python benchmarks/scale.py [--skip-flax-build]``.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rescompile.backends import flax_backend, onnx_backend, torch_backend
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import initial_weights

NETWORKS = ["resnet18", "resnet50", "resnet152", "resnet20", "resnet110", "resnet1202", "plain10000"]
PLAIN_BLOCKS = 10_000
PLAIN_SPEC = f"""\
name: plain10000
description: "A plain (no shortcut) network of {PLAIN_BLOCKS:,} basic blocks at width 8, to measure scaling."
input: {{channels: 3, size: 32}}
stem: cifar
block: basic
shortcut: none
stages:
  - {{depth: {PLAIN_BLOCKS}, width: 8}}
head: classifier
head_parameters: {{classes: 10}}
"""


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def onnx_peak_memory(name: str) -> None:
    """The memory that emitting and writing the ONNX file takes beyond the weights (drawn first),
    against the weights' own size: traced Python and numpy allocations (tracemalloc), and the rise
    peak resident size (``ru_maxrss``, which also sees protobuf's C++ buffers) after writing, less
    the resident size before: an upper bound of the rise, as an earlier peak (drawing the weights)
    may exceed the writing's."""
    graph = compile_spec(name)
    weights = initial_weights(graph, seed=0)
    weight_bytes = sum(array.nbytes for array in weights.values())
    resident_before = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    with tempfile.TemporaryDirectory() as folder:
        tracemalloc.start()
        onnx_backend.save_model(onnx_backend.emit_model(graph, weights), Path(folder) / f"{name}.onnx")
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    resident = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - resident_before  # KiB on Linux
    print(
        f"ONNX {name}: weights {weight_bytes / 2**20:.1f} MiB; beyond them while writing: traced "
        f"{traced / 2**20:.1f} MiB, peak resident rise at most {resident / 2**20:.1f} MiB "
        f"(ratio to the weights {max(traced, resident) / weight_bytes:.2f}; goal < 1.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-flax-build", action="store_true", help="time sources only (the build imports jax)")
    parser.add_argument("--networks", nargs="*", default=NETWORKS, help=f"default: {' '.join(NETWORKS)}")
    parser.add_argument("--onnx-memory-only", action="store_true", help="only the ONNX memory of resnet152")
    arguments = parser.parse_args()
    if arguments.onnx_memory_only:
        onnx_peak_memory("resnet152")
        return
    columns = ("spec->IR", "torch src", "flax src", "flax build", "ms/block")
    print(f"{'network':<12} {'blocks':>6} " + " ".join(f"{column:>10}" for column in columns))
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "plain10000.yaml"
        plain.write_text(PLAIN_SPEC)
        for name in arguments.networks:
            spec = str(plain) if name == "plain10000" else name
            compile_seconds, graph = timed(lambda spec=spec: compile_spec(spec))
            torch_seconds, _ = timed(lambda graph=graph: torch_backend.emit_source(graph))
            flax_seconds, _ = timed(lambda graph=graph: flax_backend.emit_source(graph))
            build_seconds = 0.0
            if not arguments.skip_flax_build:
                build_seconds, _ = timed(lambda graph=graph: flax_backend.module_for_weights(graph))
            total = compile_seconds + torch_seconds + flax_seconds + build_seconds
            blocks = len(graph.blocks)
            print(
                f"{name:<12} {blocks:>6} {compile_seconds:>10.3f} {torch_seconds:>10.3f} {flax_seconds:>10.3f} "
                f"{build_seconds:>10.3f} {1e3 * total / blocks:>10.2f}"
            )
    onnx_peak_memory("resnet152")


if __name__ == "__main__":
    main()
