"""Backend-neutral pieces of source emission, shared by the torch and flax emitters.

Generated code is built from two sources: the *structure* of each module (which nodes, which
inputs) always comes from the IR, and the typed *attributes* come either from the IR's concrete
values (stem, head: one instance each) or from the part's expressions (block and shortcut
classes, instantiated many times with different parameters). Emitters receive them typed
(:data:`Attribute`), compare them with :func:`is_default` and write them with :func:`render`,
the one renderer: expressions are rendered from their checked syntax tree, never from user text.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import enum
import functools
import hashlib
import keyword
import linecache
import sys
import textwrap
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, SupportsIndex

import jinja2

from rescompile.backends.interface import Writer

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
from rescompile.backends.names import GENERATED_FILE_NAMES, STAGE_LOCALS, Namespace, attribute_access, with_containers
from rescompile.compiler.files import write_atomically
from rescompile.compiler.ir import (
    MODULE_INPUT,
    Attribute,
    Definition,
    DefinitionRole,
    Graph,
    Module,
    SymbolicNode,
    SymbolicOp,
    container_span,
)
from rescompile.compiler.ops import BatchNormFields, GroupNormFields, symbolic_form
from rescompile.spec.errors import RescompileError
from rescompile.spec.expressions import MAKE_DIVISIBLE_SOURCE, Expression, Value
from rescompile.spec.models import HELD_BLOCKS, RESERVED_NAMES

SHORTCUT_VARIABLE = "shortcut"
LINE_LENGTH = 120
"""Generated files are laid out for this line length, the project's ruff setting."""


@dataclass(frozen=True)
class SourceNode:
    """One node as generated code sees it."""

    attribute: str
    """The module path of the layer (``conv1``, ``se.fc1``, ``conv1.0``); :func:`attribute_access`
    renders it after ``self``."""
    op: SymbolicOp | ContainerCall | HeldBlocksCall
    """The op, its fields typed (``out_channels``: the expression ``width * 4``, or 256 in a stem);
    :func:`render` writes a field as source, :func:`is_default` compares one with a default."""
    inputs: tuple[str, ...]
    """Python variable names read."""
    output: str
    """Python variable name written."""
    sole_reader: bool
    """True when nothing but this node reads its (single) input, and the input is not the class
    input: an in-place activation is then safe."""
    class_arguments: tuple[str, ...] = ()
    """For a :class:`ContainerCall` node: the constructor's keyword arguments (``radix=radix``)."""

    @property
    def kind(self) -> str:
        return self.op.kind


@dataclass(frozen=True)
class ContainerCall:
    """The op of a :class:`SourceNode` standing for a container of a block's nodes written as a class
    of its own (a block's ``classes``)."""

    kind: ClassVar[str] = "class"
    class_name: str


CLASS_KIND = ContainerCall.kind


@dataclass(frozen=True)
class HeldBlocksCall:
    """The op of a :class:`SourceNode` standing for a stage's blocks inside the transition that
    holds them: a placeholder the network's constructor replaces with the stage's blocks."""

    kind: ClassVar[str] = "held_blocks"


@dataclass(frozen=True)
class ContainerClass:
    """A container of a block's nodes (``conv2``) as a class of its own (``SplitAttn``): its nodes,
    named inside it (``conv``, ``fc1``), reading its one input as ``x``."""

    name: str
    block: str
    """The block type it was written from (for its docstring)."""
    prefix: str
    nodes: list[SourceNode]
    parameters: dict[str, Value]
    """Its constructor's parameters (the names its attributes read), each with a value of its type."""


def class_name(part_name: str, suffix: str) -> str:
    words = [word for word in part_name.replace("-", "_").split("_") if word]
    base = "".join(word[:1].upper() + word[1:] for word in words)
    return base if base.endswith(suffix) else base + suffix


def function_name(part_name: str) -> str:
    """A module-level function name for a part: ``zero-pad`` -> ``zero_pad``, suffixed where the
    plain name would be a keyword or shadow a name the generated source defines."""
    name = part_name.replace("-", "_")
    return f"{name}_shortcut" if keyword.iskeyword(name) or name in RESERVED_NAMES else name


MAX_INLINE_TERMS = 32
"""An add of more inputs is written ``sum([b, c, ...], a)``: ``a + b + ...`` nests one syntax-tree
level per term, and Python's compiler fails on a few thousand (a RecursionError at import)."""


def sum_source(terms: list[str]) -> str:
    """The sum of ``terms`` (Python expressions) in order, ``((a + b) + c) + ...``, as ``a + b + c``,
    or as the same sum by the builtin ``sum`` where there are more than :data:`MAX_INLINE_TERMS`."""
    if len(terms) <= MAX_INLINE_TERMS:
        return " + ".join(terms)
    return f"sum([{', '.join(terms[1:])}], {terms[0]})"


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

        def visit_Call(self, node: ast.Call) -> ast.expr:
            self.generic_visit(node)
            if isinstance(node.func, ast.Name) and node.func.id == "log2":
                # The generated file imports math; the other functions are builtins or defined in it.
                node.func = ast.Attribute(value=ast.Name(id="math", ctx=ast.Load()), attr="log2", ctx=ast.Load())
            return node

    tree = _Placeholders().visit(copy.deepcopy(expression.tree))
    source = ast.unparse(tree)
    for index, literal in enumerate(literals):
        source = source.replace(f"\0{index}\0", literal)
    return source


