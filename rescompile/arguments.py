"""argparse types shared by the command line's commands (``rescompile SPEC``, ``cost``, ``check``).

Kept apart from :mod:`rescompile.cli` so that :mod:`rescompile.check` can use them without
importing the module that dispatches to it.
"""

from __future__ import annotations

import argparse
import json
from typing import NoReturn

from rescompile.spec.errors import RescompileError
from rescompile.spec.models import MAX_SIZE


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with the command line's error contract: a usage error is one line
    (``rescompile check: argument --batch: ...; see 'rescompile check --help'``), raised as
    :class:`RescompileError` (exit status 1), not the whole usage text with exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise RescompileError(f"{self.prog}: {message}; see '{self.prog} --help'")


def parse_size(text: str) -> int | tuple[int, int]:
    """An argparse type for ``--size``: ``224`` or ``224x160`` (height × width)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 224 or 224x160, got {text!r}") from None
    if len(numbers) not in (1, 2) or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 224 or 224x160, got {text!r}")
    if max(numbers) > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"a size is at most {MAX_SIZE:,}, got {text!r}")
    return numbers[0] if len(numbers) == 1 else (numbers[0], numbers[1])


def parse_seed(text: str) -> int:
    """An argparse type for ``--seed``: numpy's generators take a non-negative seed."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to 4294967295, got {text!r}")
    return seed


def parse_keywords(text: str) -> dict[str, object]:
    """An argparse type for ``import --kwargs``: a JSON object (``{"num_classes": 10}``) or
    ``key=value`` pairs joined by commas (``num_classes=10,drop_rate=0.1``), each value read as
    JSON where it is JSON (numbers, true, null, ...) and as text otherwise."""
    if text.lstrip().startswith("{"):
        try:
            keywords = json.loads(text)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"not a JSON object: {error}") from None
        if not isinstance(keywords, dict):
            raise argparse.ArgumentTypeError("expected a JSON object")
        return dict(keywords)
    pairs: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip().isidentifier():
            raise argparse.ArgumentTypeError(f"expected key=value pairs such as num_classes=10, got {item!r}")
        try:
            pairs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            pairs[key.strip()] = value
    return pairs
