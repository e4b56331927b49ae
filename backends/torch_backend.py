"""PyTorch backend: readable ``nn.Module`` source from the IR, through a jinja2 template.

:func:`emit_source` is the one lowering path: :func:`build_module` executes exactly that source,
and ``rescompile SPEC --backend torch -o model.py`` writes it. The written file needs torch alone.
Layer names equal torchvision's state_dict keys (``conv1``, ``layer1.0.conv2``, ``fc``), so
:func:`block_outputs` reads torchvision's models as well as this backend's.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

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
    SourceNode,
    block_calls,
    block_classes,
    block_index_arguments,
    block_type,
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
from rescompile.backends.surface import HeadSections, feature_points, head_sections
from rescompile.compiler.ir import Attribute, Conv, Definition, FoldedNorm, Graph, Stage
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
    LayerNormFields,
    LayerScaleFields,
    LeakyRelu,
    LinearFields,
    MaxPoolFields,
    Mul,
    PadChannelsFields,
    PadFields,
    PointwiseLinearFields,
    SoftmaxFields,
    SubsampleFields,
)
from rescompile.compiler.pipeline import lower_for_inference
from rescompile.compiler.weights import Array, Weights, check_weights, read_weights, weight_shapes
from rescompile.spec.errors import RescompileError
from rescompile.spec.expressions import Value
from rescompile.spec.models import NETWORK_PLACEHOLDERS
from rescompile.version import __version__

if TYPE_CHECKING:
    from torch import nn


Layer = tuple[str, list[str]]
"""A layer's constructor and its arguments as source: ``("nn.ReLU", ["inplace=True"])``."""


def _optional(keyword: str, value: Attribute, default: Value | enum.Enum) -> list[str]:
    return [] if is_default(value, default) else [f"{keyword}={render(value)}"]


def _conv(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, ConvFields)
    arguments = [
        render(op.in_channels),
        render(op.out_channels),
        f"kernel_size={render(op.kernel)}",
        *_optional("stride", op.stride, 1),
        *_optional("padding", op.padding, 0),
        *_optional("dilation", op.dilation, 1),
        *_optional("groups", op.groups, 1),
        f"bias={render(op.bias)}",
    ]
    if op.standardize_weight:
        return ("StdConv2d", [*arguments, *_optional("eps", op.standardize_epsilon, 1e-6)])
    return ("nn.Conv2d", arguments)


def _standardized(node: SourceNode) -> bool:
    return isinstance(node.op, ConvFields) and node.op.standardize_weight


def _group_norm(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, GroupNormFields)
    return ("nn.GroupNorm", [render(op.groups), render(op.channels), *_optional("eps", op.epsilon, 1e-5)])


def _blur_pool(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, BlurPoolFields)
    return ("BlurPool", [render(op.taps), render(op.stride), render(op.padding), render(op.padding_mode)])


def _batch_norm(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, BatchNormFields)
    return (
        "nn.BatchNorm2d",
        [render(op.channels), *_optional("eps", op.epsilon, 1e-5), *_optional("momentum", op.momentum, 0.1)],
    )


def _in_place(node: SourceNode) -> list[str]:
    # In place only where the input is dead afterwards (never the block input, which the shortcut reads).
    return ["inplace=True"] if node.sole_reader else []


def _relu(node: SourceNode) -> Layer:
    return ("nn.ReLU", _in_place(node))


def _pool(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, MaxPoolFields | AvgPoolFields)
    arguments = [f"kernel_size={render(op.kernel)}", f"stride={render(op.stride)}"]
    arguments += _optional("padding", op.padding, 0) + _optional("ceil_mode", op.ceil_mode, False)
    if isinstance(op, AvgPoolFields):
        return ("nn.AvgPool2d", arguments + _optional("count_include_pad", op.count_include_pad, True))
    return ("nn.MaxPool2d", arguments)


def _linear(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, LinearFields) and op.in_features is not None and op.out_features is not None
    return ("nn.Linear", [render(op.in_features), render(op.out_features), *_optional("bias", op.bias, True)])


SUBSAMPLE_CLASS = '''class Subsample(nn.Module):
    """Keep every ``stride``-th row and column: ``x[:, :, ::stride, ::stride]``."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride]'''

PAD_CHANNELS_CLASS = '''class PadChannels(nn.Module):
    """Zero channels: ``before`` in front of the input's channels, ``after`` behind them."""

    def __init__(self, before: int, after: int) -> None:
        super().__init__()
        self.before = before
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))'''

