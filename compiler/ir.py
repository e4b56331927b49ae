"""The typed IR: a frozen graph of modules (stem, blocks, head), each a flat list of op nodes.

Every attribute has explicit semantics so that backends never guess:

* shapes exclude the batch dimension: ``(channels, height, width)`` or ``(features,)``;
* padding is explicit ``((top, bottom), (left, right))`` pairs, never "SAME";
* BatchNorm uses torch's conventions: ``y = (x - mean) / sqrt(var + epsilon) * weight + bias``
  and ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased* batch
  variance feeding ``running_var``;
* pooling states ``ceil_mode`` and ``count_include_pad``; convs state ``bias``.

Values inside a module are named: ``input`` is the module input, every other value is the
output of the node of that name. Canonical names (``layer1.0.conv2``) are the module path joined
with the node name, and are the torchvision state_dict prefixes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rescompile.spec.errors import Location
from rescompile.spec.expressions import Value
from rescompile.spec.models import BlockSpec, HeadSpec, NetworkSpec, ShortcutSpec, StemSpec

Shape = tuple[int, ...]
Pair = tuple[int, int]
Padding = tuple[Pair, Pair]

MODULE_INPUT = "input"


@dataclass(frozen=True)
class Conv:
    kind: ClassVar[str] = "conv"
    in_channels: int
    out_channels: int
    kernel: Pair
    stride: Pair
    padding: Padding
    dilation: Pair
    groups: int
    bias: bool


@dataclass(frozen=True)
class BatchNorm:
    kind: ClassVar[str] = "batch_norm"
    channels: int
    epsilon: float
    momentum: float
    zero_init: bool


@dataclass(frozen=True)
class Relu:
    kind: ClassVar[str] = "relu"


@dataclass(frozen=True)
class MaxPool:
    kind: ClassVar[str] = "max_pool"
    kernel: Pair
    stride: Pair
    padding: Padding
    ceil_mode: bool


@dataclass(frozen=True)
class AvgPool:
    kind: ClassVar[str] = "avg_pool"
    kernel: Pair
    stride: Pair
    padding: Padding
    ceil_mode: bool
    count_include_pad: bool


@dataclass(frozen=True)
class GlobalAveragePool:
    """Mean over height and width, keeping them as 1×1 (torch's ``AdaptiveAvgPool2d((1, 1))``)."""

    kind: ClassVar[str] = "global_average_pool"


@dataclass(frozen=True)
class Flatten:
    """``(C, H, W) -> (C * H * W,)`` in channel-major order, as ``torch.flatten(x, 1)``."""

    kind: ClassVar[str] = "flatten"


@dataclass(frozen=True)
class Linear:
    kind: ClassVar[str] = "linear"
    in_features: int
    out_features: int
    bias: bool


@dataclass(frozen=True)
class Add:
    kind: ClassVar[str] = "add"
    shortcut_input: int | None
    """Which input (0 or 1) is the block's shortcut when this is the residual merge, else None."""

    @property
    def residual(self) -> bool:
        return self.shortcut_input is not None


@dataclass(frozen=True)
class Subsample:
    """``x[:, :, ::stride, ::stride]``: output size ``ceil(size / stride)``."""

    kind: ClassVar[str] = "subsample"
    stride: int


@dataclass(frozen=True)
class PadChannels:
    """Zero channels: ``before`` in front of the input's channels and ``after`` behind them."""

    kind: ClassVar[str] = "pad_channels"
    before: int
    after: int


Op = Conv | BatchNorm | Relu | MaxPool | AvgPool | GlobalAveragePool | Flatten | Linear | Add | Subsample | PadChannels
OP_TYPES: tuple[type[Op], ...] = (
    Conv,
    BatchNorm,
    Relu,
    MaxPool,
    AvgPool,
    GlobalAveragePool,
    Flatten,
    Linear,
    Add,
    Subsample,
    PadChannels,
)
OP_KINDS: tuple[str, ...] = tuple(op_type.kind for op_type in OP_TYPES)


@dataclass(frozen=True)
class Node:
    """One op application. ``name`` is local to the module (``conv1``, ``downsample.0``)."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    in_shapes: tuple[Shape, ...] = ()
    shape: Shape | None = None
    source: Location | None = None


ModuleRole = Literal["stem", "block", "head"]


@dataclass(frozen=True)
class Module:
    """A stem, a residual block or a head: an instance of one part, with its parameters bound.

    ``path`` is the canonical prefix (``layer2.0``); the stem and head have an empty path because
    torchvision keeps their layers at the top level (``conv1``, ``fc``).
    """

    path: str
    role: ModuleRole
    type_name: str
    parameters: tuple[tuple[str, Value], ...]
    shortcut: str | None
    """The shortcut part's name, ``"identity"``, or None for a plain (non-residual) block."""
    shortcut_module: str | None
    """Attribute name of the shortcut's layers (``downsample``), None when it has none."""
    nodes: tuple[Node, ...]
    in_shape: Shape
    out_shape: Shape | None = None
    source: Location | None = None

    @property
    def output(self) -> str:
        return self.nodes[-1].name

    @property
    def stage(self) -> str:
        """``layer2`` for block ``layer2.0``; ``stem``/``head`` otherwise."""
        return self.path.split(".")[0] if self.role == "block" else self.role

    def canonical(self, node_name: str) -> str:
        return f"{self.path}.{node_name}" if self.path else node_name

    def parameter(self, name: str) -> Value:
        return dict(self.parameters)[name]


@dataclass(frozen=True)
class Parts:
    """The part definitions a graph was expanded from; source emitters build classes from them."""

    stem: StemSpec
    block: BlockSpec
    head: HeadSpec
    shortcuts: tuple[ShortcutSpec, ...] = field(default=())


@dataclass(frozen=True)
class Graph:
    name: str
    input_shape: Shape
    modules: tuple[Module, ...]
    network: NetworkSpec
    parts: Parts
    source: Location | None = None

    @property
    def output_shape(self) -> Shape:
        shape = self.modules[-1].out_shape
        assert shape is not None, "shapes not inferred"
        return shape

    @property
    def blocks(self) -> tuple[Module, ...]:
        return tuple(module for module in self.modules if module.role == "block")

    @property
    def residual(self) -> bool:
        return any(module.shortcut is not None for module in self.blocks)

    def stage_names(self) -> list[str]:
        names: list[str] = []
        for module in self.blocks:
            if module.stage not in names:
                names.append(module.stage)
        return names

    def nodes(self) -> Iterator[tuple[Module, Node]]:
        for module in self.modules:
            for node in module.nodes:
                yield module, node
