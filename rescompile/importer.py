"""``rescompile import SOURCE -o FOLDER``: a torchvision, timm or user model as a network spec.

The importer reads from the model what a spec states: its stages (the innermost containers of
repeated blocks in the module hierarchy), their depths, output channels and strides (measured with
forward hooks on a probe input), its input channels and its classes. It then searches the built-in
parts: each combination of the stems, blocks, shortcuts, heads and layouts the built-in networks
use (with their parameters) whose layers the model holds, with the recovered stages, and with the
stem's width and the block's groups, base width and group width read from the model's
convolutions. A candidate is accepted only where it *is*
the model: its canonical weights have the state_dict's names and shapes, the model's state_dict
loads into the compiled torch module with ``strict=True`` and no renaming, and both agree on a
seeded random input (eval mode, random normalisation statistics) within 1e-5 of the output's
scale. Nothing unverified is written: a model no candidate computes is one line naming the module
path where the closest candidate stopped matching.

An ONNX file goes through the same :func:`search` (:mod:`rescompile.onnx_import` gives it the
module tree, the weights and the reference outputs the file's names and onnxruntime give).

NOTES for developers: the choices are data read from ``architectures/*.yaml``, so a new
built-in network widens what imports with no change here. Candidates are ordered shortest spec first, so
that the simplest spec that computes the model is the one written.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rescompile.compiler.ir import Graph
from rescompile.compiler.weights import Weights
from rescompile.frameworks import import_framework
from rescompile.spec.errors import RescompileError, did_you_mean
from rescompile.spec.expressions import Expression, ExpressionError
from rescompile.spec.loader import (
    IDENTITY,
    POLICIES,
    PartKind,
    builtin_directory,
    builtin_networks,
    load_network,
    load_part,
)
from rescompile.spec.models import BlockSpec, NamingSpec, ParameterSpec, PartSpec

if TYPE_CHECKING:
    import torch

TOLERANCE = 1e-5
"""The largest output difference accepted, relative to the output's largest magnitude."""
SEED = 0
SOURCE_FORMS = "torchvision:NAME, timm:NAME or package.module:factory"
REFERENCE_BACKEND = "torch"
"""The backend whose models are the imported model's kind (torch modules), through which each
candidate spec is built and compared."""
_SPEC_KEYS = (
    "naming",
    "stem",
    "stem_parameters",
    "block",
    "block_parameters",
    "shortcut",
    "transition",
    "transition_parameters",
)
"""The keys a candidate takes from its choices, in the order a spec file writes them (stages and the
head follow)."""
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


@dataclass(frozen=True)
class Stage:
    """One stage as the model holds it: ``layer2`` with blocks ``0``, ``1``, ... of one class."""

    path: str
    blocks: tuple[str, ...]
    block_class: str
    out_channels: int
    stride: int


@dataclass(frozen=True)
class Structure:
    """What the model's hierarchy and a probe run say about it."""

    input_channels: int
    classes: int
    stages: tuple[Stage, ...]
    stem_channels: int
    """The model's first convolution's output channels (a stem's width)."""
    stem_out_channels: int
    """The first stage's input channels (the stem's output)."""
    groups: int
    """The largest group count among the first block's convolutions (32 in a ResNeXt)."""
    inner_channels: int
    """The first block's first convolution's output channels (a bottleneck's inner width)."""


@dataclass(frozen=True)
class Imported:
    name: str
    text: str
    graph: Graph
    difference: float
    """The largest output difference found, relative to the output's scale."""
    candidate: int
    """Which of the candidates (counted from 1, shortest spec first) it is."""
    candidates: int


@dataclass(frozen=True)
class _Miss:
    """Why a candidate is not the model: ``progress`` counts the state_dict keys it matched (the
    output check comes after all), ``path`` is the module where it stopped matching."""

    progress: int
    path: str
    reason: str
    text: str