STD_CONV_CLASS = '''class StdConv2d(nn.Conv2d):
    """A convolution with weight standardisation (timm's StdConv2d): each output channel's weight is
    ``(w - mean) / sqrt(var + eps)`` over its inputs and taps (biased variance) before convolving.
    The stored weight is the raw one."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=self.eps
        ).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)'''

BLUR_POOL_CLASS = '''class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang 2019; timm's BlurPool2d): each channel padded (``"zeros"`` or
    ``"reflect"``) and convolved with stride by the fixed ``taps``×``taps`` binomial filter, which sums
    to 1 (one tap: a copy of every ``stride``-th pixel). The filter is not in the state_dict."""

    def __init__(self, taps: int, stride: int, padding: int, padding_mode: str) -> None:
        super().__init__()
        self.stride = stride
        self.padding = (padding,) * 4
        self.mode = "constant" if padding_mode == "zeros" else padding_mode
        # NOTE: plain numbers, not a buffer: a model built on the meta device and materialised with
        # to_empty() (which only load_state_dict fills) would otherwise blur with garbage.
        self.coefficients = [math.comb(taps - 1, k) / 2 ** (taps - 1) for k in range(taps)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.padding, mode=self.mode)
        if len(self.coefficients) == 1:  # the one-tap filter [1]: nothing to multiply
            return x[:, :, :: self.stride, :: self.stride]
        taps = torch.tensor(self.coefficients, dtype=x.dtype, device=x.device)
        channels = x.shape[1]
        kernel = (taps[:, None] * taps[None, :]).expand(channels, 1, -1, -1)
        return F.conv2d(x, kernel, stride=self.stride, groups=channels)'''

CHANNEL_CONV_CLASS = '''class ChannelConv(nn.Conv1d):
    """ECA's convolution across channels (timm's EcaModule.conv): one odd kernel slides over the
    channels of a pooled (batch, C, 1, 1) value, zero-padded, no bias."""

    def __init__(self, kernel: int) -> None:
        super().__init__(1, 1, kernel_size=kernel, padding=(kernel - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NOTE: not super().forward, which TorchScript cannot compile (torch.jit.script).
        return self._conv_forward(x.view(x.shape[0], 1, -1), self.weight, self.bias).view(x.shape)'''
DROP_PATH_CLASS = '''class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016), as timm's DropPath: in training, each sample is zeroed
    with probability ``rate`` and the kept ones scaled by 1 / (1 - rate); the identity in eval mode."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """One draw per sample, 1 with probability 1 - rate, shaped to broadcast over the sample."""
        return x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return x
        return x * self.keep_mask(x).div_(1 - self.rate)'''

CHANNEL_SLICE_CLASS = '''class ChannelSlice(nn.Module):
    """Channels ``start:stop`` of the input: one part of a split along channels (torch.split(x, sizes, 1))."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start = start
        self.stop = stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start : self.stop]'''

CHANNEL_SOFTMAX_CLASS = '''class ChannelSoftmax(nn.Module):
    """A softmax across groups of channels: the channels viewed as (groups, over, rest) and normalised
    across ``over``; with ``transpose`` laid out as (over, groups, rest), as timm's RadixSoftmax."""

    def __init__(self, over: int, groups: int = 1, transpose: bool = False) -> None:
        super().__init__()
        self.over = over
        self.groups = groups
        self.transpose = transpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.reshape(x.shape[0], self.groups, self.over, -1)
        if self.transpose:
            return torch.softmax(grouped.transpose(1, 2), dim=1).reshape(x.shape)
        return torch.softmax(grouped, dim=2).reshape(x.shape)'''


def _channel_softmax(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, SoftmaxFields)
    arguments = [render(op.over), *_optional("groups", op.groups, 1), *_optional("transpose", op.transpose, False)]
    return ("ChannelSoftmax", arguments)


class Inline(str):
    """An op computed inline in forward: its expression over the input variables, ``{0}``, ``{1}``,
    ..., or ``{all}`` (every input, comma-separated)."""


def _inline(node: SourceNode, expression: str) -> str:
    return expression.format(*node.inputs, all=", ".join(node.inputs))


LAYER_NORM_CLASS = '''class LayerNorm2d(nn.LayerNorm):
    """Layer normalisation over the channels of each pixel of an NCHW tensor (timm's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)'''
POINTWISE_LINEAR_CLASS = '''class PointwiseLinear(nn.Linear):
    """A linear layer over the channels at every pixel of an NCHW tensor: nn.Linear on channels-last,
    weight (out_features, in_features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NOTE: not super().forward, which TorchScript cannot compile (torch.jit.script).
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)'''


def _layer_norm(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, LayerNormFields)
    return ("LayerNorm2d", [render(op.channels), *_optional("eps", op.epsilon, 1e-5)])


