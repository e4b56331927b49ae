"""Write the generated pages of the docs site, so that the reference cannot drift from the code:

* ``docs/reference/ops.md``: every op a node may name, from the spec's op models
  (``spec/models.py``: keys, defaults, descriptions), the op table (``compiler/ops.py``: the shape
  rule in its docstrings), what each backend's ``EMITTERS`` table writes for a real node of a
  built-in network, and that node as a built-in file writes it;
* ``docs/reference/cli.md``: every command's argparse parser (``rescompile/cli.py``, ``check``, ``bench``);
* ``docs/reference/api.md``: the public functions of ``rescompile.api`` and the package, from their docstrings.

    .venv/bin/python scripts/reference_pages.py           # write the pages
    .venv/bin/python scripts/reference_pages.py --check   # exit 1 naming the pages that differ (a test runs it)
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel
from pydantic.fields import FieldInfo

if TYPE_CHECKING:
    from rescompile.backends.onnx_backend import OnnxModel
    from rescompile.backends.source import SourceNode
    from rescompile.compiler.ir import Graph, Module, Node
    from rescompile.compiler.ops import Shape

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
ARCHITECTURES = ROOT / "architectures"
HELP_COLUMNS = "100"
"""argparse wraps help to the terminal's width: a fixed one keeps the page the same everywhere."""

EXAMPLE_NETWORKS = (
    *("resnet20", "resnet50", "ecaresnet50d", "resnetblur50", "resnet50_gn", "resnetv2_50x1_bit"),
    *("skresnet18", "resnest50d", "res2net50_26w_4s", "convnext_tiny", "regnety_016"),
    "examples/activations.yaml",
    "examples/global_context.yaml",
)
"""Built-ins (and the activations and global-context examples) searched, in order, for each op's
example node; then the op table's own network (``rescompile.testing.op_network``), which uses every op."""
EXAMPLE_SIZE = 64
"""The networks are compiled at this input size: only their ops matter here."""

WINDOW_RULE = (
    "Each of height and width: `(size + padding_before + padding_after - dilation * (kernel - 1) - 1) // stride + 1`"
    " (a pool's dilation is 1); with `ceil_mode`, rounded up, less a last window that would start in the right"
    " padding (torch's rule). An output under 1×1 is a located error."
)
WINDOW_OPS = ("conv", "max_pool", "avg_pool", "blur_pool")
KEY_MEANINGS = {
    "kernel": "Window side (an int: square).",
    "stride": "Step of the window (an int: the same on both axes).",
    "padding": "Zeros (or, for pools, ignored values) added on every side.",
    "dilation": "Spacing between the kernel's taps.",
    "groups": "Channel groups (they must divide the input and output channels).",
    "out_channels": "Output channels.",
    "out_features": "Output features.",
    "bias": "Whether it adds a learned bias.",
    "ceil_mode": "Round the output size up (torch's ceil_mode).",
    "count_include_pad": "Whether padded zeros count in the mean's divisor (torch's meaning).",
    "epsilon": "Added to the variance.",
    "taps": "The binomial filter's side (1 to 64).",
    "before": "Zero channels put before the input's.",
    "after": "Zero channels put after the input's.",
    "rate": "The probability of dropping a sample, in [0, 1).",
    "padding_mode": "How the border is padded: zeros, or reflection (not repeating the edge).",
}
"""Meanings of keys whose spec model field states none."""


def _doc(thing: object) -> str:
    return inspect.cleandoc(inspect.getdoc(thing) or "")


def _own_doc(cls: type) -> str:
    """A class's own docstring: not one it inherits, nor the signature a dataclass writes for itself."""
    text = cls.__dict__.get("__doc__") or ""
    return "" if text.startswith(f"{cls.__name__}(") else inspect.cleandoc(text)


