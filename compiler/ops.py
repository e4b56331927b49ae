"""The op table: every IR op is one frozen dataclass here, and everything the compiler knows about
an op is stated on it, once:

* its typed attributes, with explicit semantics (padding as ``((top, bottom), (left, right))``
  pairs, never "SAME"; pooling ``ceil_mode`` and ``count_include_pad``; BatchNorm's epsilon and
  momentum in torch's convention; conv ``bias``);
* :meth:`~OpBase.from_attributes`: how ``expand`` builds it from a spec node's evaluated attributes
  and its input shapes (a conv's ``in_channels`` is its input's channel count);
* :meth:`~OpBase.output_shape`: its shape rule (shapes exclude the batch dimension:
  ``(channels, height, width)`` or ``(features,)``), raising :class:`ShapeError`;
* :meth:`~OpBase.tensors`: its parameter layout, ``{suffix: Tensor}`` in the canonical (torch)
  layout, buffers marked, each with its role and initialiser; the canonical weight names are
  ``<node>.<suffix>`` (``layer1.0.conv1.weight``);
* :meth:`~OpBase.macs`: multiply-accumulates, counted as torchvision's docs, fvcore and ptflops count
  them (convolutions and linear layers only; a blur pool and a channel conv are convolutions).

Cost, canonical weights (names, shapes, initial and random values), the Flax weight conversion and
the shape pass all derive from this table; nothing recognises an op by a name suffix. A new op is
one class here (defining it registers it in :data:`OP_TYPES`), plus one emitter per backend.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Self, TypeVar

from rescompile.spec.expressions import Expression, parse_expression

Shape = tuple[int, ...]
Pair = tuple[int, int]
Padding = tuple[Pair, Pair]
Attributes = Mapping[str, Any]
"""A spec node's attributes, expressions evaluated: ints, floats, bools, and for ``add`` its inputs."""

SHORTCUT_VALUE = "shortcut"
"""The value a block's residual ``add`` reads for the shortcut's output."""


class ShapeError(ValueError):
    """A shape rule failed; the caller names the module and location."""


class ShrinkError(ShapeError):
    """A feature map shrinks below 1×1: the input size is the usual cause."""


class Role(enum.Enum):
    """What a parameter tensor is, for initialisation, test weights and layout conversions."""

    KERNEL = "kernel"
    """A dense weight: ``(out, in/groups, kh, kw)`` for a conv, ``(out, in)`` for a linear layer."""
    BIAS = "bias"
    SCALE = "scale"
    """A per-channel multiplier (BatchNorm's weight)."""
    MEAN = "mean"
    """A running mean (a buffer)."""
    VARIANCE = "variance"
    """A running variance (a buffer)."""


class Init(enum.Enum):
    """How torchvision initialises a tensor (``initial_weights``)."""

    KAIMING_NORMAL_FAN_OUT = "kaiming_normal_fan_out"
    """Normal with std sqrt(2 / fan_out), fan_out = out * kh * kw (ReLU gain)."""
    UNIFORM_FAN_IN = "uniform_fan_in"
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's nn.Linear default; ``fan_in`` on :class:`Tensor`."""
    ZEROS = "zeros"
    ONES = "ones"
    CONSTANT = "constant"
    """Every value :attr:`Tensor.value` (a layer scale's initial value)."""


@dataclass(frozen=True)
class Tensor:
    """One parameter or buffer of an op, in canonical (torch) layout."""

    shape: Shape
    role: Role
    init: Init
    buffer: bool = False
    """Running statistics: part of the weights, not trainable, not counted as parameters."""
    fan_in: int = 0
    """For :attr:`Init.UNIFORM_FAN_IN`."""
    zeroed_for_residual: bool = False
    """Set to 0 by ``zero_init_residual`` (Goyal et al. 2017): the last BatchNorm scale of a branch."""
    value: float = 0.0
    """For :attr:`Init.CONSTANT`."""


def weight_name(node: str, suffix: str) -> str:
    """A tensor's canonical name: ``<node>.<suffix>`` (``layer1.0.conv1.weight``), or the node's own
    name where the suffix is empty (a parameter held directly by the block: timm's ``gamma``)."""
    return f"{node}.{suffix}" if suffix else node


def _image(shapes: tuple[Shape, ...], what: str) -> tuple[int, int, int]:
    if len(shapes) != 1 or len(shapes[0]) != 3:
        raise ShapeError(f"{what} needs one (channels, height, width) input, got {list(shapes)}")
    channels, height, width = shapes[0]
    return channels, height, width


def _one(shapes: tuple[Shape, ...], what: str) -> Shape:
    if len(shapes) != 1:
        raise ShapeError(f"{what} takes one input, got {len(shapes)}")
    return shapes[0]