def _layer_scale(node: SourceNode) -> Layer:
    # A parameter held by the block itself, as timm's ConvNeXt block holds ``gamma``.
    op = node.op
    assert isinstance(op, LayerScaleFields)
    return ("nn.Parameter", [f"torch.full(({render(op.channels)},), {render(op.init)})"])


def _pointwise_linear(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, PointwiseLinearFields)
    arguments = [render(op.in_channels), render(op.out_channels), *_optional("bias", op.bias, True)]
    return ("PointwiseLinear", arguments)


def _subsample(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, SubsampleFields)
    return ("Subsample", [render(op.stride)])


def _pad(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, PadFields)
    return ("nn.ZeroPad2d", [render(op.padding)])


def _pad_channels(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, PadChannelsFields)
    return ("PadChannels", [render(op.before), render(op.after)])


def _channel_conv(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, ChannelConvFields)
    return ("ChannelConv", [render(op.kernel)])


def _drop_path(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, DropPathFields)
    return ("DropPath", [render(op.rate)])


def _channel_slice(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, ChannelSliceFields)
    return ("ChannelSlice", [render(op.start), render(op.stop)])


def _gelu(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, Gelu)
    return ("nn.GELU", _optional("approximate", op.approximate, GeluApproximation.NONE))


def _leaky_relu(node: SourceNode) -> Layer:
    op = node.op
    assert isinstance(op, LeakyRelu)
    return ("nn.LeakyReLU", _optional("negative_slope", op.negative_slope, 0.01) + _in_place(node))


def _add(node: SourceNode) -> Inline:
    op = node.op
    assert isinstance(op, Add)
    return Inline(sum_source(list(node.inputs)) if op.constant is None else f"{{0}} + {render(op.constant)}")


def _mul(node: SourceNode) -> Inline:
    op = node.op
    assert isinstance(op, Mul)
    return Inline("{0} * {1}" if op.constant is None else f"{{0}} * {render(op.constant)}")


def _clamp(node: SourceNode) -> Inline:
    op = node.op
    assert isinstance(op, Clamp)
    bounds = [
        f"{key}={render(bound)}" for key, bound in (("min", op.minimum), ("max", op.maximum)) if bound is not None
    ]
    return Inline(f"torch.clamp({{0}}, {', '.join(bounds)})")


SPATIAL_SOFTMAX_FUNCTION = '''def spatial_softmax(x: torch.Tensor) -> torch.Tensor:
    """A softmax over the H·W positions of each channel, as timm's GlobalContext computes its attention."""
    return x.flatten(2).softmax(-1).view_as(x)'''

WEIGHTED_SUM_FUNCTION = '''def weighted_spatial_sum(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The (B, C, 1, 1) sum over positions of (B, C, H, W) values times (B, 1, H, W) weights: timm's
    GlobalContext's matmul, the same call, so the same sums in the same order."""
    context = values.flatten(2).unsqueeze(1) @ weights.flatten(2).unsqueeze(3)
    return context.view(values.shape[0], -1, 1, 1)'''


FOLD_ON_LOAD_FUNCTION = '''def fold_batch_norms(
    folds: dict[str, tuple[str, float]], owner: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *_: object
) -> None:
    """The load_state_dict pre-hook of fold_batch_norms_on_load: fold each BatchNorm of ``folds`` found in
    ``state_dict`` into its conv."""
    for conv, (batch_norm, eps) in folds.items():
        statistics = [f"{prefix}{batch_norm}.{name}" for name in ("weight", "bias", "running_mean", "running_var")]
        if not all(key in state_dict for key in statistics):
            continue  # folded already, or incomplete: load_state_dict reports what is missing
        gamma, beta, mean, variance = (state_dict.pop(key).double() for key in statistics)
        state_dict.pop(f"{prefix}{batch_norm}.num_batches_tracked", None)
        scale = gamma / torch.sqrt(variance + eps)
        weight = state_dict[f"{prefix}{conv}.weight"]
        own_bias = state_dict.get(f"{prefix}{conv}.bias")
        bias = beta + ((0.0 if own_bias is None else own_bias.double()) - mean) * scale
        state_dict[f"{prefix}{conv}.weight"] = weight * scale.to(weight.dtype).reshape(-1, 1, 1, 1)
        state_dict[f"{prefix}{conv}.bias"] = bias.to(weight.dtype)


def fold_batch_norms_on_load(module: nn.Module, folds: dict[str, tuple[str, float]]) -> None:
    """Let ``module`` load canonical weights (torchvision's state_dict keys, BatchNorms included): as a
    state_dict loads, each BatchNorm of ``folds`` (``conv: (batch_norm, eps)``) is folded into its conv.
    Per output channel, ``s = gamma / sqrt(running_var + eps)`` (in float64), ``W' = W * s`` and
    ``b' = beta + (b - running_mean) * s``. A state_dict already folded (this module's own) loads as it is."""
    # NOTE: a partial of a module-level function, not a closure: the model then pickles whole (torch.save).
    module.register_load_state_dict_pre_hook(functools.partial(fold_batch_norms, folds))'''