def load_reference(source: str, keywords: Mapping[str, object]) -> tuple[str, torch.nn.Module]:
    """The model ``source`` names, built with ``keywords`` and no pretrained weights, and the name
    its spec gets (``resnet50`` for ``torchvision:resnet50``)."""
    prefix, colon, name = source.partition(":")
    if not colon or not prefix or not name:
        raise RescompileError(f"{source}: expected {SOURCE_FORMS}")
    torch = import_framework("torch", "rescompile import", "torch")
    try:
        if prefix == "torchvision":
            models = import_framework("torchvision.models", f"rescompile import {source}", "test")
            if name not in models.list_models():
                raise RescompileError(f"{source}: no such torchvision model{did_you_mean(name, models.list_models())}")
            model = models.get_model(name, weights=None, **keywords)
        elif prefix == "timm":
            timm = import_framework("timm", f"rescompile import {source}", "test")
            if not timm.is_model(name):
                raise RescompileError(f"{source}: no such timm model{did_you_mean(name, timm.list_models())}")
            model = timm.create_model(name, pretrained=False, **keywords)
        else:
            model = _factory(source, prefix, name)(**keywords)
    except TypeError as error:  # keyword arguments the constructor does not take
        raise RescompileError(f"{source}: {error}") from None
    if not isinstance(model, torch.nn.Module):
        raise RescompileError(f"{source}: gave a {type(model).__name__}, not a torch.nn.Module")
    return spec_name(name), model.eval()


def spec_name(text: str) -> str:
    """The name a spec imported from ``text`` (a model's or a file's name) gets: ``resnet50``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _factory(source: str, module_name: str, attribute: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RescompileError(f"{source}: cannot import {module_name} ({error}); expected {SOURCE_FORMS}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise RescompileError(f"{source}: {module_name} has no callable {attribute}")
    return factory


def default_size(model: torch.nn.Module) -> int | tuple[int, int]:
    """The input size the model was made for: timm's ``pretrained_cfg`` says it; else 224."""
    config = getattr(model, "pretrained_cfg", None)
    size = config.get("input_size") if isinstance(config, Mapping) else None
    if not isinstance(size, tuple | list) or len(size) != 3:
        return 224
    height, width = int(size[1]), int(size[2])
    return height if height == width else (height, width)


@dataclass(frozen=True)
class Reference:
    """What the search compares candidates with, whatever the model's format: its module tree (the
    model itself, or the tree an ONNX file's names give), its structure, a probe input and the
    outputs it computes on it (with randomised normalisation statistics): ``OUTPUT``, and each
    block's output by its path and the first block's input under ``""``."""

    source: str
    modules: torch.nn.Module
    structure: Structure
    probe: npt.NDArray[np.float32]
    outputs: Mapping[str, npt.NDArray[np.float32]]
    unseen: frozenset[str] = frozenset()
    """Ops whose layers the module tree may lack where a candidate has them (``batch_norm`` in an
    ONNX file whose names do not say where its folded BatchNorms were): not looked for."""


@dataclass(frozen=True)
class Layers:
    """The model's modules by path, as the cheap checks before compiling read them."""

    modules: Mapping[str, Any]
    unseen: frozenset[str]
    """As :attr:`Reference.unseen`."""

    def get(self, path: str) -> Any:
        return self.modules.get(path)


OUTPUT = "output"
"""The key of the model's output in :attr:`Reference.outputs` (no module path: those hold dots)."""


def recover_structure(source: str, model: torch.nn.Module, size: int | tuple[int, int]) -> Structure:
    """Stages from the module hierarchy, their channels and strides from a probe run."""
    torch = import_framework("torch", "rescompile import", "torch")
    convolutions = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)]
    if not convolutions:
        raise RescompileError(f"{source}: no nn.Conv2d found; rescompile imports convolutional networks")
    candidates = stage_candidates(model)
    shared = shared_runs(model, [path for path, _ in candidates])
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    blocks = [_join(path, block) for path, run in shared for block in run]
    # A stage's wrapper (CSPNet's stages.0 around stages.0.blocks) may downsample before its blocks.
    wrappers = {_parent(path) for path, _ in candidates} - {""}
    hooked = [*candidates, *((path, model.get_submodule(path)) for path in [*blocks, *sorted(wrappers)])]
    handles = [module.register_forward_hook(_recorder(path, seen)) for path, module in hooked]
    height, width = (size, size) if isinstance(size, int) else size
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, convolutions[0].in_channels, height, width))
    except Exception as error:  # the model's own forward refusing the probe
        raise RescompileError(f"{source}: the model fails on a {height}×{width} probe input: {error}") from None
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(output, torch.Tensor):
        raise RescompileError(f"{source}: the model's output is not one tensor of logits (batch, classes)")
    return structure_from(source, model, candidates, seen, tuple(output.shape), shared)


