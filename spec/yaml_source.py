"""Safe YAML loading that remembers where every value came from.

PyYAML's composer gives a node tree with marks; we build plain Python data from it ourselves so
that only the standard YAML tags are accepted (no ``!!python/...``), duplicate keys are errors, and
every mapping key and value has a :class:`Location` for error messages.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rescompile.spec.errors import LINE_BREAK, MAX_FILE_BYTES, Location, RescompileError

YamlPath = tuple[str | int, ...]

# Limits on what a spec file may hold, so that no input exhausts memory, time or the stack
# (MAX_FILE_BYTES, the file size, lives with the errors module, which reads files back too).
MAX_VALUES = 100_000
MAX_DEPTH = 64
MAX_INTEGER = 2**31
_MAX_INTEGER_DIGITS = 40  # more than any number within MAX_INTEGER has in any base (binary: 32)

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}
_MAPPING_TAG = "tag:yaml.org,2002:map"
_INT_TAG = "tag:yaml.org,2002:int"
_SEQUENCE_TAG = "tag:yaml.org,2002:seq"


@dataclass(frozen=True)
class SourceMap:
    """Locations of the values (and, for mappings, the keys) of one YAML document."""

    file: str
    values: dict[YamlPath, Location] = field(default_factory=dict)
    keys: dict[YamlPath, Location] = field(default_factory=dict)

    def locate(self, path: YamlPath, *, key: bool = False) -> Location:
        """The location of ``path``, or of its nearest ancestor that exists in the document."""
        table = self.keys if key else self.values
        for length in range(len(path), -1, -1):
            prefix = path[:length]
            if prefix in table:
                return table[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return Location(self.file, 1, 1)


@dataclass(frozen=True)
class YamlDocument:
    data: Any
    source: SourceMap


def line_column(text: str, position: int) -> tuple[int, int]:
    """The 1-based line and column of ``text[position]``, counted as the YAML parser counts them,
    so that a location found outside it (a bad character) agrees with its marks."""
    line, start = 1, 0
    for match in LINE_BREAK.finditer(text, 0, position):
        line, start = line + 1, match.end()
    return line, position - start + 1


def _location(file: str, mark: yaml.Mark | None) -> Location:
    if mark is None:
        return Location(file, 1, 1)
    return Location(file, mark.line + 1, mark.column + 1)


class _Composer(yaml.SafeLoader):
    """PyYAML's composer recurses once per nesting level: refuse a document nested past
    :data:`MAX_DEPTH` before Python's recursion limit is reached."""

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file = file
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _depth_error(_location(self.file, event.start_mark))
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse_yaml(text: str, file: str) -> YamlDocument:
    """Parse one YAML document into plain data plus a :class:`SourceMap`."""
    composer: _Composer | None = None
    try:
        composer = _Composer(text, file)  # its reader checks every character here
        root = composer.get_single_node()
    except yaml.MarkedYAMLError as error:
        message, mark = _syntax_message(error, text)
        raise RescompileError(message, _location(file, mark)) from None
    except yaml.reader.ReaderError as error:
        # Its str() adds a second line ('in "<unicode string>", position N'); say it in one.
        line, column = line_column(text, error.position)
        character = ascii(chr(error.character)) if isinstance(error.character, int) else repr(error.character)
        raise RescompileError(f"malformed YAML: {error.reason}: {character}", Location(file, line, column)) from None
    except yaml.YAMLError as error:
        raise RescompileError(f"malformed YAML: {error}", Location(file, 1, 1)) from None
    finally:
        if composer is not None:
            composer.dispose()
    if root is None:
        raise RescompileError("the file is empty; expected a YAML mapping", Location(file, 1, 1))
    builder = _Builder(SourceMap(file))
    data = builder.build(root, ())
    return YamlDocument(data, builder.source)


