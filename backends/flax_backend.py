"""Flax backend: readable ``flax.nnx`` source from the IR, through a jinja2 template.

:func:`emit_source` is the one lowering path: :func:`build_module` executes exactly that source,
and ``rescompile SPEC --backend flax -o model.py`` writes it. The written file needs jax and flax
alone. Activations are NHWC; padding is written as explicit ``(low, high)`` pairs everywhere
(flax's ``"SAME"`` pads asymmetrically on even sizes, torch never does).

Attribute names follow torchvision's (``conv1``, ``layer1`` a list of blocks, ``downsample``,
``fc``), so a flax state path reads like its canonical name: ``layer2.0.downsample.0.weight`` is
``layer2/0/downsample/layers/0/kernel`` (``layers`` is where ``nnx.Sequential`` keeps its items).
:func:`load_weights` and :func:`to_weights` convert between that state and the canonical weights
(torch layout): conv ``OIHW <-> HWIO``, linear ``(out, in) <-> (in, out)``, BatchNorm
``weight/bias/running_mean/running_var <-> scale/bias/mean/var``.

BatchNorm is a small module emitted into the generated file rather than ``nnx.BatchNorm``: it has
flax's names and momentum convention but torch's training semantics, updating ``var`` with the
*unbiased* batch variance (``nnx.BatchNorm`` uses the biased one).
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rescompile.backends.interface import EmitOptions, Outputs, Writer, module_names
from rescompile.backends.names import attribute_access, made_once, with_containers
from rescompile.backends.source import (
    BLOCK_INDEX_DECLARATIONS,
    LAYOUT_LINES,
    LINE_LENGTH,
    SHORTCUT_VARIABLE,
    ContainerCall,
    ContainerClass,
    HeldBlocksCall,
    ShortcutClass,
    SourceNode,
    StageCall,
    block_calls,
    block_classes,
    block_index_arguments,
    block_type,
    constant,
    container_classes,
    container_source,
    function_helpers,
    instance_nodes,
    is_default,
    load_source,
    parameter_declarations,
    render,
    shortcut_attribute,
    shortcut_choice,
    shortcut_classes,
    source_writer,
    stage_arguments,
    stage_calls,
    stage_construction,
    sum_source,
    template,
    transition_arguments,
    uses_block_index,
    uses_layout,
    uses_math,
    wrap_call,
)
from rescompile.backends.surface import head_sections
from rescompile.compiler.ir import Attribute, AvgPool, Conv, Graph, MaxPool, Module, Shape
from rescompile.compiler.ops import (
    PRIMITIVE_OP_KINDS,
    Add,
    AvgPoolFields,
    BatchNormFields,
    BlurPoolFields,
    ChannelConvFields,
    ChannelSliceFields,
    Clamp,
    ConvFields,
    DropPathFields,
    Flatten,
    Gelu,
    GeluApproximation,
    GroupNormFields,
    Init,
    LayerNormFields,
    LayerScaleFields,
    LeakyRelu,
    LinearFields,
    MaxPoolFields,
    Mul,
    PadChannelsFields,
    PadFields,
    PointwiseLinearFields,
    Role,
    SoftmaxFields,
    SubsampleFields,
    Tensor,
    weight_name,
)
from rescompile.compiler.weights import (
    Array,
    Weights,
    check_weights,
    read_weights,
    shape_mismatches,
    weight_shapes,
)
from rescompile.spec.errors import RescompileError
from rescompile.spec.expressions import Expression
from rescompile.spec.models import HELD_BLOCKS
from rescompile.version import __version__

if TYPE_CHECKING:
    from flax import nnx


# --- lowering table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lowering:
    """How one IR node becomes flax code.

    Exactly one of: a *layer* with variables, held as an attribute (``self.conv1 = nnx.Conv(...)``);
    a *function* applied in ``__call__`` with keyword *arguments* (``nnx.max_pool(x, ...)``); or a
    parameterless *expression* of the inputs ``{0}``, ``{1}``.
    """

    layer: tuple[str, list[str]] | None = None
    """Constructor and its arguments: ``("nnx.Conv", ["3", "64", "kernel_size=(7, 7)", ...])``."""
    function: str | None = None
    arguments: list[tuple[str, str]] = field(default_factory=list)
    """Keyword arguments of ``function`` after the input, as (keyword, source text)."""
    expression: str | None = None
    """Over the input variables ``{0}``, ``{1}``: ``"{0} + {1}"``."""
    symbolic: bool = False
    """Whether the function's arguments name constructor parameters (``stride``), which
    ``__call__`` cannot see: it is then held as an attribute, a ``partial``."""


def _pair(value: Attribute) -> str:
    return f"({render(value)}, {render(value)})"


def _padding(value: Attribute) -> str:
    # NOTE: explicit pairs even for 0: nnx.Conv's default padding is "SAME".
    return f"({_pair(value)}, {_pair(value)})"


def _conv(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, ConvFields)
    arguments = [render(op.in_channels), render(op.out_channels), f"kernel_size={_pair(op.kernel)}"]
    if not is_default(op.stride, 1):
        arguments.append(f"strides={render(op.stride)}")
    arguments.append(f"padding={_padding(op.padding)}")
    if not is_default(op.dilation, 1):
        arguments.append(f"kernel_dilation={render(op.dilation)}")
    if not is_default(op.groups, 1):
        arguments.append(f"feature_group_count={render(op.groups)}")
    arguments += [f"use_bias={render(op.bias)}", "kernel_init=conv_init"]
    if op.standardize_weight:
        # nnx.Conv convolves through the function it is given: this one standardises the kernel first.
        arguments.append(f"conv_general_dilated=standardized_conv({render(op.standardize_epsilon)})")
    return Lowering(layer=("nnx.Conv", [*arguments, "rngs=rngs"]))


def _standardized(node: SourceNode) -> bool:
    return isinstance(node.op, ConvFields) and node.op.standardize_weight


def _group_norm(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, GroupNormFields)
    # NOTE: epsilon always written (nnx.GroupNorm's default is 1e-6, torch's 1e-5), and the two-pass
    # variance E[(x - mean)²] that torch computes, not nnx's default E[x²] - mean².
    arguments = [render(op.channels), f"num_groups={render(op.groups)}", f"epsilon={op.epsilon!r}"]
    return Lowering(layer=("nnx.GroupNorm", [*arguments, "use_fast_variance=False", "rngs=rngs"]))


def flax_momentum(torch_momentum: float) -> float:
    """torch's momentum (weight of the batch statistic) as flax's (weight of the running value).

    Computed in decimal from the shortest repr so that ``0.1`` becomes ``0.9``, the number a person
    would write, not ``0.9000000000000000222``."""
    return float(Decimal(1) - Decimal(repr(torch_momentum)))


def _flax_momentum_source(torch_momentum: Attribute) -> str | None:
    """:func:`flax_momentum` as source: a number, ``1 - (momentum)`` where a parameter gives it,
    None for flax's default 0.9."""
    known = constant(torch_momentum)
    if isinstance(known, int | float) and not isinstance(known, bool):
        momentum = flax_momentum(float(known))
        return None if momentum == 0.9 else repr(momentum)
    assert isinstance(torch_momentum, Expression)
    tree = ast.BinOp(ast.Constant(1), ast.Sub(), torch_momentum.tree)
    return render(Expression(ast.unparse(tree), tree))


