"""Locations in YAML text: a position found outside the parser is counted as the parser counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rescompile.spec.errors import RescompileError
from rescompile.spec.yaml_source import line_column, parse_yaml, read_yaml

BREAKS = st.sampled_from(["\n", "\r", "\r\n", "\x85", "\u2028", "\u2029"])
LINES = st.lists(st.tuples(st.text("ab: -#é", min_size=1, max_size=6), BREAKS), max_size=6)
"""Lines that are not empty: a CR then an LF would be one break."""


@settings(max_examples=100, deadline=None)
@given(lines=LINES, tail=st.text("ab é", max_size=6))
def test_a_bad_characters_location_counts_every_yaml_line_break(lines: list[tuple[str, str]], tail: str) -> None:
    """A lone CR or NEL ends a line for YAML: the column of what follows restarts there."""
    text = "".join(segment + brk for segment, brk in lines) + tail + "\x01"
    with pytest.raises(RescompileError) as raised:
        parse_yaml(text, "net.yaml")
    assert raised.value.location is not None
    assert (raised.value.location.line, raised.value.location.column) == (len(lines) + 1, len(tail) + 1)


@settings(max_examples=50, deadline=None)
@given(lines=LINES, tail=st.text("ab é", max_size=6))
def test_a_bad_bytes_location_counts_every_yaml_line_break_and_characters(
    lines: list[tuple[str, str]], tail: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("bytes") / "net.yaml"
    path.write_bytes(("".join(segment + brk for segment, brk in lines) + tail).encode() + b"\xff")
    with pytest.raises(RescompileError) as raised:
        read_yaml(path, "net.yaml")
    assert str(raised.value) == f"net.yaml:{len(lines) + 1}:{len(tail) + 1}: net.yaml is not UTF-8 text (byte 0xff)"


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.tuples(st.sampled_from(["a: 1", "b: x", "# c", "", "  "]), BREAKS), max_size=8))
def test_line_column_agrees_with_the_parsers_marks(lines: list[tuple[str, str]]) -> None:
    text = "".join(segment + brk for segment, brk in lines)
    try:
        tokens = list(yaml.scan(text))
    except yaml.YAMLError:
        return
    for token in tokens:
        mark = token.start_mark
        assert line_column(text, mark.index) == (mark.line + 1, mark.column + 1)


def test_a_nel_before_a_bad_character_starts_a_new_line(tmp_path: Path) -> None:
    with pytest.raises(RescompileError) as raised:
        parse_yaml("name: a\x85b\x01", "net.yaml")
    assert str(raised.value).startswith("net.yaml:2:2: malformed YAML: special characters are not allowed: '\\x01'")
