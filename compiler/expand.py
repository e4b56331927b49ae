"""The expand pass: a validated network spec and its parts become a concrete IR graph.

Expansion binds every part parameter, unrolls each part for its instances, chooses each block's
shortcut from the network's policy, and names every node canonically. Each unrolling of a part is
made a :class:`~rescompile.compiler.ir.Definition` once (one walk over its spec); every module is
an instance of its definition (:func:`~rescompile.compiler.instantiate.instantiate`, which
evaluates its expressions and computes its shapes), a block's shortcut definition's nodes right
before its residual add.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

from rescompile.compiler.instantiate import Bindings, evaluate_int, instantiate, located
from rescompile.compiler.ir import (
    MODULE_INPUT,
    Definition,
    DefinitionRole,
    Graph,
    Module,
    ModuleRole,
    Node,
    Stage,
    SymbolicNode,
    container_span,
)
from rescompile.compiler.ops import (
    OPS,
    SHORTCUT_VALUE,
    Linear,
    LinearFields,
    Shape,
    show_shape,
)
from rescompile.spec.errors import Location, RescompileError, did_you_mean
from rescompile.spec.expressions import Expression, ExpressionError, Value, parse_expression
from rescompile.spec.loader import IDENTITY, PLAIN, Loaded, NetworkParts
from rescompile.spec.models import (
    HELD_BLOCKS,
    REQUIRED,
    AddSpec,
    BinarySpec,
    BlockSpec,
    HeadSpec,
    NamingSpec,
    NetworkSpec,
    OpSpec,
    PartSpec,
    ShortcutSpec,
    StemSpec,
    TransitionSpec,
)
from rescompile.spec.unroll import Unrolling
from rescompile.spec.yaml_source import YamlPath

MAX_BLOCKS = 10_000
"""The most blocks a network may have (resnet1202 has 600): expansion and emission take time per block."""
MAX_NODES = 500_000
"""The most nodes a network's modules may hold together (resnet1202 has 4,810): a block's templates
may unroll to 10,000 nodes, and a network may have 10,000 blocks."""
MAX_WEIGHTS = 2**32
"""The most weight values (parameters and buffers) a network may have: 16 GiB in fp32, a hundred
times the largest built-in; a width of 2**31 asked every backend for terabytes."""


def expand(network: Loaded[NetworkSpec], parts: NetworkParts) -> Graph:
    """Pure: the network and the parts :func:`~rescompile.spec.loader.load_parts` read for it."""
    spec = network.spec
    block_count = sum(stage.depth for stage in spec.stages)
    _check_per_block_parameters(network)
    if block_count > MAX_BLOCKS:
        raise RescompileError(
            f"the stages hold {block_count:,} blocks; a network has at most {MAX_BLOCKS:,}", network.locate("stages")
        )
    stem, head, blocks, policy = parts.stem, parts.head, parts.blocks, parts.policy
    assert isinstance(stem.spec, StemSpec) and isinstance(head.spec, HeadSpec)
    _check_network_attributes(network, stem, head, parts)

    height, width = spec.input.height_width
    shape: Shape = (spec.input.channels, height, width)
    input_shape = shape
    modules: list[Module] = []

    unrolling = Unrolling()
    stem_bindings = _bind(stem, spec.stem_parameters, {"in_channels": shape[0]}, network, "stem_parameters")
    stem = unrolling.instantiate(stem, stem_bindings, "stems")
    stem_definition = _definition(stem, "stem", "stem")
    stem_module = _build_module(
        "", "stem", stem, stem_definition, stem_bindings, shape, network.locate("stem"), None, None
    )
    modules.append(stem_module)
    assert stem_module.out_shape is not None
    shape = stem_module.out_shape

    used_shortcuts: dict[str, Loaded[PartSpec]] = {}
    shortcut_definitions: dict[str, Definition] = {}
    block_definitions: dict[tuple[int, tuple[tuple[str, object], ...], bool], Definition] = {}
    """Each block unrolling's definition, by its block, its nodes and whether it keeps its residual add."""
    instances: list[Instance] = []
    used_transitions: dict[str, Loaded[PartSpec]] = {}
    transition_kinds = TransitionKinds()
    blocks_built = 0
    stages: list[Stage] = []
    node_count = len(stem_module.nodes)
    for stage_index, stage in enumerate(spec.stages):
        stage_location = network.locate("stages", stage_index)
        # A stage is where its blocks live; in a container the stages share, its last block (its output).
        stage_path = _stage_path(spec.naming, stage_index, blocks_built + stage.depth - 1)
        transition = parts.transitions[stage_index]
        # A transition holding the stage's blocks is the stage's layout: every stage has it.
        held = transition is not None and isinstance(transition.spec, TransitionSpec) and transition.spec.blocks
        if transition is not None and (
            held or stage.transition is not None or stage.stride != 1 or stage.width != shape[0]
        ):
            _check_distinct(used_transitions, transition, network.locate("transition"))
            module, transition, held_definition = _transition_module(
                network, transition, stage_index, stage_path, shape, False, unrolling, transition_kinds, len(modules)
            )
            shape, node_count = _appended(modules, module, node_count)
            transition_path: str | None = module.path
        else:
            transition, transition_path = None, None
        block_paths: list[str] = []
        for block_index in range(stage.depth):
            first = block_index == 0
            block = parts.first_blocks[stage_index] if first else blocks[stage_index]
            assert isinstance(block.spec, BlockSpec)
            # A stage's transition takes its stride; its blocks then keep the resolution.
            stride = stage.stride if block_index == 0 and transition is None else 1
            builtins = {
                "in_channels": shape[0],
                "width": stage.width,
                "stride": stride,
                "block_index": blocks_built,  # over the whole network (timm's net_block_idx)
                "block_count": block_count,
            }
            blocks_built += 1
            overrides = _block_overrides(spec, stage_index, block_index)
            bindings = _bind(block, overrides, builtins, network, "block_parameters", stage_index, block_index)
            template = block
            path = spec.naming.block_path(stage_index, block_index, blocks_built - 1)
            block, read = unrolling.unroll(block, bindings, "blocks", path)
            assert isinstance(block.spec, BlockSpec)
            out_channels = evaluate_int(block.spec.out_channels, bindings, block, ("out_channels",), path, 1)
            shapes_change = stride != 1 or out_channels != shape[0]
            # ``none`` (the whole policy, or one side of it): no residual add, the block's output is its branch's.
            shortcut_name = None if policy is None else policy[1 if shapes_change else 0]
            shortcut_name = None if shortcut_name == PLAIN else shortcut_name
            unrolled_as = (id(template), _nodes_key(block), shortcut_name is not None)
            if unrolled_as not in block_definitions:
                block_definitions[unrolled_as] = _definition(block, "block", path, residual=shortcut_name is not None)
            definition = block_definitions[unrolled_as]
            fixed = _fixed(template, read, bindings)
            instances.append((len(modules), first, block, fixed, shortcut_name is not None, definition))
            shortcut: Loaded[PartSpec] | None = None
            if shortcut_name not in (None, IDENTITY):
                assert shortcut_name is not None
                shortcut = parts.shortcuts[shortcut_name]
                assert isinstance(shortcut.spec, ShortcutSpec)
                used_shortcuts.setdefault(shortcut_name, shortcut)
            shortcut_bindings = Bindings({"in_channels": shape[0], "out_channels": out_channels, "stride": stride})
            if shortcut is not None:
                shortcut_bindings = _derive(shortcut, shortcut_bindings)
            module = _build_module(
                path,
                "block",
                block,
                definition,
                bindings,
                shape,
                stage_location,
                shortcut_name,
                None if shortcut is None else (shortcut, shortcut_definitions),
                shortcut_bindings,
            )
            assert module.out_shape is not None
            if module.out_shape[0] != out_channels:
                raise RescompileError(
                    f"{path}: block '{block.spec.name}' declares out_channels = {block.spec.out_channels.text} "
                    f"= {out_channels}, but its last node produces {module.out_shape[0]} channels",
                    block.locate("out_channels"),
                )
            modules.append(dataclasses.replace(module, stage_path=stage_path))
            block_paths.append(path)
            node_count = _count_nodes(node_count, module)
            shape = module.out_shape
        transition_after = parts.transitions_after[stage_index]
        transition_after_path: str | None = None
        if held and transition is not None:
            if transition_after is not None:
                raise RescompileError(
                    f"stage {stage_index}'s transition '{transition.spec.name}' holds its blocks, so it has no "
                    "transition after them: put those nodes in it, after its blocks",
                    network.locate("stages", stage_index),
                )
            module = _after_held_blocks(
                network, transition, held_definition, modules[-1 - stage.depth], stage_index, shape
            )
            transition_kinds.uses.append((len(modules), transition_kinds.uses[-1][1]))  # the same kind
            shape, node_count = _appended(modules, module, node_count)
            transition_after_path = module.path
        elif transition_after is not None:
            _check_distinct(used_transitions, transition_after, network.locate("transition_after"))
            module, _, _ = _transition_module(
                network,
                transition_after,
                stage_index,
                stage_path,
                shape,
                True,
                unrolling,
                transition_kinds,
                len(modules),
            )
            shape, node_count = _appended(modules, module, node_count)
            transition_after_path = module.path
        if block_paths:
            container = spec.naming.stage_path(stage_index) if spec.naming.shared else None
            stages.append(
                Stage(stage_path, tuple(block_paths), transition_path, transition_after_path, container, bool(held))
            )

    head_bindings = _bind(head, spec.head_parameters, {"in_channels": shape[0]}, network, "head_parameters")
    head = unrolling.instantiate(head, head_bindings, "heads")
    head_definition = _definition(head, "head", "head")
    modules.append(
        _build_module("", "head", head, head_definition, head_bindings, shape, network.locate("head"), None, None)
    )
    out_shape = modules[-1].out_shape
    if out_shape is not None and len(out_shape) != 1:
        raise RescompileError(
            f"head '{head.spec.name}' must end with flat features (e.g. flatten, then linear); "
            f"it ends with shape {show_shape(out_shape)}",
            head.locate("nodes", list(head.spec.nodes)[-1]),
        )
    _check_weight_count(modules)
    _check_paths_apart(modules, network)
    held_in = {shortcut.spec.module for shortcut in used_shortcuts.values() if isinstance(shortcut.spec, ShortcutSpec)}
    if len(held_in) > 1:
        raise RescompileError(
            f"the network's shortcut kinds keep their layers under different names ({', '.join(sorted(held_in))}); "
            "a block holds its shortcut in one attribute: give them one 'module'",
            network.locate("shortcut"),
        )
    distinct_blocks: dict[str, Loaded[PartSpec]] = {}
    for index, (first_block, block) in enumerate(zip(parts.first_blocks, blocks, strict=True)):
        for key, part in (("first_block", first_block), ("block", block)):
            if distinct_blocks.setdefault(part.spec.name, part) is not part:
                raise RescompileError(
                    f"two different block files are both named '{part.spec.name}'; a network's block types need "
                    "distinct names",
                    network.locate("stages", index, key),
                )
    if policy is not None:
        # Every block class takes its shortcut module as a constructor argument of this name.
        attribute = next(iter(held_in), "downsample")
        for part in distinct_blocks.values():
            for field in ("parameters", "derived"):
                if attribute in getattr(part.spec, field):
                    raise RescompileError(
                        f"block '{part.spec.name}' names a {field[:-1] if field == 'parameters' else 'derived value'} "
                        f"'{attribute}', the attribute its shortcut module is held in; rename it",
                        part.source.locate((field, attribute), key=True),
                    )
    variants = _variants(instances)
    for (index, *_), (variant, _, _) in zip(instances, variants, strict=True):
        modules[index] = dataclasses.replace(modules[index], type_name=variant.spec.name)
    unique = {
        part.spec.name: (part, dataclasses.replace(instance[5], name=part.spec.name, fixed=fixed))
        for instance, (part, fixed, _) in zip(instances, variants, strict=True)
    }
    definitions = [
        _checked(stem, stem_definition),
        *(_checked(part, definition) for part, definition in transition_kinds.named(modules)),
        *(_checked(block, definition) for block, definition in unique.values()),
        _checked(head, head_definition),
        # Named as the network's policy names it (its file's name), as each block's ``shortcut`` is.
        *(_checked(used_shortcuts[name], shortcut_definitions[name]) for name in sorted(used_shortcuts)),
    ]
    return Graph(
        name=spec.name,
        description=spec.description,
        input_shape=input_shape,
        modules=tuple(modules),
        definitions=tuple(definitions),
        source=network.locate(),
        files=parts.files,
        stages=tuple(stages),
        block_names=spec.naming.blocks,
    )


