"""timm's model interface over a graph, for the source backends and ``create_model``: the head cut
into the sections ``forward_features`` and ``forward_head`` run, and the feature maps
``features_only`` returns (timm's ``feature_info``).

Both are read from the flat view. A head is cut when it is a chain holding one global average pool
and, after it, one classifier (the last linear, or a convolution, as BiT's 1×1 ``head.fc``): the
nodes before the pool end ``forward_features`` (a pre-activation net's final BN-ReLU), those
between pool and classifier are the pre-logits (ConvNeXt's ``head.norm``, the flatten), those after
it the classifier's tail (BiT's flatten).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rescompile.compiler.ir import MODULE_INPUT, Graph, Module, Node
from rescompile.compiler.ops import Conv, GlobalAveragePool, Linear, Pad
from rescompile.spec.errors import RescompileError

GLOBAL_POOLS = ("avg", "")
"""The ``global_pool`` values a generated model takes: timm's average pool, or none (feature maps
out, which only a model without a classifier can give)."""


@dataclass(frozen=True)
class HeadSections:
    """The head's nodes by section (each a slice of ``head.nodes``)."""

    features: tuple[Node, ...]
    """Run at the end of ``forward_features`` (a final norm and activation)."""
    pool: Node
    pre_logits: tuple[Node, ...]
    classifier: Node
    tail: tuple[Node, ...]
    """After the classifier (BiT's flatten of its 1×1 convolution's output)."""
    num_features: int
    """Channels into the classifier: timm's ``num_features``."""
    num_classes: int


def _is_chain(module: Module) -> bool:
    previous = MODULE_INPUT
    for node in module.nodes:
        if node.inputs != (previous,):
            return False
        previous = node.name
    return True


def head_sections(graph: Graph) -> HeadSections | None:
    """The head cut into timm's sections, or None when it is not one chain with a global average
    pool and a classifier after it (the generated model then has no timm interface)."""
    head = graph.modules[-1]
    if head.role != "head" or not _is_chain(head):
        return None
    pools = [index for index, node in enumerate(head.nodes) if isinstance(node.op, GlobalAveragePool)]
    if len(pools) != 1:
        return None
    pool = pools[0]
    classifiers = range(pool + 1, len(head.nodes))
    after = [index for index in classifiers if isinstance(head.nodes[index].op, Linear | Conv)]
    if not after:
        return None
    classifier = after[-1]
    node = head.nodes[classifier]
    if not node.in_shapes or node.shape is None:
        return None
    return HeadSections(
        features=head.nodes[:pool],
        pool=head.nodes[pool],
        pre_logits=head.nodes[pool + 1 : classifier],
        classifier=node,
        tail=head.nodes[classifier + 1 :],
        num_features=node.in_shapes[0][0],
        num_classes=node.shape[0],
    )


@dataclass(frozen=True)
class FeaturePoint:
    """One feature map of timm's ``feature_info``: its channels, its reduction (input size over
    its size) and the module whose output it is, as timm names it (``act1``, ``layer2``,
    ``stages.1``)."""

    num_chs: int
    reduction: int
    module: str
    after: str
    """The module path (in the generated torch model) after which the map is taken: a stem node's
    (``act1``, ``stem.conv``), or the last one run for the stage (``layer2``, ``stages.1.blocks``, or
    the transition after its blocks: ``stages.1.fuse``)."""

    def as_dict(self) -> dict[str, int | str]:
        return {"num_chs": self.num_chs, "reduction": self.reduction, "module": self.module}


def _reduction(graph: Graph, height: int) -> int:
    return graph.input_shape[1] // height


def _stem_point(graph: Graph) -> FeaturePoint | None:
    """timm's first feature map, taken in the stem: before the stem's last downsampling unit (a
    top-level layer such as ``maxpool``, or a container such as ``maxpool.0``/``maxpool.1``), so
    ResNet's ``act1`` at reduction 2; inside a stem that is one container, before its strided node
    and any padding (BiT's ``stem.conv``); a stem whose first node downsamples is a feature map of
    its own at reduction 2 (RegNet's ``stem``) and none beyond that (ConvNeXt's 4×4 patches). A stem
    that never downsamples (the CIFAR nets') gives its output."""
    stem = graph.modules[0]
    nodes = stem.nodes
    strided = [
        index
        for index, node in enumerate(nodes)
        if node.shape is not None and node.in_shapes and node.shape[1] < node.in_shapes[0][1]
    ]

    def point(index: int, module: str | None = None) -> FeaturePoint:
        node = nodes[index]
        assert node.shape is not None
        name = stem.canonical(node.name)
        return FeaturePoint(node.shape[0], _reduction(graph, node.shape[1]), module or name, name)

    if not strided:
        return point(len(nodes) - 1)
    # A stem's unit is its top-level layer or container; in a container the stages share
    # (torchvision's features), the container's item (features.0).
    shared = {module.stage.split(".")[0] for module in graph.blocks}

    def unit_of(name: str) -> str:
        segments = name.split(".")
        return ".".join(segments[: 2 if segments[0] in shared else 1])

    last = strided[-1]
    unit = unit_of(nodes[last].name)
    start = next(index for index, node in enumerate(nodes) if unit_of(node.name) == unit)
    if start > 0:
        return point(start - 1)
    before = last - 1
    while before >= 0 and isinstance(nodes[before].op, Pad):
        before -= 1
    if before >= 0:
        return point(before)
    output = point(len(nodes) - 1, unit)
    return output if output.reduction == 2 else None


