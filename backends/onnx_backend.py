"""ONNX backend: a model built straight from the IR; no framework traced.

Nodes and tensor metadata are made with ``onnx.helper``; the serialisation is framed by hand
around the weights' own buffers (:class:`OnnxModel`), so that writing a file copies no weight.
This is the only module in rescompile that touches protobuf. Lowering is a table,
:data:`EMITTERS`, from IR op kind to one emitter function; every op is lowered exactly or
rejected with a :class:`RescompileError` before anything is written.

Names are the canonical ones a reader knows from torchvision: node ``layer3.4.conv2`` reads the
initializer ``layer3.4.conv2.weight``. Values inside a module are named by the node that computes
them (``layer3.4.relu1``), except that a module's output is named by the module itself, so the
values flowing between modules read ``stem``, ``layer1.0``, ..., ``layer4.2`` and the graph's
output is ``output``. The graph input is ``input``, ``(batch, C, H, W)`` with a dynamic ``batch``
and, unless asked for a fixed size or the network needs one (:func:`fixed_size_reason`), dynamic
``H`` and ``W``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnx.defs
from google.protobuf.message import Message
from onnx import TensorProto, helper, numpy_helper

from rescompile.backends.interface import EmitOptions, Outputs, Writer, module_names
from rescompile.backends.surface import FeaturePoint, chosen_indices, feature_node, feature_points
from rescompile.compiler.files import write_atomically
from rescompile.compiler.fold import Fold, folded_bias, folded_scale
from rescompile.compiler.fold import folds as all_folds
from rescompile.compiler.ir import (
    MODULE_INPUT,
    AvgPool,
    BatchNorm,
    BlurPool,
    ChannelConv,
    ChannelSlice,
    Conv,
    Graph,
    GroupNorm,
    Linear,
    MaxPool,
    Module,
    Node,
    Pad,
    PadChannels,
    Padding,
    Softmax,
    Subsample,
)
from rescompile.compiler.ops import (
    PRIMITIVE_OP_KINDS,
    Add,
    Clamp,
    Flatten,
    Gelu,
    GeluApproximation,
    GlobalAveragePool,
    LayerNorm,
    LayerScale,
    LeakyRelu,
    Mul,
    PaddingMode,
    PointwiseLinear,
    binomial_filter,
)
from rescompile.compiler.pipeline import lower_for_inference
from rescompile.compiler.weights import (
    Weights,
    check_weights,
    initial_weights,
    read_weights,
    shape_mismatches,
    weight_shapes,
)
from rescompile.spec.errors import RescompileError
from rescompile.version import __version__

# NOTE: 18 is the oldest opset the project accepts as a default, so the one the most deployed runtimes
# load (ONNX Runtime >= 1.14, TensorRT 10, OpenVINO); none of the ops emitted here changed meaning after
# it (later Conv, Pad, Flatten and pooling versions only add types, dilations or pad modes not used).
DEFAULT_OPSET = 18
# 11 is the first opset in which every op emitted here has the form used: Pad takes ``pads`` as an
# input, Gemm's bias is optional, Slice has ``steps`` and MaxPool has ``ceil_mode``. 28 is the newest
# opset the emitter was checked against (onnx 1.23, ONNX Runtime 1.32); an older onnx caps it lower.
_OLDEST_OPSET = 11
_NEWEST_CHECKED_OPSET = 28
SUPPORTED_OPSETS = range(_OLDEST_OPSET, min(_NEWEST_CHECKED_OPSET, onnx.defs.onnx_opset_version()) + 1)

INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIMENSION = "batch"
HEIGHT_DIMENSION = "H"
WIDTH_DIMENSION = "W"

# protobuf cannot serialise a message of 2 GiB or more; past this, tensors go to a side file. The
# allowance covers everything but tensor data (nodes, names: under 2 MB even for resnet1202).
_PROTOBUF_LIMIT = 2**31 - 1
_SKELETON_ALLOWANCE = 2**26
# When writing external data, tensors of at least this many bytes move out (small ones stay inline),
# each starting on a page boundary so that runtimes can memory-map them.
_EXTERNAL_MINIMUM_BYTES = 1024
_EXTERNAL_ALIGNMENT = 4096

Array = npt.NDArray[np.float32]
# float32 as ONNX stores it, little-endian whatever the machine.
_RAW_FLOAT = np.dtype("<f4")


@dataclass(frozen=True)
class Site:
    """One IR node at its place in the ONNX graph: the canonical name and the ONNX value names."""

    module: Module
    node: Node
    name: str
    inputs: tuple[str, ...]
    output: str
    folded: Fold | None = None
    """With ``fold_bn``, the BatchNorm folded into this conv (by :func:`lower_for_inference`)."""


@dataclass(frozen=True)
class ScaledWeight:
    """A conv weight with each output channel scaled (a BatchNorm folded in), computed only when
    the model is written: saving computes each one into a buffer reused for the next, so folding
    allocates no second copy of the weights.
    """

    weight: Array
    scale: Array
    """float32, one per output channel."""

    @property
    def shape(self) -> tuple[int, ...]:
        return self.weight.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.weight.dtype

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes

    def compute(self, buffer: Array | None = None) -> Array:
        """The scaled weight, in ``buffer`` (float32, at least as large, its start overwritten)
        or in a new array."""
        size = self.weight.size
        result = np.empty(self.shape, _RAW_FLOAT) if buffer is None else buffer[:size].reshape(self.shape)
        # NOTE: as (out, everything else): broadcasting over (out, in, 1, 1) runs numpy's inner loop
        # on length-1 rows, several times slower for the 1×1 convs that hold most of the weights.
        rows = (self.shape[0], -1)
        np.multiply(self.weight.reshape(rows), self.scale[:, None], out=result.reshape(rows))
        return result


TensorData = npt.NDArray[Any] | ScaledWeight
"""An initializer's data: an array (little-endian, contiguous) or a weight computed when written."""


@dataclass
class _Builder:
    """Appends nodes and initializers to ``model`` in graph order (the order makes files reproducible).

    Initializers go into ``model`` without their data (name, type and dims only); the data stay
    numpy arrays in ``data``, in the same order, until the model is serialised (:class:`OnnxModel`).
    """

    weights: Mapping[str, npt.NDArray[np.generic]]
    dynamic_size: bool = False
    """Emit nothing that holds the declared height and width: reshapes take their target from a
    Shape node, ceil-mode pools use ONNX's ceil_mode (:func:`_ceil_pads`)."""
    model: onnx.ModelProto = field(default_factory=onnx.ModelProto)
    data: list[TensorData] = field(default_factory=list)

    def node(self, op_type: str, inputs: list[str], site: Site, **attributes: Any) -> None:
        self.model.graph.node.append(helper.make_node(op_type, inputs, [site.output], name=site.name, **attributes))

    def tensor(self, name: str, data: TensorData) -> str:
        tensor = self.model.graph.initializer.add()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(data.dtype)
        tensor.dims.extend(data.shape)
        if isinstance(data, np.ndarray):
            # ONNX raw data is little-endian whatever the machine; no copy where the array already is.
            data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
        self.data.append(data)
        return name

    def weight(self, name: str) -> str:
        return self.tensor(name, self.array(name))

    def array(self, name: str) -> Array:
        return np.asarray(self.weights[name], dtype=np.float32)


