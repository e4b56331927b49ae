"""Backend-neutral pieces of source emission, shared by the torch and flax emitters.

Generated code is built from two sources: the *structure* of each module (which nodes, which
inputs) always comes from the IR, and the *attribute texts* come either from the IR's concrete
values (stem, head: one instance each) or from the part's expressions (block and shortcut
classes, instantiated many times with different parameters). Expressions are a Python subset,
so their text is valid source.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import keyword
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass

import jinja2

from rescompile.backends.interface import Writer
from rescompile.compiler.files import write_atomically
from rescompile.compiler.ir import (
    MODULE_INPUT,
    Add,
    AvgPool,
    BatchNorm,
    Conv,
    Graph,
    Linear,
    MaxPool,
    Module,
    Node,
    PadChannels,
    Padding,
    Pair,
    Subsample,
)
from rescompile.spec.errors import RescompileError
from rescompile.spec.expressions import Expression, Value
from rescompile.spec.models import RESERVED_NAMES, BlockSpec, LinearSpec, OpSpec, PartSpec, ShortcutSpec

SHORTCUT_VARIABLE = "shortcut"
LINE_LENGTH = 120
"""Generated files are laid out for this line length, the project's ruff setting."""


@dataclass(frozen=True)
class SourceNode:
    """One node as generated code sees it."""

    name: str
    """IR node name, relative to the class: ``conv1``, ``0``."""
    attribute: str
    """Python attribute holding the layer (``conv1``); digits only inside a Sequential."""
    kind: str
    attributes: dict[str, str]
    """Attribute name -> Python source text, e.g. ``{"out_channels": "width * 4"}``."""
    inputs: tuple[str, ...]
    """Python variable names read."""
    output: str
    """Python variable name written."""
    sole_reader: bool
    """True when nothing but this node reads its (single) input, and the input is not the class
    input: an in-place activation is then safe."""


def class_name(part_name: str, suffix: str) -> str:
    words = [word for word in part_name.replace("-", "_").split("_") if word]
    base = "".join(word[:1].upper() + word[1:] for word in words)
    return base if base.endswith(suffix) else base + suffix


def function_name(part_name: str) -> str:
    """A module-level function name for a part: ``zero-pad`` -> ``zero_pad``, suffixed where the
    plain name would be a keyword or shadow a name the generated source defines."""
    name = part_name.replace("-", "_")
    return f"{name}_shortcut" if keyword.iskeyword(name) or name in RESERVED_NAMES else name


def check_identifier(name: str, what: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name) or name in RESERVED_NAMES:
        raise RescompileError(
            f"{what} '{name}' cannot be used as a Python name in generated code; "
            f"use letters, digits and underscores, not a keyword or one of {', '.join(sorted(RESERVED_NAMES))}"
        )


def _text(value: Value) -> str:
    """A parameter value as a Python literal. Strings come out double-quoted where that needs no
    escaping (the quotes ruff writes); every character ``repr`` would escape stays escaped, so no
    text, whatever it holds, can end the literal early."""
    literal = repr(value)
    if isinstance(value, str) and literal.startswith("'") and '"' not in value:
        literal = f'"{literal[1:-1]}"'  # repr escaped nothing for a quote, so only the delimiters change
    return literal


def docstring_text(text: str) -> str:
    """User text (a description, a name) made safe inside a triple-quoted docstring: backslashes and
    quotes are escaped, and so is every non-printable character except the line break, so the text
    can neither close the docstring nor form an escape; it reads back unchanged from ``__doc__``."""
    escaped: list[str] = []
    for character in text:
        if character == "\\":
            escaped.append("\\\\")
        elif character == '"':
            escaped.append('\\"')
        elif character == "\n" or character.isprintable():
            escaped.append(character)
        else:
            escaped.append(repr(character)[1:-1])  # \x00, \r, \udc80, ...
    return "".join(escaped)


def parameter_declarations(parameters: Mapping[str, Value]) -> list[str]:
    """Constructor parameters with their types and defaults: ``expansion: int = 4``."""
    return [f"{name}: {type(value).__name__} = {_text(value)}" for name, value in parameters.items()]


def expression_source(expression: Expression) -> str:
    """An expression as Python source, rendered from its checked syntax tree (never from the text
    the user wrote), its string constants written by :func:`_text`."""
    literals: list[str] = []

    class _Placeholders(ast.NodeTransformer):
        def visit_Constant(self, node: ast.Constant) -> ast.expr:
            if not isinstance(node.value, str):
                return node
            literals.append(_text(node.value))
            # NUL cannot occur in an identifier or a rendered literal, so the placeholder is unambiguous.
            return ast.Name(id=f"\0{len(literals) - 1}\0", ctx=ast.Load())

    tree = _Placeholders().visit(copy.deepcopy(expression.tree))
    source = ast.unparse(tree)
    for index, literal in enumerate(literals):
        source = source.replace(f"\0{index}\0", literal)
    return source