INFERENCE_NOTE = (
    "Lowered for inference (--inference): each BatchNorm after a convolution is folded into it, the folding\n"
    "done by load_state_dict from canonical weights (torchvision's state_dict loads as it is), weights and\n"
    "activations in the channels_last memory format, ReLUs in place. Evaluation only: no BatchNorm to train."
)

Lower = Callable[[SourceNode], Layer] | Callable[[SourceNode], Inline] | str
"""The layer's constructor, or for an op computed inline in forward, its expression over the input
variables ("{0} + {1}", a plain string or an Inline), or a function of the node giving one."""


@dataclass(frozen=True)
class Emitter:
    """A lowering that needs more than its own line: a module-level class or function it names,
    which the file defines once (the imports it needs are read from its source); or, for a stored
    node not called as ``self.layer(x)``, how forward applies it ("{layer}" is the attribute, "{0}"
    the input)."""

    lower: Lower
    helper: str = ""
    application: str = ""


# op kind -> its lowering. A helper's place in this table is its place in a generated file.
EMITTERS: dict[str, Lower | Emitter] = {
    "conv": _conv,
    "batch_norm": _batch_norm,
    "group_norm": _group_norm,
    "relu": _relu,
    "max_pool": _pool,
    "avg_pool": _pool,
    "global_average_pool": lambda node: ("nn.AdaptiveAvgPool2d", ["(1, 1)"]),
    "flatten": lambda node: ("nn.Flatten", ["1"]),
    "linear": _linear,
    "add": _add,
    "sigmoid": lambda node: ("nn.Sigmoid", []),
    "mul": _mul,
    "clamp": _clamp,
    "subsample": Emitter(_subsample, SUBSAMPLE_CLASS),
    "pad": _pad,
    "pad_channels": Emitter(_pad_channels, PAD_CHANNELS_CLASS),
    "blur_pool": Emitter(_blur_pool, BLUR_POOL_CLASS),
    "channel_conv": Emitter(_channel_conv, CHANNEL_CONV_CLASS),
    "drop_path": Emitter(_drop_path, DROP_PATH_CLASS),
    "channel_slice": Emitter(_channel_slice, CHANNEL_SLICE_CLASS),
    "concat": Inline("torch.cat([{all}], 1)"),
    "softmax": Emitter(_channel_softmax, CHANNEL_SOFTMAX_CLASS),
    "spatial_softmax": Emitter(Inline("spatial_softmax({0})"), SPATIAL_SOFTMAX_FUNCTION),
    "weighted_spatial_sum": Emitter(Inline("weighted_spatial_sum({0}, {1})"), WEIGHTED_SUM_FUNCTION),
    "layer_norm": Emitter(_layer_norm, LAYER_NORM_CLASS),
    "gelu": _gelu,
    # A layer scale is a parameter, broadcast over (batch, C, H, W).
    "layer_scale": Emitter(_layer_scale, application="{0} * {layer}.view(1, -1, 1, 1)"),
    "pointwise_linear": Emitter(_pointwise_linear, POINTWISE_LINEAR_CLASS),
    "hardswish": lambda node: ("nn.Hardswish", _in_place(node)),
    "relu6": lambda node: ("nn.ReLU6", _in_place(node)),
    "leaky_relu": _leaky_relu,
    "hardsigmoid": lambda node: ("nn.Hardsigmoid", _in_place(node)),
    "silu": lambda node: ("nn.SiLU", _in_place(node)),
    "mish": lambda node: ("nn.Mish", _in_place(node)),
    "tanh": lambda node: ("nn.Tanh", []),
}
assert set(EMITTERS) == set(PRIMITIVE_OP_KINDS), "every primitive op kind needs a torch emitter"


def _lowered(node: SourceNode) -> Layer | Inline:
    if isinstance(node.op, ContainerCall):
        return (node.op.class_name, list(node.class_arguments))
    if isinstance(node.op, HeldBlocksCall):
        return ("nn.Sequential", [])  # the network puts the stage's blocks here
    emitter = _emitter(node.kind).lower
    return Inline(emitter) if isinstance(emitter, str) else emitter(node)


def _emitter(kind: str) -> Emitter:
    entry = EMITTERS[kind]
    return entry if isinstance(entry, Emitter) else Emitter(entry)


