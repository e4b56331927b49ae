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


SYNTAX_ERRORS = {
    "more_indented": (
        "name: x\ninput:\n  channels: 3\n   size: 3\n",
        "net.yaml:4:8: bad indentation: this line is indented more than the line above (line 3), whose key already "
        "has a value; line it up with its siblings, or move that value onto its own lines",
    ),
    "less_indented": (
        "name: x\ninput:\n    channels: 3\n  size: 3\n",
        "net.yaml:4:3: bad indentation: this line is indented by 2 spaces, less than line 3 above it (4); the keys of "
        "one mapping, and the items of one list, line up",
    ),
    "list_item_less_indented": (
        "stages:\n  - a\n\n  # a comment\n - b\n",
        "net.yaml:5:2: bad indentation: this line is indented by 1 space, less than line 2 above it (2); the keys of "
        "one mapping, and the items of one list, line up",
    ),
    "key_among_list_items": (
        "name: x\nstages:\n  - a\n  b: 3\n",
        "net.yaml:4:3: bad indentation: a 'key: value' among list items; start it with '- ', or indent it as its "
        "mapping",
    ),
    "list_item_among_keys": (
        "name: x\n- 3\n",
        "net.yaml:2:1: bad indentation: a list item ('- ') among the keys of a mapping; indent it under its key",
    ),
    "second_colon": (
        "name: x: y\n",
        "net.yaml:1:8: a second ': ' on this line; a value holding ': ' must be quoted ('a: b')",
    ),
    "tab": (
        "name: x\ninput:\n\tchannels: 3\n",
        "net.yaml:3:1: a tab character: YAML indents with spaces only; replace the tab with spaces",
    ),
    "key_without_a_value": (
        "name: x\ninput\nstem: y\n",
        "net.yaml:2:1: a mapping key here needs a value: write 'input: VALUE'",
    ),
    "unclosed_quote": (
        "name: x\ndescription: 'a net\nstem: y\n",
        "net.yaml:2:14: this quote is never closed: the text runs to the end of the file",
    ),
    "unclosed_brace": (
        "input: {channels: 3\nname: x\n",
        "net.yaml:1:8: this '{' is never closed: add '}' at the end of its value",
    ),
    "unclosed_bracket_at_the_end": (
        "stages: [1, 2\n",
        "net.yaml:1:9: this '[' is never closed: add ']' at the end of its value",
    ),
    "missing_comma": (
        "stages:\n  - {depth: 1 width: 3}\n",
        "net.yaml:2:20: expected ',' or '}' here (got ':'): items of a {...} are separated by ', '",
    ),
    "stray_bracket": (
        "input: {a: 1}}\n",
        "net.yaml:1:14: a '}' that closes nothing: no matching bracket opens before it",
    ),
    "text_after_a_quote": (
        "name: 'it's'\n",
        "net.yaml:1:11: text after the closing quote: a quoted value ends at its quote ('it''s' quotes a quote)",
    ),
    "unknown_escape": (
        'name: "a\\q"\n',
        "net.yaml:1:10: unknown escape '\\q' in a double-quoted string; write '\\\\' for a backslash, or "
        "single-quote it",
    ),
    "reserved_character": ("name: @x\n", "net.yaml:1:7: a value cannot start with '@' in YAML; quote it ('@...')"),
    "undefined_alias": (
        "name: *x\n",
        "net.yaml:1:7: undefined alias 'x': no anchor ('&NAME') above defines it; quote a value starting with '*'",
    ),
    "two_documents": ("name: x\n---\nname: y\n", "net.yaml:2:1: a second YAML document ('---'): a spec file holds one"),
}


@pytest.mark.parametrize("case", sorted(SYNTAX_ERRORS))
def test_a_yaml_syntax_error_is_said_in_plain_words(case: str) -> None:
    text, expected = SYNTAX_ERRORS[case]
    with pytest.raises(RescompileError) as raised:
        parse_yaml(text, "net.yaml")
    assert str(raised.value) == expected
