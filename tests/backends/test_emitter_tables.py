"""Every IR op kind has an emitter in every backend (an op a backend cannot express exactly is a
compile-time error in that emitter, never a missing entry)."""

import pytest
from conftest import OP_COVERING_PRESETS

from rescompile import create_graph
from rescompile.backends.interface import Backend
from rescompile.backends.registry import BACKENDS
from rescompile.compiler.ir import OP_KINDS


@pytest.mark.parametrize("backend", BACKENDS.values(), ids=BACKENDS)
def test_backend_has_an_emitter_for_every_op_kind(backend: Backend) -> None:
    assert backend.op_kinds() == set(OP_KINDS)


def test_the_op_covering_presets_use_every_op_kind() -> None:
    """The compile tests run OP_COVERING_PRESETS by default on the strength of this."""
    used = {node.op.kind for name in OP_COVERING_PRESETS for _, node in create_graph(name).nodes()}
    assert used == set(OP_KINDS), f"no default-run preset uses {sorted(set(OP_KINDS) - used)}"