def _batch_norm(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, BatchNormFields)
    arguments = [render(op.channels)]
    momentum = _flax_momentum_source(op.momentum)
    if momentum is not None:
        arguments.append(f"momentum={momentum}")
    if not is_default(op.epsilon, 1e-5):
        arguments.append(f"epsilon={render(op.epsilon)}")
    return Lowering(layer=("BatchNorm", arguments))


def _linear(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, LinearFields) and op.in_features is not None and op.out_features is not None
    return _linear_layer(op.in_features, op.out_features, op.bias)


def _linear_layer(in_features: Attribute, out_features: Attribute, bias: Attribute) -> Lowering:
    arguments = [render(in_features), render(out_features)]
    if not is_default(bias, True):
        arguments.append(f"use_bias={render(bias)}")
    arguments += ["kernel_init=linear_init", "rngs=rngs"]
    return Lowering(layer=("nnx.Linear", arguments))


def _placeholders(node: SourceNode) -> list[str]:
    """``{0}``, ``{1}``, ...: one per input, for an expression over a variable number of inputs."""
    return [f"{{{index}}}" for index in range(len(node.inputs))]


def _layer_norm(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, LayerNormFields)
    # NOTE: epsilon always written (nnx.LayerNorm's default is 1e-6, torch's 1e-5), and torch's
    # two-pass variance. nnx.LayerNorm normalises the last axis: the channels of an NHWC value.
    arguments = [render(op.channels), f"epsilon={op.epsilon!r}", "use_fast_variance=False", "rngs=rngs"]
    return Lowering(layer=("nnx.LayerNorm", arguments))


def _function(function: str, arguments: dict[str, tuple[str, Attribute]]) -> Lowering:
    """A function applied in ``__call__``, keyword -> (source text, the op's field it writes)."""
    symbolic = any(constant(attribute) is None for _, attribute in arguments.values())
    keywords = [(keyword, text) for keyword, (text, _) in arguments.items()]
    return Lowering(function=function, arguments=keywords, symbolic=symbolic)


def _rendered(*values: Attribute) -> list[tuple[str, Attribute]]:
    """Each field as (source text, the field), for :func:`_function`."""
    return [(render(value), value) for value in values]


def _pool(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, MaxPoolFields | AvgPoolFields)
    count_include_pad = op.count_include_pad if isinstance(op, AvgPoolFields) else True
    if not is_default(op.ceil_mode, False):
        # flax's pools have no ceil_mode: the generated helpers pad the end further (and, for
        # the average, divide by torch's count), which needs the input's size: computed in them.
        arguments = dict(zip(("kernel", "stride", "padding"), _rendered(op.kernel, op.stride, op.padding), strict=True))
        if isinstance(op, AvgPoolFields):
            arguments["count_include_pad"] = (render(count_include_pad), count_include_pad)
        return _function("avg_pool_ceil" if isinstance(op, AvgPoolFields) else "max_pool_ceil", arguments)
    arguments = {
        "window_shape": (_pair(op.kernel), op.kernel),
        "strides": (_pair(op.stride), op.stride),
        "padding": (_padding(op.padding), op.padding),
    }
    if not is_default(count_include_pad, True):
        arguments["count_include_pad"] = (render(count_include_pad), count_include_pad)
    return _function("nnx.avg_pool" if isinstance(op, AvgPoolFields) else "nnx.max_pool", arguments)


def _subsample(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, SubsampleFields)
    return _function("subsample", {"stride": (render(op.stride), op.stride)})


def _pad(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, PadFields)
    return _function("pad", {"padding": (render(op.padding), op.padding)})


def _pad_channels(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, PadChannelsFields)
    return _function("pad_channels", dict(zip(("before", "after"), _rendered(op.before, op.after), strict=True)))


def _blur_pool(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, BlurPoolFields)
    fields = _rendered(op.taps, op.stride, op.padding, op.padding_mode)
    return _function("blur_pool", dict(zip(("taps", "stride", "padding", "padding_mode"), fields, strict=True)))


def _channel_conv(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, ChannelConvFields)
    return Lowering(layer=("ChannelConv", [render(op.kernel), "rngs=rngs"]))


def _drop_path(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, DropPathFields)
    return Lowering(layer=("DropPath", [render(op.rate), "rngs=rngs"]))


def _channel_slice(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, ChannelSliceFields)
    return _function("channel_slice", dict(zip(("start", "stop"), _rendered(op.start, op.stop), strict=True)))


def _softmax(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, SoftmaxFields)
    arguments: dict[str, tuple[str, Attribute]] = {"over": (render(op.over), op.over)}
    if not is_default(op.groups, 1):
        arguments["groups"] = (render(op.groups), op.groups)
    if not is_default(op.transpose, False):
        arguments["transpose"] = (render(op.transpose), op.transpose)
    return _function("channel_softmax", arguments)


def _gelu(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, Gelu)
    # NOTE: nnx.gelu's default is the tanh approximation; torch's is the exact erf form.
    return Lowering(function="nnx.gelu", arguments=[("approximate", str(op.approximate is GeluApproximation.TANH))])


def _leaky_relu(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, LeakyRelu)
    return Lowering(function="nnx.leaky_relu", arguments=[("negative_slope", render(op.negative_slope))])


def _layer_scale(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, LayerScaleFields)
    return Lowering(layer=("LayerScale", [render(op.channels), render(op.init)]))


def _pointwise_linear(node: SourceNode, in_shape: Shape | None) -> Lowering:
    # nnx.Linear acts on the last axis, the channels of an NHWC value: a linear layer at every pixel.
    op = node.op
    assert isinstance(op, PointwiseLinearFields)
    return _linear_layer(op.in_channels, op.out_channels, op.bias)


def _flatten(node: SourceNode, in_shape: Shape | None) -> Lowering:
    if in_shape is not None and in_shape[1:] == (1, 1):
        return Lowering(expression="{0}.reshape({0}.shape[0], -1)")
    # torch.flatten is channel-major on NCHW: go through NCHW so features keep torch's order.
    return Lowering(expression="{0}.transpose(0, 3, 1, 2).reshape({0}.shape[0], -1)")


def _add(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, Add)
    constant = op.constant
    return Lowering(expression=sum_source(_placeholders(node)) if constant is None else f"{{0}} + {render(constant)}")


def _mul(node: SourceNode, in_shape: Shape | None) -> Lowering:
    # NHWC broadcasting: a (batch, 1, 1, C) gate scales each channel, as (batch, C, 1, 1) does in torch.
    op = node.op
    assert isinstance(op, Mul)
    return Lowering(expression="{0} * {1}" if op.constant is None else f"{{0}} * {render(op.constant)}")


def _clamp(node: SourceNode, in_shape: Shape | None) -> Lowering:
    op = node.op
    assert isinstance(op, Clamp)
    bounds = [
        f"{key}={render(bound)}" for key, bound in (("min", op.minimum), ("max", op.maximum)) if bound is not None
    ]
    return Lowering(expression=f"jnp.clip({{0}}, {', '.join(bounds)})")


SUBSAMPLE_FUNCTION = '''def subsample(x: jax.Array, stride: int) -> jax.Array:
    """Keep every ``stride``-th row and column (torch's ``x[:, :, ::stride, ::stride]``)."""
    return x[:, ::stride, ::stride, :]'''

