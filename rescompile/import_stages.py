"""The importer's search (:func:`search`, which :func:`import_model` and the ONNX import run): the
candidate specs with one block for the whole network first (:mod:`rescompile.importer` writes them),
then a block type and parameters for every stage, block by block.

Where no spec with one block for the whole network computes the model (MobileNets and
EfficientNets change kernel, expansion ratio, SE gate and activation from stage to stage; CSPNets
change their transitions' ratios), the importer fixes the stem, layout and shortcut policy of a
built-in network and fits each block in the model's order: the choices are every (block type,
parameters, transition parameters) a built-in network gives one of its blocks, and those with a
numeric parameter set to what the model's convolutions show (kernel sizes, channel ratios) or to
a value another built-in gives it. A choice fits where the candidate network, cut after that
block, has the block's (and its stage's transition's) weights at their names and shapes, and the
block computes the model's block output from the model's block input. The fitted blocks are
then written the way the built-ins write them (:func:`stage_entries`): a parameter shared by most
blocks of the network's block type at the network, one shared by a stage's blocks at the stage,
the others per block, defaults left out; and the whole spec is verified as any candidate is.

NOTES for developers: a wrong parameter that neither changes a shape nor the block's output (a
transition's half after the blocks) shows only at the next block; the search does not go back.
"""

from __future__ import annotations

import copy
import functools
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rescompile.compiler.expand import _block_overrides
from rescompile.compiler.ir import Graph
from rescompile.compiler.pipeline import compile_spec
from rescompile.compiler.weights import weight_shapes
from rescompile.frameworks import import_framework
from rescompile.importer import (
    _GROUPS,
    REFERENCE_BACKEND,
    SEED,
    TOLERANCE,
    Imported,
    Layers,
    Reference,
    _block_outputs,
    _candidates,
    _compare,
    _defaults,
    _fitted,
    _flow,
    _is_weight,
    _join,
    _layers_misfit,
    _Miss,
    _no_choice,
    _NoChoice,
    _part,
    _plausible_choices,
    _refusal,
    _shape_miss,
    _torch_outputs,
    block_part,
    randomise_normalisation,
    recover_structure,
    spec_text,
)
from rescompile.spec.errors import RescompileError
from rescompile.spec.loader import builtin_networks, load_network
from rescompile.spec.models import NamingSpec, ParameterSpec

if TYPE_CHECKING:
    import torch

WeightsFor = Callable[[Graph], Mapping[str, npt.NDArray[np.generic]]]


@dataclass(frozen=True)
class Setting:
    """One block's type and parameters, and its stage's transition parameters (as overrides of
    the parts' defaults)."""

    block: str
    parameters: Mapping[str, Any]
    transition: Mapping[str, Any]

    def key(self) -> str:
        return json.dumps([self.block, self.parameters, self.transition], sort_keys=True)

    def with_parameter(self, name: str, value: Any) -> Setting:
        return Setting(self.block, {**self.parameters, name: value}, self.transition)


@functools.cache
def builtin_settings() -> tuple[Setting, ...]:
    """Every distinct setting a built-in network gives one of its blocks."""
    found: dict[str, Setting] = {}
    for network in builtin_networks():
        spec = load_network(network).spec
        for stage_index, stage in enumerate(spec.stages):
            transition = {**spec.transition_parameters, **stage.transition_parameters}
            for block_index in range(stage.depth):
                block = stage.block or spec.block
                if block_index == 0 and stage.first_block is not None:
                    block = stage.first_block
                parameters = _block_overrides(spec, stage_index, block_index)
                setting = Setting(block, parameters, transition)
                found.setdefault(setting.key(), setting)
    return tuple(found.values())


class StemMismatch(Exception):
    """The stem (or layout) under the blocks computes something else: no block setting can help."""