def feature_points(graph: Graph) -> list[FeaturePoint]:
    """timm's ``feature_info`` of ``graph``: the stem's map (:func:`_stem_point`), then each stage's
    output, named as timm names the stage's module (``layer1``; ``stages.0`` for a stage whose
    blocks live in ``stages.0.blocks``)."""
    points = [point] if (point := _stem_point(graph)) is not None else []
    for stage in graph.stages:
        # Its last block, or the transition after its blocks where it has one.
        after = graph.transition_after_of(stage)
        last = after if after is not None else graph.blocks_of(stage)[-1]
        assert last.out_shape is not None
        channels, height, _ = last.out_shape
        module = stage.path.removesuffix(".blocks")
        points.append(
            FeaturePoint(channels, _reduction(graph, height), module, stage.path if after is None else after.path)
        )
    return points


def chosen_indices(
    network: str, count: int, out_indices: Sequence[int] | None, given: str | None = None
) -> tuple[int, ...]:
    """``out_indices`` checked against ``count`` maps, negative ones counted from the end (as
    timm's); None chooses every map. ``given`` says how the user wrote them, for the error
    (default ``out_indices=(...)``)."""
    if out_indices is None:
        return tuple(range(count))
    chosen = tuple(index + count if index < 0 else index for index in out_indices)
    if not chosen or any(not 0 <= index < count for index in chosen) or len(set(chosen)) != len(chosen):
        raise RescompileError(
            f"{given or f'out_indices={tuple(out_indices)!r}'} does not choose among {network}'s {count} feature maps: "
            f"give distinct indices from 0 to {count - 1} (or from -{count} to -1)"
        )
    return chosen


def feature_node(graph: Graph, point: FeaturePoint) -> tuple[int, str]:
    """Where ``point``'s map is computed in the flat view: the index of its module and the name of
    its node there (a stem node, or the output of the stage's last block)."""
    stem = graph.modules[0]
    for node in stem.nodes:
        if stem.canonical(node.name) == point.after:
            return 0, node.name
    stage = [
        index
        for index, module in enumerate(graph.modules)
        if module.stage == point.after or (module.role == "transition" and module.path == point.after)
    ]
    if not stage:
        raise RescompileError(f"{graph.name} computes no feature map {point.module!r} (after {point.after!r})")
    return stage[-1], graph.modules[stage[-1]].output


def forward_paths(graph: Graph) -> list[str] | None:
    """The module paths the generated torch model's ``forward_features`` calls, in order, each on
    the value before it (``conv1``, ..., ``layer1``, ..., ``stages.1.downsample``,
    ``stages.1.blocks``, ..., a pre-activation head's final ``norm``); None where the stem or the
    head is not such a chain."""
    sections = head_sections(graph)
    if sections is None or not _is_chain(graph.modules[0]):
        return None
    paths = [node.name for node in graph.modules[0].nodes]
    # A stage in a container the stages share (features) is its blocks, each called.
    shared = {stage.path for stage in graph.stages if stage.container is not None}
    for module in graph.modules[1:-1]:
        path = module.path if module.role == "transition" or module.stage in shared else module.stage
        if paths[-1] != path:
            paths.append(path)
    return paths + [node.name for node in sections.features]