def _application(node: SourceNode) -> str:
    """How forward applies a stored node not called as ``self.layer(x)``; empty where it is."""
    return "" if isinstance(node.op, ContainerCall | HeldBlocksCall) else _emitter(node.kind).application


def _layer(node: SourceNode, prefix: str = "") -> str:
    """The layer's constructor call after ``prefix``, wrapped for a line at the 8th column."""
    lowered = _lowered(node)
    if isinstance(lowered, Inline):
        raise RescompileError(f"the torch backend cannot express op '{node.kind}' as a layer")
    callee, arguments = lowered
    return wrap_call(prefix + callee, arguments, 8)


def _init_lines(nodes: list[SourceNode]) -> list[str]:
    stored = [node for node in nodes if not isinstance(_lowered(node), Inline)]
    layers = [_layer(node, f"self{attribute_access(node.attribute)} = ") for node in stored]
    return with_containers([node.attribute for node in stored], layers, "nn.ModuleDict()")


def _forward_lines(
    nodes: list[SourceNode], shortcut_attribute: str | None = None, shortcut_source: str = "x"
) -> list[str]:
    lines: list[str] = []
    for node in nodes:
        if shortcut_attribute is not None and SHORTCUT_VARIABLE in node.inputs:
            # The identity reads the block input; a shortcut module reads the block's shortcut_input.
            call = f"self.{shortcut_attribute}({shortcut_source})"
            lines.append(f"shortcut = x if self.{shortcut_attribute} is None else {call}")
        lowered = _lowered(node)
        if isinstance(lowered, Inline):
            lines.append(f"{node.output} = {_inline(node, lowered)}")
        elif application := _application(node):
            layer = f"self{attribute_access(node.attribute)}"
            lines.append(f"{node.output} = {application.format(*node.inputs, layer=layer)}")
        else:
            lines.append(f"{node.output} = self{attribute_access(node.attribute)}({node.inputs[0]})")
    return lines


def _container_source(container: ContainerClass) -> str:
    """A container of a block's nodes as a class of its own (``SplitAttn``)."""
    init = ["super().__init__()", *_init_lines(container.nodes)]
    forward = [*_forward_lines(container.nodes), f"return {container.nodes[-1].output}"]
    method = "def forward(self, x: torch.Tensor) -> torch.Tensor:"
    return container_source(container, "nn.Module", [], init, method, forward)


def _fold_call(target: str, folds: Sequence[tuple[str, str, Attribute]], indent: int) -> str:
    """``fold_batch_norms_on_load(target, {conv: (batch_norm, eps), ...})`` laid out as ruff would at
    column ``indent``."""
    items = [f"{render(conv)}: ({render(batch_norm)}, {render(epsilon)})" for conv, batch_norm, epsilon in folds]
    call = wrap_call("fold_batch_norms_on_load", [target, "{" + ", ".join(items) + "}"], indent)
    if all(indent + len(line) <= LINE_LENGTH for line in call.splitlines()):
        return call
    entries = "".join(f"        {item},\n" for item in items)
    return f"fold_batch_norms_on_load(\n    {target},\n    {{\n{entries}    }},\n)"


def _definition_fold_call(definition: Definition, target: str, indent: int) -> list[str]:
    """The line folding a class's BatchNorms on load (none when nothing in it folds)."""
    folds = [_folded(node.name, node.folded) for node in definition.nodes if node.folded is not None]
    return [_fold_call(target, folds, indent)] if folds else []


def _folded(conv: str, folded: FoldedNorm) -> tuple[str, str, Attribute]:
    return (conv, folded.batch_norm, folded.epsilon)


POOLED = "if global_pool else nn.Identity()"
"""How the head's pool and flattens are built: timm's ``global_pool=""`` makes them identities."""


def _head_layers(nodes: list[SourceNode], sections: HeadSections) -> list[tuple[str, str]]:
    """The head's layers as ``(attribute, constructor)``: the pool and every flatten after it
    built as :data:`POOLED` says, the classifier for ``num_classes`` (timm's: none for 0)."""
    layers: list[tuple[str, str]] = []
    flattens = {node.name for node in (*sections.pre_logits, *sections.tail) if isinstance(node.op, Flatten)}
    for node in nodes:
        lowered = _lowered(node)
        if isinstance(lowered, Inline):
            continue
        callee, arguments = lowered
        if node.attribute == sections.pool.name or node.attribute in flattens:
            layers.append((node.attribute, f"{wrap_call(callee, arguments, 8)} {POOLED}"))
        elif node.attribute == sections.classifier.name:
            call = wrap_call(callee, [arguments[0], "num_classes", *arguments[2:]], 8)
            layers.append((node.attribute, f"{call} if num_classes else nn.Identity()"))
        else:
            layers.append((node.attribute, wrap_call(callee, arguments, 8)))
    return layers


