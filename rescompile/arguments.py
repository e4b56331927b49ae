"""argparse types shared by the command line's commands (``rescompile SPEC``, ``cost``, ``check``).

Kept apart from :mod:`rescompile.cli` so that :mod:`rescompile.check` can use them without
importing the module that dispatches to it.
"""

from __future__ import annotations

import argparse


def parse_size(text: str) -> int | tuple[int, int]:
    """An argparse type for ``--size``: ``224`` or ``224x160`` (height × width)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 224 or 224x160, got {text!r}") from None
    if len(numbers) not in (1, 2) or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 224 or 224x160, got {text!r}")
    return numbers[0] if len(numbers) == 1 else (numbers[0], numbers[1])