@dataclass
class Fit:
    """The search state for one base (stem, layout, shortcut policy and a head to close it)."""

    reference: Reference
    name: str
    size: int | tuple[int, int]
    base: Mapping[str, Any]
    weights_for: WeightsFor
    scratch: Path
    layers: Layers
    graphs: dict[str, Graph | None]

    def graph(self, text: str) -> Graph | None:
        if text not in self.graphs:
            path = self.scratch / f"{self.name}.yaml"
            path.write_text(text)
            try:
                self.graphs[text] = compile_spec(path)
            except RescompileError:
                self.graphs[text] = None
        return self.graphs[text]


def fit_blocks(fit: Fit) -> list[list[Setting]] | tuple[str, str, int]:
    """Each stage's blocks' settings, or (block path, why, progress) where none fits."""
    structure = fit.reference.structure
    fitted: list[list[Setting]] = []
    progress = 0
    for stage_index, stage in enumerate(structure.stages):
        fitted.append([])
        for block_index, block in enumerate(stage.blocks):
            path = _join(stage.path, block)
            previous = fitted[-1][-1] if block_index else (fitted[-2][-1] if stage_index else None)
            found = _fit_block(fit, fitted, stage_index, block_index, previous)
            if isinstance(found, str):
                return path, found, progress
            fitted[-1].append(found)
            progress += 1
    return fitted


def _fit_block(
    fit: Fit, fitted: list[list[Setting]], stage_index: int, block_index: int, previous: Setting | None
) -> Setting | str:
    """The first setting under which the block has the model's weights and computes its output."""
    stage = fit.reference.structure.stages[stage_index]
    path = _join(stage.path, stage.blocks[block_index])
    transition = fit.base.get("transition") if block_index == 0 else None
    choices: list[Setting] = [previous] if previous is not None else []
    if block_index == 0:
        choices += [
            setting if transition else Setting(setting.block, setting.parameters, {})
            for setting in builtin_settings()
            if _layers_misfit(path + ".", _part("blocks", setting.block), fit.layers) is None
        ]
    else:  # a stage's blocks are of one type and share its transition
        assert previous is not None
        choices += [
            Setting(previous.block, setting.parameters, previous.transition)
            for setting in builtin_settings()
            if setting.block == previous.block
        ]
    # Fewest parameters set first: of two settings that compute the probe alike (ReLU and ReLU6
    # where no value reaches 6), the part's defaults are the likelier.
    choices = choices[:1] + sorted(choices[1:], key=lambda choice: len(choice.parameters))
    choices = list({choice.key(): choice for choice in choices}.values())
    scored = [(choice, _shape_progress(fit, fitted, stage_index, choice)) for choice in choices]
    matching = [choice for choice, score in scored if score is True]
    if not matching:
        ranked = [(score, choice) for choice, score in scored if not isinstance(score, bool)]
        if not ranked:
            return "no built-in block setting compiles there"
        best = max(ranked, key=lambda item: item[0])[1]
        matching = _descend_shapes(fit, fitted, stage_index, block_index, best)
        if not matching:
            return "no built-in block setting has its weights' names and shapes"
    for choice in matching[:8]:
        if _computes(fit, fitted, stage_index, choice):
            return choice
    for choice in matching[:3]:
        found = _descend_outputs(fit, fitted, stage_index, choice)
        if found is not None:
            return found
    return "no built-in block setting with its weights' shapes computes its output"


def _descend_shapes(
    fit: Fit, fitted: list[list[Setting]], stage_index: int, block_index: int, start: Setting
) -> list[Setting]:
    """One numeric parameter at a time set to each value the model's layers or the built-ins
    suggest, kept where more of the block's weights match, until all do."""
    current, best = start, _shape_progress(fit, fitted, stage_index, start)
    domains = _numeric_domains(fit, stage_index, block_index, start.block)
    improved = True
    while improved and best is not True:
        improved = False
        for name, values in domains.items():
            for value in values:
                trial = current.with_parameter(name, value)
                score = _shape_progress(fit, fitted, stage_index, trial)
                if score is True:
                    return [trial]
                if isinstance(score, int) and not isinstance(best, bool) and score > best:
                    current, best, improved = trial, score, True
    return []