def _timm_view(graph: Graph, head: list[SourceNode], sections: HeadSections) -> dict[str, object]:
    """What the template writes for timm's interface: the head cut into ``forward_features`` and
    ``forward_head``, ``reset_classifier``'s layers and ``feature_info``."""
    layers = _head_layers(head, sections)
    forward = _forward_lines(head)
    assert len(forward) == len(head), "a cut head is a chain of layers"
    cuts = [len(sections.features), len(sections.features) + 1 + len(sections.pre_logits)]
    reset = {sections.pool.name, sections.classifier.name}
    reset |= {node.name for node in (*sections.pre_logits, *sections.tail) if isinstance(node.op, Flatten)}
    return {
        "head_init": with_containers(
            [attribute for attribute, _ in layers],
            [f"self{attribute_access(attribute)} = {layer}" for attribute, layer in layers],
            "nn.ModuleDict()",
        ),
        "head_features": forward[: cuts[0]],
        "pre_logits": forward[cuts[0] : cuts[1]],
        "classifier": forward[cuts[1] :],
        "reset_lines": [
            f"self{attribute_access(attribute)} = {layer}" for attribute, layer in layers if attribute in reset
        ],
        # timm's pre-logits are flat: a flatten after the classifier (BiT's) applies to them too.
        "pre_logits_value": next(
            (f"self{attribute_access(node.name)}(x)" for node in sections.tail if isinstance(node.op, Flatten)), "x"
        ),
        "classifier_attribute": f"self{attribute_access(sections.classifier.name)}",
        "num_classes": sections.num_classes,
        "num_features": sections.num_features,
        "feature_info": [point.as_dict() for point in feature_points(graph)],
    }