def structure_from(
    source: str,
    model: torch.nn.Module,
    candidates: list[tuple[str, Any]],
    seen: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
    output_shape: tuple[int, ...],
    shared: Sequence[tuple[str, tuple[str, ...]]] = (),
) -> Structure:
    """The structure of ``model`` from its stage candidates (:func:`stage_candidates`), the runs
    of blocks in containers the stages share (:func:`shared_runs`) and the input and output shapes
    of those a probe ran through (``seen``, by path: each block of a shared run by its own)."""
    torch = import_framework("torch", "rescompile import", "torch")
    if len(output_shape) != 2:
        raise RescompileError(f"{source}: the model's output is not one tensor of logits (batch, classes)")
    convolutions = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)]
    # Innermost among those that ran: SK-ResNet's `conv1.paths` (a ModuleList its block loops
    # over, never called) is inside a block, not a stage of blocks.
    ran = [path for path, _ in candidates if path in seen]
    innermost = [(path, module) for path, module in candidates if path in ran and not _encloses(path, ran)]
    # A stem's conv-norm-act triple is no stage: blocks of one layer each (timm's ConvBnAct) make
    # one only beside stages of deeper blocks in the same container (MobileNetV3's last stage).
    deep = {_parent(path) for path, module in innermost if _convolutions(next(module.children())) > 1}
    containers = [(path, module) for path, module in innermost if _parent(path) in deep]
    # (path, blocks, block input shape, block output shape), in the model's order.
    runs = [(path, tuple(n for n, _ in module.named_children()), *seen[path]) for path, module in containers]
    for path, blocks in shared:
        runs += _split_at_shape_changes(path, blocks, seen)
    order = {path: index for index, (path, _) in enumerate(model.named_modules())}
    runs.sort(key=lambda run: order[_join(run[0], run[1][0])])
    if not runs:
        raise RescompileError(f"{source}: no stages found: expected modules whose children are blocks of one class")
    stages: list[Stage] = []
    # The stem's output, where the first stage's wrapper (its alone) downsamples before its blocks.
    alone = [_parent(run[0]) for run in runs].count(_parent(runs[0][0])) == 1
    first_wrapper = seen.get(_parent(runs[0][0])) if alone else None
    before = first_wrapper[0][2] if first_wrapper is not None else runs[0][2][2]
    for path, blocks, _, out_shape in runs:
        stride = max(round(before / out_shape[2]), 1)
        stages.append(Stage(path, blocks, _class(model.get_submodule(f"{path}.{blocks[0]}")), out_shape[1], stride))
        before = out_shape[2]
    first_block = model.get_submodule(f"{runs[0][0]}.{runs[0][1][0]}")
    inner = [m for n, m in first_block.named_modules() if isinstance(m, torch.nn.Conv2d) and "downsample" not in n]
    return Structure(
        input_channels=convolutions[0].in_channels,
        stem_channels=convolutions[0].out_channels,
        stem_out_channels=runs[0][2][1],
        classes=int(output_shape[1]),
        stages=tuple(stages),
        groups=max((conv.groups for conv in inner), default=1),
        inner_channels=inner[0].out_channels if inner else 0,
    )