def render(value: Value | Attribute) -> str:
    """The one renderer of op fields and parameter values as Python source: expressions from
    their syntax tree, a choice (an enum member) as its text, values as literals."""
    if isinstance(value, Expression):
        return expression_source(value)
    return _text(value.value if isinstance(value, enum.Enum) else value)


def constant(value: Attribute) -> Value | enum.Enum | None:
    """The value of an op's field known at emit time (a value, or an expression that is a literal),
    else None (it names parameters)."""
    if not isinstance(value, Expression):
        return value
    if isinstance(value.tree, ast.Constant) and isinstance(value.tree.value, int | float | str | bool):
        return value.tree.value
    return None


def is_default(value: Attribute, default: Value | enum.Enum) -> bool:
    """Whether an attribute is known to equal ``default`` (of the same type: ``True`` is not ``1``)."""
    known = constant(value)
    return type(known) is type(default) and known == default


def field_expressions(op: SymbolicOp) -> list[Expression]:
    """The fields of an op that are expressions (over its definition's parameters)."""
    values = [getattr(op, field.name) for field in dataclasses.fields(op)]
    return [value for value in values if isinstance(value, Expression)]


def _variables(
    nodes: list[SymbolicNode],
    input_variable: str,
    chain_variable: str,
    renamed: dict[str, str],
    also_read: frozenset[str],
) -> dict[str, str]:
    """Python variable per value: a straight chain reuses ``chain_variable`` (torchvision's ``out``),
    a value read elsewhere than by the very next node (or in ``also_read``) keeps a name of its own."""
    variables = {MODULE_INPUT: input_variable, **renamed}
    namespace = Namespace({input_variable, chain_variable, *renamed.values()})
    for index, node in enumerate(nodes):
        readers = [other for other in nodes if node.name in other.inputs]
        following = nodes[index + 1] if index + 1 < len(nodes) else None
        if node.name in also_read:
            variables[node.name] = namespace.create_name(node.name)
        elif not readers or (len(readers) == 1 and readers[0] is following):
            variables[node.name] = chain_variable
        else:
            variables[node.name] = namespace.create_name(node.name)
    return variables


def source_nodes(
    nodes: list[SymbolicNode],
    input_variable: str,
    chain_variable: str,
    renamed: dict[str, str] | None = None,
    also_read: frozenset[str] = frozenset(),
) -> list[SourceNode]:
    """The nodes with Python variables; ``also_read``: values that code besides the nodes reads
    (a block's shortcut module reading a pre-activation), which keep a variable of their own."""
    variables = _variables(nodes, input_variable, chain_variable, renamed or {}, also_read)
    # A channel slice is a view of its input: writing into one in place would change its siblings.
    views = {node.name for node in nodes if node.op_type.view}
    result: list[SourceNode] = []
    for node in nodes:
        readers = [other for other in nodes if node.inputs and node.inputs[0] in other.inputs]
        sole_reader = len(node.inputs) == 1 and node.inputs[0] not in (MODULE_INPUT, *also_read, *views)
        sole_reader = sole_reader and len(readers) == 1
        sole_reader = sole_reader and node.inputs[0] not in (renamed or {})
        result.append(
            SourceNode(
                attribute=node.name,
                op=node.op,
                inputs=tuple(variables[value] for value in node.inputs),
                output=variables[node.name],
                sole_reader=sole_reader,
            )
        )
    return result


def instance_nodes(module: Module, input_variable: str = "x") -> list[SourceNode]:
    """A single-instance module (stem, head), its ops' fields values."""
    try:
        nodes = [SymbolicNode(node.name, symbolic_form(node.op), node.inputs, node.source) for node in module.nodes]
    except ValueError as error:
        raise RescompileError(str(error)) from None
    return source_nodes(nodes, input_variable, input_variable)


def _class_expressions(graph: Graph) -> list[Expression]:
    """Every expression the block and shortcut classes write (stem and head are written with values)."""
    expressions: list[Expression] = []
    for definition in graph.definitions:
        if definition.role in ("block", "shortcut"):
            expressions += [expression for _, expression in definition.derived]
            expressions += [value for node in definition.nodes for value in field_expressions(node.op)]
    return expressions


def uses_math(graph: Graph) -> bool:
    """Whether generated source calls ``math.log2`` (and so imports math)."""
    return any("log2" in expression.functions for expression in _class_expressions(graph))