def _cannot(site: Site, reason: str) -> RescompileError:
    return RescompileError(
        f"the ONNX backend cannot lower {site.name} ({site.node.op.kind}): {reason}", site.node.source
    )


def _pads(padding: Padding) -> list[int]:
    # IR ((top, bottom), (left, right)) -> ONNX [top, left, bottom, right]: all begins, then all ends.
    (top, bottom), (left, right) = padding
    return [top, left, bottom, right]


def _conv(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, Conv)
    attributes = {
        "kernel_shape": list(op.kernel),
        "strides": list(op.stride),
        "pads": _pads(op.padding),
        "dilations": list(op.dilation),
        "group": op.groups,
    }
    inputs = [site.inputs[0]]
    if op.standardize_weight:
        # NOTE: the raw weight stays the initializer (``.weight``, the canonical value, so the file
        # reads back into canonical weights) and is standardised by nodes: every input of them is a
        # constant, so runtimes fold them once when loading (fold_batch_norm never folds into it).
        raw = builder.weight(f"{site.name}.weight")
        grouped = _normalize_groups(builder, raw, [1, op.out_channels, -1], op.standardize_epsilon, site.name)
        inputs.append(_reshape(builder, grouped, list(op.tensors()["weight"].shape), f"{site.name}.standardized"))
        if op.bias:
            inputs.append(builder.weight(f"{site.name}.bias"))
    elif site.folded is None:
        inputs.append(builder.weight(f"{site.name}.weight"))
        if op.bias:
            inputs.append(builder.weight(f"{site.name}.bias"))
    else:
        weight, bias = _fold(builder, site)
        inputs.append(builder.tensor(f"{site.name}.weight", weight))
        inputs.append(builder.tensor(f"{site.name}.bias", bias))
    builder.node("Conv", inputs, site, **attributes)


def _fold(builder: _Builder, site: Site) -> tuple[ScaledWeight, Array]:
    """The folded conv's weight and bias, from the canonical weights of the unfolded graph
    (:mod:`rescompile.compiler.fold` states the arithmetic). The weight is only scaled when the
    model is written (:class:`ScaledWeight`): folding allocates no second copy of the weights."""
    fold = site.folded
    assert fold is not None
    scale = folded_scale(fold, builder.weights)
    weight = ScaledWeight(builder.array(f"{fold.conv}.weight"), scale.astype(np.float32))
    return weight, folded_bias(fold, builder.weights, scale)


def _batch_norm(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, BatchNorm)
    parameters = [
        builder.weight(f"{site.name}.{suffix}") for suffix in ("weight", "bias", "running_mean", "running_var")
    ]
    # NOTE: inference form, as torch's eval mode: normalise with the running statistics. ONNX's
    # ``momentum`` only matters in training mode, so it is not emitted.
    builder.node("BatchNormalization", [site.inputs[0], *parameters], site, epsilon=op.epsilon)


def _constant(builder: _Builder, name: str, array: npt.NDArray[Any]) -> str:
    """A Constant node: a fixed value of the op (a filter, an epsilon), not a weight, so not an
    initializer: it has no canonical name and is not counted as a parameter."""
    node = helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(array, name))
    builder.model.graph.node.append(node)
    return name


def _reshape(builder: _Builder, value: str, shape: list[int], name: str) -> str:
    """``value`` reshaped to ``shape`` (0 copies that dimension, -1 is inferred), as ``name``."""
    target = builder.tensor(f"{name}.shape", np.array(shape, np.int64))
    builder.model.graph.node.append(helper.make_node("Reshape", [value, target], [name], name=name))
    return name


def _reshape_like(builder: _Builder, value: str, like: str, name: str) -> str:
    """``value`` reshaped to the runtime shape of ``like``, as ``name``: a reshape that holds no
    height or width, for models whose height and width are dynamic."""
    shape = _append(builder, "Shape", [like], f"{name}.shape")
    return _append(builder, "Reshape", [value, shape], name)


def _normalize_groups(builder: _Builder, value: str, grouped: list[int], epsilon: float, name: str) -> str:
    """``value`` reshaped to ``grouped`` ``(batch, groups, -1)``, each group normalised to
    ``(x - mean) / sqrt(var + epsilon)`` with its biased variance: GroupNorm without its affine,
    and weight standardisation. Means are GlobalAveragePool over the last axis, which every
    supported opset has in this form (ReduceMean's axes moved from an attribute to an input in 18).
    Returns the normalised value, still of shape ``grouped``."""

    def add(op_type: str, inputs: list[str], suffix: str) -> str:
        output = f"{name}.{suffix}"
        builder.model.graph.node.append(helper.make_node(op_type, inputs, [output], name=output))
        return output

    groups = _reshape(builder, value, grouped, f"{name}.grouped")
    centred = add("Sub", [groups, add("GlobalAveragePool", [groups], "mean")], "centred")
    variance = add("GlobalAveragePool", [add("Mul", [centred, centred], "squared")], "variance")
    shifted = add("Add", [variance, _constant(builder, f"{name}.epsilon", np.array(epsilon, np.float32))], "shifted")
    return add("Div", [centred, add("Sqrt", [shifted], "deviation")], "normalized")


def _group_norm(builder: _Builder, site: Site) -> None:
    # NOTE: decomposed rather than GroupNormalization, which exists only from opset 18, took one
    # scale per group until opset 21 changed it to one per channel, and had bugs in older runtimes.
    op = site.node.op
    assert isinstance(op, GroupNorm)
    channels, height, width = site.node.in_shapes[0]
    normalized = _normalize_groups(builder, site.inputs[0], [0, op.groups, -1], op.epsilon, site.name)
    if builder.dynamic_size:
        image = _reshape_like(builder, normalized, site.inputs[0], f"{site.name}.image")
    else:
        image = _reshape(builder, normalized, [0, channels, height, width], f"{site.name}.image")
    affine = [
        _reshape(builder, builder.weight(f"{site.name}.{suffix}"), [channels, 1, 1], f"{site.name}.{suffix}.column")
        for suffix in ("weight", "bias")
    ]
    scaled = f"{site.name}.scaled"
    builder.model.graph.node.append(helper.make_node("Mul", [image, affine[0]], [scaled], name=scaled))
    builder.node("Add", [scaled, affine[1]], site)