PAD_FUNCTION = '''def pad(x: jax.Array, padding: int) -> jax.Array:
    """Zero rows and columns, ``padding`` on every side (torch's nn.ZeroPad2d)."""
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))'''

PAD_CHANNELS_FUNCTION = '''def pad_channels(x: jax.Array, before: int, after: int) -> jax.Array:
    """Zero channels: ``before`` in front of the input's channels, ``after`` behind them."""
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (before, after)))'''

CEIL_PADDING_FUNCTION = '''\
def ceil_padding(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """(low, high) padding under which floor-mode windows are torch's ceil_mode windows: one more
    window where the last would be partial, unless it would start in the right padding."""
    count = -(-(size + 2 * padding - kernel) // stride) + 1
    if (count - 1) * stride >= size + padding:
        count -= 1
    return padding, max(padding, (count - 1) * stride + kernel - size - padding)'''

MAX_POOL_CEIL_FUNCTION = '''\
def max_pool_ceil(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """torch's MaxPool2d(ceil_mode=True) over NHWC: the end padded (with -inf) to hold the last window."""
    pads = tuple(ceil_padding(size, kernel, stride, padding) for size in x.shape[1:3])
    return nnx.max_pool(x, (kernel, kernel), (stride, stride), pads)'''

AVG_POOL_CEIL_FUNCTION = '''\
def avg_pool_ceil(x: jax.Array, kernel: int, stride: int, padding: int, count_include_pad: bool) -> jax.Array:
    """torch's AvgPool2d(ceil_mode=True) over NHWC. Each window's sum over the zero-padded input is
    divided as torch divides it: by the window clipped to the padded input (count_include_pad),
    or by the number of input values in it; the extra end padding of ceil_mode never counts."""
    pads = [ceil_padding(size, kernel, stride, padding) for size in x.shape[1:3]]
    window, strides = (1, kernel, kernel, 1), (1, stride, stride, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, ((0, 0), *pads, (0, 0)))
    counted = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    if count_include_pad:
        counted = jnp.pad(counted, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=1)
        pads = [(low - padding, high - padding) for low, high in pads]
    count = jax.lax.reduce_window(counted, 0.0, jax.lax.add, window, strides, ((0, 0), *pads, (0, 0)))
    return total / count'''

STANDARDIZED_CONV_FUNCTION = '''\
def standardized_conv(epsilon: float) -> Callable[..., jax.Array]:
    """jax.lax.conv_general_dilated with weight standardisation (timm's StdConv2d): each output
    channel's HWIO kernel is (w - mean) / sqrt(var + epsilon) over (h, w, in), biased variance."""

    def conv(x: jax.Array, kernel: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
        variance = jnp.square(kernel - mean).mean(axis=(0, 1, 2), keepdims=True)
        standardized = (kernel - mean) * jax.lax.rsqrt(variance + epsilon)
        return jax.lax.conv_general_dilated(x, standardized, *args, **kwargs)

    return conv'''

BLUR_POOL_FUNCTION = '''\
def blur_pool(x: jax.Array, taps: int, stride: int, padding: int, padding_mode: str) -> jax.Array:
    """Anti-aliased downsampling (Zhang 2019; timm's BlurPool2d) over NHWC: each channel padded
    ("zeros" or "reflect", numpy's and torch's reflect) and convolved with stride by the fixed
    taps×taps binomial filter, which sums to 1."""
    mode = "constant" if padding_mode == "zeros" else padding_mode
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=mode)
    if taps == 1:  # the one-tap filter [1]: nothing to multiply
        return x[:, ::stride, ::stride, :]
    coefficients = jnp.array([math.comb(taps - 1, k) for k in range(taps)], jnp.float32) / 2 ** (taps - 1)
    channels = x.shape[-1]
    kernel = jnp.tile((coefficients[:, None] * coefficients[None, :])[:, :, None, None], (1, 1, 1, channels))
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels
    )'''

CHANNEL_CONV_CLASS = '''\
class ChannelConv(nnx.Conv):
    """ECA's convolution across channels (timm's EcaModule.conv): one odd kernel slides over the
    channels of a pooled (batch, 1, 1, C) value, zero-padded, no bias. Kernel (kernel, 1, 1)."""

    def __init__(self, kernel: int, *, rngs: nnx.Rngs) -> None:
        padding = (kernel - 1) // 2
        padding_pairs = ((padding, padding),)
        super().__init__(1, 1, (kernel,), padding=padding_pairs, use_bias=False, kernel_init=linear_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # type: ignore[override]
        # The channels as a sequence of length C with one feature: (batch, C, 1).
        return super().__call__(x.reshape(x.shape[0], x.shape[-1], 1)).reshape(x.shape)'''

DROP_PATH_CLASS = '''class DropPath(nnx.Module):
    """Stochastic depth (Huang et al. 2016), as timm's DropPath: in training, each sample is zeroed
    with probability ``rate`` and the kept ones scaled by 1 / (1 - rate); the identity once
    ``model.eval()`` has set ``deterministic``. Draws from the ``dropout`` stream of the model's rngs
    (its ``default`` stream where it has none)."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs) -> None:
        self.rate = rate
        self.deterministic = False
        # No stream at rate 0: it would be state, and advance the initialisation keys, for nothing.
        self.rngs = rngs["dropout"].fork() if rate > 0 else None

    def keep_mask(self, x: jax.Array) -> jax.Array:
        """One draw per sample, 1 with probability 1 - rate, shaped to broadcast over the sample."""
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return jax.random.bernoulli(self.rngs(), 1 - self.rate, shape).astype(x.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0:
            return x
        return x * (self.keep_mask(x) / (1 - self.rate))'''

CHANNEL_SLICE_FUNCTION = '''def channel_slice(x: jax.Array, start: int, stop: int) -> jax.Array:
    """Channels ``start:stop`` (the last axis, NHWC): one part of a split along channels."""
    return x[..., start:stop]'''

CHANNEL_SOFTMAX_FUNCTION = '''\
def channel_softmax(x: jax.Array, over: int, groups: int = 1, transpose: bool = False) -> jax.Array:
    """A softmax across groups of channels: the channels viewed as (groups, over, rest) and normalised
    across ``over``; with ``transpose`` laid out as (over, groups, rest), as timm's RadixSoftmax."""
    normalised = jax.nn.softmax(x.reshape(*x.shape[:-1], groups, over, -1), axis=-2)
    if transpose:
        normalised = jnp.swapaxes(normalised, -3, -2)
    return normalised.reshape(x.shape)'''
LAYER_SCALE_CLASS = '''class LayerScale(nnx.Module):
    """A learned per-channel scale (ConvNeXt's gamma): multiplies the last (channel) axis."""

    def __init__(self, channels: int, init: float) -> None:
        self.scale = nnx.Param(jnp.full((channels,), init, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.scale[...]'''

SPATIAL_SOFTMAX_FUNCTION = '''def spatial_softmax(x: jax.Array) -> jax.Array:
    """A softmax over the H·W positions of each channel: NHWC's middle axes, as (batch, H·W, C)."""
    return jax.nn.softmax(x.reshape(x.shape[0], -1, x.shape[-1]), axis=1).reshape(x.shape)'''