def function_helpers(graph: Graph) -> list[str]:
    """Module-level functions that generated expressions call: ``make_divisible``, where used."""
    used = any("make_divisible" in expression.functions for expression in _class_expressions(graph))
    return [MAKE_DIVISIBLE_SOURCE] if used else []


BLOCK_INDEX_NAMES = ("block_index", "block_count")
BLOCK_INDEX_DECLARATIONS = ["block_index: int = 0", "block_count: int = 1"]
"""The block constructors' keywords where a block reads its place in the network."""


def uses_block_index(graph: Graph) -> bool:
    """Whether a block class reads ``block_index`` or ``block_count``: each block is then built with
    its own, which the network's ``_make_stage`` passes."""
    return any(name in expression.names for expression in _class_expressions(graph) for name in BLOCK_INDEX_NAMES)


def block_index_arguments(graph: Graph) -> list[str]:
    """The block constructor's keywords in ``_make_stage``, from the stage's first block's index."""
    return ["block_index=first_block_index + index", f"block_count={len(graph.blocks)}"]


@dataclass(frozen=True)
class BlockClass:
    """What a block class is made of: its branch nodes (symbolic), parameters and shortcut slot."""

    definition: Definition
    nodes: list[SourceNode]
    parameters: dict[str, Value]
    """The block's own parameters with their defaults (besides in_channels, width, stride)."""
    shortcut_attribute: str | None
    """``downsample``: where the shortcut module lives; None for a plain network."""
    zero_init: list[str]
    """Attributes of the BatchNorms zeroed by ``zero_init_residual``."""
    derived: dict[str, str]
    """Derived values as source text, computed first in the constructor."""
    shortcut_source: str
    """The Python variable the shortcut module reads: ``x`` (the block input) or a node's."""
    python_name: str
    """Its class's name, handed out by :func:`part_names` (``BottleneckBlock``)."""
    classes: list[ContainerClass] = field(default_factory=list)
    """Its containers written as classes of their own; ``nodes`` holds one :class:`ContainerCall` node each."""


@dataclass(frozen=True)
class ShortcutClass:
    """A shortcut or a transition part: a function returning a Sequential, or a class, built from
    the values the compiler binds (:data:`BOUND_ARGUMENTS`) and the part's own parameters."""

    definition: Definition
    nodes: list[SourceNode]
    derived: dict[str, str]
    sequential: bool
    """Nodes named 0, 1, … in a chain: emitted as an nn.Sequential (torchvision's downsample)."""
    python_name: str
    """The function (sequential) or class that builds it in generated source (:func:`part_names`)."""

    @property
    def arguments(self) -> list[str]:
        """Its constructor's parameters: the bound values, then the part's own with defaults."""
        bound = [f"{name}: int" for name in BOUND_ARGUMENTS[self.definition.role]]
        return bound + parameter_declarations(_constructor_parameters(self.definition))


def _constructor_parameters(definition: Definition) -> dict[str, Value]:
    """A shortcut's or transition's parameters with their defaults, but those its templates were
    unrolled for (its class is made for their values: constants in it)."""
    fixed = dict(definition.fixed)
    return {name: value for name, value in definition.parameters if name not in fixed}


BOUND_ARGUMENTS = {
    "shortcut": ("in_channels", "out_channels", "stride"),
    "transition": ("in_channels", "width", "stride"),
}
"""What a shortcut and a transition are built from, in order (the values the compiler binds)."""


def _derived(definition: Definition) -> dict[str, str]:
    """The derived values a class computes: those its nodes or later kept values read (a value
    only a ``when`` or a placeholder read was spent unrolling the class)."""
    read = {name for node in definition.nodes for value in field_expressions(node.op) for name in value.names}
    kept: dict[str, str] = {}
    for name, expression in reversed(definition.derived):
        if name in read:
            kept[name] = expression_source(expression)
            read |= expression.names
    # The values the class was unrolled for, where it reads them, are its constants (scale = 4).
    constants = {name: _text(value) for name, value in definition.fixed if name in read}
    return constants | dict(reversed(kept.items()))


def shortcut_attribute(graph: Graph) -> str | None:
    """Where every block keeps its shortcut module (``downsample``); None for a plain network."""
    # NOTE: expand has checked that every shortcut kind of a network uses one attribute.
    attributes = {block.shortcut_module for block in graph.blocks if block.shortcut_module}
    return None if not graph.residual else next(iter(attributes), "downsample")