def _rst_to_markdown(text: str) -> str:
    """Docstrings are written in reStructuredText; the site reads Markdown (a ``>>>`` session is fenced)."""
    text = re.sub(r":(?:class|func|data|meth|attr|mod):`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    # A ">>>" example is code: fence it.
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith(">>>") and not fenced:
            lines.append("```pycon")  # shown, not run: the docs' python blocks are programs
            fenced = True
        elif fenced and not line.startswith(">>>"):
            lines.append("```")
            fenced = False
        lines.append(line)
    if fenced:
        lines.append("```")
    return "\n".join(lines)


def _table_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# --- ops ------------------------------------------------------------------------------------------


def _spec_models() -> dict[str, type[BaseModel]]:
    from rescompile.spec.models import OpSpec

    union = typing.get_args(OpSpec)[0]
    return {typing.get_args(model.model_fields["op"].annotation)[0]: model for model in typing.get_args(union)}


def _default(field: FieldInfo) -> str:
    from rescompile.spec.expressions import Expression

    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "—"
    if isinstance(value, Expression):
        return f"`{value.text}`"
    return f"`{value!r}`"


def _type_name(annotation: object) -> str:
    from rescompile.spec.expressions import Expression

    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(arguments[0])
    if origin is typing.Literal:
        return " or ".join(f"`{argument}`" for argument in arguments)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(argument) for argument in arguments if argument is not type(None)]
        return " or ".join(names) + (" (or omitted)" if type(None) in arguments else "")
    if origin is tuple:
        item = _type_name(arguments[0]) if arguments else "value"
        return "list of " + ("names" if item == "str" else f"{item}s")
    if origin is dict:
        return "mapping of nodes"
    if annotation is Expression:
        return "expression"
    return getattr(annotation, "__name__", str(annotation))


def _type(field: FieldInfo) -> str:
    return _type_name(field.annotation if not field.metadata else typing.Annotated[field.annotation, *field.metadata])


def _keys_table(model: type[BaseModel]) -> list[str]:
    fields = {name: field for name, field in model.model_fields.items() if name != "op"}
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in fields.items():
        meaning = field.description or KEY_MEANINGS.get(name, "")
        cells = (f"`{name}`", _table_cell(_type(field)), _default(field), _table_cell(meaning))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _example_lines(kind: str) -> tuple[str, list[str]] | None:
    """The first node of op ``kind`` in a built-in file (else an example's): the file, and the node's
    lines as written."""
    pattern = re.compile(rf"(\{{|^\s*)op: {re.escape(kind)}\b")
    for path in [*sorted(ARCHITECTURES.rglob("*.yaml")), *sorted((ROOT / "examples").rglob("*.yaml"))]:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if not pattern.search(line):
                continue
            if "{op:" in line:
                return path.relative_to(ROOT).as_posix(), [line.strip()]
            # A block-style node: its name's line, then every line indented under it.
            start = number - 1
            indent = len(lines[start]) - len(lines[start].lstrip())
            end = number + 1
            while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
                end += 1
            return path.relative_to(ROOT).as_posix(), [text[indent:] for text in lines[start:end]]
    return None


def _example_nodes() -> Iterator[tuple[str, Graph, Module, Node]]:
    """(kind, network graph, module, node) for the first node of each IR op kind in EXAMPLE_NETWORKS."""
    from rescompile.compiler import compile_spec
    from rescompile.testing import op_network

    seen: set[str] = set()
    with tempfile.TemporaryDirectory() as folder:
        # The network of every op's own example last, for the ops no built-in or example uses.
        for name in (*EXAMPLE_NETWORKS, op_network(Path(folder))):
            graph = compile_spec(
                ROOT / name if isinstance(name, str) and name.endswith(".yaml") else name, size=EXAMPLE_SIZE
            )
            for module in graph.modules:
                for node in module.nodes:
                    if node.op.kind not in seen:
                        seen.add(node.op.kind)
                        yield node.op.kind, graph, module, node


def _torch_emission(source_node: SourceNode, inputs: tuple[str, ...]) -> str:
    from rescompile.backends import torch_backend

    lowered = torch_backend._lowered(source_node)
    if isinstance(lowered, torch_backend.Inline):
        return "in `forward`: `" + str(lowered).replace("{all}", ", ".join(inputs)).format(*inputs) + "`"
    callee, arguments = lowered
    return f"`{callee}({', '.join(arguments)})`"


def _flax_emission(source_node: SourceNode, in_shape: Shape | None, inputs: tuple[str, ...]) -> str:
    from rescompile.backends import flax_backend

    lowering = flax_backend._lower(source_node, in_shape)
    if lowering.layer is not None:
        callee, arguments = lowering.layer
        return f"`{callee}({', '.join(arguments)})`"
    if lowering.function is not None:
        keywords = "".join(f", {keyword}={value}" for keyword, value in lowering.arguments)
        return f"in `__call__`: `{lowering.function}(x{keywords})`"
    assert lowering.expression is not None
    return "in `__call__`: `" + lowering.expression.format(*inputs) + "`"


def _onnx_emission(model: OnnxModel, canonical: str) -> str:
    nodes = model.skeleton.graph.node
    kinds = [node.op_type for node in nodes if node.name == canonical or node.name.startswith(canonical + ".")]
    return ", ".join(f"`{kind}`" for kind in kinds) or "nothing (removed)"


