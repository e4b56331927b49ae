"""The spec language as frozen pydantic models.

A *network* names its input, a stem, a block type, a shortcut policy, its stages and a head. Stems,
blocks, shortcuts and heads are *parts*: small graphs of named op nodes whose attributes are
expressions over the part's parameters (see :mod:`rescompile.spec.expressions`). Keys are full
words, unknown keys are rejected, and ops are a discriminated union on ``op``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import keyword
import math
import re
import struct
import types
import typing
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    create_model,
    model_validator,
)

from rescompile.compiler.ops import OP_TYPES, Interval, R
from rescompile.compiler.ops import OpBase as IrOp
from rescompile.spec.errors import did_you_mean
from rescompile.spec.expressions import FUNCTIONS, Expression, ExpressionError, Value, parse_expression

REQUIRED = "required"
"""The default of a part parameter that every use must supply."""


def _to_expression(value: object) -> Expression:
    if isinstance(value, Expression):
        return value
    if isinstance(value, bool | int | float | str):
        try:
            return parse_expression(value)
        except ExpressionError as error:
            raise ValueError(str(error)) from None
    raise ValueError("expected a number or an expression such as 'width * 4'")


def expression_to_yaml(expression: Expression) -> Value:
    # Plain constants dump as YAML numbers/booleans, everything else as its expression text.
    try:
        return expression.evaluate({})
    except ExpressionError:
        return expression.text


EXPRESSION_SCHEMA = {
    "anyOf": [{"type": "integer"}, {"type": "boolean"}, {"type": "string"}],
    "description": "A value or an expression over the part's parameters, e.g. 64 or 'width * expansion'.",
}
Expr = Annotated[
    Expression,
    BeforeValidator(_to_expression),
    PlainSerializer(expression_to_yaml, return_type=Any),
    WithJsonSchema(EXPRESSION_SCHEMA),
]
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
"""Network and part names: they become class names and file names, so they are plain words."""


def _check_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError("a name starts with a letter and has at most 64 letters, digits, '_' or '-'")
    return value


GENERATED_CLASS_SUFFIXES = ("Block", "Shortcut", "Transition")
"""Generated code names a part's class after the part with one of these (``bottleneck`` ->
``BottleneckBlock``), so a container class ending so could take a part class's name."""


def _check_class_name(value: str) -> str:
    if (
        not re.fullmatch(r"[A-Z][A-Za-z0-9]{0,63}", value)
        or value in MODULE_LEVEL_NAMES
        or value.endswith(GENERATED_CLASS_SUFFIXES)
    ):
        raise ValueError(
            "a class name is CamelCase ASCII letters and digits, not a name generated code defines "
            "(nor ending in Block, Shortcut or Transition, as the parts' classes do)"
        )
    return value


def _check_identifier(value: str) -> str:
    if not value.isidentifier() or not value.isascii() or keyword.iskeyword(value) or value.startswith("__"):
        raise ValueError("expected a Python-style identifier (ASCII letters, digits, '_'), not a keyword or dunder")
    return value


def _check_index_name(value: str) -> str:
    _check_identifier(value)
    if value in FUNCTIONS:
        raise ValueError(
            f"'{value}' is a function expressions call ({', '.join(sorted(FUNCTIONS))}); an index named so would "
            f"hide it: use another name (i, j, {value}_index)"
        )
    return value


RESERVED_NAMES = frozenset(
    {"self", "x", "out", "shortcut", "nn", "nnx", "torch", "jax", "jnp", "F", "rngs", "super", "partial", "Any"}
)
"""Names generated methods use for themselves: no node, parameter or derived value may take them
(a located error at validate time, not broken code at emit time)."""
MODULE_LEVEL_NAMES = frozenset(
    {
        *("conv_init", "linear_init", "BatchNorm", "Subsample", "PadChannels", "subsample", "pad_channels", "ResNet"),
        *("math", "StdConv2d", "standardized_conv", "BlurPool", "blur_pool", "ChannelConv", "DropPath", "pad"),
        *("ChannelSlice", "channel_slice", "ChannelSoftmax", "channel_softmax"),
        *("spatial_softmax", "weighted_spatial_sum"),
        *("LayerNorm2d", "PointwiseLinear", "LayerScale"),
        "fold_batch_norms_on_load",
    }
    | set(FUNCTIONS)
)
"""Names the generated torch and Flax files define at module level, or that expressions call
(``min``, ``make_divisible``; ``log2`` is written ``math.log2``). Parameters and derived values
(local variables of every constructor) may not shadow them; node names are attributes and may."""

