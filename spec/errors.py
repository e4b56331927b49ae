"""The one user-facing error type: every bad input becomes ``file:LINE:COL: message``."""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass


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


def _is_control(character: str) -> bool:
    return unicodedata.category(character) in ("Cc", "Zl", "Zp")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix when ``word`` is a near miss of a valid choice."""
    matches = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def one_of(choices: Iterable[str]) -> str:
    """Render valid choices for an error message: ``'a', 'b' or 'c'``."""
    quoted = [f"'{choice}'" for choice in sorted(choices)]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
