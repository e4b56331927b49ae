"""The ``rescompile`` command line.

``rescompile SPEC --backend torch|flax|onnx [-o PATH]`` compiles a network; the subcommands
``validate``, ``cost`` and ``list`` never import a deep-learning framework, so they are fast.
Every user error is one line, ``file:LINE:COL: message``, with exit status 1 and no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rescompile.compiler.cost import CostReport, Totals, cost
from rescompile.compiler.files import check_output, write_atomically
from rescompile.compiler.ir import Graph
from rescompile.compiler.pipeline import compile_spec
from rescompile.spec.errors import RescompileError
from rescompile.spec.loader import builtin_directory, builtin_networks
from rescompile.spec.models import MAX_SIZE

BACKENDS = ("torch", "flax", "onnx")
SUBCOMMANDS = ("validate", "cost", "list", "check")
DESCRIPTION = """Compile a residual-network spec (YAML) into a PyTorch, Flax or ONNX model.

commands:
  rescompile SPEC --backend {torch,flax,onnx} [-o PATH]   compile SPEC (a file or a built-in name)
  rescompile validate SPEC [SPEC ...]                      check specs without compiling
  rescompile cost SPEC [--by stage|block|node]             parameters, MACs, activations
  rescompile list                                          the built-in architectures
  rescompile check SPEC [--backends torch,flax,onnx]       compare backends numerically

Run 'rescompile COMMAND --help' for a command's options."""


def parse_size(text: str) -> int | tuple[int, int]:
    """An argparse type for ``--size``: ``224`` or ``224x160`` (height × width)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 224 or 224x160, got {text!r}") from None
    if len(numbers) not in (1, 2) or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 224 or 224x160, got {text!r}")
    if max(numbers) > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"a size is at most {MAX_SIZE:,}, got {text!r}")
    return numbers[0] if len(numbers) == 1 else (numbers[0], numbers[1])


def parse_seed(text: str) -> int:
    """An argparse type for ``--seed``: numpy's generators take a non-negative seed."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to 4294967295, got {text!r}")
    return seed


def _compile_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rescompile",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: rescompile architectures/resnet152.yaml --backend torch -o resnet152.py",
    )
    parser.add_argument("spec", help="a network spec file (.yaml) or a built-in name such as resnet50")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="what to generate (default: torch)")
    parser.add_argument(
        "-o", "--output", type=Path, help="where to write (default: NAME_torch.py, NAME_flax.py or NAME.onnx)"
    )
    parser.add_argument("--size", type=parse_size, help="override the spec's input size, e.g. 160 or 224x160")
    parser.add_argument("--weights", type=Path, help="onnx: canonical weights (.safetensors) to embed")
    parser.add_argument(
        "--seed", type=parse_seed, default=0, help="onnx: seed of fresh weights when --weights is absent"
    )
    parser.add_argument(
        "--zero-init-residual", action="store_true", help="onnx: zero the last BatchNorm of each residual branch"
    )
    parser.add_argument("--opset", type=int, help="onnx: the opset to target")
    parser.add_argument("--fold-bn", action="store_true", help="onnx: fold BatchNorm into the preceding convolution")
    return parser