def _what(kind: str, models: dict[str, type[BaseModel]]) -> str:
    """What the op is: the op table's docstring, else (``split``, ``repeat``) the spec model's."""
    from rescompile.compiler.ops import OPS

    texts = [_own_doc(OPS[kind]) if kind in OPS else "", _own_doc(models[kind])]
    return next((text for text in texts if text), "")


def ops_page() -> str:
    from rescompile.backends import onnx_backend
    from rescompile.backends.source import instance_nodes
    from rescompile.compiler.ops import OPS, PRIMITIVE_OP_KINDS, show_shape
    from rescompile.spec.models import TEMPLATE_OPS

    models = _spec_models()
    onnx_models: dict[str, OnnxModel] = {}
    emitted: dict[str, list[str]] = {}
    shapes: dict[str, str] = {}
    for kind, graph, module, node in _example_nodes():
        source_node = next(n for n in instance_nodes(module) if n.attribute == node.name)
        canonical = ".".join(part for part in (module.path, node.name) if part)
        name = graph.name
        if name not in onnx_models:
            onnx_models[name] = onnx_backend.emit_model(graph, seed=0)
        in_shape = node.in_shapes[0] if node.in_shapes else None
        reads = " and ".join(show_shape(shape) for shape in node.in_shapes)
        assert node.shape is not None, "a compiled graph's shapes are inferred"
        shapes[kind] = f"In `{canonical}` of `{name}`: {reads} → {show_shape(node.shape)}."
        emitted[kind] = [
            f"For `{canonical}` of `{name}` (input {'×'.join(map(str, in_shape or ()))}):",
            "",
            "| backend | writes |",
            "|---|---|",
            f"| torch | {_table_cell(_torch_emission(source_node, node.inputs))} |",
            f"| flax | {_table_cell(_flax_emission(source_node, in_shape, node.inputs))} |",
            f"| onnx | {_onnx_emission(onnx_models[name], canonical)} |",
        ]
    missing = set(PRIMITIVE_OP_KINDS) - set(emitted)
    assert not missing, f"no network written uses {sorted(missing)}"

    out = [
        "<!-- Generated by scripts/reference_pages.py from spec/models.py, compiler/ops.py and the backends'",
        "     EMITTERS tables; edit those, then run the script (tests/test_docs.py checks this page). -->",
        "# Op reference",
        "",
        "Every `op` a node of a stem, block, shortcut, transition or head may name. The keys are the",
        "spec's (unknown keys are errors with a did-you-mean; torch's and timm's names are mapped);",
        "values marked *expression* may be expressions over the part's parameters. Shapes exclude the",
        "batch: `(channels, height, width)`, or `(features,)` after a `flatten`. *What each backend",
        "writes* is the emitter's output for a real node of a built-in network, compiled at",
        f"{EXAMPLE_SIZE}×{EXAMPLE_SIZE}; the example is that op as a built-in file writes it.",
        "",
        "| op | what it is |",
        "|---|---|",
    ]
    kinds = sorted(models)
    for kind in kinds:
        summary = _what(kind, models).split("\n\n")[0]
        out.append(f"| [`{kind}`](#{kind}) | {_table_cell(_rst_to_markdown(summary))} |")
    for kind in kinds:
        out += ["", f"## {kind}", ""]
        out += [_rst_to_markdown(_what(kind, models)), ""]
        out += ["**Keys**", "", *_keys_table(models[kind]), ""]
        op_type = OPS.get(kind)
        rule = inspect.cleandoc(op_type.output_shape.__doc__ or "") if op_type is not None else ""
        if kind in WINDOW_OPS:
            rule = WINDOW_RULE
        if rule or kind in shapes:
            out += ["**Shape rule**", ""]
            out += [_rst_to_markdown(rule), ""] if rule else []
            out += [shapes[kind], ""] if kind in shapes else []
        if kind in TEMPLATE_OPS:
            out += [
                "A template: it is unrolled, before anything else sees the part, into IR nodes"
                + (" of op `channel_slice`, one per part." if kind == "split" else " (its `nodes`, `count` times)."),
                "",
            ]
        if kind in emitted:
            out += ["**What each backend writes**", "", *emitted[kind], ""]
        example = _example_lines(kind)
        if example is not None:
            path, lines = example
            out += ["**Example**", "", "```yaml", f"# {path}", *lines, "```"]
    return "\n".join(out).rstrip() + "\n"