def _square(pair: Pair, what: str) -> str:
    if pair[0] != pair[1]:
        raise RescompileError(f"{what} {pair} is not square; source emitters need square kernels and strides")
    return str(pair[0])


def _symmetric(padding: Padding) -> str:
    (top, bottom), (left, right) = padding
    if not top == bottom == left == right:
        raise RescompileError(f"padding {padding} is not symmetric; source emitters need symmetric padding")
    return str(top)


def concrete_attributes(node: Node) -> dict[str, str]:
    """Attribute texts from an IR node's concrete values."""
    op = node.op
    if isinstance(op, Conv):
        return {
            "in_channels": str(op.in_channels),
            "out_channels": str(op.out_channels),
            "kernel": _square(op.kernel, "kernel"),
            "stride": _square(op.stride, "stride"),
            "padding": _symmetric(op.padding),
            "dilation": _square(op.dilation, "dilation"),
            "groups": str(op.groups),
            "bias": repr(op.bias),
        }
    if isinstance(op, BatchNorm):
        return {"channels": str(op.channels), "epsilon": repr(op.epsilon), "momentum": repr(op.momentum)}
    if isinstance(op, MaxPool | AvgPool):
        texts = {
            "kernel": _square(op.kernel, "kernel"),
            "stride": _square(op.stride, "stride"),
            "padding": _symmetric(op.padding),
            "ceil_mode": repr(op.ceil_mode),
        }
        if isinstance(op, AvgPool):
            texts["count_include_pad"] = repr(op.count_include_pad)
        return texts
    if isinstance(op, Linear):
        return {"in_features": str(op.in_features), "out_features": str(op.out_features), "bias": repr(op.bias)}
    if isinstance(op, Subsample):
        return {"stride": str(op.stride)}
    if isinstance(op, PadChannels):
        return {"before": str(op.before), "after": str(op.after)}
    return {}


def _combine(left: str, operator: ast.operator, right: str) -> str:
    tree = ast.BinOp(ast.parse(left, mode="eval").body, operator, ast.parse(right, mode="eval").body)
    return ast.unparse(tree)


def symbolic_attributes(spec: OpSpec, in_channels: str) -> tuple[dict[str, str], str]:
    """Attribute texts from a part's expressions, and the output channel count as text."""
    texts: dict[str, str] = {}
    for field_name, value in spec:
        if isinstance(value, Expression):
            texts[field_name] = expression_source(value)
        elif isinstance(value, bool | float):
            texts[field_name] = repr(value)
    if isinstance(spec, LinearSpec):
        raise RescompileError("a linear node inside a block or shortcut is not supported by source emitters")
    kind = spec.op
    if kind == "conv":
        texts["in_channels"] = in_channels
        return texts, texts["out_channels"]
    if kind == "batch_norm":
        texts["channels"] = in_channels
    if kind == "pad_channels":
        out = in_channels
        for amount in (texts["before"], texts["after"]):
            if amount != "0":
                out = _combine(out, ast.Add(), amount)
        return texts, out
    return texts, in_channels


def _variables(nodes: list[Node], input_variable: str, chain_variable: str, renamed: dict[str, str]) -> dict[str, str]:
    """Python variable per value: a straight chain reuses ``chain_variable`` (torchvision's ``out``),
    a value read elsewhere than by the very next node keeps a name of its own."""
    variables = {MODULE_INPUT: input_variable, **renamed}
    for index, node in enumerate(nodes):
        readers = [other for other in nodes if node.name in other.inputs]
        following = nodes[index + 1] if index + 1 < len(nodes) else None
        if not readers or (len(readers) == 1 and readers[0] is following):
            variables[node.name] = chain_variable
        else:
            variables[node.name] = node.name.replace(".", "_")
    return variables


def source_nodes(
    nodes: list[Node],
    attributes: list[dict[str, str]],
    input_variable: str,
    chain_variable: str,
    renamed: dict[str, str] | None = None,
    attribute_prefix: str = "",
) -> list[SourceNode]:
    variables = _variables(nodes, input_variable, chain_variable, renamed or {})
    result: list[SourceNode] = []
    for node, texts in zip(nodes, attributes, strict=True):
        readers = [other for other in nodes if node.inputs and node.inputs[0] in other.inputs]
        sole_reader = len(node.inputs) == 1 and node.inputs[0] != MODULE_INPUT and len(readers) == 1
        sole_reader = sole_reader and node.inputs[0] not in (renamed or {})
        attribute = node.name.removeprefix(attribute_prefix)
        result.append(
            SourceNode(
                name=attribute,
                attribute=attribute,
                kind=node.op.kind,
                attributes=texts,
                inputs=tuple(variables[value] for value in node.inputs),
                output=variables[node.name],
                sole_reader=sole_reader,
            )
        )
    return result


