"""The one user-facing error type: every bad input becomes ``file:LINE:COL: message``."""

from __future__ import annotations

import difflib
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

MAX_FILE_BYTES = 2**20
"""The largest spec file read (1 MiB): by the loader, and by an error's excerpt, which reads it back."""

LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
"""YAML's line breaks, as PyYAML's marks count them: a lone CR and NEL (U+0085) end a line too."""


@dataclass(frozen=True)
class Location:
    """A position in a source file; line and column are 1-based, as editors show them."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class RescompileError(Exception):
    """A problem the user can fix: a bad spec, an impossible shape, an unwritable path.

    ``str(error)`` is the single line the command-line tool prints.
    """

    def __init__(self, message: str, location: Location | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        if self.location is None:
            return one_line(self.message)
        return one_line(f"{self.location}: {self.message}")


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped as Python's ``repr`` writes
    them (``\\n``, ``\\x1b``, ``\\u2028``): user text quoted in a message (a name, a file name)
    can then neither break the one-line contract nor send terminal escape sequences."""
    return "".join(ascii(character)[1:-1] if _is_control(character) else character for character in text)


EXCERPT_VARIABLE = "RESCOMPILE_EXCERPT"
"""1 shows the source excerpt under an error whatever stderr is, 0 never; unset: where stderr is a terminal."""
_EXCERPT_WIDTH = 100
"""The most characters of a source line an excerpt shows (a window around the column)."""


def wants_excerpt(stream: TextIO) -> bool:
    """Whether errors printed to ``stream`` get their source excerpt: on a terminal, or as
    :data:`EXCERPT_VARIABLE` says; logs and pipes keep the one-line form."""
    setting = os.environ.get(EXCERPT_VARIABLE, "")
    if setting in ("0", "1"):
        return setting == "1"
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def render(error: RescompileError, *, excerpt: bool) -> str:
    """The error as the command line prints it: its one line, and with ``excerpt`` the source line
    it points at with a caret under the key or value, as rustc and elm show errors::

        net.yaml:7:16: unknown key 'widht' (did you mean 'width'?); ...
          |
        7 |   - {depth: 1, widht: 16}
          |                ^^^^^

    The excerpt is left out where the location's file cannot be read back as a small text file."""
    shown = source_excerpt(error.location) if excerpt and error.location is not None else None
    return str(error) if shown is None else f"{error}\n{shown}"


def source_excerpt(location: Location) -> str | None:
    """Three lines: a gutter, the source line ``location`` names, and a caret under its token."""
    path = Path(location.file)
    try:  # only a regular file is read: a FIFO would block, /dev/zero never end
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            return None
        lines = LINE_BREAK.split(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not 1 <= location.line <= len(lines):
        return None
    # Control characters (a tab, an escape sequence) print as one space: the caret stays aligned.
    line = "".join(" " if _is_control(character) else character for character in lines[location.line - 1])
    column = min(location.column - 1, len(line))
    width = _token_width(line, column)
    start = max(0, min(column - _EXCERPT_WIDTH // 3, len(line) - _EXCERPT_WIDTH))
    shown = line[start : start + _EXCERPT_WIDTH].rstrip()
    gutter = " " * len(str(location.line))
    caret = " " * (column - start) + "^" * max(1, min(width, _EXCERPT_WIDTH - (column - start)))
    return f"{gutter} |\n{location.line} | {shown}\n{gutter} | {caret}"


def _token_width(line: str, column: int) -> int:
    """How many characters the YAML token at ``column`` spans: a quoted string to its closing
    quote, a bracket alone, a plain word up to ': ', ',', a closing bracket or a comment."""
    rest = line[column:]
    if not rest:
        return 1
    if rest[0] in "'\"":
        end = rest.find(rest[0], 1)
        return end + 1 if end > 0 else len(rest)
    if rest[0] in "{[:-" or rest[0].isspace():
        return 1
    end = len(rest)
    for stop in (": ", ",", "]", "}", " #"):
        found = rest.find(stop)
        if found > 0:
            end = min(end, found)
    if rest.endswith(":") and end == len(rest):
        end -= 1
    return max(1, len(rest[:end].rstrip()))


def _is_control(character: str) -> bool:
    return unicodedata.category(character) in ("Cc", "Zl", "Zp")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix when ``word`` is a near miss of a valid choice.
    ``word`` itself is never suggested: a valid word refused for another reason (a shortcut kind
    that has no file) would be told to be itself."""
    matches = difflib.get_close_matches(word, sorted(set(choices) - {word}), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def one_of(choices: Iterable[str]) -> str:
    """Render valid choices for an error message: ``'a', 'b' or 'c'``."""
    quoted = [f"'{choice}'" for choice in sorted(choices)]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
