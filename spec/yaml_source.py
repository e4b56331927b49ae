"""Safe YAML loading that remembers where every value came from.

PyYAML's composer gives a node tree with marks; we build plain Python data from it ourselves so
that only the standard YAML tags are accepted (no ``!!python/...``), duplicate keys are errors, and
every mapping key and value has a :class:`Location` for error messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rescompile.spec.errors import Location, RescompileError

YamlPath = tuple[str | int, ...]

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}
_MAPPING_TAG = "tag:yaml.org,2002:map"
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


def _location(file: str, mark: yaml.Mark | None) -> Location:
    if mark is None:
        return Location(file, 1, 1)
    return Location(file, mark.line + 1, mark.column + 1)


def parse_yaml(text: str, file: str) -> YamlDocument:
    """Parse one YAML document into plain data plus a :class:`SourceMap`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "malformed YAML"
        raise RescompileError(f"malformed YAML: {problem}", _location(file, mark)) from None
    except yaml.YAMLError as error:
        raise RescompileError(f"malformed YAML: {error}", Location(file, 1, 1)) from None
    if root is None:
        raise RescompileError("the file is empty; expected a YAML mapping", Location(file, 1, 1))
    source = SourceMap(file)
    constructor = yaml.SafeLoader("")
    data = _build(root, (), source, constructor)
    return YamlDocument(data, source)


def _build(node: yaml.Node, path: YamlPath, source: SourceMap, constructor: yaml.SafeLoader) -> Any:
    location = _location(source.file, node.start_mark)
    source.values[path] = location
    if isinstance(node, yaml.MappingNode):
        if node.tag != _MAPPING_TAG:
            raise _tag_error(node.tag, location)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_location = _location(source.file, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                if key_node.tag not in _SCALAR_TAGS and not key_node.tag.startswith("tag:yaml.org"):
                    raise _tag_error(key_node.tag, key_location)
                raise RescompileError("mapping keys must be plain words", key_location)
            key = _encodable(str(key_node.value), key_location)
            if key in result:
                raise RescompileError(f"duplicate key '{key}'", key_location)
            source.keys[(*path, key)] = key_location
            result[key] = _build(value_node, (*path, key), source, constructor)
        return result
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQUENCE_TAG:
            raise _tag_error(node.tag, location)
        return [_build(item, (*path, index), source, constructor) for index, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    if node.tag not in _SCALAR_TAGS:
        raise _tag_error(node.tag, location)
    value = constructor.construct_object(node, deep=True)
    return _encodable(value, location) if isinstance(value, str) else value


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
    """Read and parse ``path``; ``shown_as`` is the name used in error messages."""
    name = shown_as if shown_as is not None else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RescompileError(f"no such file: {name}", Location(name, 1, 1)) from None
    except IsADirectoryError:
        raise RescompileError(f"{name} is a directory, not a YAML file", Location(name, 1, 1)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RescompileError(f"cannot read {name}: {error}", Location(name, 1, 1)) from None
    return parse_yaml(text, name)
