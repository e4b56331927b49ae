"""Spec language: safe YAML with source locations, pydantic models, located errors.

The package's names are imported when first used (PEP 562), so that importing one of its modules
does not import them all: ``spec.models`` reads the op table (``compiler.ops``), which reads
``spec.expressions``; an eager ``spec/__init__`` would close that into an import cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rescompile.spec.errors import Location, RescompileError
    from rescompile.spec.expressions import Expression, parse_expression
    from rescompile.spec.loader import (
        Loaded,
        builtin_directory,
        builtin_networks,
        dump_network,
        load_network,
        load_part,
    )
    from rescompile.spec.models import BlockSpec, HeadSpec, NetworkSpec, PartSpec, ShortcutSpec, StemSpec

_MODULES = {
    "rescompile.spec.errors": ("Location", "RescompileError"),
    "rescompile.spec.expressions": ("Expression", "parse_expression"),
    "rescompile.spec.loader": (
        *("Loaded", "builtin_directory", "builtin_networks", "dump_network", "load_network", "load_part"),
    ),
    "rescompile.spec.models": ("BlockSpec", "HeadSpec", "NetworkSpec", "PartSpec", "ShortcutSpec", "StemSpec"),
}
_HOMES = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "BlockSpec",
    "Expression",
    "HeadSpec",
    "Loaded",
    "Location",
    "NetworkSpec",
    "PartSpec",
    "RescompileError",
    "ShortcutSpec",
    "StemSpec",
    "builtin_directory",
    "builtin_networks",
    "dump_network",
    "load_network",
    "load_part",
    "parse_expression",
]


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
