"""Find, read and validate spec files, turning every failure into one located error line."""

from __future__ import annotations

import ast
import copy
import functools
import keyword
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from rescompile.spec.errors import Location, RescompileError, did_you_mean, one_of
from rescompile.spec.expressions import Expression, ExpressionError, Value, parse_expression
from rescompile.spec.models import (
    FOREIGN_KEYS,
    FOREIGN_OPS,
    HELD_BLOCKS,
    INFERRED_KEYS,
    MODULE_ATTRIBUTES,
    MODULE_LEVEL_NAMES,
    REQUIRED,
    RESERVED_NAMES,
    AddSpec,
    BatchNormDefaultsSpec,
    BinarySpec,
    BlockExtensionSpec,
    BlockSpec,
    HeadSpec,
    HeldBlocksSpec,
    ModuleSpec,
    ModuleUseSpec,
    NetworkSpec,
    OpSpec,
    PartSpec,
    RepeatSpec,
    ShortcutPolicySpec,
    ShortcutSpec,
    SplitSpec,
    StemSpec,
    TransitionSpec,
)
from rescompile.spec.yaml_source import SourceMap, YamlDocument, YamlPath, parse_yaml, read_yaml

ModelT = TypeVar("ModelT", bound=BaseModel)
PartKind = Literal["blocks", "stems", "heads", "shortcuts", "transitions", "modules"]

PART_MODELS: dict[PartKind, type[PartSpec]] = {
    "blocks": BlockSpec,
    "stems": StemSpec,
    "heads": HeadSpec,
    "shortcuts": ShortcutSpec,
    "transitions": TransitionSpec,
    "modules": ModuleSpec,
}
# Names every part of a kind may use in expressions without declaring them.
BOUND_NAMES: dict[PartKind, frozenset[str]] = {
    # block_index counts blocks over the whole network from 0 (timm's net_block_idx); block_count is their number.
    "blocks": frozenset({"in_channels", "width", "stride", "block_index", "block_count"}),
    "stems": frozenset({"in_channels"}),
    "heads": frozenset({"in_channels"}),
    "shortcuts": frozenset({"in_channels", "out_channels", "stride"}),
    "transitions": frozenset({"in_channels", "width", "stride"}),
    "modules": frozenset(),  # a module reads only its own parameters: its user binds them
}
STAGE_KEYWORDS = frozenset(
    {"block", "out_channels", "depth", "first_block_index", "first_block", "first_options", "layout", "options"}
)
"""The generated ``_make_stage``'s own keywords: a block's parameters are passed through it by keyword
(``_make_stage(BottleneckBlock, ..., groups=32)``), so none may be named so."""
# Values a node may read besides earlier nodes.
SPECIAL_INPUTS: dict[PartKind, frozenset[str]] = {
    "blocks": frozenset({"input", "shortcut"}),
    "stems": frozenset({"input"}),
    "heads": frozenset({"input"}),
    "shortcuts": frozenset({"input"}),
    "transitions": frozenset({"input"}),
    "modules": frozenset({"input"}),
}


@dataclass(frozen=True)
class Loaded(Generic[ModelT]):
    """A validated spec together with where each of its values came from."""

    spec: ModelT
    source: SourceMap
    extended: tuple[Path, ...] = field(default=(), compare=False)
    """The files an ``extends`` chain read (a network's or a block's) besides the spec's own: no output
    may replace them."""

    def locate(self, *path: str | int) -> Location:
        return self.source.locate(path)


def builtin_directory() -> Path:
    """The ``architectures/`` folder shipped inside the installed package."""
    return Path(str(resources.files("rescompile.architectures")))


def is_builtin(location: Location) -> bool:
    """Whether ``location`` lies in a file shipped with rescompile (its ``architectures/``)."""
    try:
        return Path(location.file).resolve().is_relative_to(builtin_directory().resolve())
    except (OSError, ValueError):
        return False


def builtin_networks() -> list[str]:
    return sorted(path.stem for path in builtin_directory().glob("*.yaml"))