Fixed = tuple[tuple[str, Value], ...]
"""A block instance's parameters that its unrolling read, with their values."""
Instance = tuple[int, bool, Loaded[PartSpec], Fixed, bool, Definition]
"""A block instance: its module's index, whether it is first in its stage, the block unrolled for
it, the parameter values its unrolling read, whether it keeps its residual add, and the definition
it is an instance of (named as its block)."""
VariantKey = tuple[tuple[tuple[str, object], ...], Fixed, bool]
"""A block unrolling's nodes in order, the parameter values it was unrolled for, and whether it
keeps its residual add (under the policy ``none`` where shapes change, a class without it)."""


def _fixed(part: Loaded[PartSpec], read: frozenset[str], bindings: Mapping[str, Value]) -> Fixed:
    """The part's own parameters an unrolling that read ``read`` depends on, through derived values
    (Res2Net's ``scale``, a repeat count; ``expansion``, which its ``is_first`` reads), with their
    values: a class written from the unrolling is made for these, so they are not its parameters."""
    derived = part.spec.derived
    names, pending = set(read), list(read)
    while pending:
        name = pending.pop()
        if name in derived:
            for used in derived[name].names - names:
                names.add(used)
                pending.append(used)
    return tuple((name, bindings[name]) for name in part.spec.parameters if name in names)