def _descend_outputs(fit: Fit, fitted: list[list[Setting]], stage_index: int, start: Setting) -> Setting | None:
    """One parameter with listed choices (an activation, a gate) at a time set to each of them."""
    for name, declared in _part("blocks", start.block).parameters.items():
        if not isinstance(declared, ParameterSpec) or declared.choices is None:
            continue
        for value in declared.choices:
            trial = start.with_parameter(name, value)
            if _shape_progress(fit, fitted, stage_index, trial) is True and _computes(fit, fitted, stage_index, trial):
                return trial
    return None


def _numeric_domains(fit: Fit, stage_index: int, block_index: int, block: str) -> dict[str, list[Any]]:
    """For each numeric parameter of ``block``: the values the built-ins give it and what the
    model's block shows (its convolutions' kernel sizes, their output channels over its input's)."""
    import torch

    stage = fit.reference.structure.stages[stage_index]
    path = _join(stage.path, stage.blocks[block_index])
    module = fit.reference.modules.get_submodule(path)
    in_channels = _block_input(fit.reference, stage_index, block_index).shape[1]
    convolutions = [layer for layer in module.modules() if isinstance(layer, torch.nn.Conv2d)]
    observed: set[float] = {int(conv.kernel_size[0]) for conv in convolutions}
    observed |= {round(conv.out_channels / in_channels, 4) for conv in convolutions}
    domains: dict[str, list[Any]] = {}
    for name, default in _defaults("blocks", block).items():
        if isinstance(default, bool) or not isinstance(default, int | float):
            continue
        given = {s.parameters[name] for s in builtin_settings() if s.block == block and name in s.parameters}
        values = sorted({*given, *(v for v in observed if v > 0)} - {default})
        domains[name] = [
            int(v) if isinstance(v, float) and v.is_integer() and isinstance(default, int) else v for v in values
        ]
    return domains


def _block_input(reference: Reference, stage_index: int, block_index: int) -> npt.NDArray[np.float32]:
    structure = reference.structure
    if block_index:
        stage = structure.stages[stage_index]
        return reference.outputs[_join(stage.path, stage.blocks[block_index - 1])]
    if stage_index:
        stage = structure.stages[stage_index - 1]
        return reference.outputs[_join(stage.path, stage.blocks[-1])]
    return reference.outputs[""]


def _trial_text(fit: Fit, fitted: list[list[Setting]], stage_index: int, trial: Setting) -> str:
    """The network cut after the block ``trial`` is for, every block spelled out."""
    stages = [list(blocks) for blocks in fitted[: stage_index + 1]]
    if len(stages) <= stage_index:
        stages.append([])
    stages[stage_index].append(trial)
    return spec_with_stages(fit, stages, fit.base["head_parameters"])


def spec_with_stages(fit: Fit, stages: Sequence[Sequence[Setting]], head_parameters: Mapping[str, Any]) -> str:
    structure = fit.reference.structure
    entries = stage_entries(fit.base, [(structure.stages[i], blocks) for i, blocks in enumerate(stages)])
    choices = {**fit.base, **entries.pop(-1), "head_parameters": dict(head_parameters)}
    # The container number after the last block (features.18) or stage (features.8).
    shared = NamingSpec.model_validate(fit.base.get("naming", {})).shared
    count = sum(len(blocks) for blocks in stages) if shared else len(stages)
    choices["head_parameters"] = _head_fitted(choices["head"], choices["head_parameters"], count)
    return spec_text(fit.name, choices, structure, fit.size, entries)


def _head_fitted(head: str, given: Mapping[str, Any], blocks: int) -> dict[str, Any]:
    """A head that names its place after the stages (torchvision's ``features.18``) placed there."""
    declared = _defaults("heads", head)
    if "stage" not in declared or declared["stage"] == blocks + 1:
        return {key: value for key, value in given.items() if key != "stage"}
    return {**given, "stage": blocks + 1}


