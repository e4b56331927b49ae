"""Names in generated source: handed out, not refused (torch.fx's ``_Namespace`` is the model).

Two kinds of name reach generated code from a spec:

* *module paths* (``conv1``, ``se.fc1``, ``conv1.0``): where a layer lives, which is its
  state_dict key, so they are kept exactly. A dotted path nests: every proper prefix is a container
  (``nn.ModuleDict`` / ``nnx.Dict``), and a segment that is a number is reached by item
  (``self.conv1["0"]``). The spec loader checks paths at validate time (each segment an identifier
  or a number, no path both a layer and a container), so emitting one never fails;
* *local variables* (a value read by more than the next node): only a reader sees them, so they are
  handed out by :class:`Namespace`, legal and unique whatever the node name.
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
    """``statements``, each assigning the layer at the path of the same index, each preceded by the
    statements creating those of its containers not created yet (``self.se = nn.ModuleDict()``): a
    container comes right before its first layer, so a module lists its layers in node order."""
    lines: list[str] = []
    made: set[str] = set()
    for path, statement in zip(paths, statements, strict=True):
        for prefix in containers([path]):
            if prefix not in made:
                made.add(prefix)
                lines.append(f"self{attribute_access(prefix)} = {container}")
        lines.append(statement)
    return lines


class Namespace:
    """Hands out legal, unique Python identifiers for local variables.

    Invariants of every name :meth:`create_name` returns: an identifier, not a keyword, not a
    builtin, not a name generated code uses for itself, and not returned before."""

    def __init__(self, taken: set[str] | None = None) -> None:
        self._used: set[str] = set(taken or ())

    def create_name(self, candidate: str) -> str:
        base = re.sub(r"[^0-9A-Za-z_]", "_", candidate) or "value"
        if base[0].isdigit():
            base = f"_{base}"
        if keyword.iskeyword(base) or hasattr(builtins, base) or base in RESERVED_NAMES | MODULE_LEVEL_NAMES:
            base = f"{base}_"
        name, counter = base, 1
        while name in self._used:
            name, counter = f"{base}_{counter}", counter + 1
        self._used.add(name)
        return name