def emit_source(graph: Graph, inference: bool = False) -> str:
    """Python source of a torch model for ``graph``: one class per block type, stages in loops.

    With ``inference``, the model is lowered for evaluation (:data:`INFERENCE_NOTE`, which the
    file's docstring repeats): BatchNorms folded into their convs (:func:`lower_for_inference`), with
    the folding of canonical weights done as they load, and channels_last."""
    network_folds: list[str] = []
    if inference:
        graph = lower_for_inference(graph)
        # The stem's and head's layers live in the network class itself, under their own names.
        stem_and_head = [
            _folded(node.name, node.folded)
            for module in (graph.modules[0], graph.modules[-1])
            for node in module.nodes
            if node.folded is not None
        ]
        network_folds = [_fold_call("self", stem_and_head, 8)] if stem_and_head else []
    blocks = block_classes(graph)
    shortcuts = shortcut_classes(graph)
    kinds_used = {node.op.kind for _, node in graph.nodes()}
    shortcut_views = [
        {
            "definition": shortcut.definition,
            "kind": shortcut.definition.role.capitalize(),
            "name": shortcut.python_name,
            "signature": wrap_call(f"def {shortcut.python_name}", shortcut.arguments, 0, " -> nn.Sequential:")
            if shortcut.sequential
            else wrap_call("def __init__", ["self", *shortcut.arguments], 4, " -> None:"),
            "sequential": shortcut.sequential,
            "layers": [_layer(node) for node in shortcut.nodes] if shortcut.sequential else [],
            "init_lines": [f"{name} = {value}" for name, value in shortcut.derived.items()]
            + _init_lines(shortcut.nodes)
            + _definition_fold_call(shortcut.definition, "self", 8),
            "fold_lines": _definition_fold_call(shortcut.definition, "layers", 4),
            "forward_lines": [*_forward_lines(shortcut.nodes), f"return {shortcut.nodes[-1].output}"],
        }
        for shortcut in [*shortcut_classes(graph, "transition"), *shortcuts]
    ]
    attribute = shortcut_attribute(graph)  # None for a plain network
    shortcut_lines: list[str] = []
    if attribute is not None:
        constructors = {
            shortcut.definition.name: f"{shortcut.python_name}(in_channels, out_channels, block_stride)"
            for shortcut in shortcuts
        }
        shortcut_lines = shortcut_choice(graph, attribute, constructors)
    indexed = uses_block_index(graph)
    calls = stage_calls(graph)
    layout_used = uses_layout(calls)
    shortcut_lines = (LAYOUT_LINES if layout_used else []) + shortcut_lines
    options_used = any(call.options for call in calls) or layout_used
    first_blocks = any(call.first_block for call in calls)
    first_options_used = any(call.first_options for call in calls)
    positional = ["in_channels", "width", "block_stride"] + ([attribute] if attribute else [])
    positional += block_index_arguments(graph) if indexed else []
    block_arguments = positional + (["**options"] if options_used else [])
    first_arguments = positional + (["**(first_options or {})"] if first_options_used else [])
    block_call = block_calls(block_arguments, first_arguments if first_blocks else None, 12)
    blocks_type = block_type(blocks, "nn.Module", first_blocks=first_blocks, layout_used=layout_used)
    stage_parameters = ["self", f"block: type[{blocks_type}]", "in_channels: int", "out_channels: int"]
    stage_parameters += ["width: int", "depth: int", "stride: int"] + (["first_block_index: int"] if indexed else [])
    if first_blocks:
        stage_parameters.append(f"first_block: type[{blocks_type}] | None = None")
    if first_options_used:
        stage_parameters.append("first_options: dict[str, Any] | None = None")
    if layout_used:
        stage_parameters.append(f"layout: list[tuple[type[{blocks_type}], int, dict[str, Any]]] | None = None")
    stage_signature = wrap_call(
        "def _make_stage", stage_parameters + (["**options: Any"] if options_used else []), 4, " -> nn.Sequential:"
    )
    shared = {stage.path: stage for stage in graph.stages if stage.container is not None}
    stages, order = stage_construction(
        graph,
        calls,
        lambda call: (
            _shared_stage_statement(graph, shared[call.attribute], stage_arguments(call, indexed))
            if call.attribute in shared
            else wrap_call(
                f"self{attribute_access(call.attribute)} = self._make_stage", stage_arguments(call, indexed), 8
            )
        ),
        lambda module: transition_arguments(graph, module),
        "nn.ModuleDict()",
    )
    # A stage in a container the stages share is its blocks, each called.
    called = [path for pair in order for path in pair if path is not None]
    stage_lines = [
        f"x = self{attribute_access(block)}(x)" for path in called for block in _held(shared.get(path), path)
    ]
    stem = instance_nodes(graph.modules[0])
    head = instance_nodes(graph.modules[-1])
    forward = _forward_lines(stem) + stage_lines + _forward_lines(head)
    sections = head_sections(graph)
    timm = _timm_view(graph, head, sections) if sections is not None else None
    features = _forward_lines(stem) + stage_lines
    op_helpers = [_emitter(kind).helper for kind in EMITTERS if kind in kinds_used and _emitter(kind).helper]
    standardized = any(isinstance(node.op, Conv) and node.op.standardize_weight for _, node in graph.nodes())
    op_helpers += [STD_CONV_CLASS] if standardized else []
    helpers = function_helpers(graph) + op_helpers
    helpers += [_container_source(container) for container in container_classes(blocks)]
    head_init = cast(list[str], timm["head_init"]) if timm is not None else _init_lines(head)
    stem_lines, stages, head_init = made_once([_init_lines(stem), stages, head_init], "nn.ModuleDict()")
    if timm is not None:
        timm["head_init"] = head_init
    network_lines: list[str] = []
    if inference:
        helpers.append(FOLD_ON_LOAD_FUNCTION)
        network_lines = [*network_folds, "self.to(memory_format=torch.channels_last)"]
        forward = ["x = x.contiguous(memory_format=torch.channels_last)", *forward]
        features = ["x = x.contiguous(memory_format=torch.channels_last)", *features]
    return template("torch_model.py.jinja").render(
        version=__version__,
        graph=graph,
        inference_note=INFERENCE_NOTE if inference else "",
        input_shape="×".join(map(str, graph.input_shape)),
        output_shape="×".join(map(str, graph.output_shape)),
        helpers=helpers,
        uses_functional=timm is not None or any("F." in helper for helper in op_helpers),
        uses_functools=inference,
        uses_math=uses_math(graph) or any("math." in helper for helper in op_helpers),
        options_used=options_used or first_options_used,
        shortcuts=shortcut_views,
        shortcut_attribute=attribute,
        blocks=[
            {
                "name": block.python_name,
                "definition": block.definition,
                "parameters": parameter_declarations(block.parameters) + (BLOCK_INDEX_DECLARATIONS if indexed else []),
                "init_lines": [f"{name} = {value}" for name, value in block.derived.items()]
                + _init_lines(block.nodes)
                + _definition_fold_call(block.definition, "self", 8),
                "forward_lines": [
                    *_forward_lines(block.nodes, attribute, block.shortcut_source),
                    f"return {block.nodes[-1].output}",
                ],
                "zero_init": [attribute_access(path) for path in block.zero_init],
            }
            for block in blocks
        ],
        shortcut_choice=shortcut_lines,
        block_name=graph.block_name_source(),
        block_call=block_call,
        stage_signature=stage_signature,
        stages=stages,
        stem_lines=stem_lines,
        head_lines=head_init,
        network_lines=network_lines,
        forward_lines=forward,
        timm=timm,
        features_lines=features,
    )