def instance_nodes(module: Module, input_variable: str = "x") -> list[SourceNode]:
    """A single-instance module (stem, head) with concrete attribute texts."""
    nodes = list(module.nodes)
    for node in nodes:
        check_identifier(node.name, "node name")
    return source_nodes(nodes, [concrete_attributes(node) for node in nodes], input_variable, input_variable)


@dataclass(frozen=True)
class BlockClass:
    """What a block class is made of: its branch nodes (symbolic), parameters and shortcut slot."""

    spec: BlockSpec
    nodes: list[SourceNode]
    parameters: dict[str, Value]
    """The block's own parameters with their defaults (besides in_channels, width, stride)."""
    shortcut_attribute: str | None
    """``downsample``: where the shortcut module lives; None for a plain network."""
    zero_init: list[str]
    """Attributes of the BatchNorms zeroed by ``zero_init_residual``."""
    derived: dict[str, str]
    """Derived values as source text, computed first in the constructor."""


@dataclass(frozen=True)
class ShortcutClass:
    spec: ShortcutSpec
    nodes: list[SourceNode]
    derived: dict[str, str]
    sequential: bool
    """Nodes named 0, 1, … in a chain: emitted as an nn.Sequential (torchvision's downsample)."""


def _symbolic(part: PartSpec, nodes: list[Node], prefix: str) -> list[dict[str, str]]:
    channels: dict[str, str] = {MODULE_INPUT: "in_channels"}
    texts: list[dict[str, str]] = []
    for node in nodes:
        spec = part.nodes[node.name.removeprefix(prefix)]
        first_input = node.inputs[0] if node.inputs else MODULE_INPUT
        in_channels = channels.get(first_input, channels[MODULE_INPUT])
        attributes, out_channels = symbolic_attributes(spec, in_channels)
        texts.append(attributes)
        channels[node.name] = out_channels
    return texts


def block_class(graph: Graph) -> BlockClass:
    """The block class of ``graph``, checked to have one structure across all instances."""
    spec = graph.parts.block
    first = graph.blocks[0]
    shortcut_attributes = {block.shortcut_module for block in graph.blocks if block.shortcut_module}
    if len(shortcut_attributes) > 1:
        raise RescompileError(
            f"shortcut kinds of {graph.name} keep their layers under different names "
            f"({', '.join(sorted(shortcut_attributes))}); give them one 'module' name"
        )
    for name in [*spec.parameters, *spec.derived]:
        check_identifier(name, "block parameter")
    prefix = f"{next(iter(shortcut_attributes))}." if shortcut_attributes else None

    def branch(module: Module) -> list[Node]:
        return [node for node in module.nodes if prefix is None or not node.name.startswith(prefix)]

    structure = [(node.name, node.op.kind) for node in branch(first)]
    for block in graph.blocks:
        if [(node.name, node.op.kind) for node in branch(block)] != structure:
            raise RescompileError(f"{block.path} differs in structure from {first.path}; cannot share one class")
    nodes: list[Node] = []
    for node in branch(first):
        check_identifier(node.name, "node name")
        if isinstance(node.op, Add) and node.op.shortcut_input is not None:
            # The shortcut's value is computed by the shortcut module, which the class receives.
            inputs = list(node.inputs)
            inputs[node.op.shortcut_input] = SHORTCUT_VARIABLE
            node = dataclasses.replace(node, inputs=tuple(inputs), in_shapes=())
        nodes.append(node)
    renamed = {SHORTCUT_VARIABLE: SHORTCUT_VARIABLE}
    attributes = _symbolic(spec, nodes, "")
    source = source_nodes(nodes, attributes, "x", "out", renamed)
    zero_init = [node.name for node in nodes if isinstance(node.op, BatchNorm) and node.op.zero_init]
    own_parameters: dict[str, Value] = dict(spec.parameters)
    return BlockClass(
        spec=spec,
        nodes=source,
        parameters=own_parameters,
        shortcut_attribute=None if not graph.residual else (next(iter(shortcut_attributes), "downsample")),
        zero_init=zero_init if graph.residual else [],
        derived={name: expression_source(expression) for name, expression in spec.derived.items()},
    )