def block_classes(graph: Graph) -> list[BlockClass]:
    """One class per block definition of ``graph`` (a network may use several, one per stage)."""
    attribute = shortcut_attribute(graph)
    names = part_names(graph)
    classes: list[BlockClass] = []
    for definition in graph.definitions:
        if definition.role != "block":
            continue
        # NOTE: the loader has checked every parameter, derived and node name at validate time.
        # What the class was unrolled for is fixed in it, not a parameter that would break it.
        fixed = dict(definition.fixed)
        parameters: dict[str, Value] = {name: value for name, value in definition.parameters if name not in fixed}
        nodes = list(definition.nodes)
        # The shortcut's value is computed by the shortcut module, which the class receives. A block
        # class without a residual add (the policy ``none``) still takes the module (None) the stage passes.
        residual = graph.residual and definition.residual
        read = frozenset({definition.shortcut_input} - {MODULE_INPUT}) if residual else frozenset()
        source = source_nodes(nodes, "x", "out", {SHORTCUT_VARIABLE: SHORTCUT_VARIABLE}, read)
        variables = {MODULE_INPUT: "x", **{node.name: item.output for node, item in zip(nodes, source, strict=True)}}
        zero_init = [
            node.name for node in nodes if isinstance(node.op, BatchNormFields | GroupNormFields) and node.op.zero_init
        ]
        containers: list[ContainerClass] = []
        # The last container first: each replaces its run of source nodes by one, moving those after it.
        for prefix, _ in sorted(definition.classes, key=lambda item: _first_node(nodes, item[0]), reverse=True):
            name = names.containers[(definition.name, prefix)]
            container, source = _container(graph, definition, prefix, name, nodes, source)
            containers.append(container)
        order = [prefix for prefix, _ in definition.classes]
        containers.sort(key=lambda container: order.index(container.prefix))
        classes.append(
            BlockClass(
                definition=definition,
                classes=containers,
                nodes=source,
                parameters=parameters,
                shortcut_attribute=attribute,
                zero_init=zero_init if residual else [],
                derived=_derived(definition),
                shortcut_source=variables[definition.shortcut_input] if residual else "x",
                python_name=names.parts[("block", definition.name)],
            )
        )
    return classes


def _first_node(nodes: list[SymbolicNode], prefix: str) -> int:
    """The position of the first node under ``prefix`` (0 where none is: ``_container`` says why)."""
    return next((index for index, node in enumerate(nodes) if node.name.startswith(f"{prefix}.")), 0)


def _container(
    graph: Graph, definition: Definition, prefix: str, name: str, nodes: list[SymbolicNode], source: list[SourceNode]
) -> tuple[ContainerClass, list[SourceNode]]:
    """The container ``prefix`` of a block written as class ``name``, and the block's source nodes
    with the container's run of nodes replaced by one :class:`ContainerCall` node."""
    try:
        inside, outside = container_span(definition, prefix)
    except ValueError as error:
        raise RescompileError(f"block '{definition.name}': classes.{prefix}: {error}") from None
    names = {nodes[index].name for index in inside}
    start = len(prefix) + 1
    inner = [
        SymbolicNode(
            node.name[start:],
            node.op,
            tuple(value[start:] if value in names else MODULE_INPUT for value in node.inputs),
            node.source,
        )
        for node in (nodes[index] for index in inside)
    ]
    read = sorted({name for node in inner for value in field_expressions(node.op) for name in value.names})
    values = _definition_values(graph, definition)
    external = next(
        variable
        for index in inside
        for value, variable in zip(nodes[index].inputs, source[index].inputs, strict=True)
        if value == outside
    )
    container = ContainerClass(
        name, definition.name, prefix, source_nodes(inner, "x", "out"), {key: values[key] for key in read}
    )
    call = SourceNode(
        attribute=prefix,
        op=ContainerCall(name),
        inputs=(external,),
        output=source[inside[-1]].output,
        sole_reader=False,
        class_arguments=tuple(f"{key}={key}" for key in read),
    )
    return container, [*source[: inside[0]], call, *source[inside[-1] + 1 :]]


def container_source(
    container: ContainerClass,
    base: str,
    keyword_only: list[str],
    init_lines: list[str],
    method: str,
    method_lines: list[str],
) -> str:
    """The source of a container class, laid out as ruff would: ``class NAME(base)``, a docstring,
    ``__init__`` taking its parameters (then ``keyword_only`` ones) and running ``init_lines``,
    and ``method`` (its ``def`` line) running ``method_lines``."""
    parameters = [f"{name}: {type(value).__name__}" for name, value in container.parameters.items()]
    keywords = ["*", *keyword_only] if keyword_only else []
    signature = wrap_call("def __init__", ["self", *parameters, *keywords], 4, " -> None:")
    docstring = f'"""{docstring_text(container.prefix)} of block \'{docstring_text(container.block)}\'."""'
    lines = [f"class {container.name}({base}):", f"    {docstring}", "", textwrap.indent(signature, "    ")]
    lines += [textwrap.indent(line, " " * 8) for line in init_lines or ["pass"]]
    lines += ["", f"    {method}", *(textwrap.indent(line, " " * 8) for line in method_lines)]
    return "\n".join(lines)


def _definition_values(graph: Graph, definition: Definition) -> dict[str, Value]:
    """The parameters and derived values of a block definition's first instance (for their types)."""
    module = next(block for block in graph.blocks if block.type_name == definition.name)
    values = dict(module.parameters)
    for key, expression in definition.derived:
        values[key] = expression.evaluate(values)
    return values


