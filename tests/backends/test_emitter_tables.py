"""Every IR op kind has an emitter in every backend (an op a backend cannot express exactly is a
compile-time error in that emitter, never a missing entry)."""

import pytest

from rescompile.compiler.ir import OP_KINDS


def emitter_tables() -> dict[str, set[str]]:
    from rescompile.backends import flax_backend, onnx_backend, torch_backend

    return {
        "torch": set(torch_backend.LAYER_EMITTERS),
        "flax": set(flax_backend.EMITTERS),
        "onnx": set(onnx_backend.EMITTERS),
    }


@pytest.mark.parametrize("backend", ["torch", "flax", "onnx"])
def test_backend_has_an_emitter_for_every_op_kind(backend: str) -> None:
    assert emitter_tables()[backend] == set(OP_KINDS)
