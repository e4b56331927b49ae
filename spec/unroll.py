"""Unrolling a part's templates for one instance: ``repeat`` groups, ``when`` conditions, ``split``
nodes and ``{expression}`` placeholders become plain nodes, given the instance's parameters.

A part that uses none of them is returned unchanged. Otherwise the result is an ordinary part,
checked as the loader checks one (every read names an earlier node, every node is read), whose
source map places each produced node at the template it came from, so that errors keep pointing
at the user's lines.

The forms a template may take:

* a node ``{op: repeat, index: i, count: N, start: S, nodes: {...}}``: its nodes ``N`` times,
  with ``i`` bound to ``S``, ``S + 1``, ... (in expressions, names and reads);
* ``when: CONDITION`` on any node: the node exists only where the condition holds;
* ``{expression}`` in a node name or a value read (``convs.{i}``, ``split.{scale - 1}``): the
  expression's value (an integer or a string) written in its place;
* a value read written ``A if CONDITION else B``: ``A`` where the condition holds, else ``B``;
* in ``inputs``, an item written ``VALUE for NAME in range(ARGUMENTS)``: one value per number,
  as Python's comprehension (``relus.{k} for k in range(scale - 1)``);
* ``{op: split, parts: P}`` or ``{op: split, sizes: [a, b]}``: one ``channel_slice`` node per part,
  named ``NAME.0``, ``NAME.1``, ...
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from rescompile.spec.errors import Location, RescompileError
from rescompile.spec.expressions import FUNCTIONS, Expression, ExpressionError, Value, parse_expression
from rescompile.spec.loader import MAX_NAME_LENGTH, Loaded, PartKind, check_part_references
from rescompile.spec.models import (
    AddSpec,
    BinarySpec,
    ChannelSliceSpec,
    OpSpec,
    PartSpec,
    RepeatSpec,
    SplitSpec,
)
from rescompile.spec.yaml_source import SourceMap, YamlPath

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
COMPREHENSION = re.compile(r"^(?P<value>.+?) for (?P<name>[A-Za-z_][A-Za-z0-9_]*) in range\((?P<arguments>.*)\)$")
MAX_UNROLLED_NODES = 10_000
"""The most nodes one part may unroll to: a repeat count is an expression over parameters."""
MAX_UNROLL_STEPS = 500_000
"""The most steps unrolling a network's parts may take, all instances together: a step is a
template node visited (one a ``when`` removes too), a repeat's iteration or a comprehension's
item. Counting produced nodes alone let ``count: 2**31`` over nodes that ``when`` removes run
for ever."""


class Unrolling:
    """The unrollings of one network's parts. An unrolling depends on the parameters its
    templates read (a ``when``, a count, a placeholder), not on the others, so instances that
    agree on those share one: a block type of 1,000 instances is unrolled and checked once, not
    1,000 times, unless its templates read ``block_index``."""

    def __init__(self) -> None:
        self.steps = 0
        self._done: dict[int, tuple[Loaded[PartSpec], list[_Unrollings]]] = {}

    def instantiate(self, part: Loaded[PartSpec], bindings: Mapping[str, Value], kind: PartKind) -> Loaded[PartSpec]:
        """The part with its templates unrolled for an instance whose parameters are ``bindings``."""
        return self.unroll(part, bindings, kind)[0]

    def unroll(
        self, part: Loaded[PartSpec], bindings: Mapping[str, Value], kind: PartKind, instance: str = ""
    ) -> tuple[Loaded[PartSpec], frozenset[str]]:
        """:meth:`instantiate`, and the names of ``bindings`` the unrolling read (a ``when``, a repeat
        count, a placeholder, a split's parts): what the unrolled part is made for, which a class
        written from it cannot take as a parameter. ``instance`` (a block's path, ``layer2.0``)
        names the instance in the errors of the residual-add rule."""
        if not part.spec.templated:
            return part, frozenset()
        _, known = self._done.setdefault(id(part), (part, []))  # the part is kept alive: its id stays its own
        for seen in known:
            done = seen.results.get(_key(bindings, seen.names))
            if done is not None:
                return done, frozenset(seen.names) & set(bindings)
        unroller = _Unroller(part, dict(bindings), self, instance)
        unrolled = unroller.unroll(kind)
        names = tuple(sorted(unroller.read_names))
        same = next((entry for entry in known if entry.names == names), None)
        if same is None:
            same = _Unrollings(names, {})
            known.append(same)
        same.results[_key(bindings, names)] = unrolled
        return unrolled, frozenset(names) & set(bindings)


@dataclass
class _Unrollings:
    names: tuple[str, ...]
    """The parameters these unrollings read."""
    results: dict[tuple[str, ...], Loaded[PartSpec]]
    """By the values of ``names`` (written with their types: 1, 1.0 and True unroll differently)."""


def _key(bindings: Mapping[str, Value], names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{type(bindings.get(name)).__name__}:{bindings.get(name)!r}" for name in names)


def instantiate(part: Loaded[PartSpec], bindings: Mapping[str, Value], kind: PartKind) -> Loaded[PartSpec]:
    """The part with its templates unrolled for one instance (see :class:`Unrolling`)."""
    return Unrolling().instantiate(part, bindings, kind)


def _moved(source: SourceMap, origins: Mapping[str, YamlPath]) -> SourceMap:
    """A source map where each produced node's paths are its template's."""
    values = {path: location for path, location in source.values.items() if path[:1] != ("nodes",)}
    keys = {path: location for path, location in source.keys.items() if path[:1] != ("nodes",)}
    templates = set(origins.values())
    for table, original in ((values, source.values), (keys, source.keys)):
        # Each path below a template, by its template: one pass over the part's paths, not one per produced node.
        below: dict[YamlPath, list[tuple[YamlPath, Location]]] = {}
        for path, location in original.items():
            for length in range(2, len(path) + 1):
                if path[:length] in templates:
                    below.setdefault(path[:length], []).append((path[length:], location))
                    break
        for name, template in origins.items():
            for rest, location in below.get(template, ()):
                table[("nodes", name, *rest)] = location
        if ("nodes",) in original:
            table[("nodes",)] = original[("nodes",)]
    return SourceMap(source.file, values, keys)


class _Unroller:
    def __init__(
        self, part: Loaded[PartSpec], bindings: dict[str, Value], unrolling: Unrolling, instance: str = ""
    ) -> None:
        self.part = part
        self.instance = instance
        self.bindings = bindings
        self.unrolling = unrolling
        self.read_names: set[str] = set()
        """The parameters (and derived values) the templates read: what the unrolling depends on."""
        self.origins: dict[str, YamlPath] = {}
        self.previous = "input"
        """The last node produced: what a node without ``input`` reads."""
        self.merge_conditions: dict[YamlPath, tuple[Expression, bool]] = {}
        """Each residual add template (an add reading ``shortcut``) that has a ``when``: the
        condition and whether it held, for the errors of the residual-add rule."""

    def unroll(self, kind: PartKind) -> Loaded[PartSpec]:
        part = self.part
        nodes: dict[str, OpSpec] = {}
        for name, node, template in self.nodes(part.spec.nodes, ("nodes",), {}):
            if name in nodes:
                raise RescompileError(
                    f"part '{part.spec.name}' makes node '{name}' twice; give each repetition its own name "
                    "(a placeholder such as convs.{i})",
                    part.source.locate(template, key=True),
                )
            nodes[name] = node
            self.origins[name] = template
            self.previous = name
            if len(nodes) > MAX_UNROLLED_NODES:
                raise RescompileError(
                    f"part '{part.spec.name}' unrolls to more than {MAX_UNROLLED_NODES:,} nodes; that is the limit",
                    part.source.locate(template, key=True),
                )
        if not nodes:
            raise RescompileError(f"part '{part.spec.name}' has no nodes for these parameters", part.locate("nodes"))
        spec = part.spec.model_copy(update={"nodes": nodes})
        unrolled: Loaded[PartSpec] = Loaded(spec, _moved(part.source, self.origins), part.extended)
        if kind == "blocks":
            self.check_one_merge(nodes)
        check_part_references(unrolled, kind)
        return unrolled

    def check_one_merge(self, nodes: Mapping[str, OpSpec]) -> None:
        """The residual-add rule, for this instance: exactly one add reading ``shortcut`` is left
        once the ``when`` conditions are applied. A ``when`` may choose between residual adds, not
        remove the only one: a block without one is the shortcut policy ``none``'s to make."""
        merges = [name for name, node in nodes.items() if _is_merge(node)]
        if len(merges) == 1:
            return
        label = f"{self.instance}: " if self.instance else ""
        rule = "a block instance has exactly one residual add (an add node reading 'shortcut')"
        if not merges:
            removed = [(path, when) for path, (when, holds) in self.merge_conditions.items() if not holds]
            if not removed:
                return  # no residual add at all: the loader's error, at the block's nodes
            path, when = removed[0]
            raise RescompileError(
                f"{label}block '{self.part.spec.name}' has no residual add: 'when: {when.text}' removes node "
                f"'{path[-1]}' here ({self.values(when)}); {rule}. For no shortcut where shapes change, use the "
                "network's 'shortcut: {where_shapes_match: identity, where_shapes_change: none}'",
                self.part.source.locate((*path, "when")),
            )
        second = self.origins[merges[1]]
        held = [f"'when: {when.text}'" for when, holds in self.merge_conditions.values() if holds]
        reason = f" ({' and '.join(held)} {'holds' if len(held) == 1 else 'hold'} here)" if held else ""
        raise RescompileError(
            f"{label}block '{self.part.spec.name}' has {len(merges)} residual adds ({', '.join(merges)}){reason}; "
            f"{rule}",
            self.part.source.locate(second, key=True),
        )

    def values(self, expression: Expression) -> str:
        """The instance's values of the names ``expression`` reads: ``stride = 2``."""
        return ", ".join(
            f"{name} = {self.bindings[name]!r}" for name in sorted(expression.names) if name in self.bindings
        )

    def step(self, path: YamlPath) -> None:
        """Count one step of work against :data:`MAX_UNROLL_STEPS`."""
        self.unrolling.steps += 1
        if self.unrolling.steps > MAX_UNROLL_STEPS:
            raise self.error(
                f"unrolling the network's templates takes more than {MAX_UNROLL_STEPS:,} steps (template nodes "
                "visited, repeat iterations and comprehension items, in all instances); that is the limit",
                path,
                key=path[-1] != "inputs" and not isinstance(path[-1], int),
            )

    def value(self, expression: Expression, scope: Mapping[str, Value]) -> Value:
        self.read_names.update(name for name in expression.names if name not in scope)
        return expression.evaluate({**self.bindings, **scope})

    def error(self, message: str, path: YamlPath, key: bool = False) -> RescompileError:
        return RescompileError(f"part '{self.part.spec.name}': {message}", self.part.source.locate(path, key=key))

    def evaluate(self, expression: Expression, scope: Mapping[str, Value], path: YamlPath) -> Value:
        try:
            return self.value(expression, scope)
        except ExpressionError as error:
            raise self.error(f"{'.'.join(map(str, path[1:]))} = {expression.text}: {error}", path) from None

    def integer(self, expression: Expression, scope: Mapping[str, Value], path: YamlPath, minimum: int) -> int:
        value = self.evaluate(expression, scope, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(f"{expression.text} gives {value!r}; expected an integer of at least {minimum}", path)
        return value

    def text(self, template: str, scope: Mapping[str, Value], path: YamlPath, key: bool = False) -> str:
        """``template`` with every ``{expression}`` replaced by its value."""

        def fill(match: re.Match[str]) -> str:
            try:
                value = self.value(_parsed(match.group(1)), scope)
            except ExpressionError as error:
                raise self.error(f"in '{template}': {error}", path, key) from None
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise self.error(
                    f"in '{template}': {{{match.group(1)}}} gives {value!r}; expected an integer or a string", path, key
                )
            return str(value)

        text = PLACEHOLDER.sub(fill, template)
        if len(text) > MAX_NAME_LENGTH:  # a long string parameter in a repeated name multiplies memory
            raise self.error(
                f"in '{template}': the name made has {len(text):,} characters; a node's name has at most "
                f"{MAX_NAME_LENGTH}",
                path,
                key,
            )
        return text

    def read(self, value: str, scope: Mapping[str, Value], path: YamlPath) -> str:
        """A value read: ``A if CONDITION else B`` chooses, then placeholders are filled."""
        parts = _top_level_split(value, (" if ", " else "))
        if parts is not None:
            chosen, condition, other = parts
            if not self.evaluate(_parse(condition, self, path), scope, path):
                return self.read(other, scope, path)  # a chain: A if C else B if D else E
            value = chosen
        return self.text(value.strip(), scope, path)

    def reads(self, values: tuple[str, ...], scope: Mapping[str, Value], path: YamlPath) -> tuple[str, ...]:
        result: list[str] = []
        for index, value in enumerate(values):
            match = COMPREHENSION.match(value.strip()) if _top_level_split(value, (" for ",)) else None
            if match is None:
                result.append(self.read(value, scope, (*path, index)))
                continue
            arguments = _top_level_commas(match["arguments"])
            bounds = [
                self.integer(_parse(argument, self, (*path, index)), scope, (*path, index), -(2**31))
                for argument in arguments
            ]
            if not 1 <= len(bounds) <= 2:
                raise self.error(f"'{value}': range takes a stop, or a start and a stop", (*path, index))
            if match["name"] in FUNCTIONS:
                raise self.error(
                    f"'{value}': '{match['name']}' is a function expressions call; name the item otherwise (k, i)",
                    (*path, index),
                )
            numbers = range(*bounds)
            if len(numbers) > MAX_UNROLLED_NODES:
                raise self.error(
                    f"'{value}' makes {len(numbers):,} values; a comprehension makes at most {MAX_UNROLLED_NODES:,}",
                    (*path, index),
                )
            for number in numbers:
                self.step((*path, index))
                result.append(self.read(match["value"], {**scope, match["name"]: number}, (*path, index)))
        return tuple(result)

    def nodes(
        self, nodes: Mapping[str, OpSpec], prefix: YamlPath, scope: dict[str, Value]
    ) -> Iterator[tuple[str, OpSpec, YamlPath]]:
        """Each produced node: its name, its plain spec and the path of its template."""
        for template_name, node in nodes.items():
            path = (*prefix, template_name)
            self.step(path)
            if node.when is not None:
                holds = bool(self.evaluate(node.when, scope, (*path, "when")))
                if _is_merge(node):
                    self.merge_conditions[path] = (node.when, holds)
                if not holds:
                    continue
            if isinstance(node, RepeatSpec):
                start = self.integer(node.start, scope, (*path, "start"), -(2**31))
                count = self.integer(node.count, scope, (*path, "count"), 0)
                for number in range(start, start + count):
                    self.step(path)
                    inner = {**scope, node.index: number}
                    for index, produced in enumerate(self.nodes(node.nodes, (*path, "nodes"), inner)):
                        name, spec, origin = produced
                        if index == 0 and number == start and node.input is not None and _reads_previous(spec):
                            spec = spec.model_copy(update={"input": self.read(node.input, scope, (*path, "input"))})
                        yield name, spec, origin
                continue
            name = self.text(template_name, scope, path, key=True)
            yield from self.plain(name, node, path, scope)

    def plain(
        self, name: str, node: OpSpec, path: YamlPath, scope: dict[str, Value]
    ) -> Iterator[tuple[str, OpSpec, YamlPath]]:
        update: dict[str, Any] = {"when": None}
        for field, value in node:
            if isinstance(value, Expression) and field != "when":
                update[field] = _bound(value, scope)
            elif isinstance(value, tuple) and all(isinstance(item, Expression) for item in value):
                update[field] = tuple(_bound(item, scope) for item in value)  # a split's sizes
        if isinstance(node, BinarySpec):
            update["inputs"] = self.reads(node.inputs, scope, (*path, "inputs"))
        elif node.input is not None:
            update["input"] = self.read(node.input, scope, (*path, "input"))
        spec = node.model_copy(update=update)
        if not isinstance(spec, SplitSpec):
            yield name, spec, path
            return
        if (spec.parts is None) == (spec.sizes is None):
            raise self.error("a split states either parts (equal parts) or sizes (listed), not both", path)
        count = (
            self.integer(spec.parts, scope, (*path, "parts"), 1) if spec.parts is not None else len(spec.sizes or ())
        )
        if spec.names is not None and len(spec.names) != count:
            raise self.error(f"a split into {count} parts names {len(spec.names)}", (*path, "names"))
        source = spec.input or self.previous  # every part reads what the split reads
        start: Expression = parse_expression(0)
        for index in range(count):
            size = None if spec.sizes is None else spec.sizes[index]
            part = ChannelSliceSpec.model_validate(
                {
                    "op": "channel_slice",
                    "input": source,
                    "index": parse_expression(index),
                    "parts": spec.parts,
                    "start": start,
                    "size": size,
                    "last": index == count - 1,
                }
            )
            if size is not None:
                tree = size.tree if index == 0 else ast.BinOp(start.tree, ast.Add(), size.tree)
                start = Expression(ast.unparse(tree), tree)
            yield f"{name}.{index if spec.names is None else spec.names[index]}", cast("OpSpec", part), path


def _is_merge(spec: OpSpec) -> bool:
    """Whether a (template) node is a residual add: an add reading ``shortcut``."""
    return isinstance(spec, AddSpec) and "shortcut" in spec.inputs


def _reads_previous(spec: OpSpec) -> bool:
    return not isinstance(spec, BinarySpec) and spec.input is None


def _bound(expression: Expression, scope: Mapping[str, Value]) -> Expression:
    """``expression`` with the repeat indices of ``scope`` written as their numbers."""
    if not scope or not expression.names & set(scope):
        return expression

    class _Substitute(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            return ast.Constant(scope[node.id]) if node.id in scope else node

    tree = _Substitute().visit(ast.parse(expression.text, mode="eval").body)
    substituted = Expression(ast.unparse(tree), tree)
    # A value of the index alone (padding: p + 1) is written as its number.
    return substituted if substituted.names else parse_expression(substituted.evaluate({}))


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> Expression:
    """A placeholder's or condition's expression, parsed once (a repeat reads it every iteration)."""
    return parse_expression(text)


def _parse(text: str, unroller: _Unroller, path: YamlPath) -> Expression:
    try:
        return _parsed(text)
    except ExpressionError as error:
        raise unroller.error(str(error), path) from None


def _top_level_commas(text: str) -> list[str]:
    """``text`` cut at its commas outside parentheses."""
    pieces, depth, start = [], 0, 0
    for position, character in enumerate(text):
        depth += {"(": 1, ")": -1}.get(character, 0)
        if character == "," and depth == 0:
            pieces.append(text[start:position])
            start = position + 1
    return [*pieces, text[start:]]


def _top_level_split(text: str, separators: tuple[str, ...]) -> list[str] | None:
    """``text`` cut at ``separators`` in order, outside ``{...}`` placeholders and parentheses; None
    if one is missing."""
    pieces: list[str] = []
    depth, start, position, wanted = 0, 0, 0, list(separators)
    while position < len(text) and wanted:
        character = text[position]
        depth += {"{": 1, "}": -1, "(": 1, ")": -1}.get(character, 0)
        if depth == 0 and text.startswith(wanted[0], position):
            pieces.append(text[start:position])
            position += len(wanted.pop(0))
            start = position
            continue
        position += 1
    if wanted:
        return None
    pieces.append(text[start:])
    return pieces