def container_classes(classes: list[BlockClass]) -> list[ContainerClass]:
    """Every container class of the blocks, once each (variants of a block share theirs); two
    different containers given one class name are an error."""
    unique: dict[str, ContainerClass] = {}
    for block in classes:
        for container in block.classes:
            known = unique.setdefault(container.name, container)
            if known.nodes != container.nodes:
                raise RescompileError(
                    f"blocks '{known.block}' and '{container.block}' write different containers as class "
                    f"'{container.name}'; name them apart"
                )
    return list(unique.values())


def block_type(classes: list[BlockClass], base: str, *, first_blocks: bool, layout_used: bool) -> str:
    """The annotation of a stage's blocks in ``_make_stage``'s signature: ``BasicBlock``, or
    ``BasicBlock | BottleneckBlock``; or their base class ``base`` where the union would not fit
    the signature's longest line (``layout: list[tuple[type[...]], ...]``) in :data:`LINE_LENGTH`:
    a network of many block variants (MobileNetV3's) would need ruff's wrapping of a union."""
    union = " | ".join(block.python_name for block in classes)
    longest = "        block: type[],"
    longest = "        first_block: type[] | None = None," if first_blocks else longest
    longest = "        layout: list[tuple[type[], int, dict[str, Any]]] | None = None," if layout_used else longest
    return union if len(longest) + len(union) <= LINE_LENGTH else base


def shortcut_classes(graph: Graph, role: DefinitionRole = "shortcut") -> list[ShortcutClass]:
    """The shortcut kinds of ``graph`` (or, with ``role="transition"``, its transitions)."""
    classes: list[ShortcutClass] = []
    names = part_names(graph)
    for definition in graph.definitions:
        if definition.role != role:
            continue
        nodes = list(definition.nodes)
        classes.append(
            ShortcutClass(
                definition,
                _with_held_blocks(definition, source_nodes(nodes, "x", "out", renamed=_held_variable(definition))),
                _derived(definition),
                _sequential(definition),
                names.parts[(role, definition.name)],
            )
        )
    return classes


def _held_variable(definition: Definition) -> dict[str, str] | None:
    """The variable of the blocks' output in a transition that holds its stage's blocks."""
    return None if definition.blocks is None else {HELD_BLOCKS: HELD_BLOCKS}


def _with_held_blocks(definition: Definition, nodes: list[SourceNode]) -> list[SourceNode]:
    """A transition's nodes with, where it holds its stage's blocks, their call after the node they read."""
    if definition.blocks is None:
        return nodes
    index = next(index for index, node in enumerate(nodes) if node.attribute == definition.blocks[0])
    call = SourceNode(HELD_BLOCKS, HeldBlocksCall(), (nodes[index].output,), HELD_BLOCKS, sole_reader=False)
    return [*nodes[: index + 1], call, *nodes[index + 1 :]]


def _sequential(definition: Definition) -> bool:
    """Whether a shortcut or transition is written as a function returning a Sequential: nodes named
    0, 1, … in a chain, and no derived value to compute first."""
    nodes = definition.nodes
    chain = [node.name for node in nodes] == [str(index) for index in range(len(nodes))] and all(
        node.inputs == ((MODULE_INPUT,) if index == 0 else (nodes[index - 1].name,)) for index, node in enumerate(nodes)
    )
    return chain and not _derived(definition)


@dataclass(frozen=True)
class PartNames:
    """The module-level names one emission gives its parts: every name generated code defines for a
    part comes from here, handed out by one :class:`Namespace`."""

    parts: dict[tuple[DefinitionRole, str], str]
    """(role, definition name) -> the class (``BottleneckBlock``) or function (``projection``) of a
    block, shortcut or transition."""
    containers: dict[tuple[str, str], str]
    """(block definition name, container prefix) -> the class of a block's ``classes:`` entry."""


def part_names(graph: Graph) -> PartNames:
    """The names of ``graph``'s part classes and functions, legal and unique: each part asks for the
    name it would have alone (``a_b`` and ``a-b`` both ask for ``ABBlock``), in definition order,
    and a name taken, or one the file defines, imports or calls a part class from
    (:data:`GENERATED_FILE_NAMES`, :data:`STAGE_LOCALS`, any part's parameters and derived values,
    the shortcut attribute), is handed out suffixed instead. Containers of several blocks (or
    variants of one) that are the same nodes under the same requested name share one class."""
    reserved = set(GENERATED_FILE_NAMES | STAGE_LOCALS)
    attribute = shortcut_attribute(graph)
    reserved |= {attribute} if attribute is not None else set()
    for definition in graph.definitions:
        reserved |= {name for name, _ in definition.parameters} | {name for name, _ in definition.derived}
    namespace = Namespace(reserved=frozenset(reserved))
    parts: dict[tuple[DefinitionRole, str], str] = {}
    containers: dict[tuple[str, str], str] = {}
    shared: dict[object, str] = {}
    for definition in graph.definitions:
        role = definition.role
        if role == "block":
            parts[(role, definition.name)] = namespace.create_name(class_name(definition.name, "Block"))
            for prefix, requested in definition.classes:
                key = (requested, _container_key(definition, prefix))
                if key not in shared:
                    shared[key] = namespace.create_name(requested)
                containers[(definition.name, prefix)] = shared[key]
        elif role in ("shortcut", "transition"):
            suffix = "Transition" if role == "transition" else "Shortcut"
            candidate = (
                function_name(definition.name) if _sequential(definition) else class_name(definition.name, suffix)
            )
            parts[(role, definition.name)] = namespace.create_name(candidate)
    return PartNames(parts, containers)