def stage_entries(base: Mapping[str, Any], stages: Sequence[tuple[Any, Sequence[Setting]]]) -> list[dict[str, Any]]:
    """The stage lines of the fitted blocks, and last the network's ``block``,
    ``block_parameters`` and ``transition_parameters``: each parameter at the widest level where
    the blocks agree, defaults left out."""
    stage_blocks = [blocks[0].block for _, blocks in stages]
    network_block = Counter(stage_blocks).most_common(1)[0][0]
    defaults = _defaults("blocks", network_block)
    same_type = [setting for (_, blocks) in stages for setting in blocks if setting.block == network_block]
    network_parameters = _majority(defaults, [setting.parameters for setting in same_type])
    transition = base.get("transition")
    transition_defaults = _defaults("transitions", transition) if transition else {}
    network_transition = _majority(transition_defaults, [blocks[0].transition for _, blocks in stages])
    entries: list[dict[str, Any]] = []
    for stage, blocks in stages:
        block = blocks[0].block
        own_defaults = _defaults("blocks", block)
        inherited = {**own_defaults, **(network_parameters if block == network_block else {})}
        entry: dict[str, Any] = {"depth": len(blocks), "width": _width(stage.out_channels, block, blocks[0].parameters)}
        if stage.stride != 1:
            entry["stride"] = stage.stride
        if block != network_block:
            entry["block"] = block
        names = sorted({name for setting in blocks for name in setting.parameters} | set(inherited))
        shared, each = {}, []
        for name in names:
            values = [setting.parameters.get(name, own_defaults.get(name)) for setting in blocks]
            if all(value == values[0] for value in values):
                if values[0] != inherited.get(name):
                    shared[name] = values[0]
            else:
                each.append(name)
        if shared:
            entry["block_parameters"] = shared
        if each:
            entry["per_block_parameters"] = [
                {name: setting.parameters.get(name, own_defaults.get(name)) for name in each} for setting in blocks
            ]
        own = {
            key: value
            for key, value in blocks[0].transition.items()
            if value != network_transition.get(key, transition_defaults.get(key))
        }
        if own:
            entry["transition_parameters"] = own
        entries.append(entry)
    entries.append(
        {"block": network_block, "block_parameters": network_parameters, "transition_parameters": network_transition}
    )
    return entries