MODULE_ATTRIBUTES = frozenset(
    {
        # torch.nn.Module's public attributes (tests/spec/test_names.py checks this list against the
        # installed torch and flax) ...
        *("T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children"),
        *("compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward"),
        *("get_buffer", "get_extra_state", "get_parameter", "get_submodule", "half", "ipu", "load_state_dict"),
        *("modules", "mtia", "named_buffers", "named_children", "named_modules", "named_parameters"),
        *("parameters", "register_backward_hook", "register_buffer", "register_forward_hook"),
        *("register_forward_pre_hook", "register_full_backward_hook", "register_full_backward_pre_hook"),
        *("register_load_state_dict_post_hook", "register_load_state_dict_pre_hook", "register_module"),
        *("register_parameter", "register_state_dict_post_hook", "register_state_dict_pre_hook"),
        *("requires_grad_", "set_extra_state", "set_submodule", "share_memory", "state_dict", "to"),
        *("to_empty", "train", "training", "type", "xpu", "zero_grad"),
        # ... flax.nnx.Module's ...
        *("iter_children", "iter_modules", "perturb", "set_attributes", "sow"),
        # ... and the generated network class's own (its stem and head methods are private, so that
        # nodes may live under ``stem.`` and ``head.`` as timm's do).
        *("_stem", "_head", "reset_parameters", "_make_stage"),
        # ... with timm's model interface (tests/spec/test_module_attributes.py checks these against
        # the generated torch and Flax network classes).
        *("num_classes", "num_features", "drop_rate", "global_pool_type", "feature_info"),
        *("forward_features", "forward_head", "get_classifier", "reset_classifier", "pretrained_cfg", "default_cfg"),
    }
)
"""Attributes of the generated module classes: a node (the first segment of its path) named so
would replace one, and the module would silently compute something else. A stem or head node
sharing its first segment with a stage (``layer1``, ``stages``) is refused apart, by ``expand``,
which knows the network's naming."""

MAX_SIZE = 16_384
"""The largest input height or width: an image 16,384 pixels a side is 256 megapixels."""
Count = Annotated[int, Field(strict=True, gt=0)]
"""A positive integer, strictly: YAML's ``true`` and ``"3"`` are not counts."""
Size = Annotated[int, Field(strict=True, gt=0, le=MAX_SIZE)]
Name = Annotated[str, AfterValidator(_check_name)]
Identifier = Annotated[str, AfterValidator(_check_identifier)]
IndexName = Annotated[str, AfterValidator(_check_index_name)]
"""A repeat's index: an identifier that is not a function's name."""


def _float32(value: float) -> float:
    """A float the backends store as a float32 parameter or constant: finite there too (1e300 is
    a float64 but overflowed at build()), and not rounded to 0 where it was not 0 (an epsilon)."""
    try:
        stored = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        stored = math.inf
    if math.isinf(stored):  # struct rounds a value just past the largest float32 to inf
        raise ValueError("beyond float32's range (±3.4028235e38), which the weights are stored in")
    if stored == 0 and value != 0:
        raise ValueError("0 in float32, which the weights are stored in; use at least 1.5e-45")
    return value


Float32 = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_float32)]
"""A float attribute that becomes a float32 parameter or constant."""


def real_problem(value: object, interval: Interval) -> str | None:
    """What is wrong with a real attribute's value (:attr:`~rescompile.compiler.ops.OpBase.real_ranges`:
    a number in ``interval``, finite in float32), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in interval:
        return f"it must be a number in {interval}"
    try:
        _float32(float(value))
    except ValueError as error:
        return str(error)
    return None


def _to_real_expression(interval: Interval, value: object) -> Expression:
    """A real attribute: a number checked now, or an expression over the part's parameters, whose
    value ``expand`` checks where it binds them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("input should be a finite number")
    expression = _to_expression(value)
    try:
        number = expression.evaluate({})  # a literal (YAML reads 1e-50 as text)
    except ExpressionError:
        return expression  # it names parameters
    problem = real_problem(number, interval)
    if problem is not None:
        raise ValueError(problem)
    return expression


def real_expression(interval: Interval) -> Any:
    """The spec type of a real attribute taking the numbers of ``interval``: a number or an
    expression (``epsilon: eps``)."""
    number: dict[str, Any] = {"type": "number"}
    if math.isfinite(interval.low):
        number["minimum" if interval.low_included else "exclusiveMinimum"] = interval.low
    if math.isfinite(interval.high):
        number["maximum" if interval.high_included else "exclusiveMaximum"] = interval.high
    return Annotated[
        Expression,
        BeforeValidator(functools.partial(_to_real_expression, interval)),
        PlainSerializer(expression_to_yaml, return_type=Any),
        WithJsonSchema({"anyOf": [number, {"type": "string"}]}),  # the key's meaning is the glossary's
    ]


ParameterValue = int | Annotated[float, Field(allow_inf_nan=False)] | str | bool
"""A part parameter's value: floats are finite (a rate such as ``drop_path_rate: 0.1``)."""
Parameters = dict[str, ParameterValue]
Bound = Annotated[int, Field(strict=True)] | Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A parameter's bound: a finite number (not a boolean)."""