def _container_key(definition: Definition, prefix: str) -> object:
    """What makes two containers one class: their nodes, named and read inside the container."""
    start = len(prefix) + 1
    inside = [node for node in definition.nodes if node.name.startswith(f"{prefix}.")]
    names = {node.name for node in inside}
    return tuple(
        (
            node.name[start:],
            node.op,
            tuple(value[start:] if value in names else "" for value in node.inputs),
        )
        for node in inside
    )


@dataclass(frozen=True)
class StageCall:
    """One stage as the network's constructor builds it."""

    attribute: str
    block: str
    """The class of its blocks (``BottleneckBlock``)."""
    in_channels: int
    out_channels: int
    width: int
    depth: int
    stride: int
    options: dict[str, Value]
    """Block parameters that differ from the block's defaults."""
    first_block_index: int
    """The network-wide index of its first block (timm's ``net_block_idx``)."""
    first_block: str | None = None
    """The class of its first block where that block differs (its type or parameters), else None."""
    first_options: dict[str, Value] = field(default_factory=dict)
    """The first block's parameters that differ from its defaults, where it differs."""
    layout: list[tuple[str, int, dict[str, Value]]] = field(default_factory=list)
    """Per block, its class, output channels and options, for a stage whose blocks are not one
    block type (or a first block apart) ending at the stage's output channels: a first block of
    other output channels (a bottleneck before basic blocks), or later blocks of several unrollings
    or parameters. Empty for a regular stage."""


def _options(graph: Graph, block: Module) -> dict[str, Value]:
    """A block's parameters that differ from its definition's defaults."""
    definition = graph.definition("block", block.type_name)
    defaults = {name: value for name, value in definition.parameters if name not in dict(definition.fixed)}
    return {name: value for name, value in block.parameters if name in defaults and defaults[name] != value}


def uses_layout(calls: list[StageCall]) -> bool:
    """Whether a stage is built from a per-block layout (``_make_stage(..., layout=[...])``)."""
    return any(call.layout for call in calls)


LAYOUT_LINES = ["if layout is not None:", "    block, out_channels, options = layout[index]"]
"""``_make_stage``'s lines taking each block's class, output channels and options from a layout."""


def stage_calls(graph: Graph) -> list[StageCall]:
    names = part_names(graph).parts
    calls: list[StageCall] = []
    for stage in graph.stages:
        blocks = graph.blocks_of(stage)
        first, last = blocks[0], blocks[-1]
        # The stage's blocks are its later ones; a first block differing from them is passed apart.
        typical = blocks[1:] or blocks
        options = _options(graph, typical[0])
        first_options = _options(graph, first)
        differs = first.type_name != typical[0].type_name or first_options != options
        assert last.out_shape is not None
        width = first.parameter("width")
        stride = first.parameter("stride")
        assert isinstance(width, int) and isinstance(stride, int)
        irregular = any(
            block.type_name != typical[0].type_name or _options(graph, block) != options for block in typical[1:]
        ) or any((block.out_shape or (0,))[0] != last.out_shape[0] for block in blocks)
        if irregular:
            layout = [
                (names[("block", block.type_name)], (block.out_shape or (0,))[0], _options(graph, block))
                for block in blocks
            ]
            calls.append(
                StageCall(
                    stage.path,
                    layout[0][0],
                    first.in_shape[0],
                    last.out_shape[0],
                    width,
                    len(blocks),
                    stride,
                    {},
                    graph.blocks.index(first),
                    layout=layout,
                )
            )
            continue
        calls.append(
            StageCall(
                stage.path,
                names[("block", typical[0].type_name)],
                first.in_shape[0],
                last.out_shape[0],
                width,
                len(blocks),
                stride,
                options,
                graph.blocks.index(first),
                names[("block", first.type_name)] if differs else None,
                first_options if differs else {},
            )
        )
    return calls


def transition_arguments(graph: Graph, module: Module) -> list[str]:
    """A transition's constructor arguments: the bound values, then its parameters that differ from
    their defaults, by keyword (``96, 192, 2``)."""
    definition = graph.definition("transition", module.type_name)
    defaults = _constructor_parameters(definition)
    bound = [render(module.parameter(name)) for name in BOUND_ARGUMENTS["transition"]]
    return bound + [
        f"{name}={render(value)}" for name, value in module.parameters if name in defaults and defaults[name] != value
    ]