def _blur_pool(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, BlurPool)
    channels = site.node.in_shapes[0][0]
    coefficients = np.array(binomial_filter(op.taps), np.float32)
    square = np.outer(coefficients, coefficients)
    filter_ = np.ascontiguousarray(np.broadcast_to(square, (channels, 1, op.taps, op.taps)))
    source, pads = site.inputs[0], [op.padding] * 4
    if op.padding_mode is PaddingMode.REFLECT:
        # Pad's pads are all begins (N, C, H, W), then all ends; ONNX's reflect is torch's.
        amounts = [0, 0, op.padding, op.padding] * 2
        pad_amounts = builder.tensor(f"{site.name}.pads", np.array(amounts, np.int64))
        source, pads = f"{site.name}.padded", [0] * 4
        node = helper.make_node("Pad", [site.inputs[0], pad_amounts], [source], name=source, mode="reflect")
        builder.model.graph.node.append(node)
    # NOTE: a one-tap filter is [1], and a Conv by it copies each value exactly (one product by 1,
    # nothing added); ONNX has no cheaper exact form for every padding and stride.
    weight = _constant(builder, f"{site.name}.filter", filter_)
    kernel, stride = [op.taps] * 2, [op.stride] * 2
    builder.node("Conv", [source, weight], site, kernel_shape=kernel, strides=stride, pads=pads, group=channels)


def _channel_conv(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, ChannelConv)
    channels = site.node.in_shapes[0][0]
    # (batch, C, 1, 1) as a one-channel sequence of length C, as timm's EcaModule views it.
    sequence = _reshape(builder, site.inputs[0], [0, 1, channels], f"{site.name}.sequence")
    mixed = f"{site.name}.mixed"
    conv = helper.make_node(
        "Conv",
        [sequence, builder.weight(f"{site.name}.weight")],
        [mixed],
        name=mixed,
        kernel_shape=[op.kernel],
        pads=[op.padding, op.padding],
    )
    builder.model.graph.node.append(conv)
    shape = builder.tensor(f"{site.name}.shape", np.array([0, channels, 1, 1], np.int64))
    builder.node("Reshape", [mixed, shape], site)


def _relu(builder: _Builder, site: Site) -> None:
    builder.node("Relu", [site.inputs[0]], site)


def _ceil_pads(site: Site, op: MaxPool | AvgPool) -> list[int]:
    """``pads`` under which floor-mode windows are the IR's (torch's) windows: with ceil_mode, the
    end padded further so that the last, partial window exists. Exact under every opset, whereas
    ONNX's own ceil_mode rule was only pinned down in later opsets."""
    pads = _pads(op.padding)
    if op.ceil_mode:
        _, height, width = site.node.in_shapes[0]
        assert site.node.shape is not None
        for axis, size in enumerate((height, width)):
            needed = (site.node.shape[axis + 1] - 1) * op.stride[axis] + op.kernel[axis]
            pads[axis + 2] += max(0, needed - (size + pads[axis] + pads[axis + 2]))
    return pads


def _max_pool(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, MaxPool)
    # NOTE: every pad stays below the kernel, as ONNX Runtime requires: torch's declared padding is
    # at most half the kernel, and ceil_mode's last window starts inside the input or its declared
    # padding, so its end lies less than a kernel past them.
    if builder.dynamic_size and op.ceil_mode:
        _ceil_mode_pool(builder, site, op)
        return
    pads = _ceil_pads(site, op)
    builder.node(
        "MaxPool",
        [site.inputs[0]],
        site,
        kernel_shape=list(op.kernel),
        strides=list(op.stride),
        pads=pads,
        ceil_mode=0,
    )


def _ceil_mode_pool(builder: _Builder, site: Site, op: MaxPool | AvgPool) -> None:
    """A ceil-mode pool for any input size: ONNX's own ceil_mode, whose rule (the last window
    starts inside the input or its begin padding, and an average's divisor does not count the
    window's overhang past the end padding) is torch's in the runtimes checked
    (tests/backends/test_onnx_backend.py runs both kinds at odd and even sizes)."""
    attributes: dict[str, Any] = {"count_include_pad": int(op.count_include_pad)} if isinstance(op, AvgPool) else {}
    builder.node(
        "AveragePool" if isinstance(op, AvgPool) else "MaxPool",
        [site.inputs[0]],
        site,
        kernel_shape=list(op.kernel),
        strides=list(op.stride),
        pads=_pads(op.padding),
        ceil_mode=1,
        **attributes,
    )