class ParameterSpec(BaseModel):
    """A part parameter declared with its bounds, in JSON Schema's words
    (``se_ratio: {default: 0.0625, exclusive_minimum: 0, maximum: 1}``): the default and every
    value a network sets must lie within them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: ParameterValue = Field(description="The value where the network sets none ('required': it must).")
    minimum: Bound | None = Field(default=None, description="The smallest value allowed.")
    exclusive_minimum: Bound | None = Field(default=None, description="Values must be greater than this.")
    maximum: Bound | None = Field(default=None, description="The largest value allowed.")
    exclusive_maximum: Bound | None = Field(default=None, description="Values must be less than this.")
    choices: tuple[ParameterValue, ...] | None = Field(
        default=None,
        min_length=1,
        description="The only values allowed (JSON Schema's enum), such as the activations a block offers: "
        "choices: [relu, relu6, hardswish].",
    )

    @model_validator(mode="after")
    def _default_within_bounds(self) -> ParameterSpec:
        if self.default != REQUIRED:
            problem = self.violation(self.default)
            if problem is not None:
                raise ValueError(f"the default {self.default!r} is out of bounds: {problem}")
        return self

    def violation(self, value: object, name: str = "value") -> str | None:
        """What is wrong with ``value`` (``it must be greater than 0``), or None where it lies within."""
        if self.choices is not None and value not in self.choices:
            shown = [str(choice) for choice in self.choices]
            return f"it must be one of {', '.join(shown)}{did_you_mean(str(value), shown)}"
        if self.choices is not None and all(bound is None for bound in self.numeric_bounds):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"it must be a number ({self.shown(name)})"
        checks = (
            (self.minimum, value >= (self.minimum or 0), "at least"),
            (self.exclusive_minimum, value > (self.exclusive_minimum or 0), "greater than"),
            (self.maximum, value <= (self.maximum or 0), "at most"),
            (self.exclusive_maximum, value < (self.exclusive_maximum or 0), "less than"),
        )
        for bound, holds, words in checks:
            if bound is not None and not holds:
                return f"it must be {words} {bound} ({self.shown(name)})"
        return None

    @property
    def numeric_bounds(self) -> tuple[Bound | None, ...]:
        return (self.minimum, self.exclusive_minimum, self.maximum, self.exclusive_maximum)

    def shown(self, name: str = "value") -> str:
        """The bounds as one inequality: ``0 < value <= 1``."""
        low = f"{self.minimum} <= " if self.minimum is not None else ""
        low = f"{self.exclusive_minimum} < " if self.exclusive_minimum is not None else low
        high = f" <= {self.maximum}" if self.maximum is not None else ""
        high = f" < {self.exclusive_maximum}" if self.exclusive_maximum is not None else high
        return f"{low}{name}{high}"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class ConditionalSpec(StrictModel):
    """What every node may state: whether it exists."""

    when: Expr | None = Field(
        default=None,
        description="A condition over the part's parameters (and a repeat's index): the node exists only where it "
        "holds. Nothing may read a node that does not exist.",
    )


class OpBase(ConditionalSpec):
    input: str | None = Field(default=None, description="Input value; default: the previous node.")


class BinarySpec(ConditionalSpec):
    """An op of several values, named in ``inputs`` (no ``input``: none is implied)."""

    inputs: tuple[str, ...] = Field(
        min_length=1, description="The values it reads (an item 'VALUE for i in range(N)' stands for N of them)."
    )


class SplitSpec(OpBase):
    """The input's channels cut into consecutive parts, in order: ``parts`` equal ones, or ``sizes``
    listed. Each part is a value of its own, ``NAME.0``, ``NAME.1``, ... or ``NAME.`` each of
    ``names`` (torch.split along channels)."""

    op: Literal["split"]
    parts: Expr | None = Field(default=None, description="How many equal parts; they must divide the channels.")
    sizes: tuple[Expr, ...] | None = Field(
        default=None, min_length=1, description="The parts' channel counts, in order; they must sum to the channels."
    )
    names: tuple[Identifier, ...] | None = Field(
        default=None, min_length=1, description="The parts' names, in order (NAME.query, ...); default 0, 1, ..."
    )


class RepeatSpec(OpBase):
    """Its ``nodes`` written ``count`` times, with ``index`` bound to ``start``, ``start + 1``, ...
    Node names and the values nodes read may hold ``{expression}`` placeholders (``convs.{i}``);
    ``input`` is what the first node of the first repetition reads by default."""

    op: Literal["repeat"]
    index: IndexName = Field(description="The name bound to each repetition's number.")
    count: Expr = Field(description="How many times (0 or more).")
    start: Expr = Field(default=parse_expression(0), description="The index of the first repetition.")
    nodes: dict[str, OpSpec] = Field(min_length=1, description="The nodes of one repetition.")


def _key_type(op_type: type[IrOp], name: str, annotation: Any) -> Any:
    """A key's spec type, from its field's (or its ``keys_from`` parameter's) annotation: an
    integer is an expression over the part's parameters, a real (R) an expression of its
    ``real_ranges``, a float a float32 number, an enum the choice of its texts."""
    if annotation is R:
        return real_expression(op_type.real_ranges.get(name, Interval(-math.inf)))
    if isinstance(annotation, TypeVar) or annotation is int:
        return Expr
    if annotation is float:
        return Float32
    if annotation is bool or typing.get_origin(annotation) is Literal:
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return Literal[tuple(member.value for member in annotation)]  # the YAML states a choice by its text
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in arguments:
        (present,) = (argument for argument in arguments if argument is not type(None))
        return _key_type(op_type, name, present) | None
    raise TypeError(f"{op_type.__name__}.{name}: a spec cannot be derived from a field of type {annotation}")


def _keys(op_type: type[IrOp]) -> dict[str, tuple[Any, Any]]:
    """Each YAML key of an op with its annotation and default (``dataclasses.MISSING``: none)."""
    if op_type.keys_from is not None:
        method = getattr(op_type, op_type.keys_from)
        hints = typing.get_type_hints(method)
        parameters = list(inspect.signature(method).parameters.values())[1:]  # after the input's channels
        return {
            parameter.name: (
                hints[parameter.name],
                dataclasses.MISSING if parameter.default is inspect.Parameter.empty else parameter.default,
            )
            for parameter in parameters
        }
    source = op_type.fields or op_type
    hints = typing.get_type_hints(source)
    return {
        field.name: (hints[field.name], field.default)
        for field in dataclasses.fields(source)
        if field.name not in op_type.inferred
    }


def _key_default(annotation: Any, default: Any) -> Any:
    """A key's default in its spec model: an integer's or a real's as an expression, a choice's as its text."""
    if isinstance(default, enum.Enum):
        return default.value
    if isinstance(default, int | float) and not isinstance(default, bool) and annotation is not float:
        return parse_expression(default)
    return default


def _float_bounds(interval: Interval | None) -> dict[str, float]:
    """A float key's bounds as pydantic's (``gt=0``), from its ``real_ranges``."""
    if interval is None:
        return {}
    bounds: dict[str, float] = {}
    for value, included, closed, opened in (
        (interval.low, interval.low_included, "ge", "gt"),
        (interval.high, interval.high_included, "le", "lt"),
    ):
        if math.isfinite(value):
            bounds[closed if included else opened] = int(value) if value.is_integer() else value
    return bounds


def derived_op_spec(op_type: type[IrOp]) -> type[ConditionalSpec]:
    """An op's spec model, its YAML keys, derived from the op table: from its fields (or its
    ``keys_from``), less those it infers, each with its type, default, bounds and description
    (:class:`~rescompile.compiler.ops.OpBase`'s traits). ``relu``'s is ``{op: relu}``; ``conv``'s
    takes ``out_channels`` and ``kernel``, and ``stride`` 1, ... by default."""
    keys: dict[str, Any] = {"op": (Literal[op_type.kind], ...)}
    if op_type.reads is not None:
        least, most = op_type.reads
        description = op_type.descriptions.get("inputs", BinarySpec.model_fields["inputs"].description)
        keys["inputs"] = (tuple[str, ...], Field(min_length=least, max_length=most, description=description))
    for name, (annotation, field_default) in _keys(op_type).items():
        key_type = _key_type(op_type, name, annotation)
        default = op_type.spec_defaults.get(name, field_default)
        if default is dataclasses.MISSING and typing.get_origin(key_type) in (typing.Union, types.UnionType):
            default = None  # an optional key
        bounds = _float_bounds(op_type.real_ranges.get(name)) if annotation is float else {}
        arguments: dict[str, Any] = {"description": op_type.descriptions.get(name), **bounds}
        if default is not dataclasses.MISSING:
            arguments["default"] = _key_default(annotation, default)
        keys[name] = (key_type, Field(**arguments))

    def check_keys(node: BaseModel) -> BaseModel:
        op_type.check_keys(dict(node))
        return node

    base: type[ConditionalSpec] = BinarySpec if op_type.reads is not None else OpBase
    validators: dict[str, Any] = {"_check_keys": model_validator(mode="after")(check_keys)}
    return create_model(
        f"{op_type.__name__}Spec",
        __base__=base,
        __doc__=op_type.__doc__,
        __module__=__name__,
        __validators__=validators,
        **keys,
    )


OP_SPECS: dict[str, type[ConditionalSpec]] = {op_type.kind: derived_op_spec(op_type) for op_type in OP_TYPES}
"""Every op's spec model, by its kind, in the op table's order: all are derived from the op table."""


def _binary(kind: str) -> type[BinarySpec]:
    spec = OP_SPECS[kind]
    assert issubclass(spec, BinarySpec)
    return spec


AddSpec = _binary("add")
"""The spec model of ``add`` (a residual add reads ``shortcut``)."""
ChannelSliceSpec = OP_SPECS["channel_slice"]
"""The spec model of ``channel_slice``, what a ``split`` unrolls to."""
if TYPE_CHECKING:

    class DerivedOpSpec(OpBase):
        op: str

    class DerivedBinarySpec(BinarySpec):
        op: str

    OpSpec = DerivedOpSpec | DerivedBinarySpec | SplitSpec | RepeatSpec
else:
    OpSpec = Annotated[
        typing.Union[(*OP_SPECS.values(), SplitSpec, RepeatSpec)],
        Field(discriminator="op"),
    ]
RepeatSpec.model_rebuild()
TEMPLATE_OPS = ("split", "repeat")
"""Spec ops that are not IR ops: :mod:`rescompile.spec.unroll` writes them as IR ops' nodes."""

FOREIGN_KEYS: dict[str, str] = {
    "kernel_size": "kernel",
    "filt_size": "taps",
    "out_features": "out_channels",
    "out_channels": "out_features",
    "num_groups": "groups",
    "eps": "epsilon",
    "drop_prob": "rate",
    "p": "rate",
    "init_values": "init",
    "ls_init_value": "init",
    "input": "inputs",
    "inputs": "input",
}
"""torch's and timm's names for node attributes (``nn.Conv2d(kernel_size=...)``), by the key that
means the same here; an unknown key found in it names ours where the op takes it."""
FOREIGN_OPS: dict[str, str] = {name: op.kind for op in OP_TYPES for name in op.foreign_names}
"""torch's and timm's layer names (lower case, without '_'), by our op: ``op: Conv2d`` names ``conv``."""
INFERRED_KEYS = frozenset({"in_channels", "in_features", "num_features", "num_channels", "normalized_shape", "dim"})
"""torch's constructor arguments that are a node's input size: here it comes from the value the node reads."""


class PartSpec(StrictModel):
    """A named graph of op nodes with parameters; the base of stems, blocks, shortcuts and heads."""

    name: Name
    description: str = ""
    parameters: dict[str, ParameterValue | ParameterSpec] = Field(
        default_factory=dict,
        description="The part's parameters and their defaults (or {default: ..., minimum: ..., maximum: ...} "
        "with bounds); a network's *_parameters override them.",
    )
    derived: dict[str, Expr] = Field(
        default_factory=dict,
        description="Named values computed from the parameters, in order; nodes may use them.",
    )
    nodes: dict[str, OpSpec] = Field(min_length=1)

    @property
    def defaults(self) -> dict[str, ParameterValue]:
        """Each parameter's default (``required`` where the network must set it)."""
        return {
            name: value.default if isinstance(value, ParameterSpec) else value
            for name, value in self.parameters.items()
        }

    @property
    def bounds(self) -> dict[str, ParameterSpec]:
        """The parameters declared with bounds."""
        return {name: value for name, value in self.parameters.items() if isinstance(value, ParameterSpec)}

    @property
    def templated(self) -> bool:
        """Whether its nodes hold a template form (``repeat``, ``when``, ``split``, a placeholder,
        a conditional read or a comprehension): :mod:`rescompile.spec.unroll` unrolls them."""
        return any(_templated(name, node) for name, node in self.nodes.items())


def _templated(name: str, node: Any) -> bool:
    reads = node.inputs if isinstance(node, BinarySpec) else (node.input or "",)
    return (
        isinstance(node, RepeatSpec | SplitSpec)
        or node.when is not None
        or "{" in name
        or any("{" in value or " if " in value or " for " in value for value in reads)
    )


class StemSpec(PartSpec):
    pass


class HeadSpec(PartSpec):
    pass


class BlockSpec(PartSpec):
    """A residual block. ``in_channels``, ``width`` and ``stride`` are always bound; the node named
    by an ``add`` whose inputs include ``shortcut`` is the residual merge."""

    out_channels: Expr
    shortcut_input: str = Field(
        default="input",
        description="The value a shortcut with layers (a projection) reads: the block input, or an earlier node "
        "of the input's shape (a pre-activation block's 'preact'). The identity always reads the block input.",
    )
    classes: dict[str, Annotated[str, AfterValidator(_check_class_name)]] = Field(
        default_factory=dict,
        description="Containers of nodes that generated source writes as classes of their own: a node path prefix "
        "(conv2) -> a class name (SplitAttn). Its nodes must be consecutive and read one value from outside.",
    )


class ModuleSpec(PartSpec):
    """A reusable sub-graph with parameters, like a block without the residual (a squeeze-and-excitation
    gate): its nodes read ``input`` (the using node's input) and its last node is its output. Bound:
    only its own parameters and derived values."""


class ModuleUseSpec(StrictModel):
    """A node that uses a module: the loader writes the module's nodes in its place, each named under
    the node's name (``se`` -> ``se.fc1``), their parameters bound to ``parameters``' expressions."""

    module: Name = Field(description="The module: a file in modules/ beside this one or a built-in module.")
    parameters: dict[str, ParameterValue] = Field(
        default_factory=dict,
        description="The module's parameters: name -> an expression over this part's parameters and derived values.",
    )
    input: str | None = Field(default=None, description="The module's input; default: the previous node.")
    when: Expr | None = Field(default=None, description="A condition: the module's nodes exist only where it holds.")


class BlockExtensionSpec(StrictModel):
    """What a block file that ``extends`` another writes besides a block's own keys. The loader
    resolves it (:func:`rescompile.spec.loader.read_block`): everything after it sees an ordinary
    block, its nodes in order."""

    extends: str | None = Field(
        default=None,
        description="The block this one changes: a built-in block's name, a block beside this file, or a path "
        "(relative to this file). Its parameters, derived values and classes are merged by name, its other keys "
        "replaced; its nodes are kept, changed only by replace, remove, insert_after and insert_before.",
    )
    replace: dict[str, OpSpec] = Field(
        default_factory=dict,
        description="Base node name -> the node that takes its place (and its position).",
    )
    remove: list[str] = Field(
        default_factory=list,
        description="Base nodes to drop; a node that read one implicitly reads the node before it instead.",
    )
    insert_after: dict[str, dict[str, OpSpec]] = Field(
        default_factory=dict,
        description="Base node name -> nodes placed right after it, in order; the first reads it unless it says.",
    )
    insert_before: dict[str, dict[str, OpSpec]] = Field(
        default_factory=dict,
        description="Base node name -> nodes placed right before it, in order; it then reads the last of them "
        "unless it says.",
    )


class BlockFileSpec(BlockExtensionSpec, BlockSpec):
    """What a block file may hold: a whole block, or (with ``extends``) the changes to another. Only
    the JSON Schema reads it; the loader validates the two parts apart."""


class StemFileSpec(BlockExtensionSpec, StemSpec):
    """What a stem file may hold: a whole stem, or (with ``extends``) the changes to another stem,
    as a block's (only the JSON Schema reads it)."""


class HeadFileSpec(BlockExtensionSpec, HeadSpec):
    """What a head file may hold: a whole head, or (with ``extends``) the changes to another head,
    as a block's (only the JSON Schema reads it)."""


class ShortcutSpec(PartSpec):
    """A shortcut taking the block input to the block's output shape. Bound: ``in_channels``,
    ``out_channels``, ``stride``. ``module`` is the attribute name in the block (torchvision's
    ``downsample``)."""

    module: Identifier = "downsample"


HELD_BLOCKS = "blocks"
"""In a transition that holds its stage's blocks, the value of their output."""


class HeldBlocksSpec(StrictModel):
    """Where a transition holds its stage's blocks (CSPNet's cross-stage partial stage)."""

    input: str = Field(
        description="The node whose output the stage's blocks read. The transition's nodes up to it run before "
        "the blocks, the nodes after it after them: the first of those reads the blocks' output, and any may read "
        "it as `blocks` or read a node before the blocks."
    )
    out_channels: Expr = Field(description="The blocks' output channels, checked against the stage's blocks.")


class TransitionSpec(PartSpec):
    """What a stage does before its blocks, outside them and without a shortcut (ConvNeXt's
    ``downsample``: a LayerNorm and a 2×2 stride-2 conv). Bound: ``in_channels``, the stage's
    ``width`` and ``stride``; the stage's blocks then all have stride 1. With ``blocks``, it holds
    the stage's blocks: its nodes run around them (a stage layout)."""

    blocks: HeldBlocksSpec | None = Field(
        default=None,
        description="Hold the stage's blocks inside this transition, after node `input`: a stage-level graph "
        "around them (split, blocks on one part, concat, fusion conv).",
    )


class InputSpec(StrictModel):
    channels: Count = 3
    size: Size | tuple[Size, Size]

    @property
    def height_width(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else self.size


class StageSpec(StrictModel):
    depth: Count
    width: Count
    stride: Count = 1
    block: str | None = Field(default=None, description="This stage's block type; default: the network's block.")
    block_parameters: Parameters = Field(
        default_factory=dict,
        description="This stage's block parameters, over the network's (which apply where the stage keeps the "
        "network's block).",
    )
    first_block: str | None = Field(
        default=None, description="The block type of the stage's first block; default: the stage's block."
    )
    first_block_parameters: Parameters = Field(
        default_factory=dict,
        description="The first block's parameters, over the network's and the stage's block_parameters (which "
        "apply to it where it is of their block type).",
    )
    per_block_parameters: tuple[Parameters, ...] | dict[str, tuple[ParameterValue, ...]] | None = Field(
        default=None,
        description="One mapping per block of the stage, in order (depth of them): each block's own parameters, "
        "over every other block_parameters (MobileNetV3's expansion ratios 6, 2.5, 2.3, 2.3 in one stage); or "
        "one list per parameter, a value per block ({expansion: [6, 2.5, 2.3, 2.3]}).",
    )
    transition: str | None = Field(
        default=None,
        description="This stage's transition (a file in transitions/), or 'none'; default: the network's "
        "transition where the stage's stride is not 1 or its width differs from its input channels (every stage "
        "where it holds the stage's blocks).",
    )
    transition_parameters: Parameters = Field(
        default_factory=dict,
        description="This stage's transition parameters, over the network's transition_parameters.",
    )
    transition_after: str | None = Field(
        default=None,
        description="This stage's transition after its blocks (a file in transitions/), or 'none'; default: the "
        "network's transition_after.",
    )

    def own_parameters(self, block_index: int) -> Parameters:
        """Block ``block_index``'s own ``per_block_parameters`` (none where the stage has none)."""
        each = self.per_block_parameters
        if isinstance(each, dict):
            return {name: values[block_index] for name, values in each.items()}
        return dict(each[block_index]) if each is not None else {}

    def own_parameter_path(self, block_index: int, name: str) -> tuple[str | int, ...]:
        """Where in the stage ``per_block_parameters`` sets block ``block_index``'s ``name``."""
        each = self.per_block_parameters
        return (name, block_index) if isinstance(each, dict) else (block_index, name)


STAGE_PLACEHOLDERS = {"index": 0, "number": 1}
"""The placeholders of a stage path pattern, by the first stage's value: ``{index}`` counts from 0,
``{number}`` from 1."""


def _check_stage_pattern(pattern: str, shared: bool = False) -> str:
    """A stage (or transition) path pattern; with ``shared``, a stage path may hold no placeholder:
    then every stage's blocks live in that one container (:class:`NamingSpec`)."""
    placeholders = [name for name in STAGE_PLACEHOLDERS if f"{{{name}}}" in pattern]
    if len(placeholders) != 1 and not (shared and not placeholders):
        raise ValueError(
            "a stage path holds at most one of {index} (0, 1, ...) or {number} (1, 2, ...); without one, the "
            "stages share it (features), their blocks numbered across the network ({network_number})"
            if shared
            else "a stage path holds exactly one of {index} (0, 1, ...) or {number} (1, 2, ...)"
        )
    example = pattern.replace(f"{{{placeholders[0]}}}", "0") if placeholders else pattern
    segments = example.split(".")
    if (
        not all(
            (segment.isascii() and segment.isdigit()) or (segment.isidentifier() and segment.isascii())
            for segment in segments
        )
        or not segments[0].isidentifier()
    ):
        raise ValueError(
            "a stage path is a module path: Python-style identifiers or numbers joined by '.', starting with an "
            "identifier (layer{number}, stages.{index}.blocks)"
        )
    if segments[0] in MODULE_ATTRIBUTES or segments[0] in RESERVED_NAMES or keyword.iskeyword(segments[0]):
        raise ValueError(f"a stage path cannot start with '{segments[0]}', a name the generated module uses")
    return pattern


def _check_shared_stage_pattern(pattern: str) -> str:
    return _check_stage_pattern(pattern, shared=True)


NETWORK_PLACEHOLDERS = {"network_index": 0, "network_number": 1}
"""The placeholders of a block name numbered across the network, not its stage (torchvision's
MobileNets: ``features.1`` ... ``features.17``), by the network's first block's value."""


def _check_block_pattern(pattern: str) -> str:
    names = [*STAGE_PLACEHOLDERS, *NETWORK_PLACEHOLDERS]
    placeholders = [name for name in names if f"{{{name}}}" in pattern]
    example = pattern.replace(f"{{{placeholders[0]}}}", "0") if len(placeholders) == 1 else ""
    if len(placeholders) != 1 or not (example.isdigit() or example.isidentifier()) or not example.isascii():
        raise ValueError(
            "a block name holds exactly one of {index} (0, 1, ...), {number} (1, 2, ...) or, counted across the "
            "network, {network_index} or {network_number}, and is one path segment: a number ({index}) or an "
            "identifier (b{number})"
        )
    return pattern


class NamingSpec(StrictModel):
    """Where the network's layers live, so that state_dict keys match a foreign model's.

    A block's path is its stage's path and its index in the stage (``layer1.0``,
    ``stages.0.blocks.0``); stem and head nodes keep their own names (``conv1``, ``stem.conv``)."""

    stages: Annotated[str, AfterValidator(_check_shared_stage_pattern)] = Field(
        default="layer{number}",
        description="The path of each stage: {index} counts stages from 0, {number} from 1; a path without either "
        "(features) is one container every stage's blocks share, numbered across the network (naming.blocks "
        "{network_number}: torchvision's MobileNets, features.1 ... features.17).",
    )
    blocks: Annotated[str, AfterValidator(_check_block_pattern)] = Field(
        default="{index}",
        description="The name of each block in its stage: {index} counts blocks from 0 (layer1.0), {number} "
        "from 1 (timm's RegNet: b{number}, s1.b1); in a container the stages share, {network_index} and "
        "{network_number} count the network's blocks from 0 and from 1 (features.{network_number}).",
    )
    transitions: Annotated[str, AfterValidator(_check_stage_pattern)] = Field(
        default="transition{number}",
        description="The path of each stage's transition, where it has one: {index} counts stages from 0, "
        "{number} from 1 (ConvNeXt: stages.{index}.downsample).",
    )

    @model_validator(mode="after")
    def _blocks_numbered_where_stages_share(self) -> NamingSpec:
        if self.shared != any(f"{{{name}}}" in self.blocks for name in NETWORK_PLACEHOLDERS):
            raise ValueError(
                f"stages '{self.stages}' is one container every stage's blocks share: number them across the "
                "network, blocks '{network_number}' (or '{network_index}')"
                if self.shared
                else f"blocks '{self.blocks}' numbers blocks across the network, which only blocks that share one "
                "container need: give stages a path without {index} or {number} (features)"
            )
        return self

    @property
    def shared(self) -> bool:
        """Whether every stage's blocks live in one container (``features``), numbered across the network."""
        return not any(f"{{{name}}}" in self.stages for name in STAGE_PLACEHOLDERS)

    def stage_path(self, stage_index: int) -> str:
        """The path of stage ``stage_index`` (0-based): ``layer1`` or ``stages.0.blocks``; where the
        stages share a container, that container (``features``)."""
        return _fill(self.stages, stage_index)

    def block_path(self, stage_index: int, block_index: int, network_index: int) -> str:
        """The path of block ``block_index`` (0-based) of a stage, the network's ``network_index``:
        ``layer1.0``, ``s1.b1``, or numbered across the network, ``features.3``."""
        name = _fill(self.blocks, block_index)
        for placeholder, first in NETWORK_PLACEHOLDERS.items():
            name = name.replace(f"{{{placeholder}}}", str(network_index + first))
        return f"{self.stage_path(stage_index)}.{name}"

    shortcuts: Identifier | None = Field(
        default=None,
        description="The name of each block's shortcut layer, over its shortcut part's module (a projection "
        "written once serves torchvision's and timm's RegNet's downsample and timm's ByobNet's shortcut).",
    )
    transitions_after: Annotated[str, AfterValidator(_check_stage_pattern)] = Field(
        default="transition_after{number}",
        description="The path of each stage's transition after its blocks, where it has one: {index} counts "
        "stages from 0, {number} from 1 (stages.{index}.fuse).",
    )

    def transition_path(self, stage_index: int, after_blocks: bool = False) -> str:
        """The path of stage ``stage_index``'s transition (``stages.1.downsample``), or with
        ``after_blocks`` of its transition after its blocks."""
        return _fill(self.transitions_after if after_blocks else self.transitions, stage_index)


def _fill(pattern: str, index: int) -> str:
    for name, first in STAGE_PLACEHOLDERS.items():
        pattern = pattern.replace(f"{{{name}}}", str(index + first))
    return pattern


class ShortcutPolicySpec(StrictModel):
    """Which shortcut kind a block gets where its input and output shapes match, and where not."""

    where_shapes_match: str
    where_shapes_change: str


class BatchNormDefaultsSpec(StrictModel):
    """A network's BatchNorm settings, for every batch_norm node that sets neither itself (torchvision's
    ``norm_layer=partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)`` of MobileNetV3)."""

    epsilon: Float32 = Field(default=1e-5, gt=0, allow_inf_nan=False)
    momentum: float = Field(default=0.1, gt=0, lt=1, description="torch convention: new = (1-m)*old + m*batch")


class NetworkSpec(StrictModel):
    name: Name
    extends: str | None = Field(
        default=None,
        description="A built-in network's name or a network file (relative to this one) whose keys this file "
        "overrides: *_parameters mappings are merged, every other key replaced (the loader merges them).",
    )
    description: str = ""
    input: InputSpec
    stem: str
    stem_parameters: Parameters = Field(default_factory=dict)
    block: str
    block_parameters: Parameters = Field(default_factory=dict)
    shortcut: str | ShortcutPolicySpec
    stages: tuple[StageSpec, ...] = Field(min_length=1)
    transition: str | None = Field(
        default=None,
        description="A transition (a file in transitions/) run before the blocks of every stage whose stride is "
        "not 1 or whose width differs from its input channels (ConvNeXt's downsample); a stage may set its own.",
    )
    transition_parameters: Parameters = Field(default_factory=dict)
    transition_after: str | None = Field(
        default=None,
        description="A transition (a file in transitions/) run after the blocks of every stage; a stage may set "
        "its own, or 'none'.",
    )
    transition_after_parameters: Parameters = Field(default_factory=dict)
    head: str = "classifier"
    head_parameters: Parameters = Field(default_factory=dict)
    batch_norm: BatchNormDefaultsSpec | None = Field(
        default=None,
        description="The epsilon and momentum of every batch_norm node of the network's parts that does not set "
        "its own (torchvision's MobileNetV3: {epsilon: 0.001, momentum: 0.01}).",
    )
    naming: NamingSpec = Field(
        default_factory=NamingSpec,
        description="Where the network's layers live (state_dict keys): naming.stages is the stages' path pattern.",
    )