def stage_construction(
    graph: Graph,
    calls: list[StageCall],
    stage_statement: Callable[[StageCall], str],
    transition_arguments: Callable[[Module], list[str]],
    container: str,
) -> tuple[list[str], list[tuple[str | None, str | None, str | None]]]:
    """The network constructor's statements building each stage (``stage_statement``) and, before
    and after it, its transitions (``self.stages["1"].downsample = `` and ``transition_call(module,
    callee)``), with their containers; and per stage, in order, the attribute paths forward runs:
    its transition's before its blocks (None where it has none), its own, and its transition's after
    its blocks (None where it has none)."""
    callees = {item.definition.name: item.python_name for item in shortcut_classes(graph, "transition")}
    entered = {stage.path: graph.transition_of(stage) for stage in graph.stages}
    left = {stage.path: graph.transition_after_of(stage) for stage in graph.stages}
    paths: list[str] = []
    statements: list[str] = []
    order: list[tuple[str | None, str | None, str | None]] = []

    def build(transition: Module | None) -> str | None:
        if transition is None:
            return None
        paths.append(transition.path)
        head = f"self{attribute_access(transition.path)} = {callees[transition.type_name]}"
        statements.append(wrap_call(head, transition_arguments(transition), 8))
        return transition.path

    held = {stage.path for stage in graph.stages if stage.held}
    for call in calls:
        before = build(entered.get(call.attribute))
        paths.append(call.attribute)
        # Blocks held by their transition replace its placeholder (keeping its place) and run inside it.
        statements.append(stage_statement(call))
        if call.attribute in held:
            order.append((before, None, None))
        else:
            order.append((before, call.attribute, build(left.get(call.attribute))))
    return with_containers(paths, statements, container), order


def stage_arguments(call: StageCall, indexed: bool) -> list[str]:
    """``_make_stage``'s arguments for one stage: ``BottleneckBlock, 64, 256, width=64, ...``; with
    ``indexed`` (:func:`uses_block_index`) the index of its first block too."""
    options = [f"{name}={render(value)}" for name, value in call.options.items()]
    numbers = [f"width={call.width}", f"depth={call.depth}", f"stride={call.stride}"]
    numbers += [f"first_block_index={call.first_block_index}"] if indexed else []
    first: list[str] = []
    if call.first_block is not None:
        first.append(f"first_block={call.first_block}")
        if call.first_options:
            items = ", ".join(f"{render(name)}: {render(value)}" for name, value in call.first_options.items())
            first.append(f"first_options={{{items}}}")
    layout = [f"({block}, {channels}, {_mapping(options)})" for block, channels, options in call.layout]
    first += [_layout_argument(layout)] if layout else []
    return [call.block, str(call.in_channels), str(call.out_channels), *numbers, *first, *options]


def _layout_argument(items: list[str]) -> str:
    """``layout=[...]`` as ruff lays it out as one argument per line of a call at column 8 (the
    arguments at 12): on its line, else its items on one line below it, else one item per line."""
    joined = ", ".join(items)
    if 12 + len(f"layout=[{joined}],") <= LINE_LENGTH:
        return f"layout=[{joined}]"
    if 16 + len(joined) <= LINE_LENGTH:
        return f"layout=[\n    {joined}\n]"
    return "layout=[\n" + "".join(f"    {item},\n" for item in items) + "]"


def _mapping(values: Mapping[str, Value]) -> str:
    """A dict literal of parameter values: ``{"groups": 2}``."""
    return "{" + ", ".join(f"{render(name)}: {render(value)}" for name, value in values.items()) + "}"


def block_calls(arguments: list[str], first_arguments: list[str] | None, indent: int) -> str:
    """``_make_stage``'s statement appending a block (:func:`append_block_call`) at column
    ``indent``; where a stage may have a different first block (``first_arguments`` given), the
    first block is ``first_block(first_arguments)``."""
    if first_arguments is None:
        return append_block_call(arguments, indent)
    first = append_block_call(first_arguments, indent + 4, "first_block")
    other = append_block_call(arguments, indent + 4)
    branches = ["if index == 0 and first_block is not None:", textwrap.indent(first, "    ")]
    return "\n".join([*branches, "else:", textwrap.indent(other, "    ")])


def shortcut_choice(graph: Graph, attribute: str, constructors: Mapping[str, str]) -> list[str]:
    """``_make_stage``'s lines choosing each block's shortcut by the network's policy, as the IR
    chose it: ``constructors`` maps a shortcut kind to the source that builds it."""

    def construct(kind: str | None) -> str:
        return "None" if kind is None or kind == "identity" else constructors[kind]

    # Where shapes change or match, the kind of the blocks there: None (no residual add, the policy
    # 'none') is a kind too, not a side without blocks.
    kinds: dict[bool, str | None] = {}
    for module in graph.blocks:
        change = module.in_shape[0] != (module.out_shape or (0,))[0] or module.parameter("stride") != 1
        kinds.setdefault(change, module.shortcut)
    constructed = {change: construct(kind) for change, kind in kinds.items()}
    if len(set(constructed.values())) == 1:
        return [f"{attribute} = {next(iter(constructed.values()))}"]
    return [
        "if block_stride != 1 or in_channels != out_channels:",
        f"    {attribute} = {constructed[True]}",
        "else:",
        f"    {attribute} = {constructed[False]}",
    ]