def _recorder(path: str, seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> Any:
    def record(module: object, inputs: tuple[Any, ...], output: Any) -> None:
        seen.setdefault(path, (tuple(inputs[0].shape), tuple(output.shape)))

    return record


def stage_candidates(model: torch.nn.Module) -> list[tuple[str, Any]]:
    """The modules whose children are all of one class that has layers of its own (a block, not a
    conv) and is no plain container: torchvision's ``layer1``, timm's ``stages.0.blocks`` and
    RegNet's ``s1`` (blocks ``b1``, ``b2``, ...); a deep stem (conv, norm, act, ...) mixes
    classes and is none."""
    found = []
    for path, module in model.named_modules():
        children = list(module.children())
        if children and len({type(child) for child in children}) == 1 and _is_block(children[0]):
            found.append((path, module))
    return found


def shared_runs(model: torch.nn.Module, stage_paths: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Runs of blocks in a container that also holds other layers, outside every stage candidate:
    torchvision's MobileNets keep the stem, every block and the head's conv in ``features``
    (``features.1`` ... ``features.17`` of one class); their stages are told apart by shape."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for path, module in model.named_modules():
        # Not around a stage candidate (the root of a ResNet), nor inside one or inside a run found.
        if any(_within(path, other) or _within(other, path) for other in [*stage_paths, *(run for run, _ in found)]):
            continue
        children = list(module.named_children())
        blocks = [name for name, child in children if _is_block(child) and _convolutions(child) > 1]
        classes = {type(module.get_submodule(name)) for name in blocks}
        if len(blocks) < 2 or len(classes) != 1 or len(blocks) == len(children):
            continue
        names = [name for name, _ in children]
        if names.index(blocks[-1]) - names.index(blocks[0]) == len(blocks) - 1:  # consecutive
            found.append((path, tuple(blocks)))
    return found


def _split_at_shape_changes(
    path: str, blocks: tuple[str, ...], seen: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]
) -> list[tuple[str, tuple[str, ...], tuple[int, ...], tuple[int, ...]]]:
    """A shared run as stages: a block whose output's shape is not its input's starts one."""
    runs: list[tuple[str, tuple[str, ...], tuple[int, ...], tuple[int, ...]]] = []
    for block in blocks:
        in_shape, out_shape = seen[_join(path, block)]
        if not runs or in_shape != out_shape:
            runs.append((path, (block,), in_shape, out_shape))
        else:
            run = runs[-1]
            runs[-1] = (path, (*run[1], block), run[2], out_shape)
    return runs


def _is_block(module: object) -> bool:
    """A module with layers of its own that is no plain container."""
    torch = import_framework("torch", "rescompile import", "torch")
    plain = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
    return (
        isinstance(module, torch.nn.Module) and not isinstance(module, plain) and any(True for _ in module.children())
    )


def _convolutions(module: torch.nn.Module) -> int:
    """The convolutions and linear layers in ``module`` (ConvNeXt's block: one conv, two linear)."""
    torch = import_framework("torch", "rescompile import", "torch")
    return sum(isinstance(layer, torch.nn.Conv2d | torch.nn.Linear) for layer in module.modules())


def _within(path: str, ancestor: str) -> bool:
    """Whether ``path`` is ``ancestor`` or inside it (every path is inside the root, ``""``)."""
    return path == ancestor or not ancestor or path.startswith(ancestor + ".")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _encloses(path: str, paths: list[str]) -> bool:
    return any(other.startswith(path + ".") for other in paths)


def _class(module: object) -> str:
    return type(module).__name__


def _is_weight(key: str) -> bool:
    """A canonical weight name: BatchNorm's batch counters are bookkeeping (dropped on import)."""
    return not key.endswith("num_batches_tracked")


def randomise_normalisation(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial statistics and affine parameters in every BatchNorm, GroupNorm and LayerNorm of
    ``model``, so that eval mode exercises all four (and a zero-initialised last norm does not hide
    its branch), and in every layer scale (a 1-D parameter ``gamma``, 1e-6 in a fresh ConvNeXt, which
    would hide its block's branch). The test suite's comparisons with timm use it too."""
    torch = import_framework("torch", "rescompile import", "torch")
    generator = torch.Generator().manual_seed(seed)
    norms = (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for module in model.modules():
            gamma = getattr(module, "gamma", None)
            if isinstance(gamma, torch.nn.Parameter) and gamma.ndim == 1:
                gamma.copy_(torch.rand(gamma.shape[0], generator=generator) + 0.5)
            if isinstance(module, norms) and module.weight is not None:
                channels = module.weight.shape[0]
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
            if isinstance(module, torch.nn.BatchNorm2d) and module.running_mean is not None:
                statistics = module.running_mean.shape[0]
                module.running_mean.copy_(torch.randn(statistics, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(statistics, generator=generator) + 0.5)


_GROUPS: dict[str, tuple[str, ...]] = {
    "layout": ("naming", "transition", "transition_parameters"),
    "stem": ("stem", "stem_parameters"),
    "block": ("block", "block_parameters"),
    "shortcut": ("shortcut",),
    "head": ("head", "head_parameters"),
}
"""The spec keys the built-in networks choose together: a candidate takes one choice of each group."""


@functools.cache
def builtin_choices() -> dict[str, list[dict[str, Any]]]:
    """For each group of spec keys, the distinct values the built-in networks give them (the
    head's ``classes`` left out: it is the model's)."""
    found: dict[str, dict[str, dict[str, Any]]] = {group: {} for group in _GROUPS}
    for network in builtin_networks():
        spec = load_network(network).spec
        data = spec.model_dump(mode="json", exclude_defaults=True)
        data["head"] = spec.head
        data["head_parameters"] = {key: value for key, value in spec.head_parameters.items() if key != "classes"}
        for group, keys in _GROUPS.items():
            choice = {key: data[key] for key in keys if key in data}
            found[group].setdefault(json.dumps(choice, sort_keys=True), choice)
    return {group: list(choices.values()) for group, choices in found.items()}


def _candidates(structure: Structure, plausible: Mapping[str, list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Specs to try: each combination of the built-in choices whose layers the model has
    (``plausible``, by group), with widths for the block's expansion, and with the stem's and
    block's parameters as given and fitted to what the model's convolutions show (the stem's
    width, the block's groups, base width and group width) where the part declares such a parameter."""
    for layout, stem, block, shortcut, head in itertools.product(*plausible.values()):
        stem_observed = {"width": structure.stem_channels, "stem_width": structure.stem_channels}
        for stem_parameters in _fitted("stems", stem["stem"], stem.get("stem_parameters", {}), stem_observed):
            given = block.get("block_parameters", {})
            for expansion in _expansions(block["block"], given):
                if any(stage.out_channels % expansion for stage in structure.stages):
                    continue
                first_width = structure.stages[0].out_channels // expansion
                base_width, remainder = divmod(structure.inner_channels * 64, first_width * structure.groups)
                observed = {"groups": structure.groups}
                if not remainder:
                    observed["base_width"] = base_width
                if structure.inner_channels % structure.groups == 0:  # RegNet's channels a group
                    observed["group_width"] = structure.inner_channels // structure.groups
                for block_parameters in _fitted("blocks", block["block"], given, observed):
                    yield {
                        **layout,
                        "stem": stem["stem"],
                        "stem_parameters": stem_parameters,
                        "block": block["block"],
                        "block_parameters": block_parameters,
                        **shortcut,
                        **head,
                        "expansion": expansion,
                    }


def _expansions(block: str, given: Mapping[str, Any]) -> tuple[int, ...]:
    """A block's output channels over its width: its ``expansion`` where it declares one, else 4
    or 1 (timm_bottleneck writes ``out_channels: width * 4``)."""
    if block_part(block).out_channels.text == "width":  # an inverted residual's expansion is inside
        return (1,)
    declared = given.get("expansion", _defaults("blocks", block).get("expansion"))
    return (declared,) if isinstance(declared, int) else (4, 1)


def _plausible_choices(group: str, structure: Structure, modules: Layers) -> list[dict[str, Any]]:
    choices = [choice for choice in builtin_choices()[group] if _misfit(group, choice, structure, modules) is None]
    if not choices:
        raise _NoChoice(
            group, [_misfit(group, choice, structure, modules) or "" for choice in builtin_choices()[group]]
        )
    return choices


class _NoChoice(Exception):
    """No built-in choice of ``group`` has the model's layers; ``paths`` are where each stopped fitting."""

    def __init__(self, group: str, paths: list[str]) -> None:
        super().__init__(group)
        self.group = group
        self.paths = paths


def _misfit(group: str, choice: Mapping[str, Any], structure: Structure, modules: Layers) -> str | None:
    """Where the model's modules show that ``choice`` cannot be it, by what is cheap to tell before
    compiling (None where nothing does): the stage paths, and the layers of the stem, of the first
    block, of the shortcuts and of the head, each at its path and of its class."""
    first_stage = structure.stages[0]
    first_block = f"{first_stage.path}.{first_stage.blocks[0]}."
    if group == "layout":
        naming = NamingSpec.model_validate(choice.get("naming", {}))
        network_index = 0
        for index, stage in enumerate(structure.stages):
            if naming.stage_path(index) != stage.path:
                return stage.path
            if naming.block_path(index, 0, network_index) != f"{stage.path}.{stage.blocks[0]}":
                return f"{stage.path}.{stage.blocks[0]}"
            network_index += len(stage.blocks)
        return None
    if group == "stem":
        return _layers_misfit("", _part("stems", choice["stem"]), modules, choice.get("stem_parameters", {}))
    if group == "block":
        return _layers_misfit(first_block, _part("blocks", choice["block"]), modules)
    if group == "head":
        return _layers_misfit("", _part("heads", choice["head"]), modules)
    return _shortcut_misfit(choice["shortcut"], structure, modules)


def _shortcut_misfit(shortcut: str | Mapping[str, str], structure: Structure, modules: Layers) -> str | None:
    """Where the model's blocks lack the shortcut layers the policy gives them."""
    if isinstance(shortcut, Mapping):
        match, change = shortcut["where_shapes_match"], shortcut["where_shapes_change"]
    else:
        match, change = POLICIES.get(shortcut, (shortcut, shortcut))
    channels = structure.stem_out_channels
    for stage in structure.stages:
        for index, block in enumerate(stage.blocks):
            changes = index == 0 and (stage.stride != 1 or channels != stage.out_channels)
            kind = change if changes else match
            part = None if kind in (IDENTITY, "none") else _part("shortcuts", kind)
            attribute = f"{stage.path}.{block}.{getattr(part, 'module', 'downsample')}"
            if part is not None:
                misfit = _layers_misfit(attribute + ".", part, modules)
                if misfit is not None:
                    return misfit
            # A shortcut with weights where the policy gives one without (the identity, zero padding).
            held = modules.get(attribute)
            if held is not None and any(True for _ in held.parameters()) and not _weighted_nodes(part):
                return attribute
        channels = stage.out_channels
    return None


def _weighted_nodes(part: PartSpec | None) -> list[str]:
    return (
        []
        if part is None
        else [name for name, node in part.nodes.items() if getattr(node, "op", "") in _layer_classes()]
    )


def _layers_misfit(
    prefix: str, part: PartSpec, modules: Layers, parameters: Mapping[str, Any] | None = None
) -> str | None:
    """The first path where the model has no layer of the class a node of ``part`` (one that every
    instance holds: no template, no ``when`` but one that holds at ``parameters`` over the part's
    defaults) needs, or has a layer where a node nests inside one."""
    values = {**part.defaults, **(parameters or {})}
    for name, node in part.nodes.items():
        when = getattr(node, "when", None)
        if "{" in name or (when is not None and not _holds(when, values)):
            continue
        path = prefix + name
        segments = path.split(".")
        for end in range(1, len(segments)):
            ancestor = modules.get(".".join(segments[:end]))
            if ancestor is not None and not any(True for _ in ancestor.children()):
                return ".".join(segments[:end])
        op = getattr(node, "op", "")
        layer_class = _layer_classes().get(op)
        if layer_class is not None and op not in modules.unseen and not isinstance(modules.get(path), layer_class):
            return path
    return None


def _holds(when: Expression, values: Mapping[str, Any]) -> bool:
    """Whether ``when`` holds at the part's parameter ``values``; False where it reads more (the
    block's width, its stride), which only compiling knows."""
    if not when.names <= values.keys():
        return False
    try:
        return bool(when.evaluate(values))
    except (ExpressionError, ArithmeticError, TypeError):
        return False


@functools.cache
def _layer_classes() -> dict[str, type]:
    """The torch layer each op with weights is (a pool may be a function call, or an nn.Identity
    where it has stride 1, as in timm's average-pool shortcuts: pools are not checked)."""
    torch = import_framework("torch", "rescompile import", "torch")
    nn = torch.nn
    return {
        "conv": nn.Conv2d,
        "batch_norm": nn.BatchNorm2d,
        "group_norm": nn.GroupNorm,
        "layer_norm": nn.LayerNorm,
        "linear": nn.Linear,
    }


def _fitted(kind: PartKind, part: str, given: Mapping[str, Any], observed: Mapping[str, int]) -> list[dict[str, Any]]:
    """``given``, and ``given`` with each parameter the part declares set as ``observed`` where it differs."""
    defaults = _defaults(kind, part)
    changed = {
        key: value for key, value in observed.items() if key in defaults and given.get(key, defaults[key]) != value
    }
    return [dict(given), {**given, **changed}] if changed else [dict(given)]


def _defaults(kind: PartKind, part: str) -> dict[str, object]:
    """A built-in part's parameters and their defaults."""
    parameters = _part(kind, part).parameters
    return {key: value.default if isinstance(value, ParameterSpec) else value for key, value in parameters.items()}


def block_part(block: str) -> BlockSpec:
    part = _part("blocks", block)
    assert isinstance(part, BlockSpec)
    return part


@functools.cache
def _part(kind: PartKind, part: str) -> PartSpec:
    return load_part(builtin_directory() / kind / f"{part}.yaml", kind).spec


def spec_text(
    name: str,
    choices: Mapping[str, Any],
    structure: Structure,
    size: int | tuple[int, int],
    entries: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The network spec, in the built-ins' style: one line per key, flow mappings, one stage a line:
    ``entries``, else each stage's width its output channels over the block's ``expansion``."""
    lines = [f"name: {name}", f"input: {_flow({'channels': structure.input_channels, 'size': size})}"]
    lines += [f"{key}: {_flow(choices[key])}" for key in _SPEC_KEYS if choices.get(key) not in (None, {})]
    lines.append("stages:")
    if entries is None:
        entries = [_stage_entry(stage, choices["expansion"]) for stage in structure.stages]
    lines += [f"  - {_flow(entry)}" for entry in entries]
    lines.append(f"head: {choices['head']}")
    lines.append(f"head_parameters: {_flow({**choices['head_parameters'], 'classes': structure.classes})}")
    return "\n".join(lines) + "\n"


def _stage_entry(stage: Stage, expansion: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"depth": len(stage.blocks), "width": stage.out_channels // expansion}
    if stage.stride != 1:
        entry["stride"] = stage.stride
    return entry


def _flow(value: Any) -> str:
    """``value`` as YAML flow text: ``{depth: 3, width: 64}``, ``"stages.{index}.blocks"``."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {_flow(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(item) for item in value) + "]"
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) is not None and value.lower() not in _YAML_WORDS
        return value if plain else json.dumps(value)
    return json.dumps(value)


def _shape_miss(mine: Mapping[str, tuple[int, ...]], theirs: Mapping[str, tuple[int, ...]], text: str) -> _Miss | None:
    """Where the candidate's weights first differ from the model's, in the model's key order."""
    for progress, (key, shape) in enumerate(theirs.items()):
        if key not in mine:
            return _Miss(progress, _module_of(key), f"it has no {key}", text)
        if mine[key] != shape:
            return _Miss(progress, _module_of(key), f"{key} is {_shape(mine[key])}, not {_shape(shape)}", text)
    extra = [key for key in mine if key not in theirs]
    if extra:
        return _Miss(len(theirs), _module_of(extra[0]), f"it has {extra[0]}, which the model lacks", text)
    return None


def _module_of(key: str) -> str:
    return key.rpartition(".")[0]


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(side) for side in shape)


def _compare(
    graph: Graph, weights: Mapping[str, npt.NDArray[np.generic]], reference: Reference, text: str
) -> float | _Miss:
    """The largest output difference relative to the output's scale, where ``weights`` load
    strictly and the outputs agree; else where the two first differ (block by block)."""
    import torch

    from rescompile.backends.registry import BACKENDS
    from rescompile.testing import max_differences

    model = BACKENDS[REFERENCE_BACKEND].build(graph)
    assert isinstance(model, torch.nn.Module)
    model.eval()
    progress = len(weights) + 1
    # BatchNorm's batch counters are bookkeeping, not weights: a format without them (ONNX) keeps the module's.
    state = {key: value for key, value in model.state_dict().items() if not _is_weight(key)}
    state.update({key: torch.from_numpy(np.array(value)) for key, value in weights.items()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        return _Miss(progress, "", f"strict load_state_dict fails: {str(error).splitlines()[0]}", text)
    seen = _torch_outputs(model, torch.from_numpy(reference.probe), reference.structure)
    _, difference = max_differences(seen[OUTPUT], reference.outputs[OUTPUT])
    if difference <= TOLERANCE:
        return difference
    path = _first_divergence(seen, reference)
    return _Miss(progress, path, f"outputs differ by {difference:.1e} of their scale", text)


def _torch_outputs(
    model: torch.nn.Module, probe: torch.Tensor, structure: Structure
) -> dict[str, npt.NDArray[np.float32]]:
    """A torch model's output on ``probe`` (``OUTPUT``), its first block's input (``""``) and each
    block's output (by path), as :attr:`Reference.outputs` holds them."""
    first = structure.stages[0]
    paths = [_join(stage.path, block) for stage in structure.stages for block in stage.blocks]
    return _block_outputs(model, probe, _join(first.path, first.blocks[0]), paths)


def _block_outputs(
    model: torch.nn.Module, probe: torch.Tensor, entry: str, paths: Sequence[str]
) -> dict[str, npt.NDArray[np.float32]]:
    """A torch model's output on ``probe`` (``OUTPUT``), the input of its module ``entry``
    (``""``) and the output of each module of ``paths``."""
    import torch

    seen: dict[str, Any] = {}
    first = model.get_submodule(entry)
    handles = [first.register_forward_pre_hook(lambda _, inputs: seen.setdefault("", inputs[0]))]
    for path in paths:
        handles.append(model.get_submodule(path).register_forward_hook(_keeper(path, seen)))
    try:
        with torch.no_grad():
            seen[OUTPUT] = model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return {key: value.numpy() for key, value in seen.items() if isinstance(value, torch.Tensor)}


def _first_divergence(seen: Mapping[str, npt.NDArray[np.float32]], reference: Reference) -> str:
    """Where a candidate first computes differently from the reference: the stem's last
    top-level module where the first block's inputs differ, else the first block whose output
    differs, else the last top-level module (the head)."""
    from rescompile.testing import max_differences

    structure = reference.structure
    first = structure.stages[0]
    blocks = [f"{stage.path}.{block}" for stage in structure.stages for block in stage.blocks]
    top_level = [name for name, _ in reference.modules.named_children()]
    first_top = first.path.split(".")[0]
    stem_end = top_level[max(top_level.index(first_top) - 1, 0)] if first_top in top_level else first_top
    for path in ["", *blocks]:
        ours, theirs = seen.get(path), reference.outputs.get(path)
        if ours is None or theirs is None or ours.shape != theirs.shape:
            return path or stem_end
        if max_differences(ours, theirs)[1] > TOLERANCE:
            return path or stem_end
    return top_level[-1]


def _keeper(path: str, seen: dict[str, Any]) -> Any:
    def keep(module: object, inputs: tuple[Any, ...], output: Any) -> None:
        seen[path] = output

    return keep


def _refusal(
    source: str,
    model: torch.nn.Module,
    structure: Structure,
    misses: list[_Miss],
) -> str:
    """One line: the module where the closest candidate stopped matching, and what differed."""
    if not misses:
        channels = ", ".join(str(stage.out_channels) for stage in structure.stages)
        blocks = "no built-in block whose layers the model has"
        return f"{source}: {blocks} has an expansion that divides its stages' output channels ({channels})"
    closest = max(misses, key=lambda miss: miss.progress)
    path, kind = closest.path, "part"
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    for stage in structure.stages:
        if path == stage.path or path.startswith(stage.path + "."):
            block = stage.blocks[0] if path == stage.path else path[len(stage.path) + 1 :].split(".")[0]
            path, kind = f"{stage.path}.{block}", "block"
            break
    else:
        if path in order:
            kind = "stem" if order[path] < order[structure.stages[0].path] else "head"
    where = f"{path} ({_class(model.get_submodule(path))})" if _has_module(model, path) else path
    parts = _choices_summary(closest.text)
    return (
        f"{source}: {where}: no built-in {kind} computes it; the closest of {len(misses)} candidates "
        f"({parts}) stops there: {closest.reason}"
    )


def _no_choice(source: str, model: torch.nn.Module, structure: Structure, missing: _NoChoice) -> str:
    """One line: no built-in choice of a group has the model's layers, where the model holds the
    group's layers, and the paths the built-in choices would have them at."""
    weighted = [path for path, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]
    first_stage = structure.stages[0]
    if missing.group == "block":
        path = f"{first_stage.path}.{first_stage.blocks[0]}"
    elif missing.group == "stem":
        path = weighted[0]
    elif missing.group == "head":
        path = weighted[-1]
    else:
        path = first_stage.path
    where = f"{path} ({_class(model.get_submodule(path))})" if _has_module(model, path) else path
    expected = sorted(set(missing.paths))
    shown = ", ".join(expected[:4]) + (", ..." if len(expected) > 4 else "")
    return (
        f"{source}: {where}: no built-in {missing.group} has the model's layers (the {len(missing.paths)} built-in "
        f"{missing.group} choices stop at {shown}, which the model lacks or holds as another layer)"
    )


def _has_module(model: torch.nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return bool(path)


def _choices_summary(text: str) -> str:
    """``stem imagenet, block bottleneck, shortcut B, head classifier`` from a candidate's text."""
    wanted = ("stem", "block", "shortcut", "head")
    found = dict(line.split(": ", 1) for line in text.splitlines() if line.split(":")[0] in wanted)
    return ", ".join(f"{key} {found[key]}" for key in wanted if key in found)


def canonical_reference_weights(source: str, model: torch.nn.Module, graph: Graph) -> Weights:
    """The model's own weights (not the randomised copy's) in canonical form, checked strictly."""
    from rescompile.checkpoints import canonical_weights

    state = {key: value.detach().cpu().numpy() for key, value in model.state_dict().items()}
    return canonical_weights(graph, state, source)