def display_name(path: Path) -> str:
    """How a file is named in messages: relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def resolve_network(reference: str | Path) -> Path:
    """A network file path, or a built-in name such as ``resnet50``."""
    text = str(reference)
    path = Path(text)
    where = Location(text, 1, 1)
    if path.suffix in {".yaml", ".yml"} or "/" in text or _exists(path, text, where):
        if not _exists(path, text, where):
            raise RescompileError(f"no such file: {text}", where)
        return path
    candidate = builtin_directory() / f"{text}.yaml"
    if _exists(candidate, text, where):
        return candidate
    names = builtin_networks()
    raise RescompileError(
        f"'{text}' is neither a file nor a built-in architecture{did_you_mean(text, names)}; "
        f"built-ins: {', '.join(names)}",
        Location(text, 1, 1),
    )


def load_network(reference: str | Path) -> Loaded[NetworkSpec]:
    path = resolve_network(reference)
    document, extended = _read_network(path, ())
    return Loaded(_validate(NetworkSpec, document), document.source, extended)


def load_network_with(reference: str | Path, overrides: Mapping[str, Any], label: str) -> Loaded[NetworkSpec]:
    """A network with ``overrides`` over it, merged as a network that ``extends`` it would be
    (``*_parameters`` by name, other keys whole) and validated like YAML: an override's error is
    located in ``label``, the override written as YAML (``create_model(...):1:30: ...``)."""
    import yaml

    path = resolve_network(reference)
    base, extended = _read_network(path, ())
    if not overrides:
        return Loaded(_validate(NetworkSpec, base), base.source, extended)
    child = parse_yaml(yaml.safe_dump(dict(overrides), sort_keys=False, default_flow_style=True), label)
    document = _merge(base, child, _is_network_parameters)
    return Loaded(_validate(NetworkSpec, document), document.source, (*extended, path))


MAX_EXTENDS = 64
"""The most files an ``extends`` chain may read (the network's own too): real chains are one or
two long, and each file read merges every value of the files below it."""


def _read_network(path: Path, chain: tuple[Path, ...]) -> tuple[YamlDocument, tuple[Path, ...]]:
    """A network file's document with its ``extends`` chain merged in (see :func:`_merge`), and
    the base files read. Every value keeps the location of the file that set it."""
    documents, bases = _read_chain(path, chain, "network", _resolve_base)
    merged = documents.pop()
    while documents:
        merged = _merge(merged, documents.pop(), _is_network_parameters)
    return merged, bases


def _read_chain(
    path: Path, chain: tuple[Path, ...], noun: str, resolve: Callable[[str, Path, Location], Path]
) -> tuple[list[YamlDocument], tuple[Path, ...]]:
    """The documents of ``path``'s ``extends`` chain, the file itself first and the one extending
    nothing last, and the base files read (``resolve`` finds what an ``extends`` names). The chain
    is walked in a loop, not by recursion: 1,500 files were a RecursionError."""
    documents = [read_yaml(path, display_name(path))]
    seen = [*chain, path]
    while isinstance(documents[-1].data, dict) and "extends" in documents[-1].data:
        document = documents[-1]
        reference = document.data["extends"]
        where = document.source.locate(("extends",))
        if not isinstance(reference, str):
            raise RescompileError(
                f"extends: expected a built-in {noun}'s name or a {noun} file's path (got {reference!r})", where
            )
        if "name" not in document.data:
            message = f"a {noun} that extends '{reference}' needs a name of its own: add a 'name' key"
            raise RescompileError(message, document.source.locate(()))
        base_path = resolve(reference, seen[-1], where)
        if base_path.resolve() in {file.resolve() for file in seen}:
            cycle = " -> ".join(display_name(file) for file in (*seen, base_path))
            raise RescompileError(f"extends makes a cycle: {cycle}", where)
        if len(documents) >= MAX_EXTENDS:
            raise RescompileError(
                f"extends: a chain of {noun} files is at most {MAX_EXTENDS} files long; this one is longer", where
            )
        base = read_yaml(base_path, display_name(base_path))
        if not isinstance(base.data, dict):
            raise RescompileError(
                f"expected a YAML mapping at the top level, got {type(base.data).__name__}", base.source.locate(())
            )
        documents.append(base)
        seen.append(base_path)
    return documents, tuple(reversed(seen[len(chain) + 1 :]))


def _resolve_base(reference: str, network_file: Path, where: Location) -> Path:
    """What ``extends`` names: a file path (relative to the extending file), else a built-in."""
    if reference.endswith((".yaml", ".yml")) or "/" in reference:
        path = network_file.parent / reference
        if not _exists(path, reference, where):
            raise RescompileError(f"extends: no such network file: {reference}", where)
        return path
    candidate = builtin_directory() / f"{reference}.yaml"
    if not _exists(candidate, reference, where):
        names = builtin_networks()
        raise RescompileError(
            f"extends: '{reference}' is not a built-in network{did_you_mean(reference, names)}; built-ins: "
            f"{', '.join(names)}; or name a file ending in .yaml",
            where,
        )
    return candidate


def _is_network_parameters(key: str) -> bool:
    return key.endswith("_parameters")


def _merge(base: YamlDocument, child: YamlDocument, merged_by_name: Callable[[str], bool]) -> YamlDocument:
    """The child's keys over the base's: a mapping whose key ``merged_by_name`` accepts (a
    network's ``*_parameters``, a block's ``parameters``) is merged name by name, every other key
    (``stages``, ``input``, ``shortcut``, ...) replaced as a whole."""
    data = dict(base.data)
    values, keys = dict(base.source.values), dict(base.source.keys)

    def drop(prefix: YamlPath) -> None:
        for table in (values, keys):
            for path in [path for path in table if path[: len(prefix)] == prefix]:
                del table[path]

    def take(prefix: YamlPath) -> None:
        for mine, table in ((child.source.values, values), (child.source.keys, keys)):
            table.update({path: location for path, location in mine.items() if path[: len(prefix)] == prefix})

    for key, value in child.data.items():
        merged = isinstance(key, str) and merged_by_name(key) and isinstance(value, dict)
        if merged and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
            for name in value:
                declared = base.data[key].get(name)
                if key == "parameters" and isinstance(declared, dict) and not isinstance(value[name], dict):
                    # A plain value over a declared parameter changes its default only: its
                    # choices and bounds stay the base's, and the value is checked against them.
                    data[key][name] = {**declared, "default": value[name]}
                    drop((key, name, "default"))
                    for mine, table in ((child.source.values, values), (child.source.keys, keys)):
                        if (key, name) in mine:
                            table[(key, name, "default")] = mine[(key, name)]
                    continue
                drop((key, name))
        else:
            data[key] = value
            drop((key,))
        take((key,))
    for mine, table in ((child.source.values, values), (child.source.keys, keys)):
        if () in mine:
            table[()] = mine[()]
    return YamlDocument(data, SourceMap(child.source.file, values, keys))


def dump_network(spec: NetworkSpec) -> str:
    """The spec as YAML text (defaults left out); loading it back gives an equal spec."""
    import yaml

    data = spec.model_dump(mode="json", exclude_defaults=True)
    data.pop("extends", None)  # the spec is written whole, its base merged in
    data["input"] = spec.input.model_dump(mode="json")  # always spell the input out
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def resolve_part(kind: PartKind, name: str, network_file: Path | None, where: Location) -> Path:
    """Find part ``name``: a path ending in .yaml, ``<network dir>/<kind>/<name>.yaml``, or built-in."""
    if name.endswith((".yaml", ".yml")):
        base = network_file.parent if network_file is not None else Path.cwd()
        path = base / name
        if _exists(path, name, where):
            return path
        raise RescompileError(f"no such {kind[:-1]} file: {name}", where)
    folders = [builtin_directory() / kind]
    if network_file is not None:
        folders.insert(0, network_file.parent / kind)
    return _find_part(kind, name, folders, where)


def _find_part(kind: PartKind, name: str, folders: list[Path], where: Location, *, besides: Path | None = None) -> Path:
    """``<folder>/<name>.yaml`` in the first of ``folders`` that has it, ``besides`` (the file
    asking) excepted; else an error listing the parts there."""
    for folder in folders:
        candidate = folder / f"{name}.yaml"
        if _exists(candidate, name, where) and (besides is None or candidate.resolve() != besides.resolve()):
            return candidate
    known = sorted({path.stem for folder in folders if folder.is_dir() for path in folder.glob("*.yaml")})
    asked = "extends: " if besides is not None else ""
    raise RescompileError(
        f"{asked}unknown {kind[:-1]} '{name}'{did_you_mean(name, known)}; known {kind}: {', '.join(known)}",
        where,
    )


def _exists(path: Path, name: str, where: Location) -> bool:
    """Whether ``path`` exists; a name the file system cannot look up (too long) is the user's error."""
    try:
        return path.exists()
    except OSError as error:
        raise RescompileError(f"cannot look up {name!r}: {error.strerror or error}", where) from None


def load_part(path: Path, kind: PartKind) -> Loaded[PartSpec]:
    if kind == "modules":
        return _load_module(path, ())
    document, bases = _read_block(path) if kind == "blocks" else _read_part_using_modules(path, kind)
    part = _validate(PART_MODELS[kind], _expand_op_choices(document))
    loaded: Loaded[PartSpec] = Loaded(part, document.source, bases)
    if part.templated and kind in ("shortcuts", "modules"):
        # Shortcuts and modules are written once per network, not unrolled per instance.
        raise RescompileError(
            f"{kind[:-1]} '{part.name}' uses a template (repeat, split, when, a placeholder, a conditional "
            "read or a comprehension); templates work in stems, blocks, transitions and heads only",
            document.source.locate(("nodes",), key=True),
        )
    if not part.templated:
        # A part with templates (repeat, when, split, placeholders) is checked once unrolled for
        # an instance (rescompile.spec.unroll), when its parameters are known.
        check_part_references(loaded, kind)
    return loaded


EXTENSION_KEYS = frozenset(BlockExtensionSpec.model_fields)
BLOCK_KEYS_MERGED_BY_NAME = frozenset({"parameters", "derived", "classes"})


EXTENDABLE: frozenset[PartKind] = frozenset({"stems", "heads"})
"""The part kinds besides blocks whose files may ``extends`` another of their kind (no modules)."""


def _read_block(path: Path) -> tuple[YamlDocument, tuple[Path, ...]]:
    """A block file's document with its ``extends`` chain resolved (see :func:`_extend_block`):
    an ordinary block, every value located in the file that set it; and the base files read."""
    documents, bases = _read_chain(path, (), "block", functools.partial(_resolve_part_base, "blocks"))
    known = set(BOUND_NAMES["blocks"]).union(*(_declared_names(document) for document in documents))
    uses = _ModuleUses()
    files = [path, *reversed(bases)]
    documents = [
        _inline_modules(document, file, (), frozenset(known), uses, classes=True)
        for document, file in zip(documents, files, strict=True)
    ]
    merged = documents.pop()
    while documents:
        merged = _extend_block(merged, documents.pop())
    return _read_module_outputs(merged, uses.outputs), (*bases, *uses.files)


def _read_part_using_modules(path: Path, kind: PartKind) -> tuple[YamlDocument, tuple[Path, ...]]:
    """A stem's, head's, shortcut's or transition's document with its ``extends`` chain resolved
    (stems and heads extend as blocks do: see :func:`_extend_block`) and its module uses written out
    as nested layers (``stem.conv1`` -> ``stem.conv1.conv``, ...; only a block writes a use as a
    class of its own); and the base and module files read."""
    noun = kind[:-1]
    if kind in EXTENDABLE:
        documents, bases = _read_chain(path, (), noun, functools.partial(_resolve_part_base, kind))
    else:
        document = read_yaml(path, display_name(path))
        if not isinstance(document.data, dict):
            return document, ()
        documents, bases = [document], ()
    uses = _ModuleUses()
    known = frozenset(BOUND_NAMES[kind]).union(*(_declared_names(document) for document in documents))
    files = [path, *reversed(bases)]
    documents = [
        _inline_modules(document, file, (), known, uses, classes=False)
        for document, file in zip(documents, files, strict=True)
    ]
    merged = documents.pop()
    while documents:
        merged = _extend_block(merged, documents.pop(), noun)
    return _read_module_outputs(merged, uses.outputs), (*bases, *uses.files)


MAX_MODULE_DEPTH = 8
"""How deep modules may use modules: a gate inside an attention inside a block is three."""
NODE_MAPS = ("nodes", "insert_after", "insert_before")
"""The keys of a part file whose nodes may use modules (``insert_*`` map an anchor to nodes)."""


@dataclass
class _ModuleUses:
    """What inlining a part's module uses found: each using node's output (its module's last node,
    ``se`` -> ``se.scale``), and the module files read."""

    outputs: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _load_module(path: Path, chain: tuple[Path, ...]) -> Loaded[PartSpec]:
    return _read_module(path, chain)[1]


def _read_module(path: Path, chain: tuple[Path, ...]) -> tuple[YamlDocument, Loaded[PartSpec]]:
    """A module file, its own module uses written out (its document, and it validated as a part);
    ``chain`` holds the module files using it (a use of one of them is a cycle)."""
    document = read_yaml(path, display_name(path))
    if not isinstance(document.data, dict):
        raise RescompileError(
            f"expected a YAML mapping at the top level, got {type(document.data).__name__}", document.source.locate(())
        )
    uses = _ModuleUses()
    document = _inline_modules(document, path, (*chain, path), _declared_names(document), uses, classes=False)
    document = _read_module_outputs(document, uses.outputs)
    document = _expand_op_choices(document)
    part = _validate(ModuleSpec, document)
    loaded: Loaded[PartSpec] = Loaded(part, document.source, tuple(uses.files))
    for node_name, node in part.nodes.items():
        reads = node.inputs if isinstance(node, BinarySpec) else (node.input or "",)
        made_name = "{" in node_name.replace(SAME_NAME, "")  # not an op chosen by a parameter (_expand_op_choices)
        if isinstance(node, RepeatSpec | SplitSpec) or made_name or any("{" in v or " for " in v for v in reads):
            raise RescompileError(
                f"module '{part.name}' uses a template (repeat, split, a placeholder or a comprehension); a module "
                "is one sub-graph whose nodes may only choose, with when and conditional reads, by its parameters",
                document.source.locate(("nodes", node_name), key=True),
            )
    if not part.templated:  # with a when or a conditional read, checked once unrolled in the using block
        check_part_references(loaded, "modules")
    return document, loaded


def _declared_names(document: YamlDocument) -> frozenset[str]:
    """The parameters and derived values a part file declares (not yet validated)."""
    declared = [document.data.get(key) for key in ("parameters", "derived")]
    return frozenset(str(name) for names in declared if isinstance(names, dict) for name in names)


def _inline_modules(
    document: YamlDocument,
    file: Path,
    chain: tuple[Path, ...],
    known: frozenset[str],
    uses: _ModuleUses,
    *,
    classes: bool,
) -> YamlDocument:
    """``document`` with each node that uses a module (``se: {module: squeeze_excite, ...}``, in
    ``nodes`` or an ``insert_*``) replaced by the module's nodes named under it (``se.fc1``), their
    expressions with the module's parameters and derived values replaced by what the use binds
    (expressions over ``known``). Each node keeps the location the module file gave it; with
    ``classes`` (a block), each use is a container the source backends write as a class."""
    data = dict(document.data)
    values, keys = dict(document.source.values), dict(document.source.keys)
    class_names: dict[str, tuple[str, Location]] = {}
    for map_key in NODE_MAPS:
        maps = data.get(map_key)
        if not isinstance(maps, dict):
            continue
        prefixes: list[YamlPath] = [(map_key,)] if map_key == "nodes" else [(map_key, anchor) for anchor in maps]
        for prefix in prefixes:
            nodes = data[map_key] if len(prefix) == 1 else data[map_key][prefix[1]]
            if not isinstance(nodes, dict) or not any(_is_module_use(node) for node in nodes.values()):
                continue
            written: dict[str, Any] = {}
            previous = "input" if map_key == "nodes" else (str(prefix[1]) if map_key == "insert_after" else None)
            for node_name, node in nodes.items():
                if not _is_module_use(node):
                    written[node_name] = node
                    previous = _implicit_read(str(node_name), node, previous)
                    continue
                where = (*prefix, node_name)
                inlined = _module_nodes(
                    YamlDocument(node, _below(document.source, where)), str(node_name), previous, file, chain, known
                )
                for own, (text, place) in inlined.derived.items():
                    derived: dict[Any, Any] = data["derived"] if isinstance(data.get("derived"), dict) else {}
                    data["derived"] = {**derived, own: text}
                    values[("derived", own)] = keys[("derived", own)] = place
                for inner_name, (inner, places) in inlined.nodes.items():
                    if inner_name in nodes or inner_name in written:
                        raise RescompileError(
                            f"node '{node_name}' uses module '{node['module']}', whose node makes '{inner_name}'; "
                            f"this part already has a node '{inner_name}': rename one",
                            document.source.locate(where, key=True),
                        )
                    written[inner_name] = inner
                    values.update({(*prefix, inner_name, *path): place for path, place in places.values.items()})
                    keys.update({(*prefix, inner_name, *path): place for path, place in places.keys.items() if path})
                    keys[(*prefix, inner_name)] = document.source.locate(where, key=True)
                uses.outputs[str(node_name)] = inlined.output
                uses.files.append(inlined.file)
                # A class's nodes exist in every instance, under one name.
                if "when" not in node and not inlined.conditional and "{" not in str(node_name):
                    class_name = "".join(word[:1].upper() + word[1:] for word in str(node["module"]).split("_"))
                    class_names[str(node_name)] = (class_name, document.source.locate(where, key=True))
                previous = inlined.output
            if len(prefix) == 1:
                data[map_key] = written
            else:
                data[map_key] = {**data[map_key], prefix[1]: written}
    if classes and class_names:
        declared: dict[Any, Any] = data["classes"] if isinstance(data.get("classes"), dict) else {}
        data["classes"] = {**{name: class_name for name, (class_name, _) in class_names.items()}, **declared}
        for node_name, (_, location) in class_names.items():
            keys.setdefault(("classes", node_name), location)
            values.setdefault(("classes", node_name), location)
    return YamlDocument(data, SourceMap(document.source.file, values, keys))


@dataclass(frozen=True)
class _Inlined:
    """The nodes a module use stands for, by name, each with its locations (in the module file);
    the module's derived values, named for the use (``se_kernel``) with their expressions and
    locations; the module file; and the use's output node."""

    nodes: dict[str, tuple[dict[str, Any], SourceMap]]
    derived: dict[str, tuple[str, Location]]
    file: Path
    output: str
    conditional: bool
    """Whether a node of the module has a when or a conditional read: its uses differ by their values."""


SAME_NAME = "{''}"
"""A placeholder that makes nothing: the keys of the alternatives of a node whose op a parameter
chooses (``act1{''}``, ``act1{''}{''}``) are distinct and all unroll to the node's own name."""
OP_CHOICE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_op_choices(document: YamlDocument) -> YamlDocument:
    """``document`` with each node whose op is a parameter (``act1: {op: "{act}"}``, where ``act``
    lists its ``choices``) written as one node per choice, each existing where the parameter has
    that value (``when: "act == 'relu'"``) and each unrolling to the node's name, so that what reads
    ``act1`` reads the chosen one. Every other key of the node goes to each choice."""
    data = document.data
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, dict) or not any(_op_choice(node) for node in nodes.values()):
        return document
    parameters = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
    values, keys = dict(document.source.values), dict(document.source.keys)
    written: dict[Any, Any] = {}
    for name, node in nodes.items():
        match = _op_choice(node)
        if match is None:
            written[name] = node
            continue
        declared = parameters.get(match[1])
        choices = declared.get("choices") if isinstance(declared, dict) else None
        if not isinstance(choices, list) or not all(isinstance(choice, str) for choice in choices):
            raise RescompileError(
                f"node '{name}' takes its op from '{match[1]}', which must be a parameter of this part listing the "
                f"ops it may be: {match[1]}: {{default: relu, choices: [relu, hardswish, ...]}}",
                document.source.locate(("nodes", name, "op")),
            )
        for index, choice in enumerate(choices):
            key = f"{name}{SAME_NAME * (index + 1)}"
            condition = f"{match[1]} == {choice!r}"
            if node.get("when") is not None:
                condition = f"({node['when']}) if ({condition}) else False"
            written[key] = {**node, "op": choice, "when": condition}
            for table in (values, keys):
                for path, place in list(table.items()):
                    if path[:2] == ("nodes", name):
                        table[("nodes", key, *path[2:])] = place
            values[("nodes", key, "when")] = document.source.locate(("nodes", name, "op"))
    return YamlDocument({**data, "nodes": written}, SourceMap(document.source.file, values, keys))