def shortcut_classes(graph: Graph) -> list[ShortcutClass]:
    classes: list[ShortcutClass] = []
    for spec in graph.parts.shortcuts:
        instance = next(block for block in graph.blocks if block.shortcut == spec.name)
        prefix = f"{spec.module}."
        nodes = [node for node in instance.nodes if node.name.startswith(prefix)]
        names = [node.name.removeprefix(prefix) for node in nodes]
        sequential = names == [str(index) for index in range(len(names))] and all(
            node.inputs == ((MODULE_INPUT,) if index == 0 else (nodes[index - 1].name,))
            for index, node in enumerate(nodes)
        )
        if not sequential:
            for name in names:
                check_identifier(name, "shortcut node name")
        attributes = _symbolic(spec, nodes, prefix)
        renamed_nodes = source_nodes(nodes, attributes, "x", "out", attribute_prefix=prefix)
        derived = {name: expression_source(expression) for name, expression in spec.derived.items()}
        classes.append(ShortcutClass(spec, renamed_nodes, derived, sequential and not derived))
    return classes


@dataclass(frozen=True)
class StageCall:
    """One stage as the network's constructor builds it."""

    attribute: str
    in_channels: int
    out_channels: int
    width: int
    depth: int
    stride: int
    options: dict[str, Value]
    """Block parameters that differ from the block's defaults."""


def stage_calls(graph: Graph) -> list[StageCall]:
    calls: list[StageCall] = []
    defaults = graph.parts.block.parameters
    for stage in graph.stage_names():
        blocks = [block for block in graph.blocks if block.stage == stage]
        first = blocks[0]
        assert first.out_shape is not None
        parameters = dict(first.parameters)
        options = {name: value for name, value in parameters.items() if name in defaults and defaults[name] != value}
        for block in blocks[1:]:
            other = dict(block.parameters)
            if any(other[name] != parameters[name] for name in defaults):
                raise RescompileError(f"{block.path}: block parameters differ inside one stage")
        width = parameters["width"]
        stride = parameters["stride"]
        assert isinstance(width, int) and isinstance(stride, int)
        calls.append(StageCall(stage, first.in_shape[0], first.out_shape[0], width, len(blocks), stride, options))
    return calls


def shortcut_choice(graph: Graph, attribute: str, constructors: Mapping[str, str]) -> list[str]:
    """``_make_stage``'s lines choosing each block's shortcut by the network's policy, as the IR
    chose it: ``constructors`` maps a shortcut kind to the source that builds it."""

    def construct(kind: str | None) -> str:
        return "None" if kind is None or kind == "identity" else constructors[kind]

    changes = {
        module.shortcut: module.in_shape[0] != (module.out_shape or (0,))[0] or module.parameter("stride") != 1
        for module in graph.blocks
    }
    match_kind = next((kind for kind, change in changes.items() if not change), None)
    change_kind = next((kind for kind, change in changes.items() if change), None)
    if match_kind is None or change_kind is None or construct(match_kind) == construct(change_kind):
        return [f"{attribute} = {construct(change_kind or match_kind)}"]
    return [
        "if block_stride != 1 or in_channels != out_channels:",
        f"    {attribute} = {construct(change_kind)}",
        "else:",
        f"    {attribute} = {construct(match_kind)}",
    ]


def text(value: Value) -> str:
    """A parameter value as Python source."""
    return _text(value)


def wrap_call(head: str, arguments: list[str], indent: int, tail: str = "") -> str:
    """``head(arguments)tail`` laid out as ruff would at :data:`LINE_LENGTH`, starting at column
    ``indent``: on one line, else the arguments on one indented line, else one per line.
    Continuation lines are indented relative to column 0 (the template indents the block)."""
    joined = ", ".join(arguments)
    if indent + len(head) + len(joined) + len(tail) + 2 <= LINE_LENGTH:
        return f"{head}({joined}){tail}"
    if indent + 4 + len(joined) <= LINE_LENGTH:
        return f"{head}(\n    {joined}\n){tail}"
    return f"{head}(\n" + "".join(f"    {argument},\n" for argument in arguments) + f"){tail}"


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("rescompile.backends", "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    # Templates pass every piece of user text through this filter: `{{ spec.description | docstring }}`.
    environment.filters["docstring"] = docstring_text
    return environment


def template(name: str) -> jinja2.Template:
    """A template of ``backends/templates/`` (one shared environment, strict about undefined names)."""
    return _environment().get_template(name)


def load_source(source: str, backend: str, network: str) -> types.ModuleType:
    """Execute generated source as a fresh Python module, registered in ``sys.modules`` (as
    ``rescompile_generated_<backend>_<network>``) so that pickling and ``inspect.getsource`` work."""
    identifier = "".join(character if character.isalnum() else "_" for character in network)
    name = f"rescompile_generated_{backend}_{identifier}"
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def source_writer(source: str) -> Writer:
    """The writer of a generated source file."""
    encoded = source.encode()
    return lambda path: write_atomically([(path, [encoded])])