def _avg_pool(builder: _Builder, site: Site) -> None:
    """Without a ceil_mode window, ONNX AveragePool means what torch's AvgPool2d means. With one,
    torch divides the last window by its size clipped to the padded input (count_include_pad) or
    by the number of input values in it, never counting the extra end padding; ONNX's
    count_include_pad=0 counts every value that is not padding. So the declared padding, where it
    counts, becomes a Pad node of zeros (values, then), and only the extra padding stays padding."""
    op = site.node.op
    assert isinstance(op, AvgPool)
    if builder.dynamic_size and op.ceil_mode:
        _ceil_mode_pool(builder, site, op)
        return
    declared = _pads(op.padding)
    pads = _ceil_pads(site, op)
    source = site.inputs[0]
    if pads != declared and op.count_include_pad and any(declared):
        (top, bottom), (left, right) = op.padding
        zeros = builder.tensor(f"{site.name}.pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
        source = f"{site.name}.padded"
        pad = helper.make_node("Pad", [site.inputs[0], zeros], [source], name=f"{site.name}.pad", mode="constant")
        builder.model.graph.node.append(pad)
        pads = [pad - amount for pad, amount in zip(pads, declared, strict=True)]
    builder.node(
        "AveragePool",
        [source],
        site,
        kernel_shape=list(op.kernel),
        strides=list(op.stride),
        pads=pads,
        ceil_mode=0,
        count_include_pad=int(op.count_include_pad) if pads == declared else 0,
    )


def _global_average_pool(builder: _Builder, site: Site) -> None:
    builder.node("GlobalAveragePool", [site.inputs[0]], site)


def _flatten(builder: _Builder, site: Site) -> None:
    # (batch, C, H, W) -> (batch, C*H*W), channel-major: torch.flatten(x, 1).
    builder.node("Flatten", [site.inputs[0]], site, axis=1)


def _linear(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, Linear)
    inputs = [site.inputs[0], builder.weight(f"{site.name}.weight")]
    if op.bias:
        inputs.append(builder.weight(f"{site.name}.bias"))
    # The weight stays in torch's (out, in) layout; transB=1 computes x @ W.T + b.
    builder.node("Gemm", inputs, site, transB=1)


def _add(builder: _Builder, site: Site) -> None:
    # Add for two values (it broadcasts as numpy does, as the IR's shapes state it); Sum for more.
    op = site.node.op
    assert isinstance(op, Add)
    if op.constant is not None:
        _with_constant(builder, site, "Add", op.constant)
        return
    builder.node("Add" if len(site.inputs) == 2 else "Sum", list(site.inputs), site)


def _with_constant(builder: _Builder, site: Site, op_type: str, constant: float) -> None:
    """``op_type`` of the node's one input and its float32 ``constant`` (add and mul by a number)."""
    value = _constant(builder, f"{site.name}.constant", np.array(constant, np.float32))
    builder.node(op_type, [site.inputs[0], value], site)


def _sigmoid(builder: _Builder, site: Site) -> None:
    builder.node("Sigmoid", [site.inputs[0]], site)


def _drop_path(builder: _Builder, site: Site) -> None:
    # The exported graph is for inference, where stochastic depth keeps every sample unscaled. An
    # Identity node keeps one ONNX node per IR node, by its canonical name; runtimes remove it.
    builder.node("Identity", [site.inputs[0]], site)


def _mul(builder: _Builder, site: Site) -> None:
    # ONNX Mul broadcasts as numpy does, over NCHW as the IR's shapes state it.
    op = site.node.op
    assert isinstance(op, Mul)
    if op.constant is not None:
        _with_constant(builder, site, "Mul", op.constant)
        return
    builder.node("Mul", list(site.inputs), site)


def _clamp(builder: _Builder, site: Site) -> None:
    # Clip of opset 11 takes its bounds as inputs; an empty name leaves one out.
    op = site.node.op
    assert isinstance(op, Clamp)
    bounds = [
        "" if value is None else _constant(builder, f"{site.name}.{end}", np.array(value, np.float32))
        for end, value in (("low", op.minimum), ("high", op.maximum))
    ]
    builder.node("Clip", [site.inputs[0], *bounds], site)


def _spatial_softmax(builder: _Builder, site: Site) -> None:
    # (batch, C, H·W), normalised over its last axis (where Softmax means the same in every opset).
    channels, height, width = site.node.in_shapes[0]
    rows = _reshape(builder, site.inputs[0], [0, channels, -1], f"{site.name}.rows")
    normalised = _append(builder, "Softmax", [rows], f"{site.name}.normalised", axis=2)
    if builder.dynamic_size:
        shape = _append(builder, "Shape", [site.inputs[0]], f"{site.name}.shape")
    else:
        shape = builder.tensor(f"{site.name}.shape", np.array([0, channels, height, width], np.int64))
    builder.node("Reshape", [normalised, shape], site)


def _weighted_spatial_sum(builder: _Builder, site: Site) -> None:
    # (batch, C, H·W) @ (batch, H·W, 1) = (batch, C, 1), viewed as (batch, C, 1, 1).
    channels = site.node.in_shapes[0][0]
    values = _reshape(builder, site.inputs[0], [0, channels, -1], f"{site.name}.values")
    weights = _reshape(builder, site.inputs[1], [0, -1, 1], f"{site.name}.weights")
    column = _append(builder, "MatMul", [values, weights], f"{site.name}.column")
    shape = builder.tensor(f"{site.name}.shape", np.array([0, channels, 1, 1], np.int64))
    builder.node("Reshape", [column, shape], site)


def _subsample(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, Subsample)
    # x[:, :, ::s, ::s]: Slice over H and W from 0 to the end (INT64_MAX clamps) in steps of s.
    constants = {
        "starts": [0, 0],
        "ends": [np.iinfo(np.int64).max] * 2,
        "axes": [2, 3],
        "steps": [op.stride, op.stride],
    }
    inputs = [builder.tensor(f"{site.name}.{key}", np.array(value, np.int64)) for key, value in constants.items()]
    builder.node("Slice", [site.inputs[0], *inputs], site)


def _pad(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, Pad)
    amount = op.padding
    pads = builder.tensor(f"{site.name}.pads", np.array([0, 0, amount, amount, 0, 0, amount, amount], np.int64))
    builder.node("Pad", [site.inputs[0], pads], site, mode="constant")


def _pad_channels(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, PadChannels)
    # Pad's pads are all begins (N, C, H, W) then all ends; zeros are its default constant.
    pads = builder.tensor(f"{site.name}.pads", np.array([0, op.before, 0, 0, 0, op.after, 0, 0], np.int64))
    builder.node("Pad", [site.inputs[0], pads], site, mode="constant")


def _channel_slice(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, ChannelSlice)
    constants = {"starts": [op.start], "ends": [op.stop], "axes": [1]}
    inputs = [builder.tensor(f"{site.name}.{key}", np.array(value, np.int64)) for key, value in constants.items()]
    builder.node("Slice", [site.inputs[0], *inputs], site)


def _concat(builder: _Builder, site: Site) -> None:
    builder.node("Concat", list(site.inputs), site, axis=1)


def _softmax(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, Softmax)
    channels, height, width = site.node.in_shapes[0]
    # (batch, groups, over, rest·H·W), then ``over`` made the last axis, where Softmax means the
    # same in every opset (before 13 it normalises over every axis from ``axis`` on).
    grouped = _reshape(builder, site.inputs[0], [0, op.groups, op.over, -1], f"{site.name}.grouped")
    last = f"{site.name}.over_last"
    builder.model.graph.node.append(helper.make_node("Transpose", [grouped], [last], name=last, perm=[0, 1, 3, 2]))
    normalised = f"{site.name}.normalised"
    builder.model.graph.node.append(helper.make_node("Softmax", [last], [normalised], name=normalised, axis=3))
    ordered = f"{site.name}.ordered"
    # Back to (batch, groups, over, rest) or, transposed, (batch, over, groups, rest).
    perm = [0, 3, 1, 2] if op.transpose else [0, 1, 3, 2]
    builder.model.graph.node.append(helper.make_node("Transpose", [normalised], [ordered], name=ordered, perm=perm))
    if builder.dynamic_size:
        shape = _append(builder, "Shape", [site.inputs[0]], f"{site.name}.shape")
    else:
        shape = builder.tensor(f"{site.name}.shape", np.array([0, channels, height, width], np.int64))
    builder.node("Reshape", [ordered, shape], site)


Emitter = Callable[[_Builder, Site], None]


def _append(builder: _Builder, op_type: str, inputs: list[str], output: str, **attributes: Any) -> str:
    builder.model.graph.node.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
    return output


def _layer_norm(builder: _Builder, site: Site) -> None:
    # NOTE: decomposed (LayerNormalization exists only from opset 17): channels last, one row of C
    # values per pixel, each row normalised as a GroupNorm group is, then the per-channel affine,
    # which broadcasts over the last axis, and back to NCHW.
    op = site.node.op
    assert isinstance(op, LayerNorm)
    channels, height, width = site.node.in_shapes[0]
    last = _append(builder, "Transpose", [site.inputs[0]], f"{site.name}.channels_last", perm=[0, 2, 3, 1])
    pixels = -1 if builder.dynamic_size else height * width
    rows = _normalize_groups(builder, last, [0, pixels, channels], op.epsilon, site.name)
    scaled = _append(builder, "Mul", [rows, builder.weight(f"{site.name}.weight")], f"{site.name}.times_weight")
    shifted = _append(builder, "Add", [scaled, builder.weight(f"{site.name}.bias")], f"{site.name}.plus_bias")
    if builder.dynamic_size:
        image = _reshape_like(builder, shifted, last, f"{site.name}.image")
    else:
        image = _reshape(builder, shifted, [0, height, width, channels], f"{site.name}.image")
    builder.node("Transpose", [image], site, perm=[0, 3, 1, 2])


def _gelu(builder: _Builder, site: Site) -> None:
    # x * (1 + erf(x / sqrt(2))) / 2, or x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x³))) / 2, as
    # torch computes them (Gelu exists only from opset 20).
    op, x, name = site.node.op, site.inputs[0], site.name
    assert isinstance(op, Gelu)
    if op.approximate is GeluApproximation.TANH:
        square = _append(builder, "Mul", [x, x], f"{name}.square")
        cube = _append(builder, "Mul", [square, x], f"{name}.cube")
        cubic = _append(
            builder,
            "Mul",
            [cube, _constant(builder, f"{name}.coefficient", np.array(0.044715, np.float32))],
            f"{name}.cubic",
        )
        inner = _append(builder, "Add", [x, cubic], f"{name}.inner")
        root = np.array((2 / np.pi) ** 0.5, np.float32)
        scaled = _append(builder, "Mul", [inner, _constant(builder, f"{name}.sqrt_2_over_pi", root)], f"{name}.scaled")
        curve = _append(builder, "Tanh", [scaled], f"{name}.tanh")
    else:
        scaled = _append(
            builder,
            "Mul",
            [x, _constant(builder, f"{name}.sqrt_half", np.array(0.5**0.5, np.float32))],
            f"{name}.scaled",
        )
        curve = _append(builder, "Erf", [scaled], f"{name}.erf")
    plus_one = _append(
        builder, "Add", [curve, _constant(builder, f"{name}.one", np.array(1.0, np.float32))], f"{name}.plus_one"
    )
    product = _append(builder, "Mul", [x, plus_one], f"{name}.product")
    builder.node("Mul", [product, _constant(builder, f"{name}.half", np.array(0.5, np.float32))], site)


def _hardswish(builder: _Builder, site: Site) -> None:
    # x * HardSigmoid(x) with torch's slope and offset (HardSwish exists only from opset 14).
    gate = _append(builder, "HardSigmoid", [site.inputs[0]], f"{site.name}.gate", alpha=1 / 6, beta=0.5)
    builder.node("Mul", [site.inputs[0], gate], site)


def _relu6(builder: _Builder, site: Site) -> None:
    low, high = (
        _constant(builder, f"{site.name}.{end}", np.array(v, np.float32)) for end, v in (("low", 0), ("high", 6))
    )
    builder.node("Clip", [site.inputs[0], low, high], site)


def _leaky_relu(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, LeakyRelu)
    builder.node("LeakyRelu", [site.inputs[0]], site, alpha=op.negative_slope)


def _hardsigmoid(builder: _Builder, site: Site) -> None:
    builder.node("HardSigmoid", [site.inputs[0]], site, alpha=1 / 6, beta=0.5)


def _silu(builder: _Builder, site: Site) -> None:
    gate = _append(builder, "Sigmoid", [site.inputs[0]], f"{site.name}.gate")
    builder.node("Mul", [site.inputs[0], gate], site)


def _mish(builder: _Builder, site: Site) -> None:
    # x * tanh(softplus(x)) (Mish exists only from opset 18).
    softplus = _append(builder, "Softplus", [site.inputs[0]], f"{site.name}.softplus")
    gate = _append(builder, "Tanh", [softplus], f"{site.name}.tanh")
    builder.node("Mul", [site.inputs[0], gate], site)


def _layer_scale(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, LayerScale)
    # The (C,) parameter, under the node's own name, as a (C, 1, 1) column broadcast over NCHW.
    column = _reshape(builder, builder.weight(site.name), [op.channels, 1, 1], f"{site.name}.column")
    builder.node("Mul", [site.inputs[0], column], site)


def _pointwise_linear(builder: _Builder, site: Site) -> None:
    op = site.node.op
    assert isinstance(op, PointwiseLinear)
    # The (out, in) weight viewed as a 1×1 convolution's (out, in, 1, 1): the same sums per pixel.
    weight = builder.weight(f"{site.name}.weight")
    kernel = _reshape(builder, weight, [op.out_channels, op.in_channels, 1, 1], f"{site.name}.kernel")
    inputs = [site.inputs[0], kernel] + ([builder.weight(f"{site.name}.bias")] if op.bias else [])
    builder.node("Conv", inputs, site, kernel_shape=[1, 1])


EMITTERS: dict[str, Emitter] = {
    "conv": _conv,
    "batch_norm": _batch_norm,
    "group_norm": _group_norm,
    "relu": _relu,
    "max_pool": _max_pool,
    "avg_pool": _avg_pool,
    "global_average_pool": _global_average_pool,
    "flatten": _flatten,
    "linear": _linear,
    "add": _add,
    "sigmoid": _sigmoid,
    "mul": _mul,
    "clamp": _clamp,
    "spatial_softmax": _spatial_softmax,
    "weighted_spatial_sum": _weighted_spatial_sum,
    "subsample": _subsample,
    "pad": _pad,
    "pad_channels": _pad_channels,
    "blur_pool": _blur_pool,
    "channel_conv": _channel_conv,
    "drop_path": _drop_path,
    "channel_slice": _channel_slice,
    "concat": _concat,
    "softmax": _softmax,
    "layer_norm": _layer_norm,
    "gelu": _gelu,
    "hardswish": _hardswish,
    "relu6": _relu6,
    "leaky_relu": _leaky_relu,
    "hardsigmoid": _hardsigmoid,
    "silu": _silu,
    "mish": _mish,
    "tanh": lambda builder, site: builder.node("Tanh", [site.inputs[0]], site),
    "layer_scale": _layer_scale,
    "pointwise_linear": _pointwise_linear,
}
assert set(EMITTERS) == set(PRIMITIVE_OP_KINDS), "every primitive op kind needs an ONNX emitter"


def module_output_name(graph: Graph, index: int) -> str:
    """The ONNX name of module ``index``'s output: ``output`` for the last module, else the module
    path (``layer1.0``), or its role where the path is empty (``stem``)."""
    module = graph.modules[index]
    if module.holds_blocks and not module.after_blocks:  # its path names the transition's output
        return module.canonical(module.output)
    return OUTPUT_NAME if index == len(graph.modules) - 1 else module.path or module.role


# Protobuf's wire format (protobuf.dev/programming-guides/encoding) for the three fields framed by
# hand below; every other byte comes from protobuf's own serialiser.
_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_RAW_DATA = 9  # TensorProto.raw_data
_LENGTH_DELIMITED = 2  # the wire type of strings, bytes and messages

Chunk = bytes | memoryview


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while value >= 0x80:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _length_prefix(number: int, length: int) -> bytes:
    """The key and length that start a length-delimited field ``number`` of ``length`` bytes."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(length)


def _fields_around(message: Message, number: int) -> tuple[bytes, bytes]:
    """``message`` serialised in two parts: its fields numbered below ``number``, and above it.

    Protobuf writes fields in field-number order, so ``below + (field number's records) + above``
    is byte for byte the serialisation of the whole message.
    """
    below, above = type(message)(), type(message)()
    below.CopyFrom(message)
    above.CopyFrom(message)
    for descriptor, _ in message.ListFields():
        if descriptor.number >= number:
            below.ClearField(descriptor.name)
        if descriptor.number <= number:
            above.ClearField(descriptor.name)
    return below.SerializeToString(), above.SerializeToString()


def _byte_view(array: npt.NDArray[Any]) -> memoryview:
    # ndarray.data: the array's buffer as a memoryview, which numpy's stubs type (memoryview(array)
    # needs the buffer protocol, which they declare for Python 3.12 on only).
    return array.reshape(-1).data.cast("B")


Framed = bytes | TensorData
"""A serialised model before its data are produced: protobuf bytes, and each tensor's data."""


def _produce(framed: list[Framed], buffer: Array | None) -> Iterator[Chunk]:
    """The chunks of ``framed``: each array as a view of itself, each ScaledWeight computed into
    ``buffer`` (the view yielded is overwritten by the next one: write it before asking for more)
    or, without ``buffer``, into a new array."""
    for item in framed:
        if isinstance(item, bytes):
            yield item
        elif isinstance(item, ScaledWeight):
            yield _byte_view(item.compute(buffer))
        else:
            yield _byte_view(item)


@dataclass(frozen=True)
class OnnxModel:
    """An emitted ONNX model: ``skeleton``, a ModelProto whose initializers carry name, type and
    dims but no data, and ``data``, each initializer's data in the same order.

    The two are kept apart so that no weight is copied on the way to a file: the serialisation is
    framed by hand around the arrays' own buffers (:meth:`serialized`), and :func:`save_model`
    writes those buffers straight out. Building a ModelProto with the data inside (:meth:`proto`)
    copies every weight into it, and serialising that copies them all again: on resnet152 those
    copies were most of the emission time.

    NOTE: ``data`` may share memory with the weights given to :func:`emit_model`; changing those
    arrays before the model is written changes the model.
    """

    skeleton: onnx.ModelProto
    data: tuple[TensorData, ...]

    def proto(self) -> onnx.ModelProto:
        """The whole model as one ModelProto, each initializer's data in its ``raw_data`` (copied)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.skeleton)
        for tensor, data in zip(model.graph.initializer, self.data, strict=True):
            tensor.raw_data = (data.compute() if isinstance(data, ScaledWeight) else data).tobytes()
        return model

    def to_bytes(self) -> bytes:
        """The serialised model in one ``bytes``: ``proto().SerializeToString()``, with one copy of
        the weights instead of two."""
        return b"".join(self.serialized())

    def serialized(self) -> list[Chunk]:
        """The model's protobuf serialisation, byte for byte ``proto().SerializeToString()``, as
        chunks to be written in order; the weights' chunks are views of :attr:`data`, not copies."""
        return list(_produce(self._framed(data_file=None)[0], buffer=None))

    def _framed(self, data_file: str | None) -> tuple[list[Framed], list[Framed]]:
        """The model and, with ``data_file``, that external data file, as protobuf bytes framed
        around the tensors' data.

        With ``data_file``, every tensor of at least ``_EXTERNAL_MINIMUM_BYTES`` moves out to it,
        each starting on an ``_EXTERNAL_ALIGNMENT`` boundary so that runtimes can memory-map it,
        and its record says where (``location`` relative, so the pair can be moved together).
        """
        graph = self.skeleton.graph
        initializers: list[Framed] = []
        external: list[Framed] = []
        initializer_bytes = offset = 0
        for tensor, data in zip(graph.initializer, self.data, strict=True):
            if data_file is not None and data.nbytes >= _EXTERNAL_MINIMUM_BYTES:
                padding = -offset % _EXTERNAL_ALIGNMENT
                offset += padding
                external += [bytes(padding), data] if padding else [data]
                moved = TensorProto()
                moved.CopyFrom(tensor)
                for key, value in (("location", data_file), ("offset", str(offset)), ("length", str(data.nbytes))):
                    entry = moved.external_data.add()
                    entry.key, entry.value = key, value
                moved.data_location = TensorProto.EXTERNAL
                offset += data.nbytes
                record = moved.SerializeToString()
                record = _length_prefix(_GRAPH_INITIALIZER, len(record)) + record
                initializers.append(record)
                initializer_bytes += len(record)
                continue
            # raw_data is the highest-numbered field an initializer has, so it goes last.
            head = tensor.SerializeToString() + _length_prefix(_TENSOR_RAW_DATA, data.nbytes)
            head = _length_prefix(_GRAPH_INITIALIZER, len(head) + data.nbytes) + head
            initializers += [head, data]
            initializer_bytes += len(head) + data.nbytes
        graph_below, graph_above = _fields_around(graph, _GRAPH_INITIALIZER)
        model_below, model_above = _fields_around(self.skeleton, _MODEL_GRAPH)
        graph_length = len(graph_below) + initializer_bytes + len(graph_above)
        opening = model_below + _length_prefix(_MODEL_GRAPH, graph_length) + graph_below
        return [opening, *initializers, graph_above + model_above], external


def emit_model(
    graph: Graph,
    weights: Mapping[str, npt.NDArray[np.generic]] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    fold_bn: bool = False,
    seed: int = 0,
    block_outputs: bool = False,
    fixed_size: bool = False,
    features: Sequence[FeaturePoint] | None = None,
) -> OnnxModel:
    """The ONNX model of ``graph``: input ``input`` ``(batch, C, H, W)``, output ``output``.

    With ``features`` (maps of :func:`~rescompile.backends.surface.feature_points`), the model is
    timm's ``features_only`` model instead: one output per map, in network order, named as timm
    names its module (``act1``, ``layer1``), and nothing computed after the last map.

    ``batch`` is dynamic; ``H`` and ``W`` are too, unless ``fixed_size`` or the network holds its
    declared size (:func:`fixed_size_reason`), when they are the declared ones.

    ``weights`` are canonical (torch layout, checked strictly); None draws fresh ones with
    :func:`initial_weights` and ``seed``. ``fold_bn`` folds each BatchNorm into the conv before it
    (the conv then gets a bias, ``layer1.0.conv1.bias``). ``block_outputs`` adds every module's
    output as an extra graph output (``stem``, ``layer1.0``, ...), for block-by-block comparison
    with other backends.

    NOTE: ``fold_bn`` is off by default. Kept as BatchNormalization, every canonical parameter is
    in the file under its own name, so the file can be read back into canonical weights, and the
    graph reads as the spec does; ONNX Runtime fuses conv and BatchNorm itself when it loads a
    model, so folding here gains no speed there (benchmarks/onnx_emit.py measures the same
    latency). Fold for runtimes that don't fuse.
    """
    if opset not in SUPPORTED_OPSETS:
        raise RescompileError(
            f"ONNX opset {opset} is not supported: the ONNX backend emits opsets "
            f"{SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})"
        )
    if weights is None:
        weights = initial_weights(graph, seed)
    else:
        check_weights(graph, weights)
    folds: dict[str, Fold] = {}
    if fold_bn:  # the weights are the unfolded graph's: each fold is computed from them as they stream
        graph = lower_for_inference(graph)
        folds = {fold.conv: fold for fold in all_folds(graph)}
    dynamic = not fixed_size and fixed_size_reason(graph) is None
    builder = _Builder(weights, dynamic)
    value_names: set[str] = {INPUT_NAME}
    outputs: list[onnx.ValueInfoProto] = []
    taps = {} if features is None else {feature_node(graph, point): point.module for point in features}
    previous = INPUT_NAME
    held: dict[str, str] = {}  # the values of the half before a stage's blocks its transition holds
    for index, module in enumerate(graph.modules):
        values = {MODULE_INPUT: previous, **{name: held[name] for name, _ in module.carried}}
        for node in module.nodes:
            name = module.canonical(node.name)
            fold = folds.get(name)
            # A folded conv computes the value its BatchNorm computed, and keeps that value's name.
            value_name = fold.batch_norm if fold is not None else name
            if "" in node.op.tensors():  # its weight holds the node's own name (a layer scale's)
                value_name = f"{name}.output"
            output = module_output_name(graph, index) if node.name == module.output else value_name
            if output in value_names:
                raise RescompileError(f"{name}: the ONNX value name {output!r} is used twice", node.source)
            value_names.add(output)
            values[node.name] = output
            site = Site(module, node, name, tuple(values[value] for value in node.inputs), output, fold)
            emitter = EMITTERS.get(node.op.kind)
            if emitter is None:
                raise _cannot(site, "no emitter for this op kind")
            emitter(builder, site)
            tap = taps.pop((index, node.name), None)
            if tap is not None:
                assert node.shape is not None, "shapes not inferred"
                outputs.append(_feature_output(builder, output, tap, node.shape, dynamic, value_names))
            if features is not None and not taps:
                break
        if features is not None and not taps:
            break  # every map is out: the rest (later stages, the head) would be dead code
        previous = values[module.output]
        held = values if module.holds_blocks and not module.after_blocks else held
        assert module.out_shape is not None, "shapes not inferred"
        if block_outputs and index < len(graph.modules) - 1:
            outputs.append(_value_info(previous, module.out_shape, dynamic))
    model = builder.model
    model.graph.name = graph.name
    model.graph.doc_string = graph.description
    channels, *size = graph.input_shape
    input_dims = [channels, HEIGHT_DIMENSION, WIDTH_DIMENSION] if dynamic else [channels, *size]
    model.graph.input.append(
        helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIMENSION, *input_dims])
    )
    logits = [] if features is not None else [_value_info(OUTPUT_NAME, graph.output_shape, dynamic)]
    model.graph.output.extend([*logits, *outputs])
    opset_id = helper.make_opsetid("", opset)
    model.opset_import.append(opset_id)
    # The oldest IR version that carries this opset, for the widest range of runtimes.
    model.ir_version = helper.find_min_ir_version_for([opset_id])
    model.producer_name = "rescompile"
    model.producer_version = __version__
    model.doc_string = f"{graph.name}, compiled from its rescompile spec"
    return OnnxModel(model, tuple(builder.data))


