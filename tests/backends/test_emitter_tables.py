"""Every IR op kind has an emitter in every backend (an op a backend cannot express exactly is a
compile-time error in that emitter, never a missing entry)."""

from pathlib import Path

import numpy as np
import pytest
from conftest import PART_COVERING_PRESETS

from rescompile import create_graph
from rescompile.backends.interface import Backend
from rescompile.backends.registry import BACKENDS
from rescompile.check import check, format_result
from rescompile.compiler import compile_spec
from rescompile.compiler.ops import PRIMITIVE_OP_KINDS
from rescompile.compiler.weights import random_weights
from rescompile.spec.loader import builtin_networks
from rescompile.testing import TOLERANCES, op_network


@pytest.mark.parametrize("backend", BACKENDS.values(), ids=BACKENDS)
def test_backend_has_an_emitter_for_every_op_kind(backend: Backend) -> None:
    assert backend.op_kinds() == set(PRIMITIVE_OP_KINDS)


def test_the_op_network_uses_every_op_kind(tmp_path: Path) -> None:
    """The compile tests run the op network by default on the strength of this: a new op is in it as
    soon as it is in the table (its ``example``), and no built-in needs to use it."""
    used = {node.op.kind for _, node in compile_spec(op_network(tmp_path)).nodes()}
    assert used == set(PRIMITIVE_OP_KINDS)  # the composites, lowered to primitives, in it too


def test_the_op_network_agrees_in_every_backend(tmp_path: Path) -> None:
    """Every op, as its example uses it, computes the same in every backend (``rescompile check``'s
    comparison, module by module and feature map by feature map)."""
    graph = compile_spec(op_network(tmp_path))
    weights = random_weights(graph, seed=3)
    inputs = np.random.default_rng(4).standard_normal((2, *graph.input_shape)).astype(np.float32)
    result = check(graph, tuple(BACKENDS), dict.fromkeys(BACKENDS, weights), inputs, TOLERANCES["network"])
    assert result.agree, format_result(result)


def test_the_part_covering_presets_use_every_op_kind_and_every_built_in_part() -> None:
    """The backend comparisons run PART_COVERING_PRESETS by default on the strength of this."""

    def used(name: str) -> set[tuple[str, str]]:
        graph = create_graph(name)
        return {(str(item.role), item.name) for item in graph.definitions} | {
            ("op", n.op.kind) for _, n in graph.nodes()
        }

    everything = set().union(*(used(name) for name in builtin_networks()))
    covered = set().union(*(used(name) for name in PART_COVERING_PRESETS))
    assert everything - covered == set()