def _syntax_message(error: yaml.MarkedYAMLError, text: str) -> tuple[str, yaml.Mark | None]:
    """PyYAML's complaint (``expected <block end>, but found '?'``) in plain words, and where to
    point: the commonest slips (indentation, tabs, a missing ':', unclosed quotes and brackets)
    read off the problem, its context and the text around the mark; the rest keep PyYAML's words."""
    problem, context = error.problem or "", error.context or ""
    mark, opened = error.problem_mark or error.context_mark, error.context_mark
    lines = LINE_BREAK.split(text)
    line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
    found = problem.rpartition("found ")[2] if "found " in problem else problem.rpartition("got ")[2]
    if problem.startswith("found character '\\t'"):
        return "a tab character: YAML indents with spaces only; replace the tab with spaces", mark
    if "that cannot start any token" in problem:
        character = problem.split("'")[1]
        return f"a value cannot start with '{character}' in YAML; quote it ('{character}...')", mark
    if problem == "mapping values are not allowed here" and mark is not None:
        if ": " in line[: mark.column].strip():
            return "a second ': ' on this line; a value holding ': ' must be quoted ('a: b')", mark
        above = _line_above(lines, mark.line)
        where = f" (line {above + 1})" if above is not None else ""
        return (
            f"bad indentation: this line is indented more than the line above{where}, whose key already has a value; "
            "line it up with its siblings, or move that value onto its own lines",
            mark,
        )
    if problem == "could not find expected ':'" and opened is not None:
        key = lines[opened.line][opened.column :].strip() if opened.line < len(lines) else ""
        return f"a mapping key here needs a value: write '{key}: VALUE'", opened
    if "quoted scalar" in context and "end of stream" in problem:
        return "this quote is never closed: the text runs to the end of the file", opened
    if "unknown escape character" in problem:
        escape = problem.split("'")[1]
        return (
            f"unknown escape '\\{escape}' in a double-quoted string; write '\\\\' for a backslash, or single-quote it",
            mark,
        )
    if context in ("while parsing a flow mapping", "while parsing a flow sequence") and found.strip("'") in (
        "<stream end>",
        ":",
        "{",
        "[",
        "-",
    ):
        bracket = "{" if "mapping" in context else "["
        closing = "}" if bracket == "{" else "]"
        if found == "'<stream end>'" or (opened is not None and mark is not None and mark.line != opened.line):
            return f"this '{bracket}' is never closed: add '{closing}' at the end of its value", opened
        return (
            f"expected ',' or '{closing}' here (got {found}): items of a {bracket}...{closing} are separated by ', '",
            mark,
        )
    if problem.startswith("expected <block end>") and mark is not None:
        above = _line_above(lines, mark.line)
        indent = len(line) - len(line.lstrip(" "))
        if found in ("'<block mapping start>'", "'<block sequence start>'") and above is not None:
            previous = len(lines[above]) - len(lines[above].lstrip(" "))
            spaces = f"{indent} space{'s' if indent != 1 else ''}"
            than = "less than" if indent < previous else "unlike"
            return (
                f"bad indentation: this line is indented by {spaces}, {than} line {above + 1} above it ({previous}); "
                "the keys of one mapping, and the items of one list, line up",
                mark,
            )
        if found == "'?'":
            return (
                "bad indentation: a 'key: value' among list items; start it with '- ', or indent it as its mapping",
                mark,
            )
        if found == "'-'":
            return "bad indentation: a list item ('- ') among the keys of a mapping; indent it under its key", mark
        if found in ("'}'", "']'"):
            return f"a {found} that closes nothing: no matching bracket opens before it", mark
        if found == "'<scalar>'":
            return "text after the closing quote: a quoted value ends at its quote ('it''s' quotes a quote)", mark
        if found == "':'":
            return "a ':' with no key before it", mark
    if "undefined alias" in problem:
        return (
            f"{problem[len('found ') :]}: no anchor ('&NAME') above defines it; quote a value starting with '*'",
            mark,
        )
    if problem == "but found another document":
        return "a second YAML document ('---'): a spec file holds one", mark
    if found == "'<stream end>'":
        return "the file ends where a value was expected; is a '[' or '{' left open?", mark
    return f"malformed YAML: {problem or context or 'malformed YAML'}", mark


def _line_above(lines: list[str], index: int) -> int | None:
    """The index of the nearest line above ``index`` that holds more than blanks and a comment."""
    for above in range(index - 1, -1, -1):
        if lines[above].strip() and not lines[above].lstrip().startswith("#"):
            return above
    return None