WEIGHTED_SUM_FUNCTION = '''def weighted_spatial_sum(values: jax.Array, weights: jax.Array) -> jax.Array:
    """The (B, 1, 1, C) sum over positions of (B, H, W, C) values times (B, H, W, 1) weights."""
    rows = values.reshape(values.shape[0], -1, values.shape[-1])
    return jnp.einsum("bpc,bp->bc", rows, weights.reshape(weights.shape[0], -1))[:, None, None, :]'''

Lower = Callable[[SourceNode, Shape | None], Lowering]


@dataclass(frozen=True)
class Emitter:
    """A lowering whose layer or function is a module-level class or function of the generated
    file (its source ``helper``), defined once; the imports it needs are read from its source."""

    lower: Lower
    helper: str = ""


# op kind -> its lowering. Every kind in PRIMITIVE_OP_KINDS has one (asserted below); a helper's place in this
# table is its place in a generated file.
EMITTERS: dict[str, Lower | Emitter] = {
    "conv": _conv,
    "batch_norm": _batch_norm,
    "relu": lambda node, in_shape: Lowering(function="nnx.relu"),
    "max_pool": _pool,
    "avg_pool": _pool,
    "global_average_pool": lambda node, in_shape: Lowering(
        function="jnp.mean", arguments=[("axis", "(1, 2)"), ("keepdims", "True")]
    ),
    "flatten": _flatten,
    "linear": _linear,
    "add": _add,
    "sigmoid": lambda node, in_shape: Lowering(function="nnx.sigmoid"),
    "mul": _mul,
    "clamp": _clamp,
    "subsample": Emitter(_subsample, SUBSAMPLE_FUNCTION),
    "pad": Emitter(_pad, PAD_FUNCTION),
    "pad_channels": Emitter(_pad_channels, PAD_CHANNELS_FUNCTION),
    "group_norm": _group_norm,
    "blur_pool": Emitter(_blur_pool, BLUR_POOL_FUNCTION),
    "channel_conv": Emitter(_channel_conv, CHANNEL_CONV_CLASS),
    "drop_path": Emitter(_drop_path, DROP_PATH_CLASS),
    "channel_slice": Emitter(_channel_slice, CHANNEL_SLICE_FUNCTION),
    # NHWC: channels are the last axis.
    "concat": lambda node, in_shape: Lowering(
        expression=f"jnp.concatenate([{', '.join(_placeholders(node))}], axis=-1)"
    ),
    "softmax": Emitter(_softmax, CHANNEL_SOFTMAX_FUNCTION),
    "spatial_softmax": Emitter(lambda node, in_shape: Lowering(function="spatial_softmax"), SPATIAL_SOFTMAX_FUNCTION),
    "weighted_spatial_sum": Emitter(
        lambda node, in_shape: Lowering(expression="weighted_spatial_sum({0}, {1})"), WEIGHTED_SUM_FUNCTION
    ),
    "layer_norm": _layer_norm,
    "gelu": _gelu,
    "hardswish": lambda node, in_shape: Lowering(function="nnx.hard_swish"),
    "relu6": lambda node, in_shape: Lowering(function="nnx.relu6"),
    "leaky_relu": _leaky_relu,
    "hardsigmoid": lambda node, in_shape: Lowering(function="nnx.hard_sigmoid"),
    "silu": lambda node, in_shape: Lowering(function="nnx.silu"),
    "mish": lambda node, in_shape: Lowering(function="jax.nn.mish"),
    "tanh": lambda node, in_shape: Lowering(function="nnx.tanh"),
    "layer_scale": Emitter(_layer_scale, LAYER_SCALE_CLASS),
    "pointwise_linear": _pointwise_linear,
}
assert set(EMITTERS) == set(PRIMITIVE_OP_KINDS), "every primitive op kind needs a flax emitter"


# --- source layout --------------------------------------------------------------------------------


def _lower(node: SourceNode, in_shape: Shape | None = None) -> Lowering:
    if isinstance(node.op, ContainerCall):
        return Lowering(layer=(node.op.class_name, [*node.class_arguments, "rngs=rngs"]))
    if isinstance(node.op, HeldBlocksCall):
        return Lowering(layer=("nnx.List", ["[]"]))  # the network puts the stage's blocks here
    if node.kind not in EMITTERS:
        raise RescompileError(f"the flax backend has no emitter for op '{node.kind}'")
    return _emitter(node.kind).lower(node, in_shape)


def _emitter(kind: str) -> Emitter:
    entry = EMITTERS[kind]
    return entry if isinstance(entry, Emitter) else Emitter(entry)


def _stored(lowering: Lowering) -> bool:
    """Whether the node is held as an attribute: layers always; functions whose arguments name
    constructor parameters (``stride``), which ``__call__`` cannot see, as a ``partial``."""
    return lowering.layer is not None or lowering.symbolic


def _keywords(lowering: Lowering) -> list[str]:
    return [f"{keyword}={value}" for keyword, value in lowering.arguments]


def _constructor(lowering: Lowering, prefix: str, indent: int, tail: str = "") -> str:
    """Source building what a stored node holds: the layer, or a ``partial`` of its function."""
    if lowering.layer is not None:
        callee, arguments = lowering.layer
        return wrap_call(f"{prefix}{callee}", arguments, indent, tail)
    assert lowering.function is not None
    if not lowering.arguments:
        return f"{prefix}{lowering.function}{tail}"
    return wrap_call(f"{prefix}partial", [lowering.function, *_keywords(lowering)], indent, tail)


def _application(node: SourceNode, lowering: Lowering, indent: int) -> str:
    """The ``__call__`` statement computing ``node``."""
    x = node.inputs[0]
    prefix = f"{node.output} = "
    if _stored(lowering):
        return f"{prefix}self{attribute_access(node.attribute)}({x})"
    if lowering.expression is not None:
        return prefix + lowering.expression.format(*node.inputs)
    assert lowering.function is not None
    return wrap_call(f"{prefix}{lowering.function}", [x, *_keywords(lowering)], indent)


def _init_lines(nodes: list[SourceNode], lowerings: list[Lowering]) -> list[str]:
    stored = [(node, lowering) for node, lowering in zip(nodes, lowerings, strict=True) if _stored(lowering)]
    layers = [_constructor(lowering, f"self{attribute_access(node.attribute)} = ", 8) for node, lowering in stored]
    return with_containers([node.attribute for node, _ in stored], layers, "nnx.Dict()")


def _call_lines(
    nodes: list[SourceNode],
    lowerings: list[Lowering],
    shortcut_attribute: str | None = None,
    shortcut_source: str = "x",
) -> list[str]:
    lines: list[str] = []
    for node, lowering in zip(nodes, lowerings, strict=True):
        if shortcut_attribute is not None and SHORTCUT_VARIABLE in node.inputs:
            # The identity reads the block input; a shortcut module reads the block's shortcut_input.
            call = f"self.{shortcut_attribute}({shortcut_source})"
            lines.append(f"shortcut = x if self.{shortcut_attribute} is None else {call}")
        if isinstance(node.op, HeldBlocksCall):
            blocks = f"self{attribute_access(node.attribute)}"
            lines += [
                f"{node.output} = {node.inputs[0]}",
                f"for block in {blocks}:",
                f"    {node.output} = block({node.output})",
            ]
            continue
        lines.append(_application(node, lowering, 8))
    return lines


def _class_lowerings(nodes: list[SourceNode]) -> list[Lowering]:
    return [_lower(node) for node in nodes]