def _feature_output(
    builder: _Builder, value: str, name: str, shape: tuple[int, ...], dynamic: bool, value_names: set[str]
) -> onnx.ValueInfoProto:
    """The graph output ``name`` (a feature map's module name) of ``value``: the value itself where
    it already has that name (a stem node's, ``act1``), else an Identity renaming it
    (``layer1.2`` -> ``layer1``)."""
    if value != name:
        if name in value_names:
            raise RescompileError(f"the feature map {name!r} has the name of another ONNX value")
        value_names.add(name)
        builder.model.graph.node.append(helper.make_node("Identity", [value], [name], name=f"{name}.output"))
    return _value_info(name, shape, dynamic)


def _value_info(name: str, shape: tuple[int, ...], dynamic: bool) -> onnx.ValueInfoProto:
    """A value's type: with a dynamic input size, an image's height and width are left unnamed
    (each a function of ``H`` or ``W`` that ONNX cannot state)."""
    dims: list[int | str | None] = [BATCH_DIMENSION, *shape]
    if dynamic and len(shape) == 3:
        dims[2:] = [None, None]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def fixed_size_reason(graph: Graph) -> str | None:
    """Why ``graph`` runs at its declared height and width only, or None when it runs at any size
    its strides allow. A value is size-free when a global pool made it 1×1, or when it is computed
    from size-free values alone; a flatten of any other value hands a fixed number of features to
    the layer after it (a head that flattens a 7×7 map, or pools it with a 7×7 kernel)."""
    size_free_output = False
    for module in graph.modules:
        size_free = {MODULE_INPUT} if size_free_output else set()
        for node in module.nodes:
            if isinstance(node.op, GlobalAveragePool) or (node.inputs and set(node.inputs) <= size_free):
                size_free.add(node.name)
            elif isinstance(node.op, Flatten):
                _, height, width = node.in_shapes[0]
                return (
                    f"'{module.canonical(node.name)}' flattens a {height}×{width} map that no global pool made, "
                    "so the number of features after it depends on the input size"
                )
        size_free_output = module.output in size_free
    return None


