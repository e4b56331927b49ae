"""The ``rescompile`` command line.

``rescompile SPEC --backend torch|flax|onnx [-o PATH]`` compiles a network; the subcommands
``validate``, ``cost`` and ``list`` never import a deep-learning framework, so they are fast.
Every user error is one line, ``file:LINE:COL: message``, with exit status 1 and no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rescompile.arguments import ArgumentParser, parse_keywords, parse_seed, parse_size
from rescompile.backends.interface import Backend, EmitOptions
from rescompile.backends.registry import BACKENDS
from rescompile.backends.source import weights_path
from rescompile.compiler.cost import CostReport, Totals, cost
from rescompile.compiler.files import check_output, write_atomically
from rescompile.compiler.ir import Graph
from rescompile.compiler.pipeline import compile_spec
from rescompile.spec.errors import RescompileError, one_line, render, wants_excerpt
from rescompile.spec.loader import PART_MODELS, POLICIES, builtin_directory, builtin_networks, load_part
from rescompile.spec.schema import KINDS as SCHEMA_KINDS
from rescompile.spec.schema import file_name, schema_text

if TYPE_CHECKING:
    from rescompile.compiler.weights import Weights
    from rescompile.importer import Imported

SUBCOMMANDS = ("validate", "cost", "list", "check", "schema", "weights", "draw", "bench", "import")
_NAMES = ",".join(BACKENDS)
DESCRIPTION = f"""Compile a residual-network spec (YAML) into a PyTorch, Flax or ONNX model.

commands:
  rescompile SPEC --backend {{{_NAMES}}} [-o PATH]   compile SPEC (a file or a built-in name)
  rescompile validate SPEC [SPEC ...]                      check specs without compiling
  rescompile cost SPEC [--by stage|block|node]             parameters, MACs, activations
  rescompile list [--parts]                                the built-in architectures (or parts)
  rescompile check SPEC [--backends {_NAMES}]       compare backends numerically
  rescompile schema [--kind KIND] [-o FOLDER]              JSON Schema of spec files, for editors
  rescompile weights convert CKPT --spec SPEC -o OUT       check a torchvision/timm checkpoint, convert it
  rescompile draw SPEC -o net.svg [--block PATH]           the network (or a block) as an SVG picture
  rescompile bench SPEC [--backend B] [--train] ...        time the generated model beside its reference
  rescompile import SOURCE -o FOLDER [--weights]           a torch model or ONNX file as a verified spec

Run 'rescompile COMMAND --help' for a command's options."""

# The options only some backends read (EmitOptions fields), in the order they are checked; the
# fields of one group are refused in one message.
_BACKEND_OPTIONS = (
    ("weights",),
    ("opset",),
    ("fold_bn", "zero_init_residual"),
    ("fixed_size",),
    ("inference",),
    ("features",),
)


def _readers(option: str) -> str:
    """The backends that read ``option``, as help and errors name them: ``onnx``."""
    return " or ".join(name for name, backend in BACKENDS.items() if option in backend.options)


def _indices(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(index) for index in text.split(","))
    except ValueError:
        message = f"expected comma-separated feature map indices such as 1,2,3,4, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _compile_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="rescompile",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: rescompile architectures/resnet152.yaml --backend torch -o resnet152.py",
    )
    parser.add_argument("spec", help="a network spec file (.yaml) or a built-in name such as resnet50")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="what to generate (default: torch)")
    files = [f"NAME{backend.suffix}" for backend in BACKENDS.values()]
    parser.add_argument(
        "-o",
        "--output",
        help=f"where to write: a file ending as the backend's do, or a folder to write the default name into "
        f"(default: {', '.join(files[:-1])} or {files[-1]})",
    )
    parser.add_argument("--size", type=parse_size, help="override the spec's input size, e.g. 160 or 224x160")
    # argparse's destinations are the EmitOptions fields.
    parser.add_argument(
        "--weights",
        type=Path,
        help=f"{_readers('weights')}: canonical weights (.safetensors), embedded in an ONNX file or checked and "
        "written beside generated source as OUTPUT.safetensors",
    )
    parser.add_argument(
        "--seed", type=parse_seed, default=0, help=f"{_readers('seed')}: seed of fresh weights when --weights is absent"
    )
    parser.add_argument(
        "--zero-init-residual",
        action="store_true",
        help=f"{_readers('zero_init_residual')}: zero the last BatchNorm of each residual branch",
    )
    parser.add_argument("--opset", type=int, help=f"{_readers('opset')}: the opset to target")
    parser.add_argument(
        "--fold-bn", action="store_true", help=f"{_readers('fold_bn')}: fold BatchNorm into the preceding convolution"
    )
    parser.add_argument(
        "--fixed-size",
        action="store_true",
        help=f"{_readers('fixed_size')}: the input's declared height and width, not dynamic H and W",
    )
    parser.add_argument(
        "--features",
        type=_indices,
        help=f"{_readers('features')}: timm's features_only model instead of the logits: one output per feature "
        "map of these feature_info indices, e.g. 1,2,3,4 (named by module: layer1, ...)",
    )
    parser.add_argument(
        "--inference",
        action="store_true",
        help=f"{_readers('inference')}: lower for evaluation (BatchNorm folded into the convolutions as canonical "
        "weights load, channels_last, in-place ReLU)",
    )
    return parser