def _variants(instances: list[Instance]) -> list[tuple[Loaded[PartSpec], Fixed, bool]]:
    """Each block instance's part as a class is written (in the order of ``instances``), with what
    it was unrolled for and whether it keeps its residual add: a block type whose templates unroll
    to different nodes in different instances (a ``when`` on the stride, a repeat count), or whose
    instances differ in having a residual add (the policy ``none`` where shapes change), is one
    block type per distinct kind. The one most blocks use keeps the type's name; one that only
    first blocks of stages use, beside a main one that holds the others, is ``NAME_first``;
    others are ``NAME_2``, ``NAME_3``, ..."""
    by_name: dict[str, list[tuple[bool, VariantKey, Loaded[PartSpec]]]] = {}
    keys: list[VariantKey] = []
    for _, first, block, fixed, residual, _ in instances:
        keys.append((_nodes_key(block), fixed, residual))
        by_name.setdefault(block.spec.name, []).append((first, keys[-1], block))
    # A variant's name is new: never a block type of the network (a user block named x_first or
    # x_2 beside x) nor another variant's, or one definition would stand for both.
    taken = set(by_name)
    renamed: dict[tuple[str, VariantKey], Loaded[PartSpec]] = {}  # by block type and kind
    for name, uses in by_name.items():
        # Kinds by their nodes in order and the values they were unrolled for (which a class fixes):
        # a dict lookup, not a comparison with every kind (10,000 blocks that unroll differently
        # were 10**8 comparisons).
        kinds: dict[VariantKey, tuple[list[bool], Loaded[PartSpec]]] = {}
        for first, key, block in uses:
            kinds.setdefault(key, ([], block))[0].append(first)
        ordered = sorted(kinds.items(), key=lambda kind: -len(kind[1][0]))
        first_only = sum(all(firsts) for _, (firsts, _) in ordered[1:])
        for number, (key, (firsts, block)) in enumerate(ordered):
            new_name = name
            if number > 0:
                # NAME_first where the main kind holds the other blocks (not where every block is a first one).
                only_first = all(firsts) and not all(ordered[0][1][0]) and first_only == 1
                new_name = f"{name}_first" if only_first else f"{name}_{number + 1}"
                base, suffix = new_name, 2
                while new_name in taken:
                    new_name, suffix = f"{base}_{suffix}", suffix + 1
                taken.add(new_name)
            renamed[(name, key)] = (
                block
                if new_name == name
                else Loaded(block.spec.model_copy(update={"name": new_name}), block.source, block.extended)
            )
    return [
        (renamed[(block.spec.name, key)], key[1], key[2])
        for (_, _, block, _, _, _), key in zip(instances, keys, strict=True)
    ]


def _nodes_key(block: Loaded[PartSpec]) -> tuple[tuple[str, object], ...]:
    """A block's unrolled nodes, in order, as a dictionary key (op specs are frozen, so hashable)."""
    return tuple(block.spec.nodes.items())