def save_model(model: OnnxModel, path: str | os.PathLike[str]) -> None:
    """Write ``model`` to ``path`` reproducibly (same model, same bytes) and atomically.

    A model near or over 2 GiB (protobuf's limit) is written with its large tensors in
    ``PATH.data`` beside it (``location`` relative, so the pair can be moved together). Any failure
    raises ``RescompileError("cannot write PATH: reason")`` and leaves existing files untouched.
    """
    target = Path(path)
    # One buffer for every ScaledWeight in turn: the writer writes each chunk before the next is made.
    largest = max((data.weight.size for data in model.data if isinstance(data, ScaledWeight)), default=0)
    buffer = np.empty(largest, _RAW_FLOAT)
    if sum(data.nbytes for data in model.data) + _SKELETON_ALLOWANCE < _PROTOBUF_LIMIT:
        write_atomically([(target, _produce(model._framed(data_file=None)[0], buffer))])
        return
    data_path = target.with_name(f"{target.name}.data")
    framed, framed_data = model._framed(data_file=data_path.name)
    write_atomically([(data_path, _produce(framed_data, buffer)), (target, _produce(framed, buffer))])


ModelSource = OnnxModel | onnx.ModelProto | bytes | str | os.PathLike[str]


def run_onnxruntime(model: ModelSource, x: npt.NDArray[Any]) -> Array:
    """The ``output`` of ``model`` (emitted, a ModelProto, its bytes, or a file) on ``x``, run by ONNX
    Runtime's CPU provider in fp32. A model with external data must be given as its file."""
    return onnxruntime_outputs(model, x)[OUTPUT_NAME]


