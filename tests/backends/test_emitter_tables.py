"""Every IR op kind has an emitter in every backend (an op a backend cannot express exactly is a
compile-time error in that emitter, never a missing entry)."""

import pytest

from rescompile.backends.interface import Backend
from rescompile.backends.registry import BACKENDS
from rescompile.compiler.ir import OP_KINDS


@pytest.mark.parametrize("backend", BACKENDS.values(), ids=BACKENDS)
def test_backend_has_an_emitter_for_every_op_kind(backend: Backend) -> None:
    assert backend.op_kinds() == set(OP_KINDS)