def _instance(module: Module) -> tuple[list[SourceNode], list[Lowering]]:
    nodes = instance_nodes(module)
    in_shapes = [node.in_shapes[0] if node.in_shapes else None for node in module.nodes]
    lowerings = [_lower(node, in_shape) for node, in_shape in zip(nodes, in_shapes, strict=True)]
    return nodes, lowerings


def _needs_rngs(lowerings: list[Lowering]) -> bool:
    """Whether a layer of these takes the model's ``rngs`` (its emitter passes them)."""
    return any(lowering.layer is not None and "rngs=rngs" in lowering.layer[1] for lowering in lowerings)


def _container_source(container: ContainerClass) -> tuple[str, list[str]]:
    """A container of a block's nodes as a class of its own (``SplitAttn``), and its init lines.
    It always takes ``rngs``, as the blocks' constructors pass it."""
    lowerings = _class_lowerings(container.nodes)
    init = _init_lines(container.nodes, lowerings)
    call = [*_call_lines(container.nodes, lowerings), f"return {container.nodes[-1].output}"]
    method = "def __call__(self, x: jax.Array) -> jax.Array:"
    return container_source(container, "nnx.Module", ["rngs: nnx.Rngs"], init, method, call), init


def _shortcut_view(shortcut: ShortcutClass) -> dict[str, Any]:
    """What the template needs for one shortcut part: a function returning an ``nnx.Sequential``
    (torchvision's ``downsample``) or a module class."""
    lowerings = _class_lowerings(shortcut.nodes)
    rngs = _needs_rngs(lowerings)
    name = shortcut.python_name
    items = []
    if shortcut.sequential:
        items = [_item(node, lowering) for node, lowering in zip(shortcut.nodes, lowerings, strict=True)]
    arguments = shortcut.arguments + (["*", "rngs: nnx.Rngs"] if rngs else [])
    return {
        "definition": shortcut.definition,
        "kind": shortcut.definition.role.capitalize(),
        "signature": wrap_call(f"def {name}", arguments, 0, " -> nnx.Sequential:")
        if shortcut.sequential
        else wrap_call("def __init__", ["self", *arguments], 4, " -> None:"),
        "name": name,
        "sequential": shortcut.sequential,
        "rngs": rngs,
        "items": items,
        "init_lines": [f"{name} = {value}" for name, value in shortcut.derived.items()]
        + _init_lines(shortcut.nodes, lowerings),
        "call_lines": [*_call_lines(shortcut.nodes, lowerings), f"return {shortcut.nodes[-1].output}"],
        "constructor": f"{name}(in_channels, out_channels, block_stride{', rngs=rngs' if rngs else ''})",
    }


def emit_source(graph: Graph) -> str:
    """Python source of a ``flax.nnx`` model for ``graph``: one class per block type, stages in loops."""
    blocks = block_classes(graph)
    shortcuts = [_shortcut_view(shortcut) for shortcut in shortcut_classes(graph)]
    transition_views = [_shortcut_view(transition) for transition in shortcut_classes(graph, "transition")]
    ops_used = [node.op for _, node in graph.nodes()]
    kinds_used = {op.kind for op in ops_used}
    standardized = any(isinstance(op, Conv) and op.standardize_weight for op in ops_used)
    op_helpers = [_emitter(kind).helper for kind in EMITTERS if kind in kinds_used and _emitter(kind).helper]
    ceil_pools = [op for op in ops_used if isinstance(op, MaxPool | AvgPool) and op.ceil_mode]
    if ceil_pools:
        op_helpers.append(CEIL_PADDING_FUNCTION)
        op_helpers += [MAX_POOL_CEIL_FUNCTION] if any(isinstance(op, MaxPool) for op in ceil_pools) else []
        op_helpers += [AVG_POOL_CEIL_FUNCTION] if any(isinstance(op, AvgPool) for op in ceil_pools) else []
    op_helpers += [STANDARDIZED_CONV_FUNCTION] if standardized else []
    attribute = shortcut_attribute(graph)  # None for a plain network
    constructors = {view["definition"].name: view["constructor"] for view in shortcuts}
    # One _make_stage builds every block type, so they all take rngs if one needs them.
    rngs = any(_needs_rngs(_class_lowerings(block.nodes)) for block in blocks)
    indexed = uses_block_index(graph)
    block_views: list[dict[str, Any]] = []
    for block in blocks:
        lowerings = _class_lowerings(block.nodes)
        init = [f"{name} = {value}" for name, value in block.derived.items()] + _init_lines(block.nodes, lowerings)
        call_lines = [
            *_call_lines(block.nodes, lowerings, attribute, block.shortcut_source),
            f"return {block.nodes[-1].output}",
        ]
        block_views.append(
            {
                "name": block.python_name,
                "definition": block.definition,
                "parameters": parameter_declarations(block.parameters) + (BLOCK_INDEX_DECLARATIONS if indexed else []),
                "init_lines": init,
                "call_lines": call_lines,
                "zero_init": [attribute_access(path) for path in block.zero_init],
            }
        )
    containers = [_container_source(container) for container in container_classes(blocks)]
    stored_lines = [line for view in block_views for line in view["init_lines"]]
    stored_lines += [line for _, body in containers for line in body]
    stored_lines += [line for view in shortcuts + transition_views for line in view["init_lines"] + view["items"]]
    calls = stage_calls(graph)
    layout_used = uses_layout(calls)
    options_used = any(call.options for call in calls) or layout_used
    first_blocks = any(call.first_block for call in calls)
    first_options_used = any(call.first_options for call in calls)
    positional = ["in_channels", "width", "block_stride"] + ([attribute] if attribute else [])
    positional += block_index_arguments(graph) if indexed else []
    block_arguments = positional + (["**options"] if options_used else []) + (["rngs=rngs"] if rngs else [])
    first_arguments = positional + (["**(first_options or {})"] if first_options_used else [])
    first_arguments += ["rngs=rngs"] if rngs else []
    rngs_transitions = {view["definition"].name for view in transition_views if view["rngs"]}

    def transition_call(module: Module) -> list[str]:
        return transition_arguments(graph, module) + (["rngs=rngs"] if module.type_name in rngs_transitions else [])

    stages, order = stage_construction(
        graph,
        calls,
        lambda call: wrap_call(
            f"self{attribute_access(call.attribute)} = self._make_stage",
            [*stage_arguments(call, indexed), "rngs=rngs"],
            8,
        ),
        transition_call,
        "nnx.Dict()",
    )
    stage_lines: list[str] = []
    for before, stage, after in order:
        stage_lines += [f"x = self{attribute_access(before)}(x)"] if before is not None else []
        stage_lines += [f"for block in self{attribute_access(stage)}:", "    x = block(x)"] if stage is not None else []
        stage_lines += [f"x = self{attribute_access(after)}(x)"] if after is not None else []
    stem_nodes, stem_lowerings = _instance(graph.modules[0])
    head_nodes, head_lowerings = _instance(graph.modules[-1])
    timm = _timm_view(graph, head_nodes, head_lowerings)
    head_init = cast(list[str], timm["head_init"]) if timm is not None else _init_lines(head_nodes, head_lowerings)
    stem_init, stages, head_init = made_once([_init_lines(stem_nodes, stem_lowerings), stages, head_init], "nnx.Dict()")
    if timm is not None:
        timm["head_init"] = head_init
    nhwc_input = (*graph.input_shape[1:], graph.input_shape[0])
    return template("flax_model.py.jinja").render(
        version=__version__,
        graph=graph,
        input_shape="×".join(map(str, nhwc_input)),
        input_example=", ".join(map(str, nhwc_input)),
        output_shape="×".join(map(str, graph.output_shape)),
        output_example=", ".join(map(str, graph.output_shape)),
        helpers=function_helpers(graph) + op_helpers + [source for source, _ in containers],
        indexed=indexed,
        uses_partial=any("partial(" in line for line in stored_lines),
        # linear_init is torch's nn.Linear and Conv1d default: the layers whose kernel starts so.
        uses_linear=any(tensor.init is Init.UNIFORM_FAN_IN for op in ops_used for tensor in op.tensors().values()),
        uses_math=uses_math(graph) or any("math." in helper for helper in op_helpers),
        # The standardising conv function's signature names Callable and Any.
        uses_callable=standardized,
        uses_any=options_used or first_options_used or standardized,
        options_used=options_used,
        first_blocks=first_blocks,
        first_options_used=first_options_used,
        shortcuts=transition_views + shortcuts,
        stage_lines=stage_lines if graph.transitions else [],
        shortcut_attribute=attribute,
        rngs=rngs,
        blocks=block_views,
        block_type=block_type(blocks, "nnx.Module", first_blocks=first_blocks, layout_used=layout_used),
        shortcut_choice=(LAYOUT_LINES if layout_used else [])
        + (shortcut_choice(graph, attribute, constructors) if attribute else []),
        layout_used=layout_used,
        block_call=block_calls(block_arguments, first_arguments if first_blocks else None, 12),
        stages=stages,
        stage_loop={indent: _stage_loop(calls, indent) for indent in (8, 12)},
        stem_init=stem_init,
        head_init=head_init,
        stem_lines=_call_lines(stem_nodes, stem_lowerings),
        head_lines=_call_lines(head_nodes, head_lowerings),
        timm=timm,
    )