def onnxruntime_outputs(model: ModelSource, x: npt.NDArray[Any]) -> dict[str, Array]:
    """Every graph output by name, in graph order: ``output``, then with ``block_outputs=True``
    ``stem``, ``layer1.0``, ..."""
    import onnxruntime  # type: ignore[import-untyped]  # ships no type information (no py.typed)

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    source: bytes | str
    if isinstance(model, OnnxModel):
        source = model.to_bytes()
    elif isinstance(model, onnx.ModelProto):
        source = model.SerializeToString()
    else:
        source = model if isinstance(model, bytes) else os.fspath(model)
    session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    results = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})
    names = [output.name for output in session.get_outputs()]
    return {name: np.asarray(result, dtype=np.float32) for name, result in zip(names, results, strict=True)}


# --- the backend interface ------------------------------------------------------------------------


def emit(graph: Graph, options: EmitOptions) -> Writer:
    """The model as the command line writes it: ``options.weights`` embedded, or fresh weights
    drawn with ``options.seed`` (and ``zero_init_residual``); the opset, BatchNorm folded or not."""
    if options.weights is not None:
        weights = read_weights(options.weights)
    else:
        weights = initial_weights(graph, options.seed, options.zero_init_residual)
    opset = DEFAULT_OPSET if options.opset is None else options.opset
    features = None
    if options.features is not None:
        points = feature_points(graph)
        given = f"--features {','.join(map(str, options.features))}"
        chosen = chosen_indices(graph.name, len(points), options.features, given)
        features = [points[index] for index in sorted(chosen)]
    model = emit_model(
        graph, weights, opset=opset, fold_bn=options.fold_bn, fixed_size=options.fixed_size, features=features
    )
    return functools.partial(save_model, model)