def _subcommand_parser(name: str) -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=f"rescompile {name}")
    if name == "validate":
        parser.description = "Load and lower specs, checking shapes and channels, without compiling them."
        parser.add_argument("specs", nargs="+", help="spec files or built-in names")
    elif name == "cost":
        parser.description = "Print parameters, MACs and activations per stage (or block, or node)."
        parser.add_argument("spec", help="a spec file or a built-in name")
        parser.add_argument("--by", choices=("stage", "block", "node"), default="stage", help="rows of the table")
        parser.add_argument("--size", type=parse_size, help="override the spec's input size")
    elif name == "list":
        parser.description = (
            "List the built-in architectures with their parameters and MACs (or, with --parts, "
            "every built-in part a spec can name)."
        )
        parser.add_argument(
            "--parts",
            action="store_true",
            help="list the built-in parts instead: blocks, stems, heads, shortcuts and transitions, each described",
        )
    elif name == "schema":
        parser.description = (
            "Print the JSON Schema of a spec file kind, or write all of them into a folder "
            "(network.schema.json, block.schema.json, ...), for yaml-language-server: put "
            "'# yaml-language-server: $schema=PATH' at the top of a spec file."
        )
        parser.add_argument("--kind", choices=SCHEMA_KINDS, default="network", help="the file kind to print")
        parser.add_argument("-o", "--output", type=Path, help="a folder to write every kind's schema into (created)")
    elif name == "weights":
        parser.description = (
            "Read a torchvision or timm checkpoint (.pth/.pt/.bin with torch.load(weights_only=True), or "
            ".safetensors), check it strictly against SPEC's weights (missing, unexpected and mis-shaped names), "
            "and write safetensors in the layout --backend's model loads (canonical: torch's; flax: the generated "
            "Flax module's)."
        )
        parser.add_argument("action", choices=("convert",), help="what to do (convert)")
        parser.add_argument("checkpoint", type=Path, help="the checkpoint file")
        parser.add_argument("--spec", required=True, help="the network it belongs to: a spec file or a built-in name")
        parser.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
        parser.add_argument(
            "--backend", choices=BACKENDS, default="torch", help="layout to write (default: torch, canonical)"
        )
    elif name == "draw":
        parser.description = (
            "Draw the network as SVG: input, stem, each stage (block × repeats, width, stride, output shape, "
            "parameters, MACs), transitions and head; or, with --block, that block's op graph with its shortcut."
        )
        parser.add_argument("spec", help="a spec file or a built-in name")
        parser.add_argument(
            "-o", "--output", required=True, help="the .svg file to write (or .png, where pymupdf is installed)"
        )
        parser.add_argument(
            "--block", help="draw this block's op graph instead: a path (layer2.0), stem, head or a block type"
        )
        parser.add_argument("--size", type=parse_size, help="override the spec's input size")
    elif name == "import":
        parser.description = (
            "Write a network spec (FOLDER/NAME.yaml) of built-in parts that computes a torchvision, timm or your "
            "own torch model, or an ONNX file, verified before it is written: the model's state_dict (an ONNX "
            "file's weights, by its names) loads into the compiled spec strictly, with no renaming, and the "
            "outputs agree within 1e-5 of their scale. A model no built-in parts compute is refused, naming the "
            "module where the closest candidate stopped matching."
        )
        parser.add_argument(
            "source",
            help="torchvision:NAME or timm:NAME (built without pretrained weights: nothing downloads), or "
            "package.module:factory, a function returning a torch.nn.Module (imported: it runs your code), or "
            "FILE.onnx (BatchNorm kept or folded into the convolutions)",
        )
        parser.add_argument("-o", "--output", required=True, type=Path, help="the folder to write into (created)")
        parser.add_argument(
            "--weights",
            action="store_true",
            help="also write FOLDER/NAME.safetensors, the model's weights in canonical form (what --weights reads)",
        )
        parser.add_argument(
            "--kwargs",
            type=parse_keywords,
            default={},
            help="keyword arguments for the model's constructor: a JSON object or key=value,... (num_classes=10)",
        )
        parser.add_argument(
            "--size",
            type=parse_size,
            help="the input size the spec states and the check runs at (default: timm's pretrained_cfg, an ONNX "
            "file's fixed size, else 224)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        if arguments and arguments[0] in SUBCOMMANDS:
            status = COMMANDS[arguments[0]](arguments[1:])
        else:
            status = _compile(_compile_parser().parse_args(arguments))
        # Flushed here, where a closed pipe is still caught, not by the interpreter at exit.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # The reader went away (`rescompile cost resnet1202 --by node | head -1`): stop quietly, as
        # a tool that SIGPIPE ends does, with the status a shell gives that (128 + 13). stdout goes
        # to /dev/null so that the interpreter's own flush at exit does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except RescompileError as error:
        print(render(error, excerpt=wants_excerpt(sys.stderr)), file=sys.stderr)
        return 1
    except MemoryError as error:
        # A bound that should have refused the request first is missing: still one line, not a traceback.
        print(f"rescompile: out of memory{': ' + str(error) if str(error) else ''}", file=sys.stderr)
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
    if _subcommand_parser("list").parse_args(arguments).parts:
        return _list_parts()
    print(f"built-in architectures ({builtin_directory()}):")
    print(f"{'name':<18} {'parameters':>12} {'GMACs':>8}  description")
    for name in builtin_networks():
        graph = compile_spec(name)
        report = cost(graph)
        print(f"{name:<18} {report.parameters:>12,} {report.macs / 1e9:>8.3f}  {graph.description}")
    return 0


def _list_parts() -> int:
    """Every built-in part by kind, as a spec names it (``block: bottleneck``), with its description."""
    parts = {
        kind: [load_part(path, kind).spec for path in sorted((builtin_directory() / kind).glob("*.yaml"))]
        for kind in PART_MODELS
    }
    width = max(len(part.name) for kind_parts in parts.values() for part in kind_parts)
    for kind, kind_parts in parts.items():
        print(f"{kind} ({builtin_directory() / kind}):")
        if kind == "shortcuts":
            # The paper's policies name shortcut kinds too (where shapes match, where they change).
            for letter, (same, changed) in POLICIES.items():
                print(f"  {letter:<{width}}  policy: {same} where shapes match, {changed} where they change")
        for part in kind_parts:
            print(f"  {part.name:<{width}}  {one_line(part.description or '')}")
    return 0


def _check(arguments: list[str]) -> int:
    # Imported here: check needs numpy, which the other commands do without (a third of their time).
    from rescompile.check import main as check_main

    return check_main(arguments)


def _bench(arguments: list[str]) -> int:
    # Imported here, as check: it needs numpy and the frameworks.
    from rescompile.bench import main as bench_main

    return bench_main(arguments)


def _schema(arguments: list[str]) -> int:
    options = _subcommand_parser("schema").parse_args(arguments)
    if options.output is None:
        print(schema_text(options.kind), end="")
        return 0
    if options.output.exists() and not options.output.is_dir():
        raise RescompileError(f"-o {options.output}: not a folder; schema -o names the folder to write into")
    files = [(options.output / file_name(kind), [schema_text(kind).encode()]) for kind in SCHEMA_KINDS]
    try:
        options.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RescompileError(f"cannot create {options.output}: {error.strerror or error}") from None
    write_atomically(files)
    for path, _ in files:
        print(f"wrote {path}")
    return 0


def _weights(arguments: list[str]) -> int:
    options = _subcommand_parser("weights").parse_args(arguments)
    from rescompile.checkpoints import convert

    graph = compile_spec(options.spec)
    inputs = [*graph.files, options.checkpoint]
    output = output_file(options.output, (".safetensors",), "weights convert writes safetensors", inputs)
    written = convert(graph, options.checkpoint, output, options.backend)
    layout = f"{options.backend} layout"
    print(f"{options.checkpoint} fits {graph.name}: wrote {written} tensors ({layout}) to {output}")
    return 0


def _draw(arguments: list[str]) -> int:
    options = _subcommand_parser("draw").parse_args(arguments)
    from rescompile.draw import draw_block, draw_network

    graph = compile_spec(options.spec, options.size)
    output = output_file(options.output, (".svg", ".png"), "draw writes an SVG picture (or PNG)", graph.files)
    picture = (draw_network(graph) if options.block is None else draw_block(graph, options.block)).encode()
    if output.suffix == ".png":
        picture = _png(picture)
    write_atomically([(output, [picture])])
    print(f"wrote {output} ({len(picture):,} bytes)")
    return 0


def _png(svg: bytes) -> bytes:
    """The picture rendered to PNG by MuPDF, the one SVG renderer among rescompile's optional packages."""
    try:
        import pymupdf
    except ModuleNotFoundError:
        raise RescompileError(
            "-o: writing PNG needs pymupdf (pip install pymupdf); or write .svg, which any browser shows"
        ) from None
    page = pymupdf.open(stream=svg, filetype="svg")[0]
    png: bytes = page.get_pixmap(dpi=144).tobytes("png")
    return png


def _import(arguments: list[str]) -> int:
    options = _subcommand_parser("import").parse_args(arguments)
    from rescompile.compiler.weights import save_weights
    from rescompile.import_stages import import_model
    from rescompile.importer import canonical_reference_weights, default_size, load_reference, spec_name

    folder: Path = options.output
    if folder.exists() and not folder.is_dir():
        raise RescompileError(f"-o {folder}: not a folder; import -o names the folder to write into")
    onnx_file = options.source.endswith(".onnx")
    if onnx_file and options.kwargs:
        raise RescompileError(f"{options.source}: --kwargs builds a torch model; an ONNX file takes none")
    name, model = (
        (spec_name(Path(options.source).stem), None) if onnx_file else load_reference(options.source, options.kwargs)
    )
    spec_file, weights_file = folder / f"{name}.yaml", folder / f"{name}.safetensors"
    for path in (spec_file, *([weights_file] if options.weights else [])):
        check_output(path)
    # Everything is checked before the first file is written: a refusal leaves nothing behind.
    if model is None:
        imported, weights = _import_onnx(options.source, name, options.size, options.weights)
    else:
        imported = import_model(options.source, name, model, options.size or default_size(model))
        weights = canonical_reference_weights(options.source, model, imported.graph) if options.weights else None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RescompileError(f"cannot create {folder}: {error.strerror or error}") from None
    checked = "its weights by name and shape, onnxruntime" if model is None else "strict state_dict"
    header = f"# rescompile import {options.source}: verified ({checked}, outputs within 1e-5)\n"
    write_atomically([(spec_file, [(header + imported.text).encode()])])
    found = f"candidate {imported.candidate} of {imported.candidates} computes it"
    agreement = f"outputs within {imported.difference:.1e} of their scale"
    parameters = cost(imported.graph).parameters
    print(f"{options.source}: {parameters:,} parameters; {found} ({agreement}): wrote {spec_file}")
    if weights is not None:
        save_weights(weights, weights_file)
        print(f"wrote {weights_file} ({len(weights)} tensors, canonical)")
    return 0


def _import_onnx(
    source: str, name: str, size: int | tuple[int, int] | None, with_weights: bool
) -> tuple[Imported, Weights | None]:
    """An ONNX file imported, and its weights in canonical form where asked for."""
    from rescompile.checkpoints import canonical_weights
    from rescompile.onnx_import import import_onnx, read_onnx, state_dict, unfolded

    file = read_onnx(source)
    imported = import_onnx(file, name, size)
    if not with_weights:
        return imported, None
    return imported, canonical_weights(
        imported.graph, unfolded(imported.graph, state_dict(file, file.constants)), source
    )


def output_file(
    text: str, suffixes: tuple[str, ...], writes: str, inputs: Collection[Path], default: str | None = None
) -> Path:
    """``-o TEXT`` as the file to write. A folder (an existing one, or any TEXT ending in '/')
    takes ``default`` inside it, or is refused where there is no default name; the file must pass
    :func:`check_output` (checked first: overwriting an input is the worse mistake) and end in
    one of ``suffixes`` (``writes`` says why: "--backend onnx writes an ONNX model")."""
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        if default is None:
            raise RescompileError(
                f"-o {text}: is a folder; name the file to write, such as {path / 'out'}{suffixes[0]}"
            )
        if not path.is_dir():
            raise RescompileError(f"-o {text}: no such folder; create it first")
        path = path / default
    check_output(path, inputs)
    if path.suffix not in suffixes:
        wanted = " or ".join(suffixes)
        raise RescompileError(f"-o {text}: {writes}; name a file ending in {wanted}")
    return path


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "validate": _validate,
    "cost": _cost,
    "list": _list,
    "check": _check,
    "schema": _schema,
    "weights": _weights,
    "draw": _draw,
    "bench": _bench,
    "import": _import,
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


def _refuse_unread_options(options: argparse.Namespace, backend: Backend) -> None:
    defaults = EmitOptions()
    for group in _BACKEND_OPTIONS:
        given = any(getattr(options, name) != getattr(defaults, name) for name in group)
        if given and not set(group) <= backend.options:
            flags = " and ".join(f"--{name.replace('_', '-')}" for name in group)
            raise RescompileError(
                f"{flags} {'applies' if len(group) == 1 else 'apply'} to --backend {_readers(group[0])} only"
            )


def _dynamic(graph: Graph, options: argparse.Namespace) -> str:
    """Which input dimensions the written model leaves open, as the compile report says it."""
    backend = BACKENDS[options.backend]
    if "fixed_size" not in backend.options or options.fixed_size:
        return "batch dimension dynamic"
    reason = backend.fixed_size_reason(graph)
    return "batch, height and width dynamic" if reason is None else f"batch dimension dynamic; fixed size: {reason}"


def _outputs(graph: Graph, options: argparse.Namespace) -> str:
    """What the written model outputs, as the compile report says it: the logits' shape, or the
    feature maps ``--features`` chose (``layer1 256×/4, ...``: channels and reduction)."""
    if options.features is None:
        return f"output {_shape(graph.output_shape)}"
    from rescompile.backends.surface import chosen_indices, feature_points

    points = feature_points(graph)
    chosen = sorted(chosen_indices(graph.name, len(points), options.features))
    return "feature maps " + ", ".join(f"{points[i].module} {points[i].num_chs}×/{points[i].reduction}" for i in chosen)


def _compile(options: argparse.Namespace) -> int:
    started = time.perf_counter()
    graph = compile_spec(options.spec, options.size)
    report = cost(graph)
    backend = BACKENDS[options.backend]
    # NOTE: network names match NAME_PATTERN (no '/', no leading '.'), so the default output stays
    # in the working directory; -o, the user's explicit choice, may go anywhere.
    default = f"{graph.name}{backend.suffix}"
    _refuse_unread_options(options, backend)
    suffix = "." + backend.suffix.rpartition(".")[2]  # '_torch.py' -> '.py'
    writes = f"--backend {options.backend} writes {'Python source' if suffix == '.py' else 'an ONNX model'}"
    inputs = [*graph.files, *([options.weights] if options.weights is not None else [])]
    output = (
        Path(default) if options.output is None else output_file(options.output, (suffix,), writes, inputs, default)
    )
    check_output(output, inputs)
    # Source backends write --weights beside the source: that file must not be an input either.
    companion = weights_path(output) if options.weights is not None and output.suffix == ".py" else None
    if companion is not None:
        check_output(companion, inputs)
    emit_options = EmitOptions(
        **{field.name: getattr(options, field.name) for field in dataclasses.fields(EmitOptions)}
    )
    write = backend.emit(graph, emit_options)
    write(output)
    elapsed = time.perf_counter() - started
    print(f"{graph.name}: {report.parameters:,} parameters, {report.macs / 1e9:.3f} GMACs")
    print(f"input {_shape(graph.input_shape)} -> {_outputs(graph, options)} ({_dynamic(graph, options)})")
    print(f"wrote {output} ({options.backend}, {output.stat().st_size:,} bytes) in {elapsed:.2f} s")
    if companion is not None:
        print(f"wrote {companion} (the --weights, {companion.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