CLASSIFIER_IF = " if num_classes else None"
"""How the classifier is built: timm's ``num_classes=0`` means none."""


def _classifier_line(built: Lowering, prefix: str) -> str:
    """``self.fc = nnx.Linear(..., num_classes, ...) if num_classes else None``, laid out as ruff
    lays out a conditional too long for one line (in parentheses, the call inside them)."""
    line = _constructor(built, prefix, 8, CLASSIFIER_IF)
    if "\n" not in line:
        return line
    inner = _constructor(built, "", 12, CLASSIFIER_IF)
    if "\n" not in inner:
        return f"{prefix}(\n    {inner}\n)"
    call = _constructor(built, "", 12).replace("\n", "\n    ")
    return f"{prefix}(\n    {call}\n    if num_classes\n    else None\n)"


def _timm_view(graph: Graph, nodes: list[SourceNode], lowerings: list[Lowering]) -> dict[str, Any] | None:
    """What the template writes for timm's interface (as the torch backend's): the head cut into
    ``forward_features`` and ``forward_head``, the classifier built for ``num_classes`` and
    ``reset_classifier``'s line; None where the head is not cut (no interface)."""
    sections = head_sections(graph)
    if sections is None:
        return None
    calls = _call_lines(nodes, lowerings)
    assert len(calls) == len(nodes), "a cut head is a chain, one line per node"
    pool = len(sections.features)
    classifier = pool + 1 + len(sections.pre_logits)
    callee, arguments = lowerings[classifier].layer or ("", [])
    assert callee, "a classifier is a layer"
    built = replace(lowerings[classifier], layer=(callee, [arguments[0], "num_classes", *arguments[2:]]))
    prefix = f"self{attribute_access(nodes[classifier].attribute)} = "
    stored = [index for index, lowering in enumerate(lowerings) if _stored(lowering)]
    init = [
        _classifier_line(built, prefix)
        if index == classifier
        else _constructor(lowerings[index], f"self{attribute_access(nodes[index].attribute)} = ", 8)
        for index in stored
    ]

    # timm's global_pool="" keeps the maps: the pool and the flattens after it run under one `if`.
    pre_logits: list[str] = []
    guarded: list[str] = []
    for index in range(pool, classifier):
        if index == pool or isinstance(nodes[index].op, Flatten):
            guarded += [f"    {line}" for line in calls[index].split("\n")]
            continue
        pre_logits += ["if self.global_pool_type:\n" + "\n".join(guarded)] if guarded else []
        guarded = []
        pre_logits.append(calls[index])
    pre_logits += ["if self.global_pool_type:\n" + "\n".join(guarded)] if guarded else []

    flat_tail = any(isinstance(node.op, Flatten) for node in nodes[classifier + 1 :])
    return {
        "head_init": with_containers([nodes[index].attribute for index in stored], init, "nnx.Dict()"),
        "head_features": calls[:pool],
        "pre_logits": pre_logits,
        # timm's pre-logits are flat: a flatten after the classifier (BiT's) applies to them too.
        "pre_logits_value": "x.reshape(x.shape[0], -1) if self.global_pool_type else x" if flat_tail else "x",
        "classifier": calls[classifier:],
        "classifier_attribute": f"self{attribute_access(nodes[classifier].attribute)}",
        "reset_line": _classifier_line(built, prefix),
        "num_classes": sections.num_classes,
        "num_features": sections.num_features,
    }


def _stage_loop(calls: list[StageCall], indent: int) -> str:
    """``for stage in (self.layer1, ...):``, laid out for a line starting at column ``indent``."""
    stages = [f"self{attribute_access(call.attribute)}" for call in calls]
    line = f"for stage in ({', '.join(stages)}{',' if len(stages) == 1 else ''}):"
    if indent + len(line) <= LINE_LENGTH:
        return line
    # A tuple too long for one line has one item per line, as ruff lays it out.
    return "for stage in (\n" + "".join(f"    {stage},\n" for stage in stages) + "):"


def _item(node: SourceNode, lowering: Lowering) -> str:
    """One item of an ``nnx.Sequential`` shortcut."""
    if lowering.expression is not None:
        return f"lambda x: {lowering.expression.format('x')},"
    return _constructor(lowering, "", 8, ",")


def emit(graph: Graph, options: EmitOptions) -> Writer:
    """The generated source as the command line writes it; with ``options.weights``, those weights,
    checked strictly, written beside it as ``NAME.safetensors`` in the module's layout
    (:func:`flax_layout`)."""
    weights = None
    if options.weights is not None:
        weights = flax_layout(graph, read_weights(options.weights))
    return source_writer(emit_source(graph), weights)


def flax_layout(graph: Graph, weights: Mapping[str, np.ndarray]) -> dict[str, Array]:
    """Canonical weights, checked strictly, in the layout of the generated module's state: keys are
    nnx state paths joined with ``/`` (``layer1/0/conv1/kernel``), kernels HWIO, linear (in, out)."""
    check_weights(graph, weights)
    return {
        conversion.path: np.ascontiguousarray(conversion.to_flax(np.asarray(weights[name], dtype=np.float32)))
        for name, conversion in conversions(graph).items()
    }


def build_module(graph: Graph, seed: int = 0, zero_init_residual: bool = False) -> nnx.Module:
    """The flax module for ``graph``, built from the source :func:`emit_source` writes.

    It starts in training mode, as torch modules do; call ``model.eval()`` for inference."""
    from flax import nnx

    module = load_source(emit_source(graph), "flax", graph.name)
    model: nnx.Module = module.ResNet(zero_init_residual, rngs=nnx.Rngs(seed))
    return model


