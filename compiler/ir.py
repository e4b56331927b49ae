"""The typed IR: a frozen graph of modules (stem, blocks, head), each a flat list of op nodes.

The ops and their semantics (explicit padding pairs, BatchNorm's conventions, pooling modes) are
the op table, :mod:`rescompile.compiler.ops`; their names are re-exported here.

Values inside a module are named: ``input`` is the module input, every other value is the
output of the node of that name. Canonical names (``layer1.0.conv2``) are the module path joined
with the node name, and are the torchvision state_dict prefixes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rescompile.compiler.ops import (
    OP_KINDS,
    OP_TYPES,
    OPS,
    SHORTCUT_VALUE,
    Add,
    Attribute,
    AvgPool,
    BatchNorm,
    BlurPool,
    ChannelConv,
    ChannelSlice,
    Concat,
    Conv,
    DropPath,
    Flatten,
    GlobalAveragePool,
    GroupNorm,
    Linear,
    MaxPool,
    Op,
    Pad,
    PadChannels,
    Padding,
    Pair,
    Real,
    Relu,
    Shape,
    Softmax,
    Subsample,
    SymbolicOp,
)
from rescompile.spec.errors import Location
from rescompile.spec.expressions import Expression, Value

MODULE_INPUT = "input"

__all__ = [
    "MODULE_INPUT",
    "OP_KINDS",
    "OP_TYPES",
    "Add",
    "Attribute",
    "AvgPool",
    "BatchNorm",
    "BlurPool",
    "ChannelConv",
    "ChannelSlice",
    "Concat",
    "Conv",
    "Definition",
    "DefinitionRole",
    "DropPath",
    "Flatten",
    "FoldedNorm",
    "GlobalAveragePool",
    "Graph",
    "GroupNorm",
    "Linear",
    "MaxPool",
    "Module",
    "ModuleRole",
    "Node",
    "Op",
    "Pad",
    "PadChannels",
    "Padding",
    "Pair",
    "Relu",
    "Shape",
    "Softmax",
    "Stage",
    "Subsample",
    "SymbolicNode",
    "SymbolicOp",
    "container_span",
]


@dataclass(frozen=True)
class FoldedNorm:
    """A BatchNorm folded into a conv for inference (:mod:`rescompile.compiler.fold`)."""

    batch_norm: str
    """Its node name, local to the module or definition, as the conv's is."""
    epsilon: Real
    """A number in a module; in a definition, an expression where the BatchNorm's is one."""
    conv_bias: bool
    """Whether the conv had a bias of its own before folding."""