def build_module(graph: Graph) -> onnx.ModelProto:
    """The model of ``graph`` with :func:`initial_weights`, as the ModelProto ONNX's own tools take
    (its weights copied in; :func:`emit_model` is the form that writes files without copying)."""
    return emit_model(graph).proto()


def _weight_tensors(model: onnx.ModelProto, graph: Graph) -> dict[str, TensorProto]:
    """The initializer of each canonical weight of ``graph``, checked to be there and of its shape:
    a model with BatchNorm folded has no initializers for BatchNorm and is refused."""
    tensors = {tensor.name: tensor for tensor in model.graph.initializer}
    expected = weight_shapes(graph)
    problems = shape_mismatches(expected, {name: tuple(tensors[name].dims) for name in expected if name in tensors})
    if problems:
        raise RescompileError(f"the ONNX model does not hold the weights of {graph.name}: {problems}")
    return {name: tensors[name] for name in expected}


def load_weights(model: onnx.ModelProto, graph: Graph, weights: Mapping[str, Array]) -> None:
    check_weights(graph, weights)
    for name, tensor in _weight_tensors(model, graph).items():
        tensor.raw_data = np.asarray(weights[name], dtype=_RAW_FLOAT).tobytes()


def to_weights(model: onnx.ModelProto, graph: Graph) -> Weights:
    return {
        name: np.asarray(numpy_helper.to_array(tensor), dtype=np.float32)
        for name, tensor in _weight_tensors(model, graph).items()
    }


def count_parameters(model: onnx.ModelProto) -> int:
    """ONNX has no notion of trainable: the float initializers but BatchNorm's running statistics,
    which are the inputs 3 and 4 of a BatchNormalization node (the int64 initializers hold the
    index and shape constants of Slice, Pad and Reshape; fixed filters are Constant nodes)."""
    statistics = {name for node in model.graph.node if node.op_type == "BatchNormalization" for name in node.input[3:5]}
    return sum(
        int(np.prod(tensor.dims))
        for tensor in model.graph.initializer
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in statistics
    )


def module_outputs(graph: Graph, weights: Mapping[str, Array], inputs: Array) -> Outputs:
    results = onnxruntime_outputs(emit_model(graph, weights, block_outputs=True), inputs)
    names = {module_output_name(graph, index) for index in range(len(graph.modules))}
    return {name: results[name if name in names else OUTPUT_NAME] for name in module_names(graph)}


__all__ = [
    "BATCH_DIMENSION",
    "DEFAULT_OPSET",
    "EMITTERS",
    "HEIGHT_DIMENSION",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "SUPPORTED_OPSETS",
    "WIDTH_DIMENSION",
    "OnnxModel",
    "build_module",
    "count_parameters",
    "emit",
    "emit_model",
    "fixed_size_reason",
    "load_weights",
    "module_output_name",
    "module_outputs",
    "onnxruntime_outputs",
    "run_onnxruntime",
    "save_model",
    "to_weights",
]