def _window_size(size: int, kernel: int, stride: int, padding: Pair, dilation: int, ceil_mode: bool) -> int:
    """Output length of a sliding window, with torch's ceil_mode rule (a last window must start
    inside the input or its left padding)."""
    span = size + padding[0] + padding[1] - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    out = -(-span // stride) + 1 if ceil_mode else span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding[0]:
        out -= 1
    return out


def _spatial(
    height: int, width: int, kernel: Pair, stride: Pair, padding: Padding, dilation: Pair, ceil_mode: bool, what: str
) -> tuple[int, int]:
    out_height = _window_size(height, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    out_width = _window_size(width, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    if out_height < 1 or out_width < 1:
        raise ShrinkError(
            f"{what} (kernel {kernel[0]}×{kernel[1]}, stride {stride[0]}) would shrink the "
            f"{height}×{width} feature map below 1×1; use a larger input size or fewer strided stages"
        )
    return out_height, out_width


def show_shape(shape: Shape) -> str:
    return "×".join(str(dimension) for dimension in shape)


def _square(value: int) -> Pair:
    return (value, value)


def _padding(value: int) -> Padding:
    return ((value, value), (value, value))


def _plus(left: Expression, right: Expression) -> Expression:
    tree = ast.BinOp(left.tree, ast.Add(), right.tree)
    return Expression(ast.unparse(tree), tree)


def _quotient(dividend: Expression, divisor: Expression) -> Expression:
    """``dividend // divisor``, written ``a`` where the dividend is ``a * divisor``."""
    tree = dividend.tree
    if isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Mult):
        for kept, dropped in ((tree.left, tree.right), (tree.right, tree.left)):
            if ast.unparse(dropped) == divisor.text:
                return Expression(ast.unparse(kept), kept)
    quotient = ast.BinOp(dividend.tree, ast.FloorDiv(), divisor.tree)
    return Expression(ast.unparse(quotient), quotient)


def _times(factor: Expression, value: Expression) -> Expression:
    """``factor * value``, written ``0`` or ``value`` where the factor is 0 or 1."""
    if isinstance(factor.tree, ast.Constant) and factor.tree.value in (0, 1):
        return value if factor.tree.value == 1 else factor
    tree = ast.BinOp(factor.tree, ast.Mult(), value.tree)
    return Expression(ast.unparse(tree), tree)


def _expression(value: object) -> Expression:
    """A channel count a spec states, which is an expression."""
    assert isinstance(value, Expression)
    return value


def _is_zero(value: object) -> bool:
    return isinstance(value, Expression) and isinstance(value.tree, ast.Constant) and value.tree.value == 0


Size = int | Expression
"""An integer attribute: a value (in an instance), or an expression over a definition's parameters."""
Attribute = int | float | bool | Expression | enum.Enum
"""A field of a definition's op: a value (an enum member for a choice such as a padding mode), or
an expression over the definition's parameters."""
SpecValues = Mapping[str, Any]
"""A spec node's values as its YAML states them (expressions unevaluated), for the symbolic rules."""

# The type parameters of an op's fields (``ConvFields``): what an integer (N), a kernel or stride
# (P), a padding (Q) and a real number that a spec may compute (R) are. An instance's op (``Conv``)
# binds them to ``int``, ``Pair``, ``Padding`` and ``float``; a definition's (``SymbolicConv``) to
# :data:`Size` (a square kernel and symmetric padding are one value in a spec) and ``Real``.
N = TypeVar("N", covariant=True)
P = TypeVar("P", covariant=True)
Q = TypeVar("Q", covariant=True)
R = TypeVar("R", covariant=True)
Real = float | Expression


@dataclass(frozen=True)
class Interval:
    """The real numbers an attribute may take (:attr:`OpBase.real_ranges`): from ``low`` to
    ``high``, each end included or not; shown as ``[0.0, 1.0)``."""

    low: float
    high: float = math.inf
    low_included: bool = True
    high_included: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low <= value if self.low_included else self.low < value
        below = value <= self.high if self.high_included else value < self.high
        return above and below

    def __str__(self) -> str:
        return f"{'[' if self.low_included else '('}{self.low}, {self.high}{']' if self.high_included else ')'}"


POSITIVE = Interval(0.0, low_included=False)
"""A real number greater than 0 (an epsilon)."""


class PaddingMode(enum.Enum):
    """How a blur pool pads: with zeros, or by reflecting the input about its edge without repeating
    the edge value (torch's and numpy's ``reflect``: ``c b | a b c d | c b``)."""

    ZEROS = "zeros"
    REFLECT = "reflect"


class GeluApproximation(enum.Enum):
    """GELU's form: exact (erf), or its tanh approximation (torch's ``approximate``)."""

    NONE = "none"
    TANH = "tanh"


def _with_enums(op_type: type, values: SpecValues) -> dict[str, Any]:
    """``values`` with each choice of an enum field (a spec states ``reflect``) as its enum member."""
    enums = _enum_fields(op_type)
    return {name: enums[name](value) if name in enums else value for name, value in values.items()}


@functools.cache
def _enum_fields(op_type: type) -> dict[str, type[enum.Enum]]:
    hints = typing.get_type_hints(op_type)
    return {name: hint for name, hint in hints.items() if isinstance(hint, type) and issubclass(hint, enum.Enum)}


@dataclass(frozen=True)
class OpFields:
    """An op's fields: its symbolic form, the op of a definition's node (:data:`SymbolicOp`). Each
    op with an integer field states them in a generic ``XFields`` subclass (``ConvFields[N, P, Q]``),
    over :data:`Size` in a definition; an op without one is its own."""

    kind: ClassVar[str]


_REGISTRY: dict[str, type[OpBase]] = {}
"""Every op class by its kind, in the order this module defines them: filled as each is defined."""


class OpBase(OpFields):
    """What every op states; the defaults describe an op without parameters and without MACs that
    keeps its input's channels. Each subclass with a ``kind`` is an op: defining it registers it in
    the op table (:data:`OP_TYPES`), nothing else lists it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = getattr(cls, "kind", None)
        if kind is None:
            return  # a family of ops (Elementwise), not an op
        if kind in _REGISTRY:
            raise TypeError(f"op kind '{kind}' is stated twice: {_REGISTRY[kind].__name__} and {cls.__name__}")
        _REGISTRY[kind] = cls

    minimums: ClassVar[Mapping[str, int]] = {}
    """Smallest value of each integer attribute in a spec, where it is not 1 (e.g. padding 0)."""
    maximums: ClassVar[Mapping[str, int]] = {}
    """Largest value of an integer attribute whose cost grows with it beyond what weights or shapes bound."""
    real_ranges: ClassVar[Mapping[str, Interval]] = {}
    """Attributes that are real numbers rather than integers (a spec may compute them), each with
    the numbers it may take."""
    inference_identity: ClassVar[bool] = False
    """Whether it returns its input unchanged at inference (no activation of its own)."""
    family: ClassVar[str] = "data"
    """What kind of op it is, for pictures: linear, norm, activation, pool, join or data."""
    normalization: ClassVar[bool] = False
    """A normalisation with an affine ``weight`` that ``zero_init`` zeroes for ``zero_init_residual``."""
    view: ClassVar[bool] = False
    """Its torch output is a view of its input (no in-place op may write into it)."""
    foreign_names: ClassVar[tuple[str, ...]] = ()
    """torch's and timm's names for it (lower case, without '_'), which a spec's ``op`` is told to replace."""
    # Its YAML keys: ``spec.models.derived_op_spec`` writes its spec model from its fields (those of
    # ``fields`` where it has them): an integer (N, P, Q or ``int``) is an expression over the part's
    # parameters, an R a real expression in its ``real_ranges``, a float a float32 number, a bool a
    # bool, an enum a choice of its texts, ``X | None`` optional; with these traits:
    inferred: ClassVar[tuple[str, ...]] = ()
    """Fields no spec states: ``from_attributes`` derives them (a conv's ``in_channels`` from its input)."""
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {}
    """A key's default where its field has none (a generic field cannot: a conv's ``stride`` 1); a
    field's own default is the key's too, an optional field's None, and any other key is required."""
    reads: ClassVar[tuple[int, int | None] | None] = None
    """How many values it reads, at least and at most, named in its ``inputs`` key, where it reads
    more than the one value of ``input``."""
    keys_from: ClassVar[str | None] = None
    """Where its keys are not its fields: the classmethod whose parameters after the first (its
    input's channel count) are its keys, with their defaults (``ChannelSlice._part``)."""
    descriptions: ClassVar[Mapping[str, str]] = {}
    """What each key means, for its spec model (and so the JSON Schema); a key without one takes the
    schema's glossary."""
    example: ClassVar[Mapping[str, str] | None] = None
    """A use of it in a block, for the tests that build a network from the op table: node name -> the
    node in YAML flow style. The first node reads the block's C×H×W value before it (``INPUT``
    where a node names it; C is the block's ``width``, 16 or 32, and H = W >= 4); the last gives
    that shape again. None: ``{op: KIND}`` alone is one; empty: a block cannot hold it (the
    classifier head uses it)."""
    fields: ClassVar[type[Any] | None] = None
    """The class of its fields (``ConvFields``), generic in what an integer is, whose form over
    :data:`Size` is its op in a definition; None where no field is an integer: it is its own."""

    @classmethod
    def check_keys(cls, keys: Mapping[str, Any]) -> None:
        """Raise a ValueError where a node's keys (as its spec model holds them) break a rule their
        types do not state (a clamp needs a bound)."""

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        """The op for a spec node (its evaluated attributes) reading values of ``in_shapes``."""
        return cls(**_with_enums(cls, attributes))

    @classmethod
    def symbolic(cls, values: SpecValues, in_channels: Expression | None) -> tuple[SymbolicOp, Expression | None]:
        """The symbolic form of :meth:`from_attributes`, for definitions: the op with its fields
        over the definition's parameters (those it derives from its input's channel count, an
        expression too), and its output's channel count. None: not expressible from channels (after
        a flatten). The default: an op whose fields are the spec's keys, keeping the channels."""
        if cls.fields is None:
            op: SymbolicOp = cls.from_attributes(values, ())
        else:
            op = cls.fields(**_with_enums(cls.fields, values))
        return op, in_channels

    @classmethod
    def symbolic_inputs(
        cls, values: SpecValues, in_channels: tuple[Expression | None, ...]
    ) -> tuple[SymbolicOp, Expression | None]:
        """:meth:`symbolic` given every input's channel count; most ops need the first only."""
        return cls.symbolic(values, in_channels[0])

    @classmethod
    def stated(cls, op: SymbolicOp) -> dict[str, Any]:
        """The spec's values a definition's op was made from (:meth:`symbolic`'s ``values``),
        expressions unevaluated: an instance evaluates them under its parameters and builds its op
        with :meth:`from_attributes`. Only for an op with integer fields (``fields``); any other op
        is the same in a definition and in its instances."""
        return {
            field.name: getattr(op, field.name) for field in dataclasses.fields(op) if field.name not in cls.inferred
        }

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        raise NotImplementedError

    def tensors(self) -> dict[str, Tensor]:
        return {}

    def macs(self, in_shapes: tuple[Shape, ...], out_shape: Shape) -> int:
        return 0


@dataclass(frozen=True)
class ConvFields(OpFields, Generic[N, P, Q]):
    """A convolution's fields (:class:`Conv`)."""

    kind: ClassVar[str] = "conv"
    in_channels: N
    out_channels: N
    kernel: P
    stride: P
    padding: Q
    dilation: P
    groups: N
    bias: bool
    standardize_weight: bool = False
    standardize_epsilon: float = 1e-6


@dataclass(frozen=True)
class Conv(ConvFields[int, Pair, Padding], OpBase):
    """A 2-D convolution (torch's ``Conv2d``). With ``standardize_weight`` it convolves with its
    weight standardised per output channel, ``(w - mean) / sqrt(var + standardize_epsilon)`` over
    ``(in/groups, kh, kw)`` with the biased variance (Qiao et al. 2019; timm's ``StdConv2d``); the
    raw weight is what is stored (``.weight``), so timm's state_dicts load unchanged."""

    example: ClassVar[Mapping[str, str] | None] = {"conv": "{op: conv, out_channels: width, kernel: 3, padding: 1}"}
    family: ClassVar[str] = "linear"
    foreign_names: ClassVar[tuple[str, ...]] = ("conv2d", "stdconv2d")
    minimums: ClassVar[Mapping[str, int]] = {"padding": 0}
    real_ranges: ClassVar[Mapping[str, Interval]] = {"standardize_epsilon": POSITIVE}
    fields: ClassVar[type[Any] | None] = ConvFields
    inferred: ClassVar[tuple[str, ...]] = ("in_channels",)
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {
        "stride": 1,
        "padding": 0,
        "dilation": 1,
        "groups": 1,
        "bias": False,
    }
    descriptions: ClassVar[Mapping[str, str]] = {
        "standardize_weight": "Convolve with the weight standardised per output channel (timm's StdConv2d); the raw "
        "weight is stored.",
        "standardize_epsilon": "Added to the weight's variance when standardising.",
    }

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        spec: ConvFields[int, int, int] = ConvFields(in_channels=_one(in_shapes, "conv")[0], **attributes)
        return cls(
            spec.in_channels,
            spec.out_channels,
            _square(spec.kernel),
            _square(spec.stride),
            _padding(spec.padding),
            _square(spec.dilation),
            spec.groups,
            spec.bias,
            spec.standardize_weight,
            spec.standardize_epsilon,
        )

    @classmethod
    def symbolic(cls, values: SpecValues, in_channels: Expression | None) -> tuple[SymbolicOp, Expression | None]:
        assert in_channels is not None
        op: SymbolicConv = ConvFields(in_channels=in_channels, **values)
        return op, _expression(op.out_channels)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        channels, height, width = _image(in_shapes, "conv")
        if channels != self.in_channels:
            raise ShapeError(f"conv expects {self.in_channels} input channels, got {channels}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ShapeError(
                f"conv groups={self.groups} must divide in_channels={self.in_channels} "
                f"and out_channels={self.out_channels}"
            )
        size = _spatial(height, width, self.kernel, self.stride, self.padding, self.dilation, False, "conv")
        return (self.out_channels, *size)

    def tensors(self) -> dict[str, Tensor]:
        weight = (self.out_channels, self.in_channels // self.groups, *self.kernel)
        result = {"weight": Tensor(weight, Role.KERNEL, Init.KAIMING_NORMAL_FAN_OUT)}
        if self.bias:
            result["bias"] = Tensor((self.out_channels,), Role.BIAS, Init.ZEROS)
        return result

    def macs(self, in_shapes: tuple[Shape, ...], out_shape: Shape) -> int:
        per_output = (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]
        return math.prod(out_shape) * per_output


class _Normalization(OpBase):
    """A per-channel normalisation: its ``channels`` are its input's, and so are its output's."""

    inferred: ClassVar[tuple[str, ...]] = ("channels",)
    descriptions: ClassVar[Mapping[str, str]] = {"zero_init": "Zeroed (weight=0) when zero_init_residual is asked for."}

    @classmethod
    def symbolic(cls, values: SpecValues, in_channels: Expression | None) -> tuple[SymbolicOp, Expression | None]:
        assert in_channels is not None and cls.fields is not None
        op: SymbolicOp = cls.fields(channels=in_channels, **values)
        return op, in_channels


@dataclass(frozen=True)
class BatchNormFields(OpFields, Generic[N, R]):
    """The fields of :class:`BatchNorm`."""

    kind: ClassVar[str] = "batch_norm"
    channels: N
    epsilon: R
    momentum: R
    zero_init: bool


@dataclass(frozen=True)
class BatchNorm(BatchNormFields[int, float], _Normalization):
    """``y = (x - mean) / sqrt(var + epsilon) * weight + bias``; in training the running statistics
    follow ``running = (1 - momentum) * running + momentum * batch``, the *unbiased* batch variance
    feeding ``running_var`` (torch's convention)."""

    family: ClassVar[str] = "norm"
    normalization: ClassVar[bool] = True
    foreign_names: ClassVar[tuple[str, ...]] = ("batchnorm2d",)
    real_ranges: ClassVar[Mapping[str, Interval]] = {
        "epsilon": POSITIVE,
        "momentum": Interval(0.0, 1.0, low_included=False),
    }
    fields: ClassVar[type[Any] | None] = BatchNormFields
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {"epsilon": 1e-5, "momentum": 0.1, "zero_init": False}
    descriptions: ClassVar[Mapping[str, str]] = {
        **_Normalization.descriptions,
        "momentum": "torch convention: new = (1-m)*old + m*batch",
    }

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        return cls(channels=_one(in_shapes, "batch_norm")[0], **attributes)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        if len(in_shapes) != 1 or in_shapes[0][0] != self.channels:
            raise ShapeError(f"batch_norm has {self.channels} channels, its input is {list(in_shapes)}")
        return in_shapes[0]

    def tensors(self) -> dict[str, Tensor]:
        channels = (self.channels,)
        return {
            "weight": Tensor(channels, Role.SCALE, Init.ONES, zeroed_for_residual=self.zero_init),
            "bias": Tensor(channels, Role.BIAS, Init.ZEROS),
            "running_mean": Tensor(channels, Role.MEAN, Init.ZEROS, buffer=True),
            "running_var": Tensor(channels, Role.VARIANCE, Init.ONES, buffer=True),
        }


@dataclass(frozen=True)
class GroupNormFields(OpFields, Generic[N]):
    """The fields of :class:`GroupNorm`."""

    kind: ClassVar[str] = "group_norm"
    channels: N
    groups: N
    epsilon: float
    zero_init: bool


@dataclass(frozen=True)
class GroupNorm(GroupNormFields[int], _Normalization):
    """torch's ``GroupNorm`` (Wu and He 2018): the channels split into ``groups`` consecutive
    groups, each sample's group normalised by its own mean and *biased* variance over
    ``(channels / groups, height, width)``, ``epsilon`` inside the square root, then an affine
    per-channel ``weight`` and ``bias``. No running statistics: training and eval compute the same."""

    example: ClassVar[Mapping[str, str] | None] = {"group_norm": "{op: group_norm, groups: 4}"}
    family: ClassVar[str] = "norm"
    normalization: ClassVar[bool] = True
    foreign_names: ClassVar[tuple[str, ...]] = ("groupnorm",)
    real_ranges: ClassVar[Mapping[str, Interval]] = {"epsilon": POSITIVE}
    fields: ClassVar[type[Any] | None] = GroupNormFields
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {"epsilon": 1e-5, "zero_init": False}

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        return cls(channels=_one(in_shapes, "group_norm")[0], **attributes)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        channels, _, _ = _image(in_shapes, self.kind)
        if channels != self.channels:
            raise ShapeError(f"group_norm has {self.channels} channels, its input has {channels}")
        if channels % self.groups:
            raise ShapeError(f"group_norm groups={self.groups} must divide the {channels} channels")
        return in_shapes[0]

    def tensors(self) -> dict[str, Tensor]:
        channels = (self.channels,)
        return {
            "weight": Tensor(channels, Role.SCALE, Init.ONES, zeroed_for_residual=self.zero_init),
            "bias": Tensor(channels, Role.BIAS, Init.ZEROS),
        }


class Elementwise(OpBase):
    """An activation of one value, applied to each element: it keeps the shape, has no parameters,
    and its YAML keys are its fields."""

    family: ClassVar[str] = "activation"

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        return _one(in_shapes, self.kind)


@dataclass(frozen=True)
class Relu(Elementwise):
    """``max(x, 0)``, elementwise."""

    kind: ClassVar[str] = "relu"


COMPOSITE_INPUT = -1
"""In a :class:`Step`'s inputs: the composite's own input."""


@dataclass(frozen=True)
class Step:
    """One primitive op of a :class:`Composite`, reading ``inputs``: :data:`COMPOSITE_INPUT`, or
    the output of an earlier step by its index; None: the previous step's (the first step's is the
    composite's input). Its op has no integer field, so it is the same in a definition and in an
    instance."""

    op: OpBase
    inputs: tuple[int, ...] | None = None


class Composite(Elementwise):
    """An elementwise op declared as a composition of the table's primitive ops (as tinygrad writes
    ``hardswish``): :meth:`steps`. The compiler pass ``lower_composites`` (compiler/compose.py)
    writes each use as those primitive nodes before any backend sees the graph, so a composite
    needs no emitter, and its YAML keys and tests come from the table as any elementwise op's."""

    def steps(self) -> tuple[Step, ...]:
        raise NotImplementedError


def _pool_shape(op: MaxPool | AvgPool, in_shapes: tuple[Shape, ...]) -> Shape:
    """The shape rule both pools share: torch's, padding at most half the kernel."""
    channels, height, width = _image(in_shapes, op.kind)
    for (before, after), size in zip(op.padding, op.kernel, strict=True):
        if max(before, after) * 2 > size:
            raise ShapeError(f"{op.kind} padding must be at most half the kernel size ({size})")
    return (channels, *_spatial(height, width, op.kernel, op.stride, op.padding, (1, 1), op.ceil_mode, op.kind))


@dataclass(frozen=True)
class MaxPoolFields(OpFields, Generic[P, Q]):
    """The fields of :class:`MaxPool`."""

    kind: ClassVar[str] = "max_pool"
    kernel: P
    stride: P
    padding: Q
    ceil_mode: bool


@dataclass(frozen=True)
class MaxPool(MaxPoolFields[Pair, Padding], OpBase):
    """torch's ``MaxPool2d``: the maximum over each ``kernel``×``kernel`` window, padding never winning."""

    example: ClassVar[Mapping[str, str] | None] = {"max_pool": "{op: max_pool, kernel: 3, padding: 1}"}
    family: ClassVar[str] = "pool"
    foreign_names: ClassVar[tuple[str, ...]] = ("maxpool2d",)
    minimums: ClassVar[Mapping[str, int]] = {"padding": 0}
    fields: ClassVar[type[Any] | None] = MaxPoolFields
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {"stride": 1, "padding": 0, "ceil_mode": False}

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        spec: MaxPoolFields[int, int] = MaxPoolFields(**attributes)
        return cls(_square(spec.kernel), _square(spec.stride), _padding(spec.padding), spec.ceil_mode)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        return _pool_shape(self, in_shapes)


@dataclass(frozen=True)
class AvgPoolFields(OpFields, Generic[P, Q]):
    """The fields of :class:`AvgPool`."""

    kind: ClassVar[str] = "avg_pool"
    kernel: P
    stride: P
    padding: Q
    ceil_mode: bool
    count_include_pad: bool


@dataclass(frozen=True)
class AvgPool(AvgPoolFields[Pair, Padding], OpBase):
    """torch's ``AvgPool2d``: the mean over each ``kernel``×``kernel`` window; ``count_include_pad`` and the
    partial last window of ``ceil_mode`` divide as torch divides, in every backend."""

    example: ClassVar[Mapping[str, str] | None] = {
        "avg_pool": "{op: avg_pool, kernel: 3, padding: 1, count_include_pad: false}"
    }
    family: ClassVar[str] = "pool"
    foreign_names: ClassVar[tuple[str, ...]] = ("avgpool2d",)
    minimums: ClassVar[Mapping[str, int]] = {"padding": 0}
    fields: ClassVar[type[Any] | None] = AvgPoolFields
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {
        "stride": 1,
        "padding": 0,
        "ceil_mode": False,
        "count_include_pad": True,
    }

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        spec: AvgPoolFields[int, int] = AvgPoolFields(**attributes)
        kernel, stride, padding = _square(spec.kernel), _square(spec.stride), _padding(spec.padding)
        return cls(kernel, stride, padding, spec.ceil_mode, spec.count_include_pad)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        return _pool_shape(self, in_shapes)


@dataclass(frozen=True)
class GlobalAveragePool(OpBase):
    """Mean over height and width, keeping them as 1×1 (torch's ``AdaptiveAvgPool2d((1, 1))``)."""

    example: ClassVar[Mapping[str, str] | None] = {
        "global_average_pool": "{op: global_average_pool}",
        "global_average_pool_gate": "{op: mul, inputs: [INPUT, global_average_pool]}",
    }
    kind: ClassVar[str] = "global_average_pool"
    family: ClassVar[str] = "pool"
    foreign_names: ClassVar[tuple[str, ...]] = ("adaptiveavgpool2d",)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        channels, _, _ = _image(in_shapes, self.kind)
        return (channels, 1, 1)


@dataclass(frozen=True)
class Flatten(OpBase):
    """``(C, H, W) -> (C * H * W,)`` in channel-major order, as ``torch.flatten(x, 1)``."""

    example: ClassVar[Mapping[str, str] | None] = {}
    kind: ClassVar[str] = "flatten"

    @classmethod
    def symbolic(cls, values: SpecValues, in_channels: Expression | None) -> tuple[SymbolicOp, Expression | None]:
        return cls(), None  # channels × height × width: the spatial size is not a parameter

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        return (math.prod(_one(in_shapes, self.kind)),)


@dataclass(frozen=True)
class LinearFields(OpFields, Generic[N]):
    """The fields of :class:`Linear`."""

    kind: ClassVar[str] = "linear"
    in_features: N
    out_features: N
    bias: bool


@dataclass(frozen=True)
class Linear(LinearFields[int], OpBase):
    """torch's ``nn.Linear`` on a ``(features,)`` value: ``y = W x + b``, weight ``(out_features, in_features)``."""

    example: ClassVar[Mapping[str, str] | None] = {}
    family: ClassVar[str] = "linear"
    fields: ClassVar[type[Any] | None] = LinearFields
    inferred: ClassVar[tuple[str, ...]] = ("in_features",)
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {"bias": True}

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        shape = _one(in_shapes, cls.kind)
        if len(shape) != 1:
            raise ShapeError(f"linear needs a flat input of shape (features,), got {shape}; add a flatten node first")
        return cls(in_features=shape[0], **attributes)

    @classmethod
    def symbolic(cls, values: SpecValues, in_channels: Expression | None) -> tuple[SymbolicOp, Expression | None]:
        op: SymbolicLinear = LinearFields(in_features=in_channels, **values)
        return op, _expression(op.out_features)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        if len(in_shapes) != 1 or in_shapes[0] != (self.in_features,):
            raise ShapeError(f"linear expects ({self.in_features},) features, got {list(in_shapes)}; flatten first")
        return (self.out_features,)

    def tensors(self) -> dict[str, Tensor]:
        result = {
            "weight": Tensor(
                (self.out_features, self.in_features), Role.KERNEL, Init.UNIFORM_FAN_IN, fan_in=self.in_features
            )
        }
        if self.bias:
            result["bias"] = Tensor((self.out_features,), Role.BIAS, Init.UNIFORM_FAN_IN, fan_in=self.in_features)
        return result

    def macs(self, in_shapes: tuple[Shape, ...], out_shape: Shape) -> int:
        return self.in_features * self.out_features


def _broadcast(kind: str, in_shapes: tuple[Shape, ...]) -> Shape:
    """The shape numpy's broadcasting gives values of one rank: each dimension equal, or 1 in all
    but one of them (``C×H×W`` and ``C×1×1`` give ``C×H×W``). The batch dimension is never broadcast."""
    shown = " and ".join(show_shape(shape) for shape in in_shapes)
    if any(len(shape) != len(in_shapes[0]) for shape in in_shapes):
        raise ShapeError(f"{kind} needs inputs of one rank, got {shown}")
    result = tuple(max(sizes) for sizes in zip(*in_shapes, strict=True))
    if any(size not in (1, wanted) for shape in in_shapes for size, wanted in zip(shape, result, strict=True)):
        raise ShapeError(f"{kind} cannot broadcast {shown}: each dimension must match or be 1")
    return result


def _with_constant(kind: str, constant: float | None, in_shapes: tuple[Shape, ...], values: str) -> Shape:
    """The shape rule of ``add`` and ``mul``: one value and a constant, or ``values`` that broadcast."""
    if constant is not None:
        if len(in_shapes) != 1:
            raise ShapeError(f"{kind} with a constant reads one value (inputs: [x]), got {len(in_shapes)}")
        return in_shapes[0]
    if not in_shapes or len(in_shapes) == 1:
        raise ShapeError(f"{kind} needs {values}, or one value and a constant")
    return _broadcast(kind, in_shapes)


@dataclass(frozen=True)
class Add(OpBase):
    """The sum of two or more values, added left to right, broadcasting as numpy does (a C×1×1
    value adds its one number to every pixel of its channel, as GCNet's context does); or one value
    plus ``constant`` (a float32 number, added as torch adds a Python number to a float32 tensor).
    A block's residual add reads two values of one shape, the branch and ``shortcut``."""

    example: ClassVar[Mapping[str, str] | None] = {"add": "{op: add, inputs: [INPUT], constant: 0.5}"}
    kind: ClassVar[str] = "add"
    family: ClassVar[str] = "join"
    inferred: ClassVar[tuple[str, ...]] = ("shortcut_input",)
    reads: ClassVar[tuple[int, int | None] | None] = (1, None)
    descriptions: ClassVar[Mapping[str, str]] = {
        "inputs": "The values to add (two or more, broadcasting as numpy does; or one, with a constant); "
        "'shortcut' names the block's shortcut, in a residual add of two values.",
        "constant": "A number added to the one value of inputs.",
    }
    shortcut_input: int | None
    """Which input (0 or 1) is the block's shortcut when this is the residual merge, else None."""
    constant: float | None = None

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        return cls._reading(**attributes)

    @classmethod
    def check_keys(cls, keys: Mapping[str, Any]) -> None:
        if keys["constant"] is not None and SHORTCUT_VALUE in keys["inputs"]:
            raise ValueError("a residual add reads the branch and 'shortcut'; it cannot add a constant")

    @classmethod
    def _reading(cls, inputs: tuple[str, ...], constant: float | None = None) -> Self:
        """The add of a spec node reading ``inputs``: the residual merge where one is the shortcut."""
        return cls(inputs.index(SHORTCUT_VALUE) if SHORTCUT_VALUE in inputs else None, constant)

    @property
    def residual(self) -> bool:
        return self.shortcut_input is not None

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        return _with_constant(self.kind, self.constant, in_shapes, "two or more values")


@dataclass(frozen=True)
class Sigmoid(Elementwise):
    """``1 / (1 + exp(-x))``, elementwise."""

    kind: ClassVar[str] = "sigmoid"


@dataclass(frozen=True)
class Mul(OpBase):
    """Elementwise product of two values of one rank, broadcasting as numpy does: each dimension
    equal, or 1 in one of them (``C×H×W · C×1×1`` scales each channel). The batch dimension is
    shared, never broadcast. Or one value times ``constant`` (a float32 number, multiplied as torch
    multiplies a float32 tensor by a Python number)."""

    example: ClassVar[Mapping[str, str] | None] = {"mul": "{op: mul, inputs: [INPUT, INPUT]}"}
    kind: ClassVar[str] = "mul"
    family: ClassVar[str] = "join"
    reads: ClassVar[tuple[int, int | None] | None] = (1, 2)
    descriptions: ClassVar[Mapping[str, str]] = {
        "inputs": "The two values to multiply (or one, with a constant).",
        "constant": "A number the one value of inputs is multiplied by.",
    }
    constant: float | None = None

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        return cls._reading(**attributes)

    @classmethod
    def _reading(cls, inputs: tuple[str, ...], constant: float | None = None) -> Self:
        """The product of a spec node: ``inputs`` the node records; a constant where it has one."""
        return cls(constant)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        if self.constant is None and len(in_shapes) > 2:
            raise ShapeError(f"mul needs two values, or one value and a constant; got {len(in_shapes)} values")
        return _with_constant(self.kind, self.constant, in_shapes, "two values")


@dataclass(frozen=True)
class Clamp(OpBase):
    """``min(max(x, minimum), maximum)`` elementwise (``torch.clamp``), either bound left out where
    it is None; the bounds are float32 numbers. ``clamp`` with 0 and 6 is ``relu6``."""

    example: ClassVar[Mapping[str, str] | None] = {"clamp": "{op: clamp, minimum: -1, maximum: 1}"}
    kind: ClassVar[str] = "clamp"
    family: ClassVar[str] = "activation"
    foreign_names: ClassVar[tuple[str, ...]] = ("clip", "hardtanh")
    descriptions: ClassVar[Mapping[str, str]] = {
        "minimum": "The lower bound (none: no lower bound).",
        "maximum": "The upper bound (none: no upper bound).",
    }
    minimum: float | None
    maximum: float | None

    @classmethod
    def check_keys(cls, keys: Mapping[str, Any]) -> None:
        minimum, maximum = keys["minimum"], keys["maximum"]
        if minimum is None and maximum is None:
            raise ValueError("clamp needs a minimum, a maximum or both")
        if minimum is not None and maximum is not None and minimum > maximum:
            raise ValueError(f"clamp's minimum {minimum} is greater than its maximum {maximum}")

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        return _one(in_shapes, self.kind)


@dataclass(frozen=True)
class SpatialSoftmax(OpBase):
    """A softmax over the H·W positions of each channel (and sample): ``exp(v) / Σ exp`` over the
    pixels of its channel (GCNet's attention over positions: ``softmax(x.view(B, C, H*W), -1)``). No
    MACs (torch's flop counter counts none)."""

    kind: ClassVar[str] = "spatial_softmax"
    family: ClassVar[str] = "activation"

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        _image(in_shapes, self.kind)
        return in_shapes[0]


@dataclass(frozen=True)
class WeightedSpatialSum(OpBase):
    """Attention pooling: inputs ``[values, weights]``, values C×H×W and weights 1×H×W, gives the
    C×1×1 sum over positions ``out[c] = Σ_p values[c, p] · weights[p]`` (GCNet's context,
    ``x.view(B, 1, C, H*W) @ attn.view(B, 1, H*W, 1)``). MACs ``C × H × W``, the product's, as
    torch's flop counter counts that matmul."""

    example: ClassVar[Mapping[str, str] | None] = {
        "weighted_spatial_sum_logits": "{op: conv, out_channels: 1, kernel: 1}",
        "weighted_spatial_sum_weights": "{op: spatial_softmax}",
        "weighted_spatial_sum": "{op: weighted_spatial_sum, inputs: [INPUT, weighted_spatial_sum_weights]}",
        "weighted_spatial_sum_added": "{op: add, inputs: [INPUT, weighted_spatial_sum]}",
    }
    kind: ClassVar[str] = "weighted_spatial_sum"
    family: ClassVar[str] = "pool"
    reads: ClassVar[tuple[int, int | None] | None] = (2, 2)
    descriptions: ClassVar[Mapping[str, str]] = {"inputs": "The values (C×H×W) and their weights (1×H×W)."}

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        return cls()  # ``inputs`` the node records

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        shown = " and ".join(show_shape(shape) for shape in in_shapes)
        if len(in_shapes) != 2 or any(len(shape) != 3 for shape in in_shapes):
            raise ShapeError(f"weighted_spatial_sum reads [values, weights], two C×H×W values; got {shown}")
        (channels, height, width), weights = in_shapes
        if weights != (1, height, width):
            raise ShapeError(
                f"weighted_spatial_sum needs weights of one channel and the values' size, "
                f"1×{height}×{width}; got {shown}"
            )
        return (channels, 1, 1)

    def macs(self, in_shapes: tuple[Shape, ...], out_shape: Shape) -> int:
        return math.prod(in_shapes[0])


@dataclass(frozen=True)
class SubsampleFields(OpFields, Generic[N]):
    """The fields of :class:`Subsample`."""

    kind: ClassVar[str] = "subsample"
    stride: N


@dataclass(frozen=True)
class Subsample(SubsampleFields[int], OpBase):
    """``x[:, :, ::stride, ::stride]``: output size ``ceil(size / stride)``."""

    example: ClassVar[Mapping[str, str] | None] = {"subsample": "{op: subsample, stride: 1}"}
    family: ClassVar[str] = "pool"
    fields: ClassVar[type[Any] | None] = SubsampleFields

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        channels, height, width = _image(in_shapes, self.kind)
        return (channels, -(-height // self.stride), -(-width // self.stride))


@dataclass(frozen=True)
class PadFields(OpFields, Generic[N]):
    """The fields of :class:`Pad`."""

    kind: ClassVar[str] = "pad"
    padding: N


@dataclass(frozen=True)
class Pad(PadFields[int], OpBase):
    """Zero rows and columns: ``padding`` on every side of the height and width (torch's
    ``nn.ZeroPad2d``). BiT's stem pads the stem convolution's output with zeros before a max pool
    without padding, which differs from the pool's own padding (that never wins a max)."""

    example: ClassVar[Mapping[str, str] | None] = {
        "pad": "{op: pad, padding: 1}",
        "pad_conv": "{op: conv, out_channels: width, kernel: 3}",
    }
    foreign_names: ClassVar[tuple[str, ...]] = ("zeropad2d",)
    minimums: ClassVar[Mapping[str, int]] = {"padding": 0}
    fields: ClassVar[type[Any] | None] = PadFields

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        channels, height, width = _image(in_shapes, self.kind)
        return (channels, height + 2 * self.padding, width + 2 * self.padding)


@dataclass(frozen=True)
class PadChannelsFields(OpFields, Generic[N]):
    """The fields of :class:`PadChannels`."""

    kind: ClassVar[str] = "pad_channels"
    before: N
    after: N


@dataclass(frozen=True)
class PadChannels(PadChannelsFields[int], OpBase):
    """Zero channels: ``before`` in front of the input's channels and ``after`` behind them."""

    example: ClassVar[Mapping[str, str] | None] = {
        "pad_channels": "{op: pad_channels, after: 2}",
        "pad_channels_conv": "{op: conv, out_channels: width, kernel: 1}",
    }
    minimums: ClassVar[Mapping[str, int]] = {"before": 0, "after": 0}
    fields: ClassVar[type[Any] | None] = PadChannelsFields
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {"before": 0}

    @classmethod
    def symbolic(cls, values: SpecValues, in_channels: Expression | None) -> tuple[SymbolicOp, Expression | None]:
        op: PadChannelsFields[Size] = PadChannelsFields(**values)
        out = in_channels
        for amount in (op.before, op.after):
            if out is not None and isinstance(amount, Expression) and not _is_zero(amount):
                out = _plus(out, amount)
        return op, out

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        channels, height, width = _image(in_shapes, self.kind)
        if self.before < 0 or self.after < 0:
            raise ShapeError(f"pad_channels cannot remove channels (before={self.before}, after={self.after})")
        return (channels + self.before + self.after, height, width)


MAX_BLUR_TAPS = 64
"""The most taps a blur pool's filter may have."""


def binomial_filter(taps: int) -> list[float]:
    """The ``taps`` coefficients of the binomial low-pass filter, ``C(taps - 1, k) / 2**(taps - 1)``:
    they sum to 1 (every value is exact in float32 up to 25 taps)."""
    return [math.comb(taps - 1, k) / 2 ** (taps - 1) for k in range(taps)]


@dataclass(frozen=True)
class BlurPoolFields(OpFields, Generic[N]):
    """The fields of :class:`BlurPool`."""

    kind: ClassVar[str] = "blur_pool"
    taps: N
    stride: N
    padding: N
    padding_mode: PaddingMode


@dataclass(frozen=True)
class BlurPool(BlurPoolFields[int], OpBase):
    """Anti-aliased downsampling (Zhang 2019; timm's ``BlurPool2d``): each channel is padded by
    ``padding`` on every side (``padding_mode``) and convolved, with ``stride``, with the fixed
    ``taps``×``taps`` filter ``outer(b, b)``, ``b`` = :func:`binomial_filter` (it sums to 1).

    The filter is a constant of the op, not a weight: no canonical name, no parameter (timm keeps
    it as a non-persistent buffer, absent from its state_dict).

    One tap is the filter ``[1]``: nothing is multiplied, the op pads and keeps every
    ``stride``-th pixel (with stride 1 and no padding, the identity), and it costs no MACs. So
    ``taps: "3 if stride == 2 else 1"`` blurs only where a block strides, as timm's blocks do (their
    ``aa`` is an ``nn.Identity`` elsewhere).

    MACs: counted as fvcore and ``torch.utils.flop_counter`` count the ``F.conv2d`` timm calls, a
    depthwise convolution, ``channels × out_h × out_w × taps²``. (Module-hook counters such as
    ptflops count nothing for it: timm's ``BlurPool2d`` is not an ``nn.Conv2d``.)"""

    example: ClassVar[Mapping[str, str] | None] = {"blur_pool": "{op: blur_pool, taps: 3, padding: 1}"}
    family: ClassVar[str] = "pool"
    foreign_names: ClassVar[tuple[str, ...]] = ("blurpool2d",)
    minimums: ClassVar[Mapping[str, int]] = {"padding": 0}
    # Its filter is a constant per channel (no weight bounds it): 4,001 taps wrote a 1.5 GB ONNX
    # file. timm blurs with 3 to 7 taps; the filter is exact in float32 up to 25.
    maximums: ClassVar[Mapping[str, int]] = {"taps": MAX_BLUR_TAPS}
    fields: ClassVar[type[Any] | None] = BlurPoolFields
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {"stride": 1, "padding": 0, "padding_mode": PaddingMode.ZEROS}

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        channels, height, width = _image(in_shapes, self.kind)
        if self.padding_mode is PaddingMode.REFLECT and self.padding >= min(height, width):
            raise ShapeError(
                f"blur_pool reflect padding {self.padding} must be smaller than the {height}×{width} input"
            )
        kernel, stride, padding = _square(self.taps), _square(self.stride), _padding(self.padding)
        return (channels, *_spatial(height, width, kernel, stride, padding, (1, 1), False, self.kind))

    def macs(self, in_shapes: tuple[Shape, ...], out_shape: Shape) -> int:
        return 0 if self.taps == 1 else math.prod(out_shape) * self.taps * self.taps


@dataclass(frozen=True)
class ChannelConvFields(OpFields, Generic[N]):
    """The fields of :class:`ChannelConv`."""

    kind: ClassVar[str] = "channel_conv"
    kernel: N


@dataclass(frozen=True)
class ChannelConv(ChannelConvFields[int], OpBase):
    """ECA's channel convolution (Wang et al. 2020; timm's ``EcaModule.conv``, an
    ``nn.Conv1d(1, 1, kernel, padding=(kernel - 1) // 2, bias=False)``): on a pooled C×1×1 value, one
    1-D kernel of odd size ``kernel`` slides across the channel axis, zero-padded, so each output
    channel mixes its ``kernel`` neighbours. Weight ``(1, 1, kernel)``. MACs ``C × kernel``, as
    fvcore, ptflops and ``torch.utils.flop_counter`` count a Conv1d (output length × kernel)."""

    example: ClassVar[Mapping[str, str] | None] = {
        "channel_conv_pool": "{op: global_average_pool}",
        "channel_conv": "{op: channel_conv, kernel: 3}",
        "channel_conv_gate": "{op: mul, inputs: [INPUT, channel_conv]}",
    }
    family: ClassVar[str] = "linear"
    fields: ClassVar[type[Any] | None] = ChannelConvFields

    @property
    def padding(self) -> int:
        return (self.kernel - 1) // 2

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        channels, height, width = _image(in_shapes, self.kind)
        if (height, width) != (1, 1):
            raise ShapeError(
                f"channel_conv reads a pooled C×1×1 value, got {channels}×{height}×{width}; "
                "add a global_average_pool before it"
            )
        if self.kernel % 2 == 0:
            raise ShapeError(f"channel_conv needs an odd kernel, so that it keeps the channels; got {self.kernel}")
        return in_shapes[0]

    def tensors(self) -> dict[str, Tensor]:
        # torch's Conv1d default (kept by timm's ResNet, which re-initialises only Conv2d): U(±1/sqrt(kernel)).
        return {"weight": Tensor((1, 1, self.kernel), Role.KERNEL, Init.UNIFORM_FAN_IN, fan_in=self.kernel)}

    def macs(self, in_shapes: tuple[Shape, ...], out_shape: Shape) -> int:
        return out_shape[0] * self.kernel


@dataclass(frozen=True)
class DropPathFields(OpFields, Generic[R]):
    """The fields of :class:`DropPath`."""

    kind: ClassVar[str] = "drop_path"
    rate: R


@dataclass(frozen=True)
class DropPath(DropPathFields[float], OpBase):
    """Stochastic depth (Huang et al. 2016; timm's ``DropPath``): in training, each sample's value is
    zeroed with probability ``rate`` and kept ones are scaled by ``1 / (1 - rate)``, so the expected
    value is unchanged; the identity in inference, and whenever ``rate`` is 0."""

    example: ClassVar[Mapping[str, str] | None] = {"drop_path": "{op: drop_path, rate: 0.1}"}
    real_ranges: ClassVar[Mapping[str, Interval]] = {"rate": Interval(0.0, 1.0)}
    descriptions: ClassVar[Mapping[str, str]] = {
        "rate": "The probability of dropping a sample's value in training, in [0, 1) (timm's drop_prob)."
    }
    inference_identity: ClassVar[bool] = True
    fields: ClassVar[type[Any] | None] = DropPathFields

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        return _one(in_shapes, self.kind)


def _symbolic_part(
    in_channels: Expression | None,
    index: Expression,
    parts: Expression | None,
    start: Expression,
    size: Expression | None,
    last: bool,
) -> tuple[SymbolicOp, Expression | None]:
    """:meth:`ChannelSlice._part` over a definition's parameters: the slice and its channel count."""
    part = SplitPart(index, parts, start, size, last)
    if parts is not None:
        assert in_channels is not None
        width = _quotient(in_channels, parts)
        number = index.evaluate({})
        assert isinstance(number, int)
        return SymbolicChannelSlice(_times(index, width), _times(parse_expression(number + 1), width), part), width
    assert size is not None
    return SymbolicChannelSlice(start, size if _is_zero(start) else _plus(start, size), part), size


@dataclass(frozen=True)
class ChannelSliceFields(OpFields, Generic[N]):
    """The fields of :class:`ChannelSlice`."""

    kind: ClassVar[str] = "channel_slice"
    start: N
    stop: N


@dataclass(frozen=True)
class SplitPart:
    """A part of a split as its spec states it (:meth:`ChannelSlice._part`'s arguments), over a
    definition's parameters: what an instance's slice is computed and checked from."""

    index: Size
    parts: Size | None
    start: Size
    size: Size | None
    last: bool


@dataclass(frozen=True)
class SymbolicChannelSlice(ChannelSliceFields[Size]):
    """A definition's slice: its start and stop over the definition's parameters, and the part of a
    split it was made from (:meth:`ChannelSlice.stated`)."""

    part: SplitPart


@dataclass(frozen=True)
class ChannelSlice(ChannelSliceFields[int], OpBase):
    """Channels ``[start, stop)`` of its input, in order (``x[:, start:stop]``): one part of a spec's
    ``split``, which cuts the channels into consecutive parts (torch.split along dim 1). No MACs."""

    example: ClassVar[Mapping[str, str] | None] = {
        "channel_slice_0": "{op: channel_slice, parts: 2, index: 0}",
        "channel_slice_1": "{op: channel_slice, parts: 2, index: 1, input: INPUT}",
        "channel_slice_swapped": "{op: concat, inputs: [channel_slice_1, channel_slice_0]}",
    }
    view: ClassVar[bool] = True
    minimums: ClassVar[Mapping[str, int]] = {"start": 0, "index": 0}
    fields: ClassVar[type[Any] | None] = ChannelSliceFields
    keys_from: ClassVar[str | None] = "_part"
    descriptions: ClassVar[Mapping[str, str]] = {
        "index": "Which of the equal parts (from 0).",
        "parts": "How many equal parts the channels are cut into.",
        "start": "Without parts: the first channel taken.",
        "size": "Without parts: how many channels are taken.",
        "last": "Whether it is a split's last part, which ends at the last channel.",
    }

    # A spec states a part of a split (``index`` of ``parts`` equal ones, or ``size`` channels from
    # ``start``; ``last``: the split's last part), not the op's start and stop: its keys bind to the
    # parameters of ``_part`` and ``_symbolic_part``.
    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        return cls._part(_one(in_shapes, "split")[0], **attributes)

    @classmethod
    def _part(
        cls,
        channels: int,
        index: int = 0,
        parts: int | None = None,
        start: int = 0,
        size: int | None = None,
        last: bool = False,
    ) -> Self:
        if parts is None:
            assert size is not None
            stop = start + size
            if last and stop != channels:
                raise ShapeError(f"split sizes add up to {stop} channels; the input has {channels}")
            return cls(start, stop)
        if channels % parts:
            raise ShapeError(f"split into {parts} equal parts needs channels divisible by {parts}, got {channels}")
        width = channels // parts
        return cls(index * width, (index + 1) * width)

    @classmethod
    def symbolic(cls, values: SpecValues, in_channels: Expression | None) -> tuple[SymbolicOp, Expression | None]:
        return _symbolic_part(in_channels, **values)

    @classmethod
    def stated(cls, op: SymbolicOp) -> dict[str, Any]:
        assert isinstance(op, SymbolicChannelSlice)
        return {field.name: getattr(op.part, field.name) for field in dataclasses.fields(op.part)}

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        channels, height, width = _image(in_shapes, self.kind)
        if not 0 <= self.start < self.stop <= channels:
            raise ShapeError(f"split: channels {self.start}:{self.stop} are not a part of the input's {channels}")
        return (self.stop - self.start, height, width)


@dataclass(frozen=True)
class Concat(OpBase):
    """Its inputs' channels one after another, in the order of its inputs (``torch.cat(xs, 1)``);
    their heights and widths are equal. No MACs."""

    example: ClassVar[Mapping[str, str] | None] = {
        "concat": "{op: concat, inputs: [INPUT, INPUT]}",
        "concat_conv": "{op: conv, out_channels: width, kernel: 1}",
    }
    kind: ClassVar[str] = "concat"
    family: ClassVar[str] = "join"
    reads: ClassVar[tuple[int, int | None] | None] = (1, None)

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        return cls()  # its only attribute in a spec is ``inputs``, which the node records

    @classmethod
    def symbolic_inputs(
        cls, values: SpecValues, in_channels: tuple[Expression | None, ...]
    ) -> tuple[SymbolicOp, Expression | None]:
        first = in_channels[0]
        if first is not None and all(channels == first for channels in in_channels):
            return cls(), _times(parse_expression(len(in_channels)), first)
        total = first
        for channels in in_channels[1:]:
            total = None if total is None or channels is None else _plus(total, channels)
        return cls(), total

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        if len(in_shapes) < 2 or any(len(shape) != 3 or shape[1:] != in_shapes[0][1:] for shape in in_shapes):
            shown = " and ".join(show_shape(shape) for shape in in_shapes)
            raise ShapeError(f"concat needs two or more C×H×W inputs of one height and width, got {shown}")
        return (sum(shape[0] for shape in in_shapes), *in_shapes[0][1:])


@dataclass(frozen=True)
class SoftmaxFields(OpFields, Generic[N]):
    """The fields of :class:`Softmax`."""

    kind: ClassVar[str] = "softmax"
    over: N
    groups: N
    transpose: bool


@dataclass(frozen=True)
class Softmax(SoftmaxFields[int], OpBase):
    """A softmax across groups of channels. The C channels are viewed, channel-major, as
    ``(groups, over, C / (groups * over))``; each value becomes ``exp(v) / sum(exp)`` across the
    ``over`` axis, separately for every group, remaining channel, pixel and sample. The result keeps
    that layout, or with ``transpose`` is laid out as ``(over, groups, C / (groups * over))``:
    ResNeSt's rSoftMax (``view(B, groups, over, -1).transpose(1, 2)``, softmax on dim 1) and SK's
    softmax across paths (``groups`` 1, where both layouts are the same). No MACs (torch's
    FlopCounterMode counts none)."""

    example: ClassVar[Mapping[str, str] | None] = {"softmax": "{op: softmax, over: 2}"}
    family: ClassVar[str] = "activation"
    fields: ClassVar[type[Any] | None] = SoftmaxFields
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {"groups": 1, "transpose": False}
    descriptions: ClassVar[Mapping[str, str]] = {
        "over": "The size of the axis normalised across (SK's paths, ResNeSt's radix).",
        "groups": "Independent groups in front of that axis.",
        "transpose": "Lay the result out as (over, groups, rest).",
    }

    def inner_channels(self, channels: int) -> int:
        """The size of the view's last axis, ``C / (groups * over)``."""
        return channels // (self.groups * self.over)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        channels, _, _ = _image(in_shapes, self.kind)
        if channels % (self.groups * self.over):
            raise ShapeError(
                f"softmax over {self.over} in {self.groups} groups needs channels divisible by "
                f"{self.groups * self.over}, got {channels}"
            )
        return in_shapes[0]


def _per_channel(kind: str, channels: int, in_shapes: tuple[Shape, ...]) -> Shape:
    """The shape rule of an op with one value per channel of an image: it keeps the shape."""
    found, _, _ = _image(in_shapes, kind)
    if found != channels:
        raise ShapeError(f"{kind} has {channels} channels, its input has {found}")
    return in_shapes[0]


@dataclass(frozen=True)
class LayerNormFields(OpFields, Generic[N]):
    """The fields of :class:`LayerNorm`."""

    kind: ClassVar[str] = "layer_norm"
    channels: N
    epsilon: float


@dataclass(frozen=True)
class LayerNorm(LayerNormFields[int], _Normalization):
    """Layer normalisation over the channels of each pixel (timm's ``LayerNorm2d``, and ConvNeXt's
    channels-last ``nn.LayerNorm``, which compute the same): per sample and pixel,
    ``(x - mean) / sqrt(var + epsilon) * weight + bias`` with the mean and *biased* variance over
    the C channels. No running statistics: training and eval compute the same."""

    family: ClassVar[str] = "norm"
    foreign_names: ClassVar[tuple[str, ...]] = ("layernorm2d",)
    real_ranges: ClassVar[Mapping[str, Interval]] = {"epsilon": POSITIVE}
    fields: ClassVar[type[Any] | None] = LayerNormFields
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {"epsilon": 1e-5}
    descriptions: ClassVar[Mapping[str, str]] = {"epsilon": "Added to the variance (ConvNeXt: 1e-6)."}

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        return cls(channels=_image(in_shapes, cls.kind)[0], **attributes)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        return _per_channel(self.kind, self.channels, in_shapes)

    def tensors(self) -> dict[str, Tensor]:
        channels = (self.channels,)
        return {
            "weight": Tensor(channels, Role.SCALE, Init.ONES),
            "bias": Tensor(channels, Role.BIAS, Init.ZEROS),
        }


@dataclass(frozen=True)
class Gelu(Elementwise):
    """GELU elementwise, as torch's ``nn.GELU``: exact, ``x * (1 + erf(x / sqrt(2))) / 2`` (the
    default), or with ``approximate: tanh``, ``x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x³))) / 2``."""

    kind: ClassVar[str] = "gelu"
    descriptions: ClassVar[Mapping[str, str]] = {"approximate": "none: the exact GELU (erf); tanh: its tanh form."}
    approximate: GeluApproximation = GeluApproximation.NONE


@dataclass(frozen=True)
class Hardswish(Elementwise):
    """``x * relu6(x + 3) / 6`` elementwise (torch's ``nn.Hardswish``; Howard et al. 2019)."""

    kind: ClassVar[str] = "hardswish"


@dataclass(frozen=True)
class Relu6(Elementwise):
    """``min(max(x, 0), 6)`` elementwise (torch's ``nn.ReLU6``; MobileNetV2)."""

    kind: ClassVar[str] = "relu6"


@dataclass(frozen=True)
class LeakyRelu(Elementwise):
    """``x`` where ``x >= 0``, else ``negative_slope * x`` (torch's ``nn.LeakyReLU``)."""

    kind: ClassVar[str] = "leaky_relu"
    descriptions: ClassVar[Mapping[str, str]] = {"negative_slope": "The slope below 0 (torch's default 0.01)."}
    negative_slope: float = 0.01


@dataclass(frozen=True)
class Hardsigmoid(Elementwise):
    """``relu6(x + 3) / 6`` elementwise (torch's ``nn.Hardsigmoid``; MobileNetV3's gate)."""

    kind: ClassVar[str] = "hardsigmoid"


@dataclass(frozen=True)
class Silu(Elementwise):
    """``x * sigmoid(x)`` elementwise (torch's ``nn.SiLU``, also called swish)."""

    kind: ClassVar[str] = "silu"


@dataclass(frozen=True)
class Mish(Elementwise):
    """``x * tanh(softplus(x))``, ``softplus(x) = log(1 + exp(x))``, elementwise (torch's ``nn.Mish``)."""

    kind: ClassVar[str] = "mish"


@dataclass(frozen=True)
class Tanh(Elementwise):
    """``tanh(x)`` elementwise (torch's ``nn.Tanh``)."""

    kind: ClassVar[str] = "tanh"


@dataclass(frozen=True)
class QuickGelu(Composite):
    """``x * sigmoid(1.702 * x)`` elementwise: GELU's sigmoid approximation (Hendrycks and Gimpel
    2016; CLIP's and timm's ``QuickGELU``), composed of ``mul``, ``sigmoid`` and ``mul``."""

    kind: ClassVar[str] = "quick_gelu"

    def steps(self) -> tuple[Step, ...]:
        return (Step(Mul(1.702)), Step(Sigmoid()), Step(Mul(), (COMPOSITE_INPUT, 1)))


@dataclass(frozen=True)
class LayerScaleFields(OpFields, Generic[N]):
    """The fields of :class:`LayerScale`."""

    kind: ClassVar[str] = "layer_scale"
    channels: N
    init: float


@dataclass(frozen=True)
class LayerScale(LayerScaleFields[int], _Normalization):
    """A learned per-channel scale (Touvron et al. 2021; ConvNeXt's ``gamma``): ``x * gamma[c]``
    over each channel ``c`` of a C×H×W value. Its one tensor, ``(C,)``, is named by the node itself
    (no suffix: timm stores ``stages.0.blocks.0.gamma`` on the block), initialised to ``init``."""

    family: ClassVar[str] = "norm"
    fields: ClassVar[type[Any] | None] = LayerScaleFields
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {"init": 1e-6}
    descriptions: ClassVar[Mapping[str, str]] = {"init": "The scale's initial value (timm's ls_init_value)."}

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        return cls(channels=_image(in_shapes, cls.kind)[0], **attributes)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        return _per_channel(self.kind, self.channels, in_shapes)

    def tensors(self) -> dict[str, Tensor]:
        return {"": Tensor((self.channels,), Role.SCALE, Init.CONSTANT, value=self.init)}


@dataclass(frozen=True)
class PointwiseLinearFields(OpFields, Generic[N]):
    """The fields of :class:`PointwiseLinear`."""

    kind: ClassVar[str] = "pointwise_linear"
    in_channels: N
    out_channels: N
    bias: bool


@dataclass(frozen=True)
class PointwiseLinear(PointwiseLinearFields[int], OpBase):
    """A linear layer over the channel axis, applied at every pixel: ``y[o, h, w] = sum_i W[o, i] *
    x[i, h, w] + b[o]`` for a C×H×W input (timm's ``nn.Linear`` on a channels-last tensor, as in
    ConvNeXt's MLP). Weight ``(out_channels, in_channels)``, a linear layer's layout, not a 1×1
    conv's. MACs ``H × W × in × out``, as torch's flop counter counts that ``nn.Linear``."""

    example: ClassVar[Mapping[str, str] | None] = {"pointwise_linear": "{op: pointwise_linear, out_channels: width}"}
    family: ClassVar[str] = "linear"
    fields: ClassVar[type[Any] | None] = PointwiseLinearFields
    inferred: ClassVar[tuple[str, ...]] = ("in_channels",)
    spec_defaults: ClassVar[Mapping[str, Attribute]] = {"bias": True}

    @classmethod
    def from_attributes(cls, attributes: Attributes, in_shapes: tuple[Shape, ...]) -> Self:
        return cls(in_channels=_image(in_shapes, cls.kind)[0], **attributes)

    @classmethod
    def symbolic(cls, values: SpecValues, in_channels: Expression | None) -> tuple[SymbolicOp, Expression | None]:
        assert in_channels is not None
        op: PointwiseLinearFields[Size] = PointwiseLinearFields(in_channels=in_channels, **values)
        return op, _expression(op.out_channels)

    def output_shape(self, in_shapes: tuple[Shape, ...]) -> Shape:
        channels, height, width = _image(in_shapes, self.kind)
        if channels != self.in_channels:
            raise ShapeError(f"pointwise_linear expects {self.in_channels} input channels, got {channels}")
        return (self.out_channels, height, width)

    def tensors(self) -> dict[str, Tensor]:
        shape = (self.out_channels, self.in_channels)
        result = {"weight": Tensor(shape, Role.KERNEL, Init.UNIFORM_FAN_IN, fan_in=self.in_channels)}
        if self.bias:
            result["bias"] = Tensor((self.out_channels,), Role.BIAS, Init.UNIFORM_FAN_IN, fan_in=self.in_channels)
        return result

    def macs(self, in_shapes: tuple[Shape, ...], out_shape: Shape) -> int:
        return math.prod(out_shape) * self.in_channels


Op = OpBase
"""An instance's op: any op of the table (narrowed with ``isinstance``)."""
OP_TYPES: tuple[type[Op], ...] = tuple(_REGISTRY.values())
"""The op table: every op class, in the order this module defines them."""
OP_KINDS: tuple[str, ...] = tuple(op_type.kind for op_type in OP_TYPES)
PRIMITIVE_OP_KINDS: tuple[str, ...] = tuple(
    kind for kind, op_type in _REGISTRY.items() if not issubclass(op_type, Composite)
)
"""The ops a backend writes: every op but the composites, which the compiler writes as primitives."""
OPS: dict[str, type[Op]] = {op_type.kind: op_type for op_type in OP_TYPES}
"""The op table by kind (the spec's ``op`` key)."""

SymbolicConv = ConvFields[Size, Size, Size]
"""A definition's convolution: a square kernel, stride and dilation and symmetric padding are one value each."""
SymbolicLinear = LinearFields[Size | None]
"""A definition's linear layer: its in_features are None after a flatten (a spatial size no parameter states)."""
SymbolicOp = OpFields
"""The op of a definition's node: an op's fields over :data:`Size` (an op whose fields hold no
integer is its own symbolic form). An instance's :data:`Op` is one too, but for the pairs of a conv
and of the pools, which :func:`symbolic_form` makes single values."""


def symbolic_form(op: Op) -> SymbolicOp:
    """An instance's op as a definition's (a stem's or a head's, which source backends write from
    its values): a square kernel, stride and dilation and symmetric padding as one value each; a
    ValueError says which is not."""
    if isinstance(op, Conv):
        return ConvFields(
            op.in_channels,
            op.out_channels,
            _side(op.kernel, "kernel"),
            _side(op.stride, "stride"),
            _border(op.padding),
            _side(op.dilation, "dilation"),
            op.groups,
            op.bias,
            op.standardize_weight,
            op.standardize_epsilon,
        )
    if isinstance(op, MaxPool):
        return MaxPoolFields(_side(op.kernel, "kernel"), _side(op.stride, "stride"), _border(op.padding), op.ceil_mode)
    if isinstance(op, AvgPool):
        kernel, stride, padding = _side(op.kernel, "kernel"), _side(op.stride, "stride"), _border(op.padding)
        return AvgPoolFields(kernel, stride, padding, op.ceil_mode, op.count_include_pad)
    return op


def _side(pair: Pair, what: str) -> int:
    if pair[0] != pair[1]:
        raise ValueError(f"{what} {pair} is not square; source emitters need square kernels and strides")
    return pair[0]


def _border(padding: Padding) -> int:
    (top, bottom), (left, right) = padding
    if not top == bottom == left == right:
        raise ValueError(f"padding {padding} is not symmetric; source emitters need symmetric padding")
    return top