@dataclass(frozen=True)
class Node:
    """One op application. ``name`` is local to the module (``conv1``, ``downsample.0``)."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    in_shapes: tuple[Shape, ...] = ()
    shape: Shape | None = None
    source: Location | None = None
    folded: FoldedNorm | None = None
    """In a graph lowered for inference: the BatchNorm folded into this conv, whose value it computes."""


ModuleRole = Literal["stem", "transition", "block", "head"]


@dataclass(frozen=True)
class Module:
    """A stem, a residual block or a head: an instance of one part, with its parameters bound.

    ``path`` is the canonical prefix (``layer2.0``; the network's ``naming`` sets the stage's
    part); the stem and head have an empty path because torchvision keeps their layers at the top
    level (``conv1``, ``fc``); their node names may nest them (timm's ``stem.conv``, ``head.fc``).
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
    stage_path: str | None = None
    """A block's or a transition's stage (``stages.1.blocks``): a transition runs before that stage's
    blocks, or after them."""
    after_blocks: bool = False
    """Whether a transition runs after its stage's blocks (else before them)."""
    holds_blocks: bool = False
    """Whether a transition is one half of a transition that holds its stage's blocks (a stage
    layout): its nodes before the blocks (``after_blocks`` False), or after them, at one path."""
    carried: tuple[tuple[str, Shape], ...] = ()
    """In the half after the blocks: the values of the half before them it reads, with their shapes."""

    @property
    def output(self) -> str:
        return self.nodes[-1].name

    @property
    def stage(self) -> str:
        """The stage's path for a block or a transition (``layer2``, ``stages.1.blocks``);
        ``stem``/``head`` otherwise."""
        if self.role in ("block", "transition"):
            assert self.stage_path is not None, f"{self.path}: a {self.role} without its stage"
            return self.stage_path
        return self.role

    def canonical(self, node_name: str) -> str:
        return f"{self.path}.{node_name}" if self.path else node_name

    def parameter(self, name: str) -> Value:
        return dict(self.parameters)[name]


DefinitionRole = Literal["stem", "transition", "block", "shortcut", "head"]


@dataclass(frozen=True)
class SymbolicNode:
    """A node of a :class:`Definition`: its op with fields over the definition's parameters
    (``out_channels: width * expansion``), including those the op derives from its input
    (a conv's ``in_channels``, itself an expression: ``in_channels``, ``width * 4``)."""

    name: str
    op: SymbolicOp
    inputs: tuple[str, ...]
    """Values read: ``input`` (the definition's input), ``shortcut`` (in a block's residual add), or
    an earlier node's name."""
    source: Location | None = None
    folded: FoldedNorm | None = None
    """As :attr:`Node.folded`."""

    @property
    def kind(self) -> str:
        return self.op.kind

    @property
    def op_type(self) -> type[Op]:
        """Its op's class in the op table, whose traits say what kind of op it is."""
        return OPS[self.op.kind]


@dataclass(frozen=True)
class Definition:
    """A stem, block, shortcut or head as a definition with symbolic parameters: what a source
    backend emits as one class (or function), whatever the number of its instances.

    The names every definition of a role may use without declaring them are bound by the compiler:
    ``in_channels`` always, ``width`` and ``stride`` in blocks, ``out_channels`` and ``stride`` in
    shortcuts."""

    role: DefinitionRole
    name: str
    description: str
    parameters: tuple[tuple[str, Value], ...]
    """Declared parameters with their defaults, in declaration order."""
    derived: tuple[tuple[str, Expression], ...]
    """Values computed from the parameters, in order; nodes may use them."""
    nodes: tuple[SymbolicNode, ...]
    module: str | None = None
    """A shortcut's attribute name in its block (torchvision's ``downsample``)."""
    shortcut_input: str = MODULE_INPUT
    classes: tuple[tuple[str, str], ...] = ()
    """In a block: containers of nodes (``conv2``) that source backends write as classes of their
    own (``SplitAttn``), by path prefix."""
    """In a block: the value its shortcut module reads (the block input, or a node such as a
    pre-activation); the identity shortcut always reads the block input."""
    blocks: tuple[str, Expression] | None = None
    """In a transition that holds its stage's blocks: the node they read and their output channels;
    its nodes after that node run after the blocks (reading their output as ``blocks``)."""
    fixed: tuple[tuple[str, Value], ...] = ()
    """In a block: the parameters its templates were unrolled for, with their values (Res2Net's
    ``scale``): its class is made for them, so they are constants in it, not constructor parameters."""

    @property
    def first_after_blocks(self) -> int:
        """In a transition that holds its stage's blocks: the index of its first node after them
        (its nodes before it are the half before the blocks)."""
        assert self.blocks is not None, f"transition '{self.name}' holds no blocks"
        return next(index for index, node in enumerate(self.nodes) if node.name == self.blocks[0]) + 1

    @property
    def residual(self) -> bool:
        """Whether it has a residual add (a node reading ``shortcut``): a block of a plain network
        has none, nor one whose instances the policy ``none`` gives no shortcut."""
        return any(SHORTCUT_VALUE in node.inputs for node in self.nodes)


def container_span(definition: Definition, prefix: str) -> tuple[range, str]:
    """The indices of a block definition's nodes under ``prefix`` (a container its ``classes``
    writes as a class) and the one value they read from outside; a ValueError says why a
    container cannot be a class (its nodes not consecutive, reading several values, or read from
    outside other than by its last node)."""
    nodes = definition.nodes
    inside = [index for index, node in enumerate(nodes) if node.name.startswith(f"{prefix}.")]
    if not inside or inside != list(range(inside[0], inside[-1] + 1)):
        raise ValueError(f"its nodes ({prefix}.*) must be consecutive, and there must be some")
    names = {nodes[index].name for index in inside}
    outside = sorted({value for index in inside for value in nodes[index].inputs if value not in names})
    last = nodes[inside[-1]].name
    leaks = {value for node in nodes if node.name not in names for value in node.inputs} & (names - {last})
    if len(outside) != 1 or outside[0] == "shortcut" or leaks or definition.shortcut_input in names - {last}:
        raise ValueError(
            f"a class reads one value from outside it ({', '.join(outside)}) and only its last node ({last}) is "
            "read from outside it"
        )
    return range(inside[0], inside[-1] + 1), outside[0]


@dataclass(frozen=True)
class Stage:
    """A stage of the network: where its blocks live, their modules' paths in order, and the
    transition modules that run before and after them (the graph holds the modules:
    :meth:`Graph.blocks_of`, :meth:`Graph.transition_of`, :meth:`Graph.transition_after_of`)."""

    path: str
    """The container of its blocks (``layer2``, ``stages.1.blocks``); where the stages share one
    (``container``), its last block (``features.3``), whose output is the stage's."""
    blocks: tuple[str, ...]
    transition: str | None = None
    """The path of the transition that runs before its blocks, if any."""
    transition_after: str | None = None
    """The path of the transition that runs after its blocks, if any: then its output is the stage's."""
    container: str | None = None
    """The container every stage's blocks share, numbered across the network (torchvision's
    MobileNets: ``features``, holding ``features.1`` ... ``features.17``); None where ``path`` holds
    this stage's blocks alone."""
    held: bool = False
    """Whether its transition holds its blocks: the two are halves of one transition at one path
    (``stages.1``), its blocks inside it (``stages.1.blocks``)."""


@dataclass(frozen=True)
class Graph:
    """The network: its definitions, and the flat view of its instances (``modules``: the stem,
    every block in network order, the head), each with concrete shapes and canonical names."""

    name: str
    description: str
    input_shape: Shape
    modules: tuple[Module, ...]
    definitions: tuple[Definition, ...]
    source: Location | None = None
    files: tuple[Path, ...] = field(default=(), compare=False)
    """The spec and part files the graph was read from: no output may replace them."""
    stages: tuple[Stage, ...] = ()
    """The stages in network order, each with blocks."""
    block_names: str = "{index}"
    """How a stage names its blocks (the network's ``naming.blocks``): ``{index}`` (``layer1.0``, an
    ``nn.Sequential`` of blocks) or a pattern such as ``b{number}`` (timm's RegNet: ``s1.b1``)."""

    def block_name_source(self) -> str | None:
        """The Python f-string naming block ``index`` of a stage (``f"b{index + 1}"``), or None
        where blocks are numbered from 0 (positions in a Sequential) or in a container the stages
        share (each stage's statement names its blocks)."""
        if self.block_names == "{index}" or any(stage.container is not None for stage in self.stages):
            return None
        return 'f"' + self.block_names.replace("{number}", "{index + 1}") + '"'

    def definition(self, role: DefinitionRole, name: str) -> Definition:
        return next(item for item in self.definitions if item.role == role and item.name == name)

    @property
    def output_shape(self) -> Shape:
        shape = self.modules[-1].out_shape
        assert shape is not None, "shapes not inferred"
        return shape

    @property
    def blocks(self) -> tuple[Module, ...]:
        return tuple(module for module in self.modules if module.role == "block")

    @property
    def transitions(self) -> tuple[Module, ...]:
        return tuple(module for module in self.modules if module.role == "transition")

    @property
    def residual(self) -> bool:
        return any(module.shortcut is not None for module in self.blocks)

    def stage_names(self) -> list[str]:
        return [stage.path for stage in self.stages]

    def blocks_of(self, stage: Stage) -> tuple[Module, ...]:
        return tuple(self._by_path[(path, False)] for path in stage.blocks)

    def transition_of(self, stage: Stage) -> Module | None:
        return None if stage.transition is None else self._by_path[(stage.transition, False)]

    def transition_after_of(self, stage: Stage) -> Module | None:
        return None if stage.transition_after is None else self._by_path[(stage.transition_after, True)]

    @functools.cached_property
    def _by_path(self) -> dict[tuple[str, bool], Module]:
        """Blocks and transitions by path and whether they run after their stage's blocks (the two
        halves of a transition holding its blocks share a path)."""
        return {
            (module.path, module.after_blocks): module
            for module in self.modules
            if module.role in ("block", "transition")
        }

    def nodes(self) -> Iterator[tuple[Module, Node]]:
        for module in self.modules:
            for node in module.nodes:
                yield module, node