class FeatureInfo:
    """timm's FeatureInfo: the feature maps of a network (``num_chs``, ``reduction``, ``module``)
    and the ones chosen (``out_indices``). Each getter gives the chosen maps' values with no
    ``idx``, else those of map ``idx`` (an index or a sequence of them, into every map)."""

    def __init__(self, info: list[dict[str, int | str]], out_indices: tuple[int, ...]) -> None:
        self.info = info
        self.out_indices = out_indices

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> int | str | list[int | str]:
        if idx is None:
            return [self.info[index][key] for index in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[index][key] for index in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> int | str | list[int | str]:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> int | str | list[int | str]:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> int | str | list[int | str]:
        return self.get("module", idx)

    def get_dicts(self) -> list[dict[str, int | str]]:
        return [self.info[index] for index in self.out_indices]

    def __getitem__(self, idx: int) -> dict[str, int | str]:
        return self.info[idx]

    def __len__(self) -> int:
        return len(self.info)


@dataclass(frozen=True)
class TimmHead:
    """timm's head and feature options of ``create_model``, applied by the backend's runtime
    (:meth:`rescompile.backends.interface.Runtime.timm_model`) to the model it built."""

    num_classes: int | None = None
    global_pool: str | None = None
    drop_rate: float = 0.0
    features_only: bool = False
    out_indices: Sequence[int] | None = None

    @property
    def graph_classes(self) -> int | None:
        """The classes the graph is built with: a model without a classifier is built with the
        spec's (so its weights load) and has it removed."""
        return None if self.num_classes == 0 else self.num_classes

    def check(self, backend: str, head_options: Mapping[str, frozenset[str]]) -> None:
        """Refuse what ``backend`` does not take and values timm would refuse; ``head_options``:
        every backend's (:attr:`rescompile.backends.interface.Backend.head_options`)."""

        def takers(option: str) -> str:
            return " and ".join(name for name, options in head_options.items() if option in options)

        given = [
            (option, text)
            for option, text, used in (
                ("num_classes", "num_classes=0", self.num_classes == 0),
                ("global_pool", f"global_pool={self.global_pool!r}", self.global_pool is not None),
                ("drop_rate", f"drop_rate={self.drop_rate}", self.drop_rate != 0.0),
            )
            if used
        ]
        if given and not head_options[backend]:
            raise RescompileError(
                f"{', '.join(text for _, text in given)}: timm's head options apply to backends "
                f"{takers('num_classes')}, not '{backend}' ({backend} takes features_only and out_indices)"
            )
        if self.drop_rate and "drop_rate" not in head_options[backend]:
            raise RescompileError(
                f"drop_rate={self.drop_rate}: dropout before the classifier is in the {takers('drop_rate')} model "
                f"only; the {backend} model has none"
            )
        if self.out_indices is not None and not self.features_only:
            raise RescompileError("out_indices chooses feature maps: it needs features_only=True")
        if self.global_pool is not None and self.global_pool not in GLOBAL_POOLS:
            raise RescompileError(f"global_pool={self.global_pool!r}: use 'avg' (the default) or '' (no pooling)")
        if self.global_pool == "" and self.num_classes != 0 and not self.features_only:
            raise RescompileError(
                "global_pool='' (no pooling) needs num_classes=0: the classifier takes pooled features"
            )
        if self.drop_rate < 0.0 or self.drop_rate >= 1.0:
            raise RescompileError(f"drop_rate={self.drop_rate}: a dropout probability is in [0, 1)")

    def reset(self, model: Any, graph: Graph) -> Any:
        """``model`` (torch or flax) with ``num_classes=0`` and ``global_pool`` applied: the model is
        built with the spec's classifier, so that its weights load, and has it removed after."""
        timm_head = self.num_classes == 0 or self.global_pool is not None or self.drop_rate or self.features_only
        if timm_head and not hasattr(model, "reset_classifier"):
            raise RescompileError(
                f"{graph.name}'s head is not one chain of a global average pool and a classifier, so its model "
                "has no timm head options (num_classes=0, global_pool, drop_rate, features_only)"
            )
        if self.num_classes == 0 or self.global_pool is not None:
            model.reset_classifier(0 if self.num_classes == 0 else model.num_classes, self.global_pool)
        return model

    def chosen(self, graph: Graph) -> tuple[int, ...]:
        """The indices into ``feature_info`` of the feature maps ``out_indices`` chooses."""
        return chosen_indices(graph.name, len(feature_points(graph)), self.out_indices)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pretrained_cfg(graph: Graph) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` of a model of ``graph``: its input size, ImageNet's mean and std
    (the specs state no preprocessing; timm's defaults), bilinear resizing and a 0.875 centre crop
    for inputs of ImageNet scale (none for small, CIFAR-sized ones), the classifier's class count."""
    sections = head_sections(graph)
    return {
        "input_size": graph.input_shape,
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "crop_pct": 0.875 if min(graph.input_shape[1:]) >= 128 else 1.0,
        "num_classes": graph.output_shape[0],
        "classifier": None if sections is None else sections.classifier.name,
    }


__all__ = [
    "GLOBAL_POOLS",
    "FeatureInfo",
    "FeaturePoint",
    "HeadSections",
    "TimmHead",
    "chosen_indices",
    "feature_node",
    "feature_points",
    "forward_paths",
    "head_sections",
    "pretrained_cfg",
]