# --- command line ---------------------------------------------------------------------------------


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    from rescompile import bench, check, cli

    result = [("rescompile", cli._compile_parser())]
    for name in cli.SUBCOMMANDS:
        if name == "check":
            result.append((f"rescompile {name}", check.parser()))
        elif name == "bench":
            result.append((f"rescompile {name}", bench.parser()))
        else:
            result.append((f"rescompile {name}", cli._subcommand_parser(name)))
    return result


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    lines = ["| argument | meaning | default |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flags = ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.dest}`"
        meaning = action.help or ""
        if action.choices is not None:
            meaning += " (one of " + ", ".join(f"`{choice}`" for choice in action.choices) + ")"
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) or not action.option_strings else f"`{default}`"
        lines.append(f"| {flags} | {_table_cell(meaning)} | {shown} |")
    return lines


def cli_page() -> str:
    from rescompile import cli

    out = [
        "<!-- Generated by scripts/reference_pages.py from the argparse parsers of rescompile/cli.py, check.py",
        "     and bench.py; edit those, then run the script (tests/test_docs.py checks this page). -->",
        "# Command-line reference",
        "",
        "`./dev rescompile ARGS` runs `rescompile ARGS` from the repository's `.venv`, in the caller's",
        "working directory. A mistyped option is one line on stderr with exit status 1.",
        "",
        _rst_to_markdown(_doc(cli)),
    ]
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        for command, parser in _parsers():
            out += ["", f"## {command}", ""]
            if parser.description:
                out += [_table_cell(parser.description.split("\n\n")[0]), ""]
            out += _options_table(parser)
            out += ["", "```text", parser.format_help().rstrip(), "```"]
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(out).rstrip() + "\n"


# --- Python API -----------------------------------------------------------------------------------


def _api_functions() -> list[tuple[str, Callable[..., object]]]:
    import rescompile
    from rescompile import api

    public = [name for name in vars(api) if not name.startswith("_")]
    functions = [
        (f"rescompile.{name}" if name in rescompile.__all__ else f"rescompile.api.{name}", getattr(api, name))
        for name in public
        if inspect.isfunction(getattr(api, name)) and getattr(api, name).__module__ == api.__name__
    ]
    others = [
        (f"rescompile.{name}", getattr(rescompile, name))
        for name in rescompile.__all__
        if inspect.isfunction(getattr(rescompile, name)) and getattr(rescompile, name).__module__ != api.__name__
    ]
    return functions + others


def _signature(name: str, function: Callable[..., object]) -> str:
    """``def name(...) -> ...``, a parameter a line, annotations as written (they are strings here)."""
    signature = inspect.signature(function)
    lines, keyword_only = [], False
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and not keyword_only:
            lines.append("*")
            keyword_only = True
        stars: dict[inspect._ParameterKind, str] = {parameter.VAR_POSITIONAL: "*", parameter.VAR_KEYWORD: "**"}
        text = stars.get(parameter.kind, "") + parameter.name
        if parameter.annotation is not parameter.empty:
            text += f": {parameter.annotation}"
        if parameter.default is not parameter.empty:
            text += f" = {parameter.default!r}"
        lines.append(text)
    result = signature.return_annotation
    returns = "" if result is signature.empty else f" -> {result}"
    return f"def {name}(\n" + "".join(f"    {line},\n" for line in lines) + f"){returns}: ..."


def api_page() -> str:
    from rescompile import api

    out = [
        "<!-- Generated by scripts/reference_pages.py from the docstrings of rescompile.api and the",
        "     package's functions; edit those, then run the script (tests/test_docs.py checks this page). -->",
        "# Python API reference",
        "",
        _rst_to_markdown(_doc(api)),
    ]
    for name, function in _api_functions():
        # A stub (pyi): shown, not run as the docs' python blocks are.
        out += ["", f"## `{name}`", "", "```pyi", _signature(name.rsplit(".", 1)[1], function), "```", ""]
        out.append(_rst_to_markdown(_doc(function)) or "(no docstring)")
    return "\n".join(out).rstrip() + "\n"


def pages() -> dict[Path, str]:
    return {REFERENCE / "ops.md": ops_page(), REFERENCE / "cli.md": cli_page(), REFERENCE / "api.md": api_page()}


def main(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page differs")
    options = parser.parse_args(arguments)
    stale = []
    for path, text in pages().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.relative_to(ROOT).as_posix())
        if not options.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if options.check and stale:
        print(f"stale: {', '.join(stale)}; run .venv/bin/python scripts/reference_pages.py", file=sys.stderr)
        return 1
    print(f"{'wrote' if stale else 'unchanged'}: {', '.join(stale) or 'every page'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