def _check_paths_apart(modules: list[Module], network: Loaded[NetworkSpec]) -> None:
    """The network's attributes (stem and head nodes, stage transitions, stages, which hold their
    blocks) are distinct paths, none inside another: ``naming`` may place a transition or a stage
    anywhere, and two owners of one path would be one attribute in generated code."""
    owners: dict[str, str] = {}
    for module in modules:
        if module.role in ("stem", "head"):
            items = [(node.name, f"{module.role} node '{node.name}'") for node in module.nodes]
        elif module.role == "transition":
            items = [(module.path, f"the transition '{module.path}' of stage '{module.stage}'")]
        else:  # a stage holds its blocks' container, or in a container the stages share, each block
            items = [(module.path if network.spec.naming.shared else module.stage, f"stage '{module.stage}'")]
        for path, owner in items:
            if owners.get(path, owner) == owner or (module.role == "head" and owners[path].startswith("stem ")):
                owners.setdefault(path, owner)  # stem and head nodes apart are the loader's check
                continue
            raise RescompileError(
                f"{owners[path]} and {owner} are both at '{path}'; give naming.stages, naming.transitions "
                "and the stem's and head's nodes distinct paths",
                network.locate("naming"),
            )
    # A transition holding its stage's blocks holds their stage.
    held = {module.stage for module in modules if module.holds_blocks}
    for path, owner in owners.items():
        segments = path.split(".")
        for length in range(1, len(segments)):
            prefix = ".".join(segments[:length])
            if path in held and owners.get(prefix, "").startswith(f"the transition '{prefix}' of stage '{path}'"):
                continue
            if prefix in owners and not {owner[:5], owners[prefix][:5]} <= {"stem ", "head "}:
                raise RescompileError(
                    f"{owner} is at '{path}', inside {owners[prefix]} at '{prefix}'; give naming.stages, "
                    "naming.transitions and the stem's and head's nodes paths apart",
                    network.locate("naming"),
                )


def _check_distinct(used: dict[str, Loaded[PartSpec]], part: Loaded[PartSpec], where: Location) -> None:
    """Record ``part``; two different files of one name would be one class in generated source."""
    if used.setdefault(part.spec.name, part) is not part:
        raise RescompileError(
            f"two different transition files are both named '{part.spec.name}'; give them distinct names", where
        )


MODULE_VALUE_NAMES = ("stem", "output")
"""Names of values flowing between modules (the stem's output, the network's) that a stem or head
node's canonical name would collide with; blocks' outputs are their paths, which no node has."""


def _appended(modules: list[Module], module: Module, node_count: int) -> tuple[Shape, int]:
    """Append ``module``: the shape the next module reads, and the network's node count so far."""
    modules.append(module)
    assert module.out_shape is not None
    return module.out_shape, _count_nodes(node_count, module)


TransitionKey = tuple[str, object, "Fixed"]
"""A transition unrolling's kind: the transition's name, its nodes, the values it was unrolled for."""


class TransitionKinds:
    """The transitions' unrollings, one definition per kind (its nodes, and the values of its own
    parameters its templates read, which its class is made for): a transition whose ``when`` differs
    between stages (CSPNet's ``conv_down`` where the stride is not 1) is one class per kind. The
    kind most stages use keeps the transition's name, the others are ``NAME_2``, ``NAME_3``, ..."""

    def __init__(self) -> None:
        self.parts: dict[TransitionKey, tuple[Loaded[PartSpec], Definition]] = {}
        self.uses: list[tuple[int, TransitionKey]] = []
        """(module index, its kind) for each transition module (both halves of one holding blocks)."""

    def add(self, index: int, unrolled: Loaded[PartSpec], fixed: Fixed, label: str) -> Definition:
        """Record the transition module at ``index``, unrolled as ``unrolled``: its kind's definition."""
        key = (unrolled.spec.name, _nodes_key(unrolled), fixed)
        if key not in self.parts:
            self.parts[key] = (unrolled, dataclasses.replace(_definition(unrolled, "transition", label), fixed=fixed))
        self.uses.append((index, key))
        return self.parts[key][1]

    def named(self, modules: list[Module]) -> list[tuple[Loaded[PartSpec], Definition]]:
        """Each kind's part under its definition name, naming ``modules``' transitions by it."""
        counts = {key: sum(used == key for _, used in self.uses) for key in self.parts}
        transitions = {key[0] for key in self.parts}
        names: dict[TransitionKey, str] = {}
        for key in sorted(self.parts, key=lambda key: -counts[key]):  # stable: the first used first among equals
            variant, number = key[0], 2
            while variant in names.values() or (variant != key[0] and variant in transitions):
                variant, number = f"{key[0]}_{number}", number + 1
            names[key] = variant
        for index, key in self.uses:
            modules[index] = dataclasses.replace(modules[index], type_name=names[key])
        return [
            (
                Loaded(part.spec.model_copy(update={"name": names[key]}), part.source, part.extended),
                dataclasses.replace(definition, name=names[key]),
            )
            for key, (part, definition) in self.parts.items()
        ]


def _transition_module(
    network: Loaded[NetworkSpec],
    transition: Loaded[PartSpec],
    stage_index: int,
    stage_at: str,
    shape: Shape,
    after_blocks: bool,
    unrolling: Unrolling,
    kinds: TransitionKinds,
    index: int,
) -> tuple[Module, Loaded[PartSpec], Definition]:
    """Stage ``stage_index``'s transition (of the stage at path ``stage_at``), before its blocks (bound
    to the stage's width and stride, which it takes) or after them (``after_blocks``: bound to the
    width and stride 1), the module at ``index``, instantiated from its kind's definition in
    ``kinds``; with the transition unrolled for it and that definition."""
    spec = network.spec
    stage = spec.stages[stage_index]
    builtins: dict[str, Value] = {
        "in_channels": shape[0],
        "width": stage.width,
        "stride": 1 if after_blocks else stage.stride,
    }
    key = "transition_after_parameters" if after_blocks else "transition_parameters"
    given = (
        spec.transition_after_parameters
        if after_blocks
        else {**spec.transition_parameters, **stage.transition_parameters}
    )
    bindings = _bind(transition, given, builtins, network, key, None if after_blocks else stage_index)
    path = spec.naming.transition_path(stage_index, after_blocks)
    stage_path = spec.naming.stage_path(stage_index)
    template = transition
    transition, read = unrolling.unroll(transition, bindings, "transitions", path)
    assert isinstance(transition.spec, TransitionSpec)
    if transition.spec.blocks is not None:
        _check_held_path(network, transition, stage_index, path)
    definition = kinds.add(index, transition, _fixed(template, read, bindings), path)
    if transition.spec.blocks is not None:
        module = _before_held_blocks(network, transition, definition, stage_index, shape, bindings, path)
        return module, transition, definition
    if f"{path}.".startswith(f"{stage_path}.") or f"{stage_path}.".startswith(f"{path}."):
        naming = "naming.transitions_after" if after_blocks else "naming.transitions"
        raise RescompileError(
            f"stage {stage_index}'s transition '{path}' and its blocks '{stage_path}' would hold one another; "
            f"give {naming} and naming.stages distinct paths (stages.{{index}}.downsample and "
            "stages.{index}.blocks)",
            network.locate("naming"),
        )
    location = network.locate("stages", stage_index)
    module = _build_module(path, "transition", transition, definition, bindings, shape, location, None, None)
    return dataclasses.replace(module, stage_path=stage_at, after_blocks=after_blocks), transition, definition