def wrap_call(head: str, arguments: list[str], indent: int, tail: str = "") -> str:
    """``head(arguments)tail`` laid out as ruff would at :data:`LINE_LENGTH`, starting at column
    ``indent``: on one line, else the arguments on one indented line, else one per line.
    Continuation lines are indented relative to column 0 (the template indents the block)."""
    joined = ", ".join(arguments)
    if indent + len(head) + len(joined) + len(tail) + 2 <= LINE_LENGTH:
        return f"{head}({joined}){tail}"
    if indent + 4 + len(joined) <= LINE_LENGTH:
        return f"{head}(\n    {joined}\n){tail}"
    return f"{head}(\n" + "".join(textwrap.indent(f"{argument},\n", "    ") for argument in arguments) + f"){tail}"


def append_block_call(arguments: list[str], indent: int, callee: str = "block") -> str:
    """``_make_stage``'s ``blocks.append(callee(arguments))`` laid out as ruff would at column ``indent``."""
    line = f"blocks.append({callee}({', '.join(arguments)}))"
    if indent + len(line) <= LINE_LENGTH:
        return line
    return "blocks.append(\n" + textwrap.indent(wrap_call(callee, arguments, indent + 4), "    ") + "\n)"


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
    """Execute generated source as a Python module, as if imported from a file, so that what a
    model built from it is asked to do works:

    - ``inspect.getsource`` (``torch.jit.script`` reads it): the lines are in ``linecache`` under
      the module's file name.
    - ``pickle``, ``torch.save(model)``, ``copy.deepcopy``: each class the source defines reduces
      an instance to :func:`generated_instance` of the source itself (a few kB, stored once per
      pickle) and the instance's state, so unpickling in a fresh process executes the source again
      before it reads the state, whose classes it defines.

    The module is ``rescompile_generated_<backend>_<network>_<digest>`` in ``sys.modules``, the
    digest that of the source: the same source gives the same module, so a class pickled by name
    is the class loaded, and two networks with one name (resnet20 with 10 classes and with 100)
    never replace each other's classes."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    identifier = "".join(character if character.isalnum() else "_" for character in f"{backend}_{network}")
    name = f"rescompile_generated_{identifier}_{digest}"
    existing = sys.modules.get(name)
    if existing is not None:
        return existing
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    # NOTE: mtime None: linecache.checkcache keeps the entry (it cannot stat a file that does not exist).
    linecache.cache[module.__file__] = (len(source), None, source.splitlines(keepends=True), module.__file__)
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    module.__dict__[_GENERATED_FROM] = (source, backend, network)
    for value in list(vars(module).values()):
        if isinstance(value, type) and value.__module__ == name:
            value.__reduce_ex__ = _reduce_generated  # type: ignore[assignment]
    return module


_GENERATED_FROM = "__rescompile_generated_from__"
"""A generated module's global holding ``(source, backend, network)``, what :func:`load_source` was given."""


def _reduce_generated(instance: object, protocol: SupportsIndex) -> tuple[object, ...]:
    """``__reduce_ex__`` of each generated class: rebuilt by :func:`generated_instance` from the
    source, then given the instance's state."""
    generated_from = sys.modules[type(instance).__module__].__dict__[_GENERATED_FROM]
    return (generated_instance, (*generated_from, type(instance).__qualname__), instance.__getstate__())


def generated_instance(source: str, backend: str, network: str, qualname: str) -> object:
    """An uninitialised instance of class ``qualname`` of the generated ``source`` (loaded by
    :func:`load_source` if this process has not loaded it): what unpickling a generated model
    calls before it sets the instance's state."""
    owner: object = load_source(source, backend, network)
    for part in qualname.split("."):
        owner = getattr(owner, part)
    assert isinstance(owner, type)
    cls: type[object] = owner
    return cls.__new__(cls)


def weights_path(source_path: Path) -> Path:
    """Where ``--weights`` are written beside a generated source file: ``model.py`` -> ``model.safetensors``."""
    return source_path.with_suffix(".safetensors")


def source_writer(source: str, weights: Mapping[str, npt.NDArray[np.float32]] | None = None) -> Writer:
    """The writer of a generated source file and, with ``weights``, of those weights beside it
    (:func:`weights_path`), both renamed into place together."""
    encoded = source.encode()
    if weights is None:
        return lambda path: write_atomically([(path, [encoded])])
    import numpy as np
    from safetensors.numpy import save

    arrays = save({name: np.ascontiguousarray(array, dtype=np.float32) for name, array in weights.items()})
    return lambda path: write_atomically([(path, [encoded]), (weights_path(path), [arrays])])