def _majority(defaults: Mapping[str, Any], given: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """For each parameter, the value most of ``given`` have (a default counts), where it is not the default."""
    names = sorted({name for parameters in given for name in parameters})
    chosen: dict[str, Any] = {}
    for name in names:
        counts = Counter(json.dumps(parameters.get(name, defaults.get(name))) for parameters in given)
        value = json.loads(counts.most_common(1)[0][0])
        if value != defaults.get(name):
            chosen[name] = value
    return chosen


def _width(out_channels: int, block: str, parameters: Mapping[str, Any]) -> int:
    """The stage width for which ``block`` with ``parameters`` has ``out_channels`` output channels."""
    expression = block_part(block).out_channels
    bindings = {**_defaults("blocks", block), **parameters}
    divisors = [
        1,
        2,
        4,
        *(v for v in bindings.values() if isinstance(v, int | float) and not isinstance(v, bool) and v > 0),
    ]
    for divisor in divisors:
        width = round(out_channels / divisor)
        try:
            if width > 0 and expression.evaluate({**bindings, "width": width}) == out_channels:
                return width
        except Exception:  # an expression over names a block binds later (in_channels): not this one
            continue
    return out_channels


def _region(fit: Fit, stage_index: int, block_index: int, keys: Sequence[str]) -> list[str]:
    """The weights of the block (and, for a stage's first block, of its transition)."""
    stage = fit.reference.structure.stages[stage_index]
    prefix = _join(stage.path, stage.blocks[block_index]) + "."
    region = [key for key in keys if key.startswith(prefix)]
    if block_index == 0 and fit.base.get("transition"):
        naming = NamingSpec.model_validate(fit.base.get("naming", {}))
        transition = naming.transition_path(stage_index) + "."
        region += [key for key in keys if key.startswith(transition) and not key.startswith(stage.path + ".")]
    return region


def _shape_progress(fit: Fit, fitted: list[list[Setting]], stage_index: int, trial: Setting) -> int | bool:
    """True where the block's weights are the model's by name and shape; else how many of them
    match before the first that does not (False: the candidate does not compile)."""
    graph = fit.graph(_trial_text(fit, fitted, stage_index, trial))
    if graph is None:
        return False
    block_index = len(fitted[stage_index]) if stage_index < len(fitted) else 0
    theirs = {key: tuple(value.shape) for key, value in fit.weights_for(graph).items() if _is_weight(key)}
    mine = weight_shapes(graph)
    wanted = _region(fit, stage_index, block_index, list(theirs))
    for count, key in enumerate(wanted):
        if mine.get(key) != theirs[key]:
            return count
    return True if set(_region(fit, stage_index, block_index, list(mine))) <= set(wanted) else len(wanted)


def _computes(fit: Fit, fitted: list[list[Setting]], stage_index: int, trial: Setting) -> bool:
    """Whether the cut network, holding the model's weights, computes the block's output (its
    input the model's: else the stem differs, :class:`StemMismatch`)."""
    import torch

    from rescompile.backends.registry import BACKENDS
    from rescompile.testing import max_differences

    graph = fit.graph(_trial_text(fit, fitted, stage_index, trial))
    assert graph is not None
    model = BACKENDS[REFERENCE_BACKEND].build(graph)
    assert isinstance(model, torch.nn.Module)
    model.eval()
    weights = fit.weights_for(graph)
    state = model.state_dict()
    for key, value in weights.items():
        if key in state and tuple(state[key].shape) == tuple(value.shape):
            state[key] = torch.from_numpy(np.array(value))
    model.load_state_dict(state, strict=True)
    structure = fit.reference.structure
    block_index = len(fitted[stage_index]) if stage_index < len(fitted) else 0
    stage = structure.stages[stage_index]
    path = _join(stage.path, stage.blocks[block_index])
    first = structure.stages[0]
    seen = _block_outputs(model, torch.from_numpy(fit.reference.probe), _join(first.path, first.blocks[0]), [path])
    entry, expected = seen[""], fit.reference.outputs[""]
    if entry.shape != expected.shape or max_differences(entry, expected)[1] > TOLERANCE:
        raise StemMismatch
    ours, theirs = seen.get(path), fit.reference.outputs[path]
    return ours is not None and ours.shape == theirs.shape and max_differences(ours, theirs)[1] <= TOLERANCE


def search_by_blocks(
    reference: Reference,
    name: str,
    size: int | tuple[int, int],
    plausible: Mapping[str, Sequence[Mapping[str, Any]]],
    weights_for: WeightsFor,
    scratch: Path,
) -> Imported | list[_Miss]:
    """The first base (layout, stem, shortcut policy of the built-ins) under which every block
    fits, closed by the first built-in head that makes the whole spec the model; else where each
    base stopped."""
    structure = reference.structure
    layers = Layers(dict(reference.modules.named_modules()), reference.unseen)
    graphs: dict[str, Graph | None] = {}
    misses: list[_Miss] = []
    observed = {"width": structure.stem_channels, "stem_width": structure.stem_channels}
    for layout in plausible["layout"]:
        for stem in plausible["stem"]:
            for stem_parameters in _fitted("stems", stem["stem"], stem.get("stem_parameters", {}), observed):
                for shortcut in plausible["shortcut"]:
                    base = {**layout, "stem": stem["stem"], "stem_parameters": stem_parameters, **shortcut}
                    base |= plausible["head"][0]
                    fit = Fit(reference, name, size, base, weights_for, scratch, layers, graphs)
                    try:
                        fitted = fit_blocks(fit)
                    except StemMismatch:
                        continue
                    if not isinstance(fitted, list):
                        path, reason, _ = fitted
                        summary = "\n".join(f"{key}: {_flow(base[key])}" for key in ("stem", "shortcut", "head"))
                        misses.append(_Miss(-1, path, reason, summary))
                        continue
                    for head in plausible["head"]:
                        fit.base = {**base, **head}
                        text = spec_with_stages(fit, fitted, head["head_parameters"])
                        graph = fit.graph(text)
                        if graph is None:
                            continue
                        weights = weights_for(graph)
                        shapes = {key: tuple(value.shape) for key, value in weights.items() if _is_weight(key)}
                        miss = _shape_miss(weight_shapes(graph), shapes, text)
                        outcome = _compare(graph, weights, reference, text) if miss is None else miss
                        if isinstance(outcome, float):
                            return Imported(name, text, graph, outcome, 1, 1)
                        misses.append(outcome)
    return misses


def import_model(source: str, name: str, model: torch.nn.Module, size: int | tuple[int, int]) -> Imported:
    """The shortest spec of built-in parts that computes ``model``, verified."""
    torch = import_framework("torch", "rescompile import", "torch")
    structure = recover_structure(source, model, size)
    # The comparison runs on a copy: the model's own weights are what --weights writes.
    reference = copy.deepcopy(model).eval()
    randomise_normalisation(reference, SEED + 1)
    height, width = (size, size) if isinstance(size, int) else size
    probe = torch.randn(2, structure.input_channels, height, width, generator=torch.Generator().manual_seed(SEED))
    state = {key: value.numpy() for key, value in reference.state_dict().items()}
    return search(
        Reference(source, model, structure, probe.numpy(), _torch_outputs(reference, probe, structure)),
        name,
        size,
        lambda graph: state,
    )


def search(
    reference: Reference,
    name: str,
    size: int | tuple[int, int],
    weights_for: Callable[[Graph], Mapping[str, npt.NDArray[np.generic]]],
) -> Imported:
    """The shortest candidate spec whose weights are ``weights_for(graph)`` by name and shape and
    that computes the reference's outputs with them. Candidates are written and compiled in a
    scratch folder: nothing reaches ``-o`` before one is verified."""
    source, model, structure = reference.source, reference.modules, reference.structure
    layers = Layers(dict(model.named_modules()), reference.unseen)
    plausible: dict[str, list[dict[str, Any]]] = {}
    block_missing: _NoChoice | None = None
    for group in _GROUPS:
        try:
            plausible[group] = _plausible_choices(group, structure, layers)
        except _NoChoice as missing:
            if group != "block":  # the search block by block tries other blocks' types
                raise RescompileError(_no_choice(source, model, structure, missing)) from None
            plausible[group], block_missing = [], missing
    candidates = list(_candidates(structure, plausible))
    texts = sorted({spec_text(name, spec, structure, size) for spec in candidates}, key=lambda text: (len(text), text))
    misses: list[_Miss] = []
    with tempfile.TemporaryDirectory(prefix="rescompile-import-") as scratch:
        path = Path(scratch) / f"{name}.yaml"
        for index, text in enumerate(texts):
            path.write_text(text)
            try:
                graph = compile_spec(path)
            except RescompileError as error:
                misses.append(_Miss(-1, "", f"does not compile: {error}", text))
                continue
            weights = weights_for(graph)
            shapes = {key: tuple(value.shape) for key, value in weights.items() if _is_weight(key)}
            miss = _shape_miss(weight_shapes(graph), shapes, text)
            if miss is None:
                outcome = _compare(graph, weights, reference, text)
                if isinstance(outcome, float):
                    return Imported(name, text, graph, outcome, index + 1, len(texts))
                miss = outcome
            misses.append(miss)
        # Where one block for the network never had the model's weights' shapes, the blocks'
        # types and parameters may change from stage to stage (MobileNets, EfficientNets, CSPNets).
        if not any(miss.reason.startswith("outputs differ") for miss in misses):
            found = search_by_blocks(reference, name, size, plausible, weights_for, Path(scratch))
            if isinstance(found, Imported):
                return found
            misses += found
    if block_missing is not None and not misses:
        raise RescompileError(_no_choice(source, model, structure, block_missing))
    raise RescompileError(_refusal(source, model, structure, misses))