def _shared_stage_statement(graph: Graph, stage: Stage, arguments: list[str]) -> str:
    """A stage whose blocks live in the container every stage shares (``features``): made as any
    stage, then put in the container under their names, numbered across the network (``features.2``)."""
    assert stage.container is not None
    pattern = graph.block_names
    placeholder = next(name for name in NETWORK_PLACEHOLDERS if f"{{{name}}}" in pattern)
    start = graph.blocks.index(graph.blocks_of(stage)[0]) + NETWORK_PLACEHOLDERS[placeholder]
    name = "str(number)" if pattern == f"{{{placeholder}}}" else 'f"' + pattern.replace(placeholder, "number") + '"'
    return "\n".join(
        [
            wrap_call("blocks = self._make_stage", arguments, 8),
            f"self{attribute_access(stage.container)}.update(({name}, block) "
            f"for number, block in enumerate(blocks, start={start}))",
        ]
    )


def _held(stage: Stage | None, path: str) -> tuple[str, ...]:
    """The paths forward calls for ``path``: a stage's blocks where it is in a shared container, else ``path``."""
    return (path,) if stage is None else stage.blocks


def emit(graph: Graph, options: EmitOptions) -> Writer:
    """The generated source as the command line writes it; with ``options.weights``, those weights,
    checked strictly, written beside it as ``NAME.safetensors`` under the state_dict's names
    (``model.load_state_dict(safetensors.torch.load_file(...), strict=False)``: no batch counters)."""
    weights = None
    if options.weights is not None:
        weights = read_weights(options.weights)
        check_weights(graph, weights)
    return source_writer(emit_source(graph, options.inference), weights)


def build_module(graph: Graph, zero_init_residual: bool = False, inference: bool = False) -> nn.Module:
    """The torch module for ``graph``, built from the source :func:`emit_source` writes; with
    ``inference``, lowered for evaluation. Canonical weights load into either (:func:`load_weights`,
    or ``load_state_dict`` of a torchvision/timm state_dict)."""
    source = emit_source(graph, inference)
    module = load_source(source, "torch-inference" if inference else "torch", graph.name)
    model: nn.Module = module.ResNet(zero_init_residual)
    return model


def load_weights(model: nn.Module, graph: Graph, weights: Mapping[str, np.ndarray]) -> None:
    """Load canonical weights into a module built for ``graph`` (strictly: all keys, right shapes)."""
    import torch

    check_weights(graph, weights)
    state = {name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)) for name, array in weights.items()}
    for name, buffer in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros_like(buffer)
    model.load_state_dict(state, strict=True)


def to_weights(model: nn.Module, graph: Graph) -> Weights:
    """The canonical weights of a torch module built for ``graph`` (or of torchvision's model)."""
    state = model.state_dict()
    names = weight_shapes(graph)
    return {name: state[name].detach().cpu().numpy().astype(np.float32, copy=True) for name in names}


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def block_outputs(model: nn.Module, graph: Graph, images: Array) -> Outputs:
    """Every module's output for one pass of ``images`` through a torch model with canonical names
    (this backend's, or torchvision's), in the model's current mode, without gradients.

    ``stem`` is the first block's input, each block (``layer1.0``, …) its output, both captured by
    forward hooks; ``head`` is the model's output (the logits).
    """
    import torch

    outputs: Outputs = {}

    def keep_stem(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        outputs["stem"] = args[0].detach().numpy().copy()

    def keep(path: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            outputs[path] = output.detach().numpy().copy()

        return hook

    # The stem's output is what the module after it reads (a block, or a first stage's transition).
    handles = [model.get_submodule(graph.modules[1].path).register_forward_pre_hook(keep_stem)]
    handles += [
        model.get_submodule(module.path).register_forward_hook(keep(module.path)) for module in graph.modules[1:-1]
    ]
    try:
        with torch.no_grad():
            outputs["head"] = model(torch.from_numpy(images)).numpy()
    finally:
        for handle in handles:
            handle.remove()
    return {name: outputs[name] for name in module_names(graph)}


def module_outputs(graph: Graph, weights: Mapping[str, Array], inputs: Array) -> Outputs:
    import torch

    # Pin fp32: no TF32 on GPUs, highest matmul precision, so differences mean something.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    model = build_module(graph).eval()
    load_weights(model, graph, weights)
    return block_outputs(model, graph, inputs)