def _stage_path(naming: NamingSpec, stage_index: int, last_block: int) -> str:
    """The path of stage ``stage_index``: its blocks' container, or where the stages share one
    (``features``), its last block (``features.3``, the network's ``last_block``), where its output is read."""
    return naming.block_path(stage_index, 0, last_block) if naming.shared else naming.stage_path(stage_index)


def _check_held_path(network: Loaded[NetworkSpec], transition: Loaded[PartSpec], stage_index: int, path: str) -> None:
    """A transition holding stage ``stage_index``'s blocks holds them at ``PATH.blocks``, its naming's choice."""
    stage_path = network.spec.naming.stage_path(stage_index)
    if stage_path != f"{path}.{HELD_BLOCKS}":
        raise RescompileError(
            f"stage {stage_index}'s transition '{transition.spec.name}' holds its blocks, at '{path}.{HELD_BLOCKS}', "
            f"but naming.stages places them at '{stage_path}'; name the stages as the transitions with "
            f'\'.{HELD_BLOCKS}\' after them (transitions: "stages.{{index}}", stages: "stages.{{index}}.blocks")',
            network.locate("naming"),
        )


def _before_held_blocks(
    network: Loaded[NetworkSpec],
    transition: Loaded[PartSpec],
    definition: Definition,
    stage_index: int,
    shape: Shape,
    bindings: Bindings,
    path: str,
) -> Module:
    """The half of a transition holding stage ``stage_index``'s blocks that runs before them: its
    definition's nodes up to the one the blocks read."""
    before = definition.nodes[: definition.first_after_blocks]
    location = network.locate("stages", stage_index)
    module = _build_module(
        path, "transition", transition, definition, bindings, shape, location, None, None, nodes=before
    )
    return dataclasses.replace(module, stage_path=network.spec.naming.stage_path(stage_index), holds_blocks=True)


def _after_held_blocks(
    network: Loaded[NetworkSpec],
    transition: Loaded[PartSpec],
    definition: Definition,
    before: Module,
    stage_index: int,
    shape: Shape,
) -> Module:
    """The half of a transition holding stage ``stage_index``'s blocks that runs after them
    (``shape``: their output's), reading their output and values of the half ``before`` them."""
    spec = transition.spec
    assert isinstance(spec, TransitionSpec) and spec.blocks is not None and before.holds_blocks
    bindings = _derive(transition, Bindings(dict(before.parameters)))
    where = f"{before.path} (stage {stage_index})"
    declared = evaluate_int(spec.blocks.out_channels, bindings, transition, ("blocks", "out_channels"), where, 1)
    if declared != shape[0]:
        raise RescompileError(
            f"{where}: transition '{spec.name}' declares blocks.out_channels = {spec.blocks.out_channels.text} = "
            f"{declared}, but the stage's blocks output {shape[0]} channels",
            transition.locate("blocks", "out_channels"),
        )
    after = definition.nodes[definition.first_after_blocks :]
    shapes: dict[str, Shape] = {MODULE_INPUT: shape, **{node.name: node.shape for node in before.nodes if node.shape}}
    location = network.locate("stages", stage_index)
    nodes = instantiate(after, transition, bindings, shapes, before.path, location, aliases={HELD_BLOCKS: MODULE_INPUT})
    earlier = {node.name: node.shape for node in before.nodes if node.shape is not None}
    carried = tuple(sorted({(value, earlier[value]) for node in nodes for value in node.inputs if value in earlier}))
    return dataclasses.replace(
        before,
        nodes=tuple(nodes),
        in_shape=shape,
        out_shape=nodes[-1].shape,
        after_blocks=True,
        carried=carried,
    )


def _check_network_attributes(
    network: Loaded[NetworkSpec], stem: Loaded[PartSpec], head: Loaded[PartSpec], parts: NetworkParts
) -> None:
    """The network class holds the stem's nodes, the stages and the head's nodes side by side: they
    may share containers (torchvision's ``features.0`` stem, ``features.1`` stage and ``features.8``
    head conv), but no node of the stem or head may be at another's path or inside it, nor hold it
    (``conv1`` and ``conv1.fc``), or one would replace the other's layer or container in the
    generated module."""
    naming = network.spec.naming
    owners: dict[str, str] = {}
    blocks_before = 0
    for stage_index, stage in enumerate(network.spec.stages):
        # Where the stages share a container, a stage holds its blocks' paths in it (features.1), not it.
        held = range(blocks_before, blocks_before + stage.depth) if naming.shared else [0]
        for block in held:
            path = naming.block_path(stage_index, 0, block) if naming.shared else naming.stage_path(stage_index)
            owners.setdefault(path, "a stage of the network")
        blocks_before += stage.depth
        for after_blocks, transition in (
            (False, parts.transitions[stage_index]),
            (True, parts.transitions_after[stage_index]),
        ):
            if transition is not None:
                path = naming.transition_path(stage_index, after_blocks)
                owners.setdefault(path, "a stage transition of the network")
    for role, part in (("stem", stem), ("head", head)):
        for node_name in part.spec.nodes:
            if node_name in MODULE_VALUE_NAMES:
                raise RescompileError(
                    f"{role} node '{node_name}' is named like a value between modules "
                    f"({', '.join(MODULE_VALUE_NAMES)}: the ONNX backend's names for the stem's and the network's "
                    "outputs); rename the node",
                    part.source.locate(("nodes", node_name), key=True),
                )
            first = node_name.split(".")[0]
            owner = next(
                (
                    owner
                    for path, owner in owners.items()
                    if owner != f"a node of the {role}" and _nested(path, node_name)
                ),
                None,
            )
            if owner is not None:
                raise RescompileError(
                    f"{role} node {node_name!r} would share the network module's attribute '{first}' with {owner}; "
                    "rename the node" + (" or change the network's naming.stages" if "stage" in owner else ""),
                    part.source.locate(("nodes", node_name), key=True),
                )
        for node_name in part.spec.nodes:
            owners.setdefault(node_name, f"a node of the {role}")


