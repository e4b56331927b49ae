"""Names in generated source: handed out, not refused (torch.fx's ``_Namespace`` is the model).

Two kinds of name reach generated code from a spec:

* *module paths* (``conv1``, ``se.fc1``, ``conv1.0``): where a layer lives, which is its
  state_dict key, so they are kept exactly. A dotted path nests: every proper prefix is a container
  (``nn.ModuleDict`` / ``nnx.Dict``), and a segment that is a number is reached by item
  (``self.conv1["0"]``). The spec loader checks paths at validate time (each segment an identifier
  or a number, no path both a layer and a container), so emitting one never fails;
* *local variables* (a value read by more than the next node): only a reader sees them, so they are
  handed out by :class:`Namespace`, legal and unique whatever the node name;
* *module-level names* (the classes of parts and their variants, the functions of sequential
  shortcuts, the classes of a block's ``classes:``): one :class:`Namespace` per emission hands them
  out (``source.part_names``), so that two parts whose names map to one class name (``a_b`` and
  ``a-b``) get two classes, and no part class shadows what the file imports or defines
  (:data:`GENERATED_FILE_NAMES`) or a local of the method that calls it. The renaming is in
  generated code only: module paths, and so state_dict keys, stay the user's.
"""

from __future__ import annotations

import builtins
import keyword
import re

from rescompile.spec.models import MODULE_LEVEL_NAMES, RESERVED_NAMES


def attribute_access(path: str) -> str:
    """The Python expression after ``self`` reaching a module path: ``se.fc1`` -> ``.se.fc1``,
    ``conv1.0`` -> ``.conv1["0"]``."""
    return "".join(f'["{segment}"]' if segment.isdigit() else f".{segment}" for segment in path.split("."))


def containers(paths: list[str]) -> list[str]:
    """Every proper prefix of the dotted ``paths``, parents first, in order of first appearance:
    the containers to create before the layers in them."""
    result: list[str] = []
    for path in paths:
        segments = path.split(".")
        for length in range(1, len(segments)):
            prefix = ".".join(segments[:length])
            if prefix not in result:
                result.append(prefix)
    return result


def with_containers(paths: list[str], statements: list[str], container: str) -> list[str]:
    """``statements`` (one assigning each of ``paths``) with the statements creating their
    containers (``self.se = nn.ModuleDict()``) inserted just before the first layer in each: a
    container registers where its first layer stands, so state_dict keys keep the nodes' order
    (timm's ``bn3``, ``se.fc1``, ``se.fc2``, ``downsample``)."""
    made: set[str] = set()
    lines: list[str] = []
    for path, statement in zip(paths, statements, strict=True):
        for prefix in containers([path]):
            if prefix not in made:
                made.add(prefix)
                lines.append(f"self{attribute_access(prefix)} = {container}")
        made.add(path)  # a layer holding others (a transition holding its stage's blocks) is their container
        lines.append(statement)
    return lines


def made_once(sections: list[list[str]], container: str) -> list[list[str]]:
    """The network constructor's sections (stem, stages, head), each written by
    :func:`with_containers`, with each container made only where it first appears: the sections may
    share one (torchvision's ``features``: the stem's ``features.0``, the stages' ``features.1``,
    the head's ``features.8``), and making it again would drop what an earlier section put in it."""
    made: set[str] = set()
    kept: list[list[str]] = []
    for lines in sections:
        kept.append([line for line in lines if not line.endswith(f" = {container}") or _first(line, made)])
    return kept


def _first(line: str, made: set[str]) -> bool:
    """Record ``line``; whether it was not recorded before."""
    new = line not in made
    made.add(line)
    return new


GENERATED_FILE_NAMES = frozenset(
    {
        *RESERVED_NAMES,
        *MODULE_LEVEL_NAMES,
        # Imported or defined at module level by the torch or Flax template or a helper of theirs
        # (tests/backends/test_names.py checks this list against every built-in's generated files).
        *("OrderedDict", "Callable", "annotations", "functools", "operator", "linear_init", "build"),
        *("ceil_padding", "max_pool_ceil", "avg_pool_ceil", "ChannelSoftmax", "channel_softmax"),
        "check_head",  # the timm head options check of both templates
    }
)
"""Module-level names of a generated file that no part's class or function may take."""
STAGE_LOCALS = frozenset(
    {
        *("block", "blocks", "index", "block_stride", "in_channels", "out_channels", "width", "depth", "stride"),
        *("first_block", "first_block_index", "first_options", "options", "layout", "rngs", "layers"),
        *("zero_init_residual", "module", "stage", "seed", "block_index", "block_count"),
    }
)
"""Locals of the methods that call part classes and shortcut functions (``_make_stage``, the
network's constructor): a part class named so would be shadowed where it is called."""


class Namespace:
    """Hands out legal, unique Python identifiers: local variables, or (with ``reserved`` the
    file's own names) a generated file's module-level names.

    Invariants of every name :meth:`create_name` returns: an identifier, not a keyword, not a
    builtin, not in ``reserved`` (a name generated code uses for itself), and not returned before."""

    def __init__(
        self, taken: set[str] | None = None, reserved: frozenset[str] = RESERVED_NAMES | MODULE_LEVEL_NAMES
    ) -> None:
        self._used: set[str] = set(taken or ())
        self._reserved = reserved

    def create_name(self, candidate: str) -> str:
        base = re.sub(r"[^0-9A-Za-z_]", "_", candidate) or "value"
        if base[0].isdigit():
            base = f"_{base}"
        if keyword.iskeyword(base) or hasattr(builtins, base) or base in self._reserved:
            base = f"{base}_"
        name, counter = base, 1
        while name in self._used:
            name, counter = f"{base}_{counter}", counter + 1
        self._used.add(name)
        return name