def _op_choice(node: Any) -> re.Match[str] | None:
    """The parameter a node's op names (``op: "{act}"``), if it names one."""
    op = node.get("op") if isinstance(node, dict) else None
    return OP_CHOICE.fullmatch(op) if isinstance(op, str) else None


def _implicit_read(name: str, node: Any, previous: str | None) -> str:
    """What a node after node ``name`` reads where it names nothing: ``name``, or where ``name``
    exists only under a ``when``, a conditional read of it or of what came before it
    (``act_silu if (act == 'silu') else bn2``), as the unrolled block's implicit read would be."""
    when = node.get("when") if isinstance(node, dict) else None
    if when is None or previous is None or node.get("op") in ("repeat", "split"):
        return name
    return f"{name} if ({when}) else {previous}"


def _is_module_use(node: Any) -> bool:
    return isinstance(node, dict) and "module" in node


def _below(source: SourceMap, prefix: YamlPath) -> SourceMap:
    """The locations of the value at ``prefix``, as if it were the whole document."""
    length = len(prefix)
    return SourceMap(
        source.file,
        {path[length:]: place for path, place in source.values.items() if path[:length] == prefix},
        {path[length:]: place for path, place in source.keys.items() if path[:length] == prefix},
    )


def _module_nodes(
    use: YamlDocument, use_name: str, previous: str | None, file: Path, chain: tuple[Path, ...], known: frozenset[str]
) -> _Inlined:
    """What module use ``use`` (node ``use_name``, after node ``previous``) stands for."""
    spec = _validate(ModuleUseSpec, use)
    where = use.source.locate(("module",))
    folders = [file.parent / "modules", file.parent.parent / "modules", builtin_directory() / "modules"]
    path = _find_part("modules", spec.module, list(dict.fromkeys(folders)), where)
    if path.resolve() in {used.resolve() for used in chain}:
        cycle = " -> ".join(display_name(used) for used in (*chain, path))
        raise RescompileError(f"module '{spec.module}' uses itself: {cycle}", where)
    if len(chain) >= MAX_MODULE_DEPTH:
        raise RescompileError(f"modules use modules at most {MAX_MODULE_DEPTH} deep; this one is deeper", where)
    module_document, module = _read_module(path, chain)
    part = module.spec
    bindings: dict[str, ast.expr] = {}
    for name, value in spec.parameters.items():
        if name not in part.parameters:
            raise RescompileError(
                f"module '{part.name}' has no parameter '{name}'{did_you_mean(name, list(part.parameters))}; "
                f"its parameters: {', '.join(part.parameters) or 'none'}",
                use.source.locate(("parameters", name), key=True),
            )
        try:
            expression = parse_expression(value)
        except ExpressionError as error:
            raise RescompileError(str(error), use.source.locate(("parameters", name))) from None
        for unknown in sorted(expression.names - known):
            raise RescompileError(
                f"'{unknown}' in parameters.{name} is not a parameter or derived value here"
                f"{did_you_mean(unknown, known)}; known: {', '.join(sorted(known))} (a string is quoted, as in "
                f"any expression: \"'{unknown}'\")",
                use.source.locate(("parameters", name)),
            )
        bindings[name] = expression.tree
    for name, default in part.defaults.items():
        if name not in bindings:
            if default == REQUIRED:
                raise RescompileError(
                    f"module '{part.name}' needs parameter '{name}': add it to this node's parameters",
                    use.source.locate(("module",)),
                )
            bindings[name] = ast.Constant(default)  # a value, as a part's default is: 'relu' is a string
    derived: dict[str, tuple[str, Location]] = {}
    if part.derived and "{" in use_name:
        # Its derived values are named after the node (se_kernel), which a placeholder name cannot be.
        raise RescompileError(
            f"node '{use_name}' uses module '{part.name}', which derives values ({', '.join(part.derived)}), under a "
            "placeholder name; name the node plainly",
            use.source.locate((), key=True),
        )
    for name, expression in part.derived.items():
        # A derived value stays one, in the user's names (se_kernel), computed once where the user computes.
        own = f"{use_name.replace('.', '_')}_{name}"
        if own in known:
            raise RescompileError(
                f"module '{part.name}' at node '{use_name}' computes '{name}' as '{own}', which this part already "
                "names: rename the node or that value",
                use.source.locate((), key=True),
            )
        derived[own] = (_substitute(expression, bindings).text, module.locate("derived", name))
        bindings[name] = ast.Name(own, ast.Load())
    nodes = list(part.nodes.items())
    reads = {name.replace(SAME_NAME, ""): f"{use_name}.{name.replace(SAME_NAME, '')}" for name, _ in nodes}
    module_input = spec.input or previous
    if module_input is not None:
        reads["input"] = module_input
    inlined: dict[str, tuple[dict[str, Any], SourceMap]] = {}
    for index, (name, node) in enumerate(nodes):
        raw = dict(module_document.data["nodes"][name])
        if module_input is None and "input" in (raw.get("input"), *raw.get("inputs", ())):
            raise RescompileError(
                f"node '{use_name}' is inserted before a node, and its module reads its input by name: say which "
                "value that is (input: ...)",
                use.source.locate((), key=True),
            )
        for key in list(raw):
            field_value = getattr(node, key, None)
            if key == "input":
                raw[key] = _module_read(raw[key], reads, bindings)
            elif key == "inputs":
                raw[key] = [_module_read(value, reads, bindings) for value in raw[key]]
            elif isinstance(field_value, Expression):
                raw[key] = _folded(_substitute(field_value, bindings))
        if index == 0 and spec.input is not None and "input" not in raw and "inputs" not in raw:
            raw["input"] = spec.input
        if spec.when is not None:
            # The module's own condition (over its parameters, now the user's values) holds only where the use's does.
            raw["when"] = spec.when.text if "when" not in raw else f"({raw['when']}) if ({spec.when.text}) else False"
        inlined[f"{use_name}.{name}"] = (raw, _below(module.source, ("nodes", name)))
    return _Inlined(inlined, derived, path, f"{use_name}.{nodes[-1][0].replace(SAME_NAME, '')}", part.templated)