def _nested(first: str, second: str) -> bool:
    """Whether module path ``first`` is ``second``, inside it or holds it."""
    return first == second or first.startswith(f"{second}.") or second.startswith(f"{first}.")


def _check_class_nodes(part: Loaded[PartSpec], role: DefinitionRole, nodes: list[SymbolicNode]) -> None:
    """What the torch and flax backends need to write a block or shortcut as one class, checked
    here so that ``validate`` refuses what they would refuse."""
    for node in nodes:
        if isinstance(node.op, LinearFields):
            raise RescompileError(
                f"{role} '{part.spec.name}': node '{node.name}' is a linear layer, which the torch and flax backends "
                f"cannot write in a {role} class (its in_features is a spatial size no parameter states); "
                "use a 1×1 conv",
                part.source.locate(("nodes", node.name), key=True),
            )
    numbered = [node for node in nodes if node.name.split(".")[0].isdigit()]
    chain = all(
        node.name == str(index) and node.inputs == ((MODULE_INPUT,) if index == 0 else (nodes[index - 1].name,))
        for index, node in enumerate(nodes)
    )
    if numbered and not (chain and not part.spec.derived):
        raise RescompileError(
            f"{role} '{part.spec.name}': node '{numbered[0].name}' is numbered, which only a chain of nodes named "
            "0, 1, 2, ... without derived values (a Sequential, torchvision's downsample) may be; name it",
            part.source.locate(("nodes", numbered[0].name), key=True),
        )


def _count_nodes(total: int, module: Module) -> int:
    """``total`` and ``module``'s nodes; a network passing :data:`MAX_NODES` is refused at the module
    where it does."""
    total += len(module.nodes)
    if total > MAX_NODES:
        raise RescompileError(
            f"{module.path or module.role}: the network's modules hold more than {MAX_NODES:,} nodes here; "
            "that is the limit",
            module.source,
        )
    return total


def _check_weight_count(modules: list[Module]) -> None:
    """Refuse a network whose weights pass :data:`MAX_WEIGHTS`, at the module where they do."""
    total = 0
    for module in modules:
        total += sum(math.prod(tensor.shape) for node in module.nodes for tensor in node.op.tensors().values())
        if total > MAX_WEIGHTS:
            raise RescompileError(
                f"{module.path or module.role}: the network's weights pass {MAX_WEIGHTS:,} values (2**32) here; "
                "use smaller widths",
                module.source,
            )


IN_CHANNELS = parse_expression("in_channels")
FLAT_FEATURES = parse_expression("features")
"""The channels an op reads after a flatten, in a definition: a value no parameter states."""


def _definition(
    part: Loaded[PartSpec], role: DefinitionRole, label: str, residual: bool = True, definition_name: str | None = None
) -> Definition:
    """A part, unrolled, as a definition: each node's op over the part's parameters, as the spec
    states it plus what the op derives from its input channels (the op table's symbolic rule). Its
    instances are made from it (:func:`_instantiate`); ``label`` names the first of them in errors.
    Without its residual add (``residual`` False: a plain block), whatever read the add reads the
    branch instead."""
    spec = part.spec
    channels: dict[str, Expression | None] = {MODULE_INPUT: IN_CHANNELS}
    if isinstance(spec, BlockSpec):
        channels[SHORTCUT_VALUE] = spec.out_channels
    renamed: dict[str, str] = {}
    nodes: list[SymbolicNode] = []
    previous = MODULE_INPUT
    held = spec.blocks if isinstance(spec, TransitionSpec) else None
    for name, node_spec in spec.nodes.items():
        inputs = tuple(renamed.get(value, value) for value in _inputs(node_spec, previous))
        previous = name
        if held is not None and name == held.input:
            previous, channels[HELD_BLOCKS] = HELD_BLOCKS, held.out_channels
        if SHORTCUT_VALUE in inputs and not isinstance(node_spec, AddSpec):
            raise RescompileError(
                f"{label}: only an add node may read 'shortcut' (the residual merge)", part.locate("nodes", name)
            )
        if not residual and isinstance(node_spec, AddSpec) and SHORTCUT_VALUE in inputs:
            renamed[name] = _other(inputs)
            continue
        # The spec's values as written (a binary op's inputs as the definition reads them).
        values = {field: value for field, value in node_spec if field not in ("op", "input", "when")}
        if "inputs" in values:
            values["inputs"] = inputs
        op_type = OPS[node_spec.op]
        in_channels = tuple(channels.get(value) for value in inputs)
        if None in in_channels and not issubclass(op_type, Linear):
            # After a flatten no expression states the channels; an op reading them there is refused by
            # its instance's shape rule (a conv needs an image), which never evaluates what an op
            # derives from its input: it is told the flat value's features.
            in_channels = tuple(FLAT_FEATURES if value is None else value for value in in_channels)
        op, channels[name] = op_type.symbolic_inputs(values, in_channels)
        nodes.append(SymbolicNode(name, op, inputs, part.locate("nodes", name)))
    if nodes and renamed.get(previous, nodes[-1].name) != nodes[-1].name:
        # A block without its residual add that ended with it ends with the add's branch, which must
        # be its last node left (a node read only as the shortcut_input may come after the branch).
        raise RescompileError(
            f"{label}: without its residual add, block '{spec.name}' would end with '{renamed[previous]}', "
            "which is not its last node; order the nodes so that the residual add's branch comes last before it",
            part.locate("nodes", previous),
        )
    return Definition(
        role=role,
        name=spec.name if definition_name is None else definition_name,
        description=spec.description,
        parameters=tuple(spec.defaults.items()),
        derived=tuple(spec.derived.items()),
        nodes=tuple(nodes),
        module=spec.module if isinstance(spec, ShortcutSpec) else None,
        shortcut_input=spec.shortcut_input if isinstance(spec, BlockSpec) else MODULE_INPUT,
        classes=tuple(spec.classes.items()) if isinstance(spec, BlockSpec) else (),
        blocks=None if held is None else (held.input, held.out_channels),
    )