def _subcommand_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"rescompile {name}")
    if name == "validate":
        parser.description = "Load and lower specs, checking shapes and channels, without compiling them."
        parser.add_argument("specs", nargs="+", help="spec files or built-in names")
    elif name == "cost":
        parser.description = "Print parameters, MACs and activations per stage (or block, or node)."
        parser.add_argument("spec", help="a spec file or a built-in name")
        parser.add_argument("--by", choices=("stage", "block", "node"), default="stage", help="rows of the table")
        parser.add_argument("--size", type=parse_size, help="override the spec's input size")
    elif name == "list":
        parser.description = "List the built-in architectures with their parameters and MACs."
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        if arguments and arguments[0] in SUBCOMMANDS:
            return COMMANDS[arguments[0]](arguments[1:])
        return _compile(_compile_parser().parse_args(arguments))
    except RescompileError as error:
        print(str(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rescompile: interrupted", file=sys.stderr)
        return 130


def _validate(arguments: list[str]) -> int:
    options = _subcommand_parser("validate").parse_args(arguments)
    for spec in options.specs:
        graph = compile_spec(spec)
        report = cost(graph)
        print(f"{spec}: ok ({graph.name}: {report.parameters:,} parameters, output {_shape(graph.output_shape)})")
    return 0


def _cost(arguments: list[str]) -> int:
    options = _subcommand_parser("cost").parse_args(arguments)
    graph = compile_spec(options.spec, options.size)
    report = cost(graph)
    print(f"{graph.name}: input {_shape(graph.input_shape)}")
    print(format_cost_table(report, options.by))
    return 0


def _list(arguments: list[str]) -> int:
    _subcommand_parser("list").parse_args(arguments)
    print(f"built-in architectures ({builtin_directory()}):")
    print(f"{'name':<18} {'parameters':>12} {'GMACs':>8}  description")
    for name in builtin_networks():
        graph = compile_spec(name)
        report = cost(graph)
        print(f"{name:<18} {report.parameters:>12,} {report.macs / 1e9:>8.3f}  {graph.network.description}")
    return 0


def _check(arguments: list[str]) -> int:
    from rescompile.check import main as check_main

    return check_main(arguments)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "validate": _validate,
    "cost": _cost,
    "list": _list,
    "check": _check,
}


def format_cost_table(report: CostReport, by: str) -> str:
    if by == "node":
        rows = [Totals(node.name, node.parameters, node.macs, node.activations, ()) for node in report.nodes]
    else:
        rows = report.group_by(by)
    width = max(len(row.name) for row in rows)
    lines = [f"{by:<{width}}  {'parameters':>12}  {'MACs':>15}  {'activations':>12}  output"]
    for row in rows:
        numbers = f"{row.parameters:>12,}  {row.macs:>15,}  {row.activations:>12,}"
        lines.append(f"{row.name:<{width}}  {numbers}  {_shape(row.output_shape)}")
    lines.append(
        f"{'total':<{width}}  {report.parameters:>12,}  {report.macs:>15,}  {report.activations:>12,}  "
        f"({report.macs / 1e9:.3f} GMACs)"
    )
    return "\n".join(lines)


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(dimension) for dimension in shape) if shape else ""


def _default_output(graph: Graph, backend: str) -> Path:
    # NOTE: network names match NAME_PATTERN (no '/', no leading '.'), so this stays in the working
    # directory; -o, the user's explicit choice, may go anywhere.
    return Path(f"{graph.name}.onnx" if backend == "onnx" else f"{graph.name}_{backend}.py")


def _require(backend: str, module: str, extra: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise RescompileError(
            f"the {backend} backend needs {module}, which is not installed: pip install 'rescompile[{extra}]'"
        ) from None


def _compile(options: argparse.Namespace) -> int:
    started = time.perf_counter()
    graph = compile_spec(options.spec, options.size)
    report = cost(graph)
    output: Path = options.output or _default_output(graph, options.backend)
    check_output(output, [*graph.files, *([options.weights] if options.weights is not None else [])])
    if options.backend != "onnx":
        for flag in ("weights", "opset"):
            if getattr(options, flag) is not None:
                raise RescompileError(f"--{flag} applies to --backend onnx only")
        if options.fold_bn or options.zero_init_residual:
            raise RescompileError("--fold-bn and --zero-init-residual apply to --backend onnx only")
    if options.backend == "torch":
        _require("torch", "torch", "torch")
        from rescompile.backends import torch_backend

        source = torch_backend.emit_source(graph)
        model = torch_backend.build_module(graph)
        built_parameters = sum(parameter.numel() for parameter in model.parameters())
        if built_parameters != report.parameters:
            raise AssertionError(f"built module has {built_parameters} parameters, cost pass {report.parameters}")
        write_atomically([(output, [source.encode()])])
    elif options.backend == "flax":
        _require("flax", "flax", "jax")
        from rescompile.backends import flax_backend

        write_atomically([(output, [flax_backend.emit_source(graph).encode()])])
    else:
        _require("onnx", "onnx", "onnx")
        from rescompile.backends import onnx_backend
        from rescompile.compiler.weights import initial_weights, read_weights

        weights = (
            read_weights(options.weights)
            if options.weights is not None
            else initial_weights(graph, options.seed, options.zero_init_residual)
        )
        opset = options.opset if options.opset is not None else onnx_backend.DEFAULT_OPSET
        model = onnx_backend.emit_model(graph, weights, opset=opset, fold_bn=options.fold_bn)
        onnx_backend.save_model(model, output)
    elapsed = time.perf_counter() - started
    print(f"{graph.name}: {report.parameters:,} parameters, {report.macs / 1e9:.3f} GMACs")
    print(f"input {_shape(graph.input_shape)} -> output {_shape(graph.output_shape)} (batch dimension dynamic)")
    print(f"wrote {output} ({options.backend}, {output.stat().st_size:,} bytes) in {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