class _Builder:
    """Plain data from a composed node tree. An alias is the node it names, so the walk revisits
    it: it counts every value it builds (billion laughs) and its depth (recursive aliases)."""

    def __init__(self, source: SourceMap) -> None:
        self.source = source
        self.constructor = yaml.SafeLoader("")
        self.values = 0

    def build(self, node: yaml.Node, path: YamlPath) -> Any:
        location = _location(self.source.file, node.start_mark)
        self.values += 1
        if self.values > MAX_VALUES:
            raise RescompileError(
                f"the document holds more than {MAX_VALUES:,} values (counting each use of an alias); "
                "that is the limit",
                location,
            )
        if len(path) >= MAX_DEPTH:
            raise _depth_error(location)
        self.source.values[path] = location
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAPPING_TAG:
                raise _tag_error(node.tag, location)
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key_location = _location(self.source.file, key_node.start_mark)
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                    if key_node.tag not in _SCALAR_TAGS and not key_node.tag.startswith("tag:yaml.org"):
                        raise _tag_error(key_node.tag, key_location)
                    raise RescompileError("mapping keys must be plain words", key_location)
                key = _encodable(str(key_node.value), key_location)
                if key in result:
                    raise RescompileError(f"duplicate key '{key}'", key_location)
                self.source.keys[(*path, key)] = key_location
                result[key] = self.build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQUENCE_TAG:
                raise _tag_error(node.tag, location)
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if node.tag not in _SCALAR_TAGS:
            raise _tag_error(node.tag, location)
        if node.tag == _INT_TAG and _significant_length(node.value) > _MAX_INTEGER_DIGITS:
            raise _integer_error(location)  # before Python converts a 100,000-digit number
        value = self.constructor.construct_object(node, deep=True)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            raise _integer_error(location)
        return _encodable(value, location) if isinstance(value, str) else value


def _significant_length(text: str) -> int:
    """How many digits a YAML integer has, leaving out its sign, base prefix, '_' and leading zeros."""
    digits = text.replace("_", "").lstrip("+-")
    if digits[:2].lower() in ("0x", "0o", "0b"):
        digits = digits[2:]
    return len(digits.lstrip("0"))


def _integer_error(location: Location) -> RescompileError:
    return RescompileError(f"integer out of range: spec integers lie within ±2**31 (±{MAX_INTEGER:,})", location)


def _depth_error(location: Location) -> RescompileError:
    return RescompileError(f"the document nests deeper than {MAX_DEPTH} levels; that is the limit", location)


def _encodable(text: str, location: Location) -> str:
    """``text``, refused when it holds a lone surrogate (only YAML's ``"\\udc80"`` escape makes one):
    such a string cannot be written to any UTF-8 file, generated source included."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        character = ascii(text[error.start])
        raise RescompileError(f"text holds a lone surrogate {character}, which is not a character", location) from None
    return text


def _tag_error(tag: str, location: Location) -> RescompileError:
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    return RescompileError(
        f"YAML tag '{shown}' is not allowed; specs use plain YAML values (mappings, lists, strings, numbers, booleans)",
        location,
    )


def read_yaml(path: Path, shown_as: str | None = None) -> YamlDocument:
    """Read and parse ``path``; ``shown_as`` is the name used in error messages.

    Only a regular file of at most :data:`MAX_FILE_BYTES` is read: a FIFO would block forever and
    ``/dev/zero`` never ends. O_NONBLOCK keeps the open itself from blocking should the file be
    swapped for a FIFO after the check; the check is repeated on what was opened.
    """
    name = shown_as if shown_as is not None else str(path)
    where = Location(name, 1, 1)
    try:
        if path.is_dir():
            raise RescompileError(f"{name} is a directory, not a YAML file", where)
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as handle:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise RescompileError(f"{name} is not a regular file; specs are read only from regular files", where)
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise RescompileError(f"no such file: {name}", where) from None
    except (OSError, ValueError) as error:  # ValueError: a NUL character in the path
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise RescompileError(f"cannot read {name}: {reason}", where) from None
    if len(data) > MAX_FILE_BYTES:
        raise RescompileError(
            f"{name} is larger than 1 MiB ({MAX_FILE_BYTES:,} bytes), the limit for a spec file", where
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[: error.start].decode("utf-8")  # the bytes before the first bad one are UTF-8
        line, column = line_column(before, len(before))
        raise RescompileError(
            f"{name} is not UTF-8 text (byte 0x{data[error.start]:02x})", Location(name, line, column)
        ) from None
    return parse_yaml(text, name)