def _checked(part: Loaded[PartSpec], definition: Definition) -> Definition:
    """``definition`` (of ``part``), once what the source backends need to write it as a class
    holds: its nodes (:func:`_check_class_nodes`) and the containers it writes as classes."""
    if definition.role in ("block", "shortcut", "transition"):
        _check_class_nodes(part, definition.role, list(definition.nodes))
    for prefix in dict(definition.classes):
        outer = next((other for other in dict(definition.classes) if prefix.startswith(f"{other}.")), None)
        if outer is not None:
            # NOTE: a class inside a class would need the outer class to write the inner one; refused, not
            # approximated (the outer class dropped the nodes after the inner one).
            raise RescompileError(
                f"block '{part.spec.name}': classes.{prefix} is inside classes.{outer}; a container written as a "
                "class cannot hold another one: keep one of them",
                part.source.locate(("classes", prefix), key=True),
            )
        try:
            container_span(definition, prefix)
        except ValueError as error:
            raise RescompileError(
                f"block '{part.spec.name}': classes.{prefix}: {error}", part.source.locate(("classes", prefix))
            ) from None
    return definition


def _block_overrides(spec: NetworkSpec, stage_index: int, block_index: int) -> dict[str, Value]:
    """Block ``block_index``'s parameters (of stage ``stage_index``) as the network sets them. The
    network's and the stage's ``block_parameters`` are for their block types; the first block's own
    come next, and the block's own ``per_block_parameters`` last."""
    stage = spec.stages[stage_index]
    stage_block = stage.block or spec.block
    first = block_index == 0
    block = (stage.first_block or stage_block) if first else stage_block
    overrides: dict[str, Value] = {}
    if block == spec.block:
        overrides.update(spec.block_parameters)
    if block == stage_block:
        overrides.update(stage.block_parameters)
    if first:
        overrides.update(stage.first_block_parameters)
    overrides.update(stage.own_parameters(block_index))
    return overrides


def _check_per_block_parameters(network: Loaded[NetworkSpec]) -> None:
    """A stage's ``per_block_parameters`` names each of its blocks: one mapping per block, or one
    value per block in each list of its mapping form."""
    for stage_index, stage in enumerate(network.spec.stages):
        if isinstance(stage.per_block_parameters, dict):
            for name, values in stage.per_block_parameters.items():
                if len(values) != stage.depth:
                    raise RescompileError(
                        f"stage {stage_index} has depth {stage.depth} but per_block_parameters.{name} lists "
                        f"{len(values)} value{'' if len(values) == 1 else 's'}: give one per block, in order",
                        network.locate("stages", stage_index, "per_block_parameters", name),
                    )
            continue
        count = len(stage.per_block_parameters or ())
        if stage.per_block_parameters is not None and count != stage.depth:
            raise RescompileError(
                f"stage {stage_index} has depth {stage.depth} but per_block_parameters lists {count} "
                f"mapping{'' if count == 1 else 's'}: give one per block, in order ({{}} for a block that "
                "changes nothing)",
                network.locate("stages", stage_index, "per_block_parameters"),
            )


def _parameter_path(
    network: Loaded[NetworkSpec], field: str, stage_index: int | None, block_index: int | None, name: str
) -> YamlPath:
    """Where the network set parameter ``name``: a stage's own mappings, else ``field``."""
    if stage_index is not None and field == "transition_parameters":
        if name in network.spec.stages[stage_index].transition_parameters:
            return ("stages", stage_index, field, name)
        return (field, name)
    if stage_index is not None:
        stage = network.spec.stages[stage_index]
        if block_index is not None and name in stage.own_parameters(block_index):
            return ("stages", stage_index, "per_block_parameters", *stage.own_parameter_path(block_index, name))
        first = block_index == 0
        if first and name in stage.first_block_parameters:
            return ("stages", stage_index, "first_block_parameters", name)
        if name in stage.block_parameters:
            return ("stages", stage_index, "block_parameters", name)
    return (field, name)


def _bind(
    part: Loaded[PartSpec],
    overrides: Mapping[str, Value],
    builtins: Mapping[str, Value],
    network: Loaded[NetworkSpec],
    field: str,
    stage_index: int | None = None,
    block_index: int | None = None,
) -> Bindings:
    """Part defaults, then the network's values, then the values the compiler always binds."""
    declared = part.spec.defaults
    kind = type(part.spec).__name__.removesuffix("Spec").lower()
    for name in overrides:
        where = network.source.locate(_parameter_path(network, field, stage_index, block_index, name), key=True)
        if name in builtins:
            raise RescompileError(f"'{name}' is set by the compiler from the stage and input; remove it", where)
        if name not in declared:
            choices = list(declared)
            raise RescompileError(
                f"{kind} '{part.spec.name}' has no parameter '{name}'{did_you_mean(name, choices)}; "
                f"its parameters: {', '.join(choices) or 'none'}",
                where,
            )
    origins = {
        name: network.source.locate(_parameter_path(network, field, stage_index, block_index, name))
        for name in overrides
    }
    for name, bounds in part.spec.bounds.items():
        problem = bounds.violation(overrides[name], name) if name in overrides else None
        if problem is not None:
            raise RescompileError(
                f"{name} = {overrides[name]!r} is out of bounds for {kind} '{part.spec.name}': {problem}",
                origins[name],
            )
    bindings = Bindings({**declared, **overrides, **builtins}, origins, network.source.values.get(("input", "size")))
    for name, value in bindings.items():
        if value == REQUIRED:
            raise RescompileError(
                f"{kind} '{part.spec.name}' needs parameter '{name}'; set it in {field}",
                network.locate(field)
                if (field,) in network.source.values
                else network.locate(field.removesuffix("_parameters")),
            )
    return _derive(part, bindings)