# --- weights --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversion:
    """Where one canonical weight lives in the flax state, and how its layout changes."""

    path: str
    """Flax state path joined with ``/``: ``layer1/0/conv1/kernel``."""
    to_flax: Callable[[Array], Array]
    from_flax: Callable[[Array], Array]


def _same(array: Array) -> Array:
    return array


def _oihw_to_hwio(array: Array) -> Array:
    return array.transpose(2, 3, 1, 0)


def _hwio_to_oihw(array: Array) -> Array:
    return array.transpose(3, 2, 0, 1)


def _transpose(array: Array) -> Array:
    return array.T


# Where each role of the op table's tensors lives in a flax layer (nnx.Conv, nnx.Linear, BatchNorm).
FLAX_VARIABLES = {
    Role.KERNEL: "kernel",
    Role.BIAS: "bias",
    Role.SCALE: "scale",
    Role.MEAN: "mean",
    Role.VARIANCE: "var",
}


def _reverse(array: Array) -> Array:
    return array.transpose(2, 1, 0)


def _layout(tensor: Tensor) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
    """(to flax, from flax): conv kernels OIHW <-> HWIO, 1-D conv kernels OIW <-> WIO, linear
    kernels (out, in) <-> (in, out)."""
    if tensor.role is Role.KERNEL and len(tensor.shape) == 4:
        return _oihw_to_hwio, _hwio_to_oihw
    if tensor.role is Role.KERNEL and len(tensor.shape) == 3:
        return _reverse, _reverse
    if tensor.role is Role.KERNEL and len(tensor.shape) == 2:
        return _transpose, _transpose
    return _same, _same


def conversions(graph: Graph) -> dict[str, Conversion]:
    """Every canonical weight name of ``graph`` with its flax state path and layout conversion."""
    sequential = {shortcut.definition.module for shortcut in shortcut_classes(graph) if shortcut.sequential}
    sequential_transitions = {item.definition.name for item in shortcut_classes(graph, "transition") if item.sequential}
    # A stage's blocks are an nnx.List: a block's state path is its stage's and its position there,
    # whatever the network names it (timm's RegNet: s1.b1 is s1/0).
    positions: dict[str, str] = {}
    for stage in graph.stages:
        positions.update({path: f"{stage.path}.{index}" for index, path in enumerate(stage.blocks)})
    table: dict[str, Conversion] = {}
    for module, node in graph.nodes():
        parts = node.name.split(".")
        if len(parts) == 2 and parts[0] in sequential:
            parts = [parts[0], "layers", parts[1]]
        if module.role == "transition" and module.type_name in sequential_transitions:
            parts = ["layers", *parts]
        path = positions.get(module.path, module.path)
        prefix = "/".join([*path.split("."), *parts] if path else parts)
        for suffix, tensor in node.op.tensors().items():
            to_flax, from_flax = _layout(tensor)
            path = f"{prefix}/{FLAX_VARIABLES[tensor.role]}"
            table[weight_name(module.canonical(node.name), suffix)] = Conversion(path, to_flax, from_flax)
    return table


def _flat_state(model: nnx.Module) -> dict[str, tuple[tuple[Any, ...], Any]]:
    """Every variable of ``model``: path joined with ``/`` -> (path, variable)."""
    from flax import nnx

    # Weights only: a DropPath's random stream is state too, but no weight.
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return {"/".join(map(str, path)): (path, variable) for path, variable in nnx.to_flat_state(state)}


def _check_model(graph: Graph, table: Mapping[str, Conversion], state: Mapping[str, Any]) -> None:
    """Every state variable belongs to exactly one canonical weight, and has its shape (converted)."""
    canonical_shapes = weight_shapes(graph)
    # A zero-strided view: the conversion's shape without touching memory.
    shapes = {
        conversion.path: conversion.to_flax(np.broadcast_to(np.float32(0), canonical_shapes[name])).shape
        for name, conversion in table.items()
    }
    problems = shape_mismatches(shapes, {path: tuple(state[path][1].shape) for path in state})
    if problems:
        raise RescompileError(f"the flax model's state does not fit {graph.name}: {problems}")


# NOTE: nnx.eval_shape's cost grows quadratically with depth (flax counts random keys under
# tracing): 0.3 s for resnet50, 0.5 s for resnet110, ~54 s for resnet1202, whose eager build takes
# ~4 s. Past this many blocks the eager build is the faster one.
_EVAL_SHAPE_MAX_BLOCKS = 200


def module_for_weights(graph: Graph) -> nnx.Module:
    """A model whose every variable :func:`load_weights` is about to replace: built abstractly
    (shapes only, no random initialisation) where that is faster, in eval mode."""
    from flax import nnx

    if len(graph.blocks) <= _EVAL_SHAPE_MAX_BLOCKS:
        model: nnx.Module = nnx.eval_shape(lambda: build_module(graph))
    else:
        model = build_module(graph)
    model.eval()
    return model


