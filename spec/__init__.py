"""Spec language: safe YAML with source locations, pydantic models, located errors."""

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