def _folded(expression: Expression) -> Value:
    """A module node's value in the user's names: a number where the use bound every name it reads
    to numbers (``padding: kernel // 2`` at ``kernel: 3`` is ``1``), as the user would have written it;
    else its text."""
    if expression.names:
        return expression.text
    try:
        value = expression.evaluate({})
    except (ExpressionError, ArithmeticError):
        return expression.text  # the unrolled part reports it, located, as for any expression
    return value if isinstance(value, int | float) and not isinstance(value, bool) else expression.text


def _module_read(value: str, reads: Mapping[str, str], bindings: Mapping[str, ast.expr]) -> str:
    """A module node's read in the user's names: a node name (``gate`` -> ``se.gate``, ``input`` ->
    what the use reads), or a conditional read ``A if CONDITION else B`` with its condition over the
    user's values."""
    chosen, separator, rest = value.partition(" if ")
    condition, _, other = rest.rpartition(" else ")
    if not separator or not condition:
        return reads.get(value.strip(), value)
    text = _substitute(parse_expression(condition.strip()), bindings).text
    return f"{reads.get(chosen.strip(), chosen)} if {text} else {reads.get(other.strip(), other)}"


def _substitute(expression: Expression, bindings: Mapping[str, ast.expr]) -> Expression:
    """``expression`` with each name of ``bindings`` replaced by its expression (functions kept)."""

    class Replace(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            return copy.deepcopy(bindings[node.id]) if node.id in bindings else node

        def visit_Call(self, node: ast.Call) -> ast.expr:
            node.args = [self.visit(argument) for argument in node.args]
            node.keywords = [self.visit(keyword_argument) for keyword_argument in node.keywords]
            return node

    tree = Replace().visit(copy.deepcopy(expression.tree))
    return parse_expression(ast.unparse(tree))


def _read_module_outputs(document: YamlDocument, outputs: Mapping[str, str]) -> YamlDocument:
    """``document`` with every read of a node that used a module (``se``) reading that module's
    last node (``se.scale``) instead: in each node's ``input`` and ``inputs`` and ``shortcut_input``."""
    if not outputs or not isinstance(document.data.get("nodes"), dict):
        return document
    nodes: dict[Any, Any] = {}
    for name, node in document.data["nodes"].items():
        if isinstance(node, dict):
            node = dict(node)
            if isinstance(node.get("input"), str):
                node["input"] = outputs.get(node["input"], node["input"])
            if isinstance(node.get("inputs"), list):
                node["inputs"] = [
                    outputs.get(value, value) if isinstance(value, str) else value for value in node["inputs"]
                ]
        nodes[name] = node
    data = {**document.data, "nodes": nodes}
    shortcut_input = data.get("shortcut_input")
    if isinstance(shortcut_input, str):
        data["shortcut_input"] = outputs.get(shortcut_input, shortcut_input)
    held = data.get("blocks")  # a transition holding its stage's blocks names the value they read
    if isinstance(held, dict) and isinstance(held.get("input"), str):
        data["blocks"] = {**held, "input": outputs.get(held["input"], held["input"])}
    return YamlDocument(data, document.source)


def _resolve_part_base(kind: PartKind, reference: str, part_file: Path, where: Location) -> Path:
    """What a part's ``extends`` names: a path (relative to the part file), else a part of its kind
    beside it (not itself: ``blocks/bottleneck.yaml`` may extend the built-in ``bottleneck``), else a built-in."""
    if reference.endswith((".yaml", ".yml")) or "/" in reference:
        path = part_file.parent / reference
        if not _exists(path, reference, where):
            raise RescompileError(f"extends: no such {kind[:-1]} file: {reference}", where)
        return path
    return _find_part(kind, reference, [part_file.parent, builtin_directory() / kind], where, besides=part_file)


def _extend_block(base: YamlDocument, child: YamlDocument, noun: str = "block") -> YamlDocument:
    """The block ``child`` makes of ``base``: its block keys merged over the base's (see
    :func:`_merge`; ``parameters``, ``derived`` and ``classes`` by name), then the base's nodes
    replaced, removed and inserted around as it says. A node's value and its location move
    together, from ``replace.NAME`` or ``insert_after.ANCHOR.NAME`` to ``nodes.NAME``."""
    extension = {key: value for key, value in child.data.items() if key in EXTENSION_KEYS}
    _validate(BlockExtensionSpec, YamlDocument(extension, child.source))  # the types, located in the child
    if "nodes" in child.data:
        raise RescompileError(
            f"a {noun} that extends '{child.data['extends']}' changes its base's nodes with replace, remove, "
            f"insert_after and insert_before; 'nodes' would replace them all (drop 'extends' to write a whole {noun})",
            child.source.locate(("nodes",), key=True),
        )
    base_name = base.data.get("name")
    plain = YamlDocument({key: value for key, value in child.data.items() if key not in EXTENSION_KEYS}, child.source)
    merged = _merge(base, plain, BLOCK_KEYS_MERGED_BY_NAME.__contains__)
    nodes = merged.data.get("nodes")
    if not isinstance(nodes, dict):
        raise RescompileError(
            f"extends: {noun} '{base_name}' has no nodes to extend", child.source.locate(("extends",))
        )
    nodes = dict(nodes)
    written: dict[str, YamlPath] = {}  # a replaced or inserted node -> where the child wrote it

    def check_is_node(node_name: str, path: YamlPath, operation: str, *, key: bool = True) -> None:
        if node_name not in nodes:
            names = [str(name) for name in nodes]  # not yet validated: a key may be a number
            shown = ", ".join(names[:MAX_LISTED]) + (", …" if len(names) > MAX_LISTED else "")
            raise RescompileError(
                f"{operation}: {noun} '{base_name}' has no node '{node_name}'{did_you_mean(node_name, names)}; "
                f"its nodes: {shown}",
                child.source.locate(path, key=key),
            )

    for node_name, node in child.data.get("replace", {}).items():
        check_is_node(node_name, ("replace", node_name), "replace")
        nodes[node_name] = node
        written[node_name] = ("replace", node_name)
    removed: dict[str, int] = {}
    for index, node_name in enumerate(child.data.get("remove", [])):
        check_is_node(node_name, ("remove", index), "remove", key=False)
        del nodes[node_name]
        written.pop(node_name, None)
        removed[node_name] = index
    placed: dict[tuple[str, str], list[str]] = {}
    inserted: dict[str, Any] = {}
    for operation in ("insert_before", "insert_after"):
        for written_anchor, new_nodes in child.data.get(operation, {}).items():
            anchor = _anchor_node(str(written_anchor), list(nodes), after=operation == "insert_after")
            check_is_node(anchor, (operation, written_anchor), operation)
            for node_name, node in new_nodes.items():
                if node_name in nodes or node_name in inserted:
                    raise RescompileError(
                        f"{operation}: {noun} '{base_name}' already has a node '{node_name}'; name the new node "
                        f"otherwise, or change the old one with replace",
                        child.source.locate((operation, anchor, node_name), key=True),
                    )
                inserted[node_name] = node
                written[node_name] = (operation, written_anchor, node_name)
            placed[(operation, anchor)] = list(new_nodes)
    ordered: dict[str, Any] = {}
    for node_name, node in nodes.items():
        ordered.update({new: inserted[new] for new in placed.get(("insert_before", node_name), [])})
        ordered[node_name] = node
        ordered.update({new: inserted[new] for new in placed.get(("insert_after", node_name), [])})
    _check_nothing_reads_removed(ordered, merged.data.get("shortcut_input"), removed, child)
    data = {**merged.data, "nodes": ordered}
    return YamlDocument(data, _relocate_nodes(merged.source, child.source, ordered, written))


def _anchor_node(anchor: str, names: list[str], *, after: bool) -> str:
    """The base node an insertion's ``anchor`` names: itself; else a node whose op a parameter
    chooses (``act``, written as ``act{''}``, ...), or a module use (``conv2_kxk``, written as
    ``conv2_kxk.conv``, ...), by its first node (inserting before) or its last (after)."""
    if anchor in names:
        return anchor
    standing = [name for name in names if name.replace(SAME_NAME, "") == anchor or name.startswith(f"{anchor}.")]
    if not standing:
        return anchor
    return standing[-1] if after else standing[0]


MAX_LISTED = 20
"""The most node names an error lists: a repeat makes thousands."""


def _relocate_nodes(
    merged: SourceMap, child: SourceMap, nodes: Mapping[str, Any], written: Mapping[str, YamlPath]
) -> SourceMap:
    """``merged``'s locations with each node of ``written`` located where the child wrote it
    (``replace.NAME...`` or ``insert_after.ANCHOR.NAME...`` becomes ``nodes.NAME...``) and removed
    nodes forgotten: one pass over each table, however many nodes move."""
    tables: list[dict[YamlPath, Location]] = []
    for base_table, child_table in ((merged.values, child.values), (merged.keys, child.keys)):
        table = {
            path: location
            for path, location in base_table.items()
            if len(path) < 2 or path[0] != "nodes" or (path[1] in nodes and path[1] not in written)
        }
        for path, location in child_table.items():
            length = 2 if path[:1] == ("replace",) else 3
            if len(path) >= length and written.get(str(path[length - 1])) == path[:length]:
                table[("nodes", path[length - 1], *path[length:])] = location
        tables.append(table)
    return SourceMap(child.file, tables[0], tables[1])


def _check_nothing_reads_removed(
    nodes: Mapping[str, Any], shortcut_input: Any, removed: Mapping[str, int], child: YamlDocument
) -> None:
    """A removed node that a node reads by name (not as the node before it) leaves that read dangling."""
    for position, (reader, node) in enumerate(nodes.items()):
        inputs = node.get("inputs") if isinstance(node, dict) else None
        reads = [node.get("input"), *(inputs if isinstance(inputs, list) else [])] if isinstance(node, dict) else []
        for node_name in [read for read in reads if isinstance(read, str) and read in removed]:
            earlier = [str(name) for name in list(nodes)[:position]][-MAX_LISTED:]
            raise RescompileError(
                f"remove: node '{reader}' reads '{node_name}'; replace '{reader}' too, reading another value "
                f"({one_of(['input', *earlier])}), or keep '{node_name}'",
                child.source.locate(("remove", removed[node_name])),
            )
    if isinstance(shortcut_input, str) and shortcut_input in removed:
        raise RescompileError(
            f"remove: the block's shortcut_input is '{shortcut_input}'; set shortcut_input to another node, or keep it",
            child.source.locate(("remove", removed[shortcut_input])),
        )


IDENTITY = "identity"
PLAIN = "none"
# The paper's options (He et al. 2016, section 4.1) as (where shapes match, where shapes change).
POLICIES: dict[str, tuple[str, str]] = {
    "A": (IDENTITY, "zero_pad"),
    "B": (IDENTITY, "projection"),
    "C": ("projection", "projection"),
}


@dataclass(frozen=True)
class NetworkParts:
    """Every part a network uses, read and validated: all the file reading compiling needs, done
    before the (pure) expansion."""

    stem: Loaded[PartSpec]
    blocks: tuple[Loaded[PartSpec], ...]
    """One per stage: the stage's block, else the network's."""
    first_blocks: tuple[Loaded[PartSpec], ...]
    """One per stage: the block type of its first block (its ``first_block``, else its block)."""
    head: Loaded[PartSpec]
    policy: tuple[str, str] | None
    """``(kind where shapes match, kind where shapes change)``, either of which may be ``none`` (no
    residual add: an inverted residual where shapes change); None for a plain network."""
    shortcuts: dict[str, Loaded[PartSpec]]
    """Every shortcut kind of the policy but ``identity``, by name."""
    transitions: tuple[Loaded[PartSpec] | None, ...]
    """One per stage: the transition its blocks follow, or None (the stage decides where it names one,
    else the network's applies where the stage's stride is not 1 or its width changes the channels)."""
    transitions_after: tuple[Loaded[PartSpec] | None, ...]
    """One per stage: the transition that follows its blocks, or None (the stage's, else the network's)."""
    files: tuple[Path, ...]
    """The network file (where there is one) and every part file read: no output may replace them."""


def load_parts(network: Loaded[NetworkSpec], network_file: Path | None) -> NetworkParts:
    """Find and load every part of ``network``: next to ``network_file`` first, else built-in.
    Each file is read once however often it is used."""
    cache: dict[tuple[PartKind, str], Loaded[PartSpec]] = {}
    files = [network_file] if network_file is not None else []
    files += network.extended

    def get(kind: PartKind, name: str, where: Location) -> Loaded[PartSpec]:
        if (kind, name) not in cache:
            path = resolve_part(kind, name, network_file, where)
            cache[(kind, name)] = _with_batch_norm(load_part(path, kind), network.spec.batch_norm)
            files.extend((path, *cache[(kind, name)].extended))
        return cache[(kind, name)]

    spec = network.spec
    stem = get("stems", spec.stem, network.locate("stem"))
    blocks = tuple(
        get("blocks", stage.block, network.locate("stages", index, "block"))
        if stage.block is not None
        else get("blocks", spec.block, network.locate("block"))
        for index, stage in enumerate(spec.stages)
    )
    first_blocks = tuple(
        get("blocks", stage.first_block, network.locate("stages", index, "first_block"))
        if stage.first_block is not None
        else block
        for index, (stage, block) in enumerate(zip(spec.stages, blocks, strict=True))
    )
    head = get("heads", spec.head, network.locate("head"))
    policy = _policy(spec.shortcut)
    shortcuts: dict[str, Loaded[PartSpec]] = {}
    for index, name in enumerate(policy or ()):
        if name in (IDENTITY, PLAIN):
            continue
        path: YamlPath = ("shortcut",)
        if isinstance(spec.shortcut, ShortcutPolicySpec):
            path = ("shortcut", ("where_shapes_match", "where_shapes_change")[index])
        where = network.source.locate(path)
        try:
            shortcuts[name] = _named_shortcut(get("shortcuts", name, where), spec.naming.shortcuts)
        except RescompileError as error:
            if error.location != where:
                raise
            valid = [*POLICIES, PLAIN, IDENTITY, "projection", "zero_pad"]
            raise RescompileError(
                f"unknown shortcut '{name}'{did_you_mean(name, valid)}; use a policy ({one_of([*POLICIES, PLAIN])}) "
                f"or a shortcut kind ('identity' or a file in shortcuts/, e.g. 'projection', 'zero_pad')",
                where,
            ) from None
    transitions = tuple(
        _transition(stage.transition, spec.transition, ("transition",), index, get, network)
        for index, stage in enumerate(spec.stages)
    )
    transitions_after = tuple(
        _transition(stage.transition_after, spec.transition_after, ("transition_after",), index, get, network)
        for index, stage in enumerate(spec.stages)
    )
    return NetworkParts(
        stem, blocks, first_blocks, head, policy, shortcuts, transitions, transitions_after, tuple(files)
    )


def _named_shortcut(shortcut: Loaded[PartSpec], name: str | None) -> Loaded[PartSpec]:
    """``shortcut`` with its layer named ``name`` (the network's ``naming.shortcuts``), where it names one."""
    if name is None or not isinstance(shortcut.spec, ShortcutSpec):
        return shortcut
    return Loaded(shortcut.spec.model_copy(update={"module": name}), shortcut.source, shortcut.extended)


def _with_batch_norm(loaded: Loaded[PartSpec], defaults: BatchNormDefaultsSpec | None) -> Loaded[PartSpec]:
    """``loaded`` with the network's BatchNorm ``defaults`` in each batch_norm node that sets neither
    value itself (a value the node states wins)."""
    if defaults is None:
        return loaded
    nodes: dict[str, OpSpec] = {}
    for name, node in loaded.spec.nodes.items():
        if getattr(node, "op", None) == "batch_norm":
            unset = {key: getattr(defaults, key) for key in ("epsilon", "momentum") if key not in node.model_fields_set}
            node = node.model_copy(update=unset)
        nodes[name] = node
    return Loaded(loaded.spec.model_copy(update={"nodes": nodes}), loaded.source, loaded.extended)


def _transition(
    own: str | None,
    network_default: str | None,
    key: tuple[str],
    index: int,
    get: Callable[[PartKind, str, Location], Loaded[PartSpec]],
    network: Loaded[NetworkSpec],
) -> Loaded[PartSpec] | None:
    """A stage's transition (before or after its blocks, ``key``): its own, else the network's; None for none."""
    name = own or network_default
    if name is None or name == NO_TRANSITION:
        return None
    where = network.locate("stages", index, *key) if own else network.locate(*key)
    return get("transitions", name, where)


NO_TRANSITION = "none"
"""A stage's ``transition: none``: no transition, whatever the network's."""


def _policy(shortcut: str | ShortcutPolicySpec) -> tuple[str, str] | None:
    if isinstance(shortcut, ShortcutPolicySpec):
        policy = (shortcut.where_shapes_match, shortcut.where_shapes_change)
        return None if policy == (PLAIN, PLAIN) else policy
    if shortcut == PLAIN:
        return None
    return POLICIES.get(shortcut, (shortcut, shortcut))


MAX_NAME_LENGTH = 256
"""The longest node name (a module path): a name is written into every weight's name and the
generated source, and a repeat makes thousands."""


def check_part_references(loaded: Loaded[PartSpec], kind: PartKind) -> None:
    """Every node input names an earlier node (or a special value); every expression name is known."""
    part = loaded.spec
    known_names = set(part.parameters) | BOUND_NAMES[kind]
    taken = ", ".join(sorted(RESERVED_NAMES | MODULE_LEVEL_NAMES))
    for name in part.parameters:
        if not _is_plain_identifier(name) or name in MODULE_LEVEL_NAMES:
            raise RescompileError(
                f"parameter name {name!r} must be a Python-style identifier (ASCII letters, digits, underscores), "
                f"not a keyword, a dunder or one of {taken}",
                loaded.source.locate(("parameters", name), key=True),
            )
        if name in BOUND_NAMES[kind]:
            raise RescompileError(
                f"parameter name '{name}' is bound by the compiler in every {kind[:-1]} "
                f"({', '.join(sorted(BOUND_NAMES[kind]))}); declare another name",
                loaded.source.locate(("parameters", name), key=True),
            )
        if kind == "blocks" and name in STAGE_KEYWORDS:
            raise RescompileError(
                f"parameter name '{name}' is a keyword of the generated network's _make_stage "
                f"({', '.join(sorted(STAGE_KEYWORDS))}), which passes a block's parameters on; declare another name",
                loaded.source.locate(("parameters", name), key=True),
            )
    for name, expression in part.derived.items():
        path: YamlPath = ("derived", name)
        if not _is_plain_identifier(name) or name in MODULE_LEVEL_NAMES or name in known_names:
            raise RescompileError(
                f"derived name {name!r} must be a new Python-style identifier, not a parameter, a keyword, "
                f"a dunder or one of {taken}",
                loaded.source.locate(path, key=True),
            )
        for unknown in sorted(expression.names - known_names):
            raise RescompileError(
                f"'{unknown}' in derived.{name} is not a parameter of {kind[:-1]} '{part.name}' or an earlier "
                f"derived value{did_you_mean(unknown, known_names)}",
                loaded.source.locate(path),
            )
        known_names.add(name)
    available = set(SPECIAL_INPUTS[kind])
    paths = _PathTree(part.nodes)
    held = part.blocks if isinstance(part, TransitionSpec) else None
    if held is not None:
        _check_held_blocks(loaded, held, known_names)
    for node_name, node in part.nodes.items():
        if node_name in SPECIAL_INPUTS[kind]:
            raise RescompileError(
                f"node name '{node_name}' is reserved for the part's input values",
                loaded.source.locate(("nodes", node_name), key=True),
            )
        if len(node_name) > MAX_NAME_LENGTH:
            raise RescompileError(
                f"node name '{node_name[:40]}…' has {len(node_name):,} characters; a node's name has at most "
                f"{MAX_NAME_LENGTH}",
                loaded.source.locate(("nodes", node_name), key=True),
            )
        segments = node_name.split(".")
        if not all((segment.isascii() and segment.isdigit()) or _is_plain_identifier(segment) for segment in segments):
            raise RescompileError(
                f"node name {node_name!r} must be a module path: Python-style identifiers or numbers joined by '.' "
                f"(conv1, se.fc1, conv1.0), not keywords, dunders or one of {', '.join(sorted(RESERVED_NAMES))}",
                loaded.source.locate(("nodes", node_name), key=True),
            )
        if segments[0] in MODULE_ATTRIBUTES:
            raise RescompileError(
                f"node name {node_name!r} would replace the generated module's own '{segments[0]}' "
                "(an attribute of nn.Module, nnx.Module or the network); rename the node",
                loaded.source.locate(("nodes", node_name), key=True),
            )
        if segments[0].isdigit() and kind not in ("shortcuts", "transitions"):
            raise RescompileError(
                f"node name {node_name!r} starts with a number, which only a shortcut's Sequential layers may "
                "(downsample.0); start it with a name",
                loaded.source.locate(("nodes", node_name), key=True),
            )
        clash = paths.clash(node_name)
        if clash is not None:
            layer, container = clash
            raise RescompileError(
                f"node '{layer}' cannot also hold node '{container}': a module path is either a layer or a "
                "container of layers",
                loaded.source.locate(("nodes", node_name), key=True),
            )
        inputs = node.inputs if isinstance(node, BinarySpec) else (node.input,)
        for index, value in enumerate(inputs):
            if held is not None and value == "input" and HELD_BLOCKS in available:
                raise RescompileError(
                    f"node '{node_name}' runs after the stage's blocks and reads 'input', the stage's input, which "
                    f"is not kept past them; read '{HELD_BLOCKS}' or a node before them",
                    loaded.source.locate(
                        ("nodes", node_name, "inputs", index)
                        if isinstance(node, BinarySpec)
                        else ("nodes", node_name, "input")
                    ),
                )
            if value is not None and value not in available:
                path = (
                    ("nodes", node_name, "inputs", index)
                    if isinstance(node, BinarySpec)
                    else ("nodes", node_name, "input")
                )
                raise RescompileError(
                    f"node '{node_name}' reads '{value}', which is not an earlier node"
                    f"{did_you_mean(value, available)}; it can read {one_of(available)}",
                    loaded.source.locate(path),
                )
        for field_name, field_value in node:
            expression_names = getattr(field_value, "names", None)
            if expression_names is None:
                continue
            for unknown in sorted(expression_names - known_names):
                raise RescompileError(
                    f"'{unknown}' in {node_name}.{field_name} is not a parameter of {kind[:-1]} "
                    f"'{part.name}'{did_you_mean(unknown, known_names)}; known: {', '.join(sorted(known_names))}",
                    loaded.source.locate(("nodes", node_name, field_name)),
                )
        available.add(node_name)
        if held is not None and node_name == held.input:
            available.add(HELD_BLOCKS)
    _check_every_node_is_read(loaded, kind)
    if isinstance(part, BlockSpec):
        merges = [name for name, node in part.nodes.items() if isinstance(node, AddSpec) and "shortcut" in node.inputs]
        if len(merges) != 1:
            found = f"{len(merges)} ({', '.join(merges)})" if merges else "none"
            raise RescompileError(
                f"block '{part.name}' needs exactly one residual add (an add node reading 'shortcut'); it has {found}",
                loaded.source.locate(("nodes", merges[1]) if merges else ("nodes",), key=True),
            )
        merge = part.nodes[merges[0]]
        if isinstance(merge, AddSpec) and len(merge.inputs) != 2:
            raise RescompileError(
                f"the residual add '{merges[0]}' adds two values, the branch and 'shortcut'; sum the branches first",
                loaded.source.locate(("nodes", merges[0], "inputs")),
            )
        merge_index = list(part.nodes).index(merges[0])
        readable = ["input", *list(part.nodes)[:merge_index]]
        if part.shortcut_input not in readable:
            where = "a later node" if part.shortcut_input in part.nodes else "not a node"
            raise RescompileError(
                f"shortcut_input '{part.shortcut_input}' is {where} of block '{part.name}'"
                f"{did_you_mean(part.shortcut_input, readable)}; the shortcut reads the block input or a node "
                f"before the residual add '{merges[0]}': {one_of(readable)}",
                loaded.source.locate(("shortcut_input",)),
            )
        for unknown in sorted(part.out_channels.names - known_names):
            raise RescompileError(
                f"'{unknown}' in out_channels is not a parameter of block '{part.name}'"
                f"{did_you_mean(unknown, known_names)}",
                loaded.source.locate(("out_channels",)),
            )


class _PathTree:
    """Node paths as a tree of their segments, so that whether a layer is also a container
    (``se`` beside ``se.fc1``) is one walk down a path, not a comparison with every other node:
    a block of 20,000 nodes took 37 s to check pairwise."""

    def __init__(self, names: Iterable[str]) -> None:
        self.root = _PathNode()
        for name in names:
            node = self.root
            for segment in name.split("."):
                node = node.children.setdefault(segment, _PathNode())
                node.first_below = node.first_below or name  # the first node (in order) at or below it
            node.layer = node.layer or name

    def clash(self, name: str) -> tuple[str, str] | None:
        """``(layer, node it would hold)`` where node ``name`` is a layer holding another node, or
        sits below another node; None where it does neither."""
        node = self.root
        segments = name.split(".")
        for depth, segment in enumerate(segments):
            node = node.children[segment]
            if node.layer is not None and depth < len(segments) - 1:
                return node.layer, name
        below = next((child.first_below for child in node.children.values()), None)
        return None if below is None else (name, below)


class _PathNode:
    __slots__ = ("children", "first_below", "layer")

    def __init__(self) -> None:
        self.children: dict[str, _PathNode] = {}
        self.first_below = ""
        self.layer: str | None = None


def _check_held_blocks(loaded: Loaded[PartSpec], held: HeldBlocksSpec, known_names: set[str]) -> None:
    """A transition's ``blocks``: after a node of it that has nodes after it, with known names."""
    part = loaded.spec
    names = list(part.nodes)
    if held.input not in names:
        raise RescompileError(
            f"blocks.input '{held.input}' is not a node of transition '{part.name}'"
            f"{did_you_mean(held.input, set(names))}; the stage's blocks read one of its nodes: {one_of(set(names))}",
            loaded.source.locate(("blocks", "input")),
        )
    if held.input == names[-1]:
        raise RescompileError(
            f"blocks.input '{held.input}' is the last node of transition '{part.name}'; nodes after it run after "
            "the stage's blocks (without any, use the transition before the blocks alone)",
            loaded.source.locate(("blocks", "input")),
        )
    if HELD_BLOCKS in names:
        raise RescompileError(
            f"node name '{HELD_BLOCKS}' is the value of the stage's blocks in a transition that holds them; rename it",
            loaded.source.locate(("nodes", HELD_BLOCKS), key=True),
        )
    for unknown in sorted(held.out_channels.names - known_names):
        raise RescompileError(
            f"'{unknown}' in blocks.out_channels is not a parameter of transition '{part.name}'"
            f"{did_you_mean(unknown, known_names)}",
            loaded.source.locate(("blocks", "out_channels")),
        )


def _check_every_node_is_read(loaded: Loaded[PartSpec], kind: PartKind) -> None:
    """A node whose value nothing reads (a typo in an ``add``'s inputs drops half a block) is an
    error: the part's output is its last node, and every other node must feed something."""
    part = loaded.spec
    read: set[str] = {part.shortcut_input} if isinstance(part, BlockSpec) else set()
    held = part.blocks.input if isinstance(part, TransitionSpec) and part.blocks is not None else None
    read |= {held} if held is not None else set()
    previous = "input"
    for node_name, node in part.nodes.items():
        read.update(node.inputs if isinstance(node, BinarySpec) else (node.input or previous,))
        # The node after the blocks' input reads, unless it says otherwise, the blocks' output.
        previous = HELD_BLOCKS if node_name == held else node_name
    last = list(part.nodes)[-1]
    for node_name in part.nodes:
        if node_name not in read and node_name != last:
            raise RescompileError(
                f"nothing reads node '{node_name}' of {kind[:-1]} '{part.name}': only the last node ('{last}') is "
                "the part's output; read it (input: or inputs:) or remove it",
                loaded.source.locate(("nodes", node_name), key=True),
            )


def _is_plain_identifier(name: str) -> bool:
    """ASCII letters, digits and underscores, not a keyword, a dunder or a name generated code uses."""
    return (
        name.isidentifier()
        and name.isascii()
        and not keyword.iskeyword(name)
        and not name.startswith("__")
        and name not in RESERVED_NAMES
    )


def _validate(model: type[ModelT], document: YamlDocument) -> ModelT:
    if not isinstance(document.data, dict):
        raise RescompileError(
            f"expected a YAML mapping at the top level, got {type(document.data).__name__}",
            document.source.locate(()),
        )
    try:
        return model.model_validate(document.data)
    except ValidationError as error:
        raise _describe(_most_helpful(error.errors(), document.data), model, document) from None


def _most_helpful(errors: list[ErrorDetails], data: Any) -> ErrorDetails:
    """The error to report. An unknown key usually explains the missing one next to it (a typo):
    it comes first. A value of a union type (``size: 224`` or ``[224, 160]``) gets an error from
    each member; the one that reached deepest into the value, then one that is not merely about
    the value's type, says the most ('size[1]: input should be a valid integer', not 'size.int')."""

    def rank(error: ErrorDetails) -> tuple[bool, int, bool]:
        data_path, _ = _split_location(error, data)
        return error["type"] != "extra_forbidden", -len(data_path), error["type"].endswith("_type")

    return min(errors, key=rank)


def _describe(error: ErrorDetails, model: type[BaseModel], document: YamlDocument) -> RescompileError:
    """One pydantic error as a located, human message."""
    data_path, schema_path = _split_location(error, document.data)
    where = _dotted(data_path)
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(data_path[-1])
        return RescompileError(
            _unknown_key(key, _model_at(model, schema_path[:-1])), document.source.locate(data_path, key=True)
        )
    location = document.source.locate(data_path)
    if kind == "missing":
        parent = _dotted(data_path[:-1]) or "the top level"
        return RescompileError(f"missing required key '{data_path[-1]}' in {parent}", location)
    if kind == "union_tag_invalid":
        context = error.get("ctx", {})
        tag = str(context.get("tag", ""))
        expected = [name.strip(" '") for name in str(context.get("expected_tags", "")).split(",")]
        plain = tag.lower().replace("_", "")
        ours = FOREIGN_OPS.get(plain) or next((op for op in expected if op.replace("_", "") == plain), None)
        hint = f" (torch's or timm's name; here it is '{ours}')" if ours else did_you_mean(tag, expected)
        return RescompileError(
            f"unknown op '{tag}'{hint} in {where}; valid ops: {', '.join(sorted(expected))}",
            document.source.locate((*data_path, "op")),
        )
    if kind == "union_tag_not_found":
        return RescompileError(f"{where} needs an 'op' key naming its operation", location)
    given = _value_at(document.data, data_path)
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    quoted = given is _MISSING or isinstance(given, dict | list) or (isinstance(given, str) and given in message)
    shown = "" if quoted else f" (got {given!r})"
    return RescompileError(f"{where or 'value'}: {message[0].lower()}{message[1:]}{shown}", location)


_MISSING = object()


def _split_location(error: ErrorDetails, data: Any) -> tuple[YamlPath, YamlPath]:
    """Drop pydantic's union-member labels (``int``, ``str``, ``constrained-int``, ``tuple[...]``,
    a model's name) that are not keys of the data.

    Returns the path in the YAML data, and the path in the schema (data keys plus op tags).
    """
    loc = error["loc"]
    data_path: list[str | int] = []
    schema_path: list[str | int] = []
    current: Any = data
    for position, segment in enumerate(loc):
        child = _child(current, segment)
        if child is not _MISSING:
            current = child
            data_path.append(segment)
        elif isinstance(current, dict) and error["type"] == "missing" and position == len(loc) - 1:
            data_path.append(segment)  # the missing key
            current = _MISSING
        elif not (isinstance(current, dict) and current.get("op") == segment):
            continue  # a union member's label; an op tag stays in the schema path
        schema_path.append(segment)
    return tuple(data_path), tuple(schema_path)


def _value_at(data: Any, path: YamlPath) -> Any:
    current = data
    for segment in path:
        current = _child(current, segment)
        if current is _MISSING:
            break
    return current


def _child(data: Any, segment: str | int) -> Any:
    """``data[segment]`` for a mapping key or a list index that exists, else ``_MISSING``."""
    if isinstance(data, dict):
        return data.get(segment, _MISSING)
    if isinstance(data, list) and isinstance(segment, int) and 0 <= segment < len(data):
        return data[segment]
    return _MISSING


def _dotted(path: YamlPath) -> str:
    text = ""
    for segment in path:
        text += f"[{segment}]" if isinstance(segment, int) else (f".{segment}" if text else segment)
    return text.replace(SAME_NAME, "")  # a chosen op's node, by its own name


def _unknown_key(key: str, model: type[BaseModel] | None) -> str:
    """The message for an unknown ``key`` of ``model``: a near miss, or ours for torch's or timm's
    name of it (``kernel_size``), and the valid keys; for an op node, per op."""
    allowed = sorted(model.model_fields) if model is not None else []
    op = _op_name(model)
    here = f"for op '{op}'" if op is not None else "here"
    valid = f"; valid keys {here}: {', '.join(allowed)}" if allowed else ""
    ours = FOREIGN_KEYS.get(key)
    if op is not None and key in ("input", "inputs") and ours in allowed:
        count = "several values, named in 'inputs' (inputs: [a, b])" if ours == "inputs" else "one value: 'input'"
        return f"unknown key '{key}': op '{op}' reads {count}{valid}"
    if ours in allowed:
        return f"unknown key '{key}' (torch's or timm's name; here it is '{ours}'){valid}"
    if op is not None and key in INFERRED_KEYS:
        return f"unknown key '{key}': a node's input size is not written, it comes from the value the node reads{valid}"
    hints = [did_you_mean(key, allowed).strip(" ()")]
    others = [other for other in _OP_MODELS if key in _OP_MODELS[other].model_fields] if op is not None else []
    if others:
        takes = f"op {one_of(others)} takes it" if len(others) == 1 else f"ops {one_of(others)} take it"
        hints.insert(0, f"{takes}, op '{op}' does not")
    hint = "; ".join(hint for hint in hints if hint)
    return f"unknown key '{key}'{f' ({hint})' if hint else ''}{valid}"


def _op_name(model: type[BaseModel] | None) -> str | None:
    """The op a node model stands for (``conv`` for ConvSpec), or None for any other model."""
    field = model.model_fields.get("op") if model is not None else None
    tags = typing.get_args(field.annotation) if field is not None else ()
    return str(tags[0]) if tags else None


_OP_MODELS: dict[str, type[BaseModel]] = {
    str(typing.get_args(member.model_fields["op"].annotation)[0]): member
    for member in typing.get_args(typing.get_args(OpSpec)[0])
}
"""Every op's node model, by op name."""


def _model_at(model: type[BaseModel], path: YamlPath) -> type[BaseModel] | None:
    """The model found by following ``path`` from ``model`` (an op tag picks its node model)."""
    current: Any = model
    for segment in path:
        current = _descend(current, segment)
        if current is None:
            return None
    current = _unwrap_model(current, None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _descend(annotation: Any, segment: str | int) -> Any:
    member = _unwrap_model(annotation, segment)
    if member is not _unwrap_model(annotation, None):
        return member  # ``segment`` was an op tag, which chose the union's member
    annotation = member
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(segment))
        return None if field is None else field.annotation
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is dict and len(arguments) == 2:
        return arguments[1]
    if origin in (list, tuple) and arguments:
        return arguments[0]
    return None


def _unwrap_model(annotation: Any, tag: str | int | None) -> Any:
    """Strip Annotated/Optional wrappers; pick the union member whose ``op`` literal is ``tag``."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        models = [member for member in members if isinstance(member, type) and issubclass(member, BaseModel)]
        for member in models:
            op_field = member.model_fields.get("op")
            if op_field is not None and tag in typing.get_args(op_field.annotation):
                return member
        if len(models) == 1:
            return models[0]
        if len(members) == 1:
            return members[0]
    return annotation