def _draw_abstract_streams(model: nnx.Module, seed: int = 0) -> None:
    """Give the random streams (DropPath's) of a model built by ``nnx.eval_shape`` real keys and
    counts: they are no weights, yet a model with its weights loaded must train."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    streams = nnx.to_flat_state(nnx.state(model, nnx.RngState))
    values = {
        path: jax.random.fold_in(jax.random.key(seed), index)
        if isinstance(variable, nnx.RngKey)
        else jnp.zeros(variable.shape, variable.dtype)
        for index, (path, variable) in enumerate(streams)
        if isinstance(variable.get_value(), jax.ShapeDtypeStruct)
    }
    if values:
        nnx.update(model, nnx.from_flat_state(values))


def load_weights(model: nnx.Module, graph: Graph, weights: Mapping[str, np.ndarray]) -> None:
    """Load canonical weights (torch layout) into a flax model built for ``graph``, strictly.

    Raises :class:`RescompileError` listing missing, unexpected and mis-shaped names when the weights
    do not fit the graph, or the model's state does not fit the graph. A model built abstractly
    (``nnx.eval_shape``) also gets real keys for its random streams (DropPath's), which are no weights."""
    import jax.numpy as jnp
    from flax import nnx

    check_weights(graph, weights)
    table = conversions(graph)
    state = _flat_state(model)
    _check_model(graph, table, state)
    update = {
        state[table[name].path][0]: jnp.asarray(table[name].to_flax(np.asarray(array, dtype=np.float32)))
        for name, array in weights.items()
    }
    nnx.update(model, nnx.from_flat_state(update))
    _draw_abstract_streams(model)


def to_weights(model: nnx.Module, graph: Graph) -> Weights:
    """The canonical weights (torch layout) of a flax model built for ``graph``."""
    table = conversions(graph)
    state = _flat_state(model)
    _check_model(graph, table, state)
    return {
        name: np.ascontiguousarray(conversion.from_flax(np.asarray(state[conversion.path][1][...], dtype=np.float32)))
        for name, conversion in table.items()
    }


def count_parameters(model: nnx.Module) -> int:
    import jax
    from flax import nnx

    return sum(int(leaf.size) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --- block outputs --------------------------------------------------------------------------------


def _stages(model: nnx.Module, prefix: str = "") -> list[tuple[str, Any]]:
    """The network's stages by path (``layer1``, ``stages.0.blocks``, …): its ``nnx.List``
    attributes, looked for inside ``nnx.Dict`` containers too, in network order: the paths differ
    only in their stage numbers, which order them (``features.3`` before ``features.10``; a model
    that went through ``nnx.jit`` or a state update holds its attributes sorted as text)."""
    from flax import nnx

    stages: list[tuple[str, Any]] = []
    for name, value in vars(model).items():
        if isinstance(value, nnx.List):
            stages.append((prefix + str(name), value))
        elif isinstance(value, nnx.Dict):
            stages += _stages(value, f"{prefix}{name}.")
        elif isinstance(getattr(value, HELD_BLOCKS, None), nnx.List):  # a transition holding its stage's blocks
            stages.append((f"{prefix}{name}.{HELD_BLOCKS}", getattr(value, HELD_BLOCKS)))
    return sorted(stages, key=lambda stage: _numbers_as_numbers(stage[0]))


def _numbers_as_numbers(path: str) -> list[str | int]:
    """``path`` as a sort key in which its runs of digits compare as numbers."""
    return [int(run) if run.isdigit() else run for run in re.split(r"(\d+)", path)]


Transitions = tuple[tuple[str, str, bool], ...]
"""(stage path, its transition's path, whether it runs after the stage's blocks) for each stage
transition (:func:`stage_transitions`)."""


def stage_transitions(graph: Graph) -> Transitions:
    transitions = [(stage, graph.transition_of(stage), graph.transition_after_of(stage)) for stage in graph.stages]
    return tuple(
        (stage.path, module.path, module is after)
        for stage, before, after in transitions
        for module in (before, after)
        if module is not None
    )


def _submodule(model: Any, path: str) -> Any:
    for segment in path.split("."):
        model = model[segment] if segment.isdigit() else getattr(model, segment)
    return model


def _stage_layers(model: Any, stage_name: str, stage: Any, transitions: Transitions) -> list[tuple[str, Any]]:
    """A stage's layers in the order they run, by name: its transition before its blocks, its
    blocks (``layer1.0``, ...), its transition after them."""
    before = [(path, _submodule(model, path)) for name, path, after in transitions if name == stage_name and not after]
    after = [(path, _submodule(model, path)) for name, path, after in transitions if name == stage_name and after]
    if before and after and before[0][0] == after[0][0]:
        return after  # a transition holding the stage's blocks: one layer, which runs them
    return [*before, *((f"{stage_name}.{index}", block) for index, block in enumerate(stage)), *after]


def feature_maps(model: Any, x: Any, transitions: Transitions, stem: str, taps: tuple[str, ...]) -> list[Any]:
    """The outputs of ``model`` (NHWC) named by ``taps``, in network order: ``stem`` (the stem's
    output), stage paths (``layer1``, ``stages.0.blocks``) and the paths of transitions after a
    stage's blocks (``stages.0.fuse``), each map the stage's output; nothing runs after the last."""
    maps: list[Any] = []
    x = model._stem(x)
    if stem in taps:
        maps.append(x)
    for stage_name, stage in _stages(model):
        if len(maps) == len(taps):
            break
        layers = _stage_layers(model, stage_name, stage, transitions)
        for _, layer in layers:
            x = layer(x)
        if stage_name in taps or layers[-1][0] in taps:
            maps.append(x)
    return maps


def _module_names(model: Any, transitions: Transitions) -> list[str]:
    names = ["stem"]
    for stage_name, stage in _stages(model):
        names += [name for name, _ in _stage_layers(model, stage_name, stage, transitions)]
    return [*names, "head"]


def _run_blocks(model: Any, images: Any, feed: dict[str, Any] | None, transitions: Transitions) -> dict[str, Any]:
    outputs = {"stem": model._stem(images)}
    previous = "stem"
    for stage_name, stage in _stages(model):
        for name, layer in _stage_layers(model, stage_name, stage, transitions):
            outputs[name] = layer(outputs[previous] if feed is None else feed[previous])
            previous = name
    outputs["head"] = model._head(outputs[previous] if feed is None else feed[previous])
    return outputs


@functools.cache
def _jitted_blocks() -> Callable[[Any, Any, dict[str, Any] | None, Transitions], dict[str, Any]]:
    from flax import nnx

    return nnx.jit(_run_blocks, static_argnums=3)


def block_outputs(
    model: nnx.Module,
    images: np.ndarray,
    feed: Mapping[str, np.ndarray] | None = None,
    jit: bool = True,
    graph: Graph | None = None,
) -> dict[str, np.ndarray]:
    """Every module's output by canonical module name, in torch layout, for comparing backends.

    ``images``: a batch in torch layout ``(batch, channels, height, width)``. Returns ``stem``, each
    block (``layer1.0``, …, in network order) and ``head`` (the logits); 4-d outputs are converted
    from NHWC back to NCHW. With ``feed`` (another backend's outputs, same names and layout), every
    module after the stem runs on ``feed`` of the module before it rather than on this model's own
    output, so each module is compared on identical inputs and differences do not accumulate.
    The model runs in its current mode: in training mode its BatchNorm statistics are updated, as
    one forward pass would. ``jit=False`` runs eagerly, op by op: jax compiles each op once per
    input shape, which several passes share, where ``jit=True`` compiles the pass as one program.

    Without ``graph``, blocks are named by their position in their stage (``layer1.0``) and stage
    transitions are not run; ``graph`` (the model's) runs its transitions and names every module
    canonically (timm's RegNet: ``s1.b1``, ConvNeXt's ``stages.1.downsample``).
    """
    transitions = () if graph is None else stage_transitions(graph)
    positions = _module_names(model, transitions)
    names = positions if graph is None else module_names(graph)
    pairs = list(zip(positions, names, strict=True))  # the same modules in the same order
    fed = None if feed is None else {position: _flax_layout(feed[name]) for position, name in pairs}
    run = _jitted_blocks() if jit else _run_blocks
    outputs = run(model, _flax_layout(images), fed, transitions)
    # jax returns dicts with sorted keys: restore network order.
    return {name: _torch_layout(np.asarray(outputs[position])) for position, name in pairs}


def _flax_layout(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if array.ndim == 4 else array


def _torch_layout(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2)) if array.ndim == 4 else array


def module_outputs(graph: Graph, weights: Mapping[str, Array], inputs: Array) -> Outputs:
    import jax

    # jax's Config.update(name, val) is unannotated.
    jax.config.update("jax_default_matmul_precision", "highest")  # type: ignore[no-untyped-call]
    model = module_for_weights(graph)  # in eval mode
    load_weights(model, graph, weights)
    return block_outputs(model, inputs, jit=len(graph.blocks) <= _JIT_MAX_BLOCKS, graph=graph)


# One pass compiled as one program costs a quarter to a half of compiling it op by op (each op once
# per input shape) on CPU: efficientnet_b0 at 33×33 4.7 s against 18.6 s, resnest50d 7.4 s against
# 31 s, resnet20 at 32×32 2.1 s against 4.0 s, preact_resnet164 (54 blocks) 3.8 s against 6.2 s. A
# program's compilation grows with its length while op by op a stage's repeated blocks share theirs:
# past this many blocks (resnet200d, resnet1202) the pass runs op by op.
_JIT_MAX_BLOCKS = 60