def _derive(part: Loaded[PartSpec], bindings: Bindings) -> Bindings:
    """Add the part's derived values, each evaluated from the parameters and earlier ones; a
    derived value computed from one the network set has that value's origin."""
    for name, expression in part.spec.derived.items():
        origin = bindings.origin(expression)
        try:
            bindings[name] = expression.evaluate(bindings)
        except ExpressionError as error:
            raise located(f"derived.{name} = {expression.text}: {error}", part, ("derived", name), origin) from None
        if origin is not None:
            bindings.origins[name] = origin
    return bindings


def _build_module(
    path: str,
    role: ModuleRole,
    part: Loaded[PartSpec],
    definition: Definition,
    bindings: Bindings,
    in_shape: Shape,
    location: Location,
    shortcut_name: str | None,
    shortcut: tuple[Loaded[PartSpec], dict[str, Definition]] | None,
    shortcut_bindings: Bindings | None = None,
    nodes: Sequence[SymbolicNode] | None = None,
) -> Module:
    """The instance of ``definition`` (of ``part``, unrolled for it) at ``path``, of its nodes (or
    ``nodes``, a half of them), its parameters bound; a block's shortcut is part ``shortcut`` (its
    definition made once, in the mapping by its name) or, where none, the identity."""
    label = path or role
    shapes: dict[str, Shape] = {MODULE_INPUT: in_shape}
    shortcut_module: str | None = None
    build_shortcut: Callable[[dict[str, Shape]], list[Node]] | None = None
    if role == "block" and shortcut_name is not None:
        assert isinstance(part.spec, BlockSpec)
        if shortcut is None:
            build_shortcut = _identity
        else:
            shortcut_part, made = shortcut
            assert isinstance(shortcut_part.spec, ShortcutSpec) and shortcut_bindings is not None
            shortcut_module = shortcut_part.spec.module
            for name in part.spec.nodes:
                if name.split(".")[0] == shortcut_module:
                    # One attribute of the block module would hold both (the torch build lost a node).
                    what = "a node" if name == shortcut_module else f"the container of node '{name}'"
                    raise RescompileError(
                        f"shortcut '{shortcut_part.spec.name}' is held in module '{shortcut_module}', which is "
                        f"also {what} of block '{part.spec.name}'; rename one of them",
                        shortcut_part.locate("module"),
                    )
            build_shortcut = _shortcut_builder(
                part, (shortcut_name, shortcut_part, made), shortcut_bindings, label, in_shape, location
            )

    declared = shortcut_bindings.get("out_channels") if shortcut_bindings else None
    assert declared is None or isinstance(declared, int)
    instance = instantiate(
        definition.nodes if nodes is None else nodes,
        part,
        bindings,
        shapes,
        label,
        location,
        build_shortcut,
        declared,
    )
    return Module(
        path=path,
        role=role,
        type_name=part.spec.name,
        parameters=tuple(sorted((name, bindings[name]) for name in bindings if name not in part.spec.derived)),
        shortcut=shortcut_name,
        shortcut_module=shortcut_module,
        nodes=tuple(instance),
        in_shape=in_shape,
        out_shape=instance[-1].shape,
        source=location,
    )


def _identity(shapes: dict[str, Shape]) -> list[Node]:
    """The identity shortcut: no nodes; the residual add reads the block input."""
    return []


def _shortcut_builder(
    block: Loaded[PartSpec],
    shortcut: tuple[str, Loaded[PartSpec], dict[str, Definition]],
    bindings: Bindings,
    label: str,
    in_shape: Shape,
    location: Location,
) -> Callable[[dict[str, Shape]], list[Node]]:
    """What instantiates a block's shortcut (its policy name, its part and the shortcut definitions
    made so far, by name) once the value it reads (the block's ``shortcut_input``) is computed: its
    nodes come right before the residual add, under the shortcut's module."""
    assert isinstance(block.spec, BlockSpec)
    source = block.spec.shortcut_input
    name, part, made = shortcut
    assert isinstance(part.spec, ShortcutSpec)
    prefix = f"{part.spec.module}."

    def build(shapes: dict[str, Shape]) -> list[Node]:
        if shapes[source] != in_shape:
            # The network builds the shortcut from the block's in_channels and stride.
            raise RescompileError(
                f"{label}: shortcut_input '{source}' has shape {show_shape(shapes[source])}, but a shortcut reads a "
                f"value of the block input's shape ({show_shape(in_shape)})",
                block.locate("shortcut_input"),
            )
        where = f"{label} shortcut"
        try:
            # Named as the network's policy names it (its file's name), as each block's ``shortcut`` is.
            definition = made.get(name) or made.setdefault(name, _definition(part, "shortcut", where, True, name))
            return instantiate(
                definition.nodes, part, bindings, shapes, where, location, prefix=prefix, input_value=source
            )
        except RescompileError as error:
            # Point at the network, whose shortcut choice the user can change, not the part file.
            raise RescompileError(
                f"shortcut '{part.spec.name}' cannot take {label} from {in_shape[0]} to "
                f"{bindings['out_channels']} channels ({error.message})",
                location,
            ) from None

    return build


def _inputs(node: OpSpec, previous: str) -> tuple[str, ...]:
    """The values a spec node reads: its ``inputs``, its ``input``, or else the node before it."""
    if isinstance(node, BinarySpec):
        return node.inputs
    return (node.input if node.input is not None else previous,)


def _other(inputs: tuple[str, ...]) -> str:
    return inputs[0] if inputs[1] == SHORTCUT_VALUE else inputs[1]


__all__ = ["MAX_BLOCKS", "MAX_NODES", "MAX_WEIGHTS", "expand"]
